// Fuzzing the Kubernetes inputs: the admission webhook's pure entry (src/k8s/webhook.ts admit)
// with arbitrary JSON and mutated AdmissionReview fixtures, and `txmesh inject`'s manifest
// parsing (src/k8s/manifests.ts injectManifests) with mutated manifests. admit never throws: it
// answers a review (a denial carries a registered 4xx code, never TXM_INTERNAL) or returns a
// 400 TXM_ADMISSION_INVALID. injectManifests returns, or throws an InjectError with a 4xx code
// whose message starts with file:line:col. What they produce is checked too: the webhook's
// patch applies to the pod it was made for, and injecting an injected result changes nothing.
import { readFileSync, readdirSync } from 'node:fs'
import { join } from 'node:path'
import fc from 'fast-check'
import { parseAllDocuments } from 'yaml'
import { describe, expect, it } from 'vitest'
import { InjectError, TxmeshError } from '../../src/errors.js'
import { ANNOTATIONS } from '../../src/k8s/constants.js'
import { injectManifests } from '../../src/k8s/manifests.js'
import { admit, type Admission } from '../../src/k8s/webhook.js'
import { expectClientError, fuzzParams, fuzzRuns, fuzzTimeout, mutated, REGISTRY } from './fuzz.js'

const fixtures = join(import.meta.dirname, '../fixtures/k8s')
const REVIEWS = readdirSync(join(fixtures, 'admission'))
  .filter((f) => f.endsWith('.json'))
  .map((f) => JSON.parse(readFileSync(join(fixtures, 'admission', f), 'utf8')) as Record<string, unknown>)
const MANIFESTS = readdirSync(join(fixtures, 'inject'))
  .filter((f) => f.endsWith('.in.yaml') || f.endsWith('.out.yaml'))
  .map((f) => readFileSync(join(fixtures, 'inject', f), 'utf8'))
const FILE = 'fuzz.yaml'
const SLOW_MS = 2_000

// Values the annotations may get: valid ones of every kind, near misses and junk.
const ANNOTATION_VALUES = [
  'true',
  'false',
  'True',
  'yes',
  '',
  ' true',
  'env',
  'iptables',
  'ebpf',
  '8080',
  '0',
  '65536',
  '-1',
  'http',
  'metrics',
  'nope',
  '50m',
  '1',
  '1.5',
  '64Mi',
  '1e3',
  '0.1Gi',
  '-5m',
  '1Zi',
  'none',
  'NaN',
  'txmesh-config',
  'UPPER',
  'a'.repeat(300),
  'my.claim',
  'ghcr.io/x/y:1',
  'has space',
  'injected',
  'orders',
  '..',
  '\u0000',
  '\ud800',
  '{}',
  '[1]',
]
const annotationValue = fc.oneof(
  fc.constantFrom(...ANNOTATION_VALUES),
  fc.string({ maxLength: 20 }),
  fc.integer().map(String),
)
const annotations = fc.dictionary(fc.constantFrom(...Object.values(ANNOTATIONS)), annotationValue, { maxKeys: 6 })

// ---- structural mutation of JSON values ----

type Path = (string | number)[]
function paths(v: unknown, at: Path = [], out: Path[] = []): Path[] {
  out.push(at)
  if (out.length > 2_000) return out
  if (Array.isArray(v)) v.forEach((x, i) => paths(x, [...at, i], out))
  else if (v !== null && typeof v === 'object') for (const [k, x] of Object.entries(v)) paths(x, [...at, k], out)
  return out
}

type Mutation = { path: number; action: 'delete' | 'set' | 'wrap' | 'annotations'; value: unknown }
const mutation: fc.Arbitrary<Mutation> = fc.record({
  path: fc.nat(),
  action: fc.constantFrom('delete', 'set', 'set', 'wrap', 'annotations'),
  value: fc.oneof(
    fc.jsonValue({ maxDepth: 2 }),
    fc.constantFrom<unknown>(null, '', 0, -1, 8080, 'Pod', 'CREATE', 'UPDATE', 'v1', [], {}, ['x'], {
      name: 'txmesh-proxy',
    }),
    annotations,
  ),
})

function applyMutation(root: unknown, m: Mutation): unknown {
  const all = paths(root)
  const path = all[m.path % all.length] as Path
  if (path.length === 0) return m.action === 'set' ? m.value : root
  const parent = path.slice(0, -1).reduce<unknown>((o, k) => (o as Record<string | number, unknown>)[k], root) as
    Record<string | number, unknown> | unknown[]
  const key = path[path.length - 1] as string | number
  if (m.action === 'delete') {
    if (Array.isArray(parent)) parent.splice(key as number, 1)
    else delete parent[key]
  } else if (m.action === 'set') (parent as Record<string | number, unknown>)[key] = m.value
  else if (m.action === 'wrap')
    (parent as Record<string | number, unknown>)[key] = [(parent as Record<string | number, unknown>)[key]]
  else {
    // Annotations on whatever object is here (the pod's metadata most usefully).
    const target = (parent as Record<string | number, unknown>)[key]
    if (target !== null && typeof target === 'object' && !Array.isArray(target))
      (target as Record<string, unknown>).annotations = m.value
  }
  return root
}

/** A fixture review with its pod's annotations replaced, then 0-4 structural mutations. */
const mutatedReview = fc
  .tuple(
    fc.nat({ max: REVIEWS.length - 1 }),
    fc.option(annotations, { nil: undefined }),
    fc.array(mutation, { maxLength: 4 }),
  )
  .map(([i, ann, ms]) => {
    const r = structuredClone(REVIEWS[i]) as { request?: { object?: { metadata?: Record<string, unknown> } } }
    const meta = r.request?.object?.metadata
    if (ann !== undefined && meta !== undefined)
      meta.annotations = { ...(meta.annotations as object), [ANNOTATIONS.inject]: 'true', ...ann }
    return ms.reduce<unknown>(applyMutation, r)
  })

// ---- an RFC 6902 applier (add/replace), independent of src/k8s ----
type Op = { op: string; path: string; value?: unknown }
function applyRfc6902(doc: unknown, ops: Op[]): unknown {
  const out = structuredClone(doc)
  for (const { op, path, value } of ops) {
    const parts = path
      .split('/')
      .slice(1)
      .map((p) => p.replaceAll('~1', '/').replaceAll('~0', '~'))
    const key = parts.pop() as string
    const parent = parts.reduce<Record<string, unknown>>(
      (o, p) => {
        const next = o[p]
        if (typeof next !== 'object' || next === null) throw new Error(`${op} ${path}: no /${p}`)
        return next as Record<string, unknown>
      },
      out as Record<string, unknown>,
    )
    if (op !== 'add' && op !== 'replace') throw new Error(`unexpected op ${op}`)
    if (Array.isArray(parent)) {
      const i = key === '-' ? parent.length : Number(key)
      if (!Number.isInteger(i) || i < 0 || i > parent.length || (op === 'replace' && i === parent.length))
        throw new Error(`${op} ${path}: bad index`)
      if (op === 'add') parent.splice(i, 0, structuredClone(value))
      else parent[i] = structuredClone(value)
    } else {
      if (op === 'replace' && !(key in parent)) throw new Error(`replace ${path}: nothing to replace`)
      parent[key] = structuredClone(value)
    }
  }
  return out
}

/** admit's contract on any body; returns the admission when there is one. */
function checkAdmit(generated: unknown, namespaceEnabled: boolean): Admission | undefined {
  // What the webhook hands admit: a JSON.parse result (fast-check's objects may lack a prototype).
  const body = JSON.parse(JSON.stringify(generated) ?? 'null') as unknown
  const started = performance.now()
  let out: ReturnType<typeof admit> | undefined
  expect(
    () => (out = admit(body, { namespaceEnabled, image: 'ghcr.io/txmesh/txmesh:fuzz' })),
    `admit threw on ${JSON.stringify(body)?.slice(0, 400)}`,
  ).not.toThrow()
  expect(performance.now() - started).toBeLessThan(SLOW_MS)
  if (out instanceof TxmeshError) {
    expectClientError(out, 'admit')
    expect(out.code).toBe('TXM_ADMISSION_INVALID')
    return undefined
  }
  const a = out as Admission
  const request = (body as { request: { uid: string; object?: unknown } }).request
  const res = a.review.response
  expect(a.review).toMatchObject({ apiVersion: 'admission.k8s.io/v1', kind: 'AdmissionReview' })
  expect(res.uid).toBe(request.uid)
  expect(typeof res.allowed).toBe('boolean')
  if (!res.allowed) {
    const status = res.status as { code: number; reason: string; message: string }
    // A denial is the pod's fault, with a stable code; TXM_INTERNAL would be an injector bug.
    expect(REGISTRY.get(status.reason), `denied with ${status.reason}: ${status.message}`).toBe(status.code)
    expect(
      status.code >= 400 && status.code < 500,
      `denied with ${status.code} ${status.reason}: ${status.message}`,
    ).toBe(true)
    expect(res.patch).toBeUndefined()
  }
  if (res.patch !== undefined) {
    expect(res.patchType).toBe('JSONPatch')
    const ops = JSON.parse(Buffer.from(res.patch, 'base64').toString('utf8')) as Op[]
    expect(Array.isArray(ops)).toBe(true)
    // The API server applies the patch to the object it sent: it must apply, and the patched pod
    // is left alone when it comes back (txmesh.io/status: injected).
    const pod = applyRfc6902({ ...(request.object as object), apiVersion: 'v1', kind: 'Pod' }, ops)
    const again = admit(
      { ...(body as object), request: { ...request, object: pod } },
      { namespaceEnabled, image: 'ghcr.io/txmesh/txmesh:fuzz' },
    )
    expect(again).not.toBeInstanceOf(TxmeshError)
    expect((again as Admission).review.response).toMatchObject({ allowed: true })
    expect((again as Admission).review.response.patch).toBeUndefined()
  }
  return a
}

/** injectManifests' contract on any text; returns the output when it succeeded. */
function checkInject(text: string): string | undefined {
  const started = performance.now()
  let out: string | undefined
  try {
    out = injectManifests(text, FILE, { image: 'ghcr.io/txmesh/txmesh:fuzz' }).output
  } catch (err) {
    if (!(err instanceof InjectError))
      throw new Error(`injectManifests threw ${String(err)} on ${JSON.stringify(text.slice(0, 400))}`, { cause: err })
    expectClientError(err, 'injectManifests')
    expect(err.message, 'an inject error names file:line:col').toMatch(/^fuzz\.yaml:\d+:\d+: /)
  }
  expect(performance.now() - started).toBeLessThan(SLOW_MS)
  if (out === undefined) return undefined
  // The output is YAML, and inject on its own output changes nothing (docs/kubernetes.md: byte-identical).
  for (const d of parseAllDocuments(out)) expect(d.errors, `output does not parse: ${out.slice(0, 400)}`).toEqual([])
  expect(injectManifests(out, FILE, { image: 'ghcr.io/txmesh/txmesh:fuzz' }).output).toBe(out)
  return out
}

describe('fuzz: AdmissionReview (webhook admit)', () => {
  const RUNS = fuzzRuns(1_000)

  it(
    'mutated fixture reviews get a review with a registered 4xx denial or a patch that applies',
    () => {
      let patched = 0
      let denied = 0
      fc.assert(
        fc.property(mutatedReview, fc.boolean(), (review, namespaceEnabled) => {
          const a = checkAdmit(review, namespaceEnabled)
          if (a?.review.response.patch !== undefined) patched++
          if (a?.review.response.allowed === false) denied++
        }),
        fuzzParams(RUNS * 2),
      )
      // Both interesting outcomes are reached, not only the cheap refusals.
      expect(patched).toBeGreaterThan(0)
      expect(denied).toBeGreaterThan(0)
    },
    fuzzTimeout(RUNS * 2, 20),
  )

  it(
    'arbitrary JSON, near-reviews and mutated review text never make admit throw',
    () => {
      const near = fc.record(
        {
          apiVersion: fc.constantFrom<unknown>('admission.k8s.io/v1', 'admission.k8s.io/v1beta1', 1, null),
          kind: fc.constantFrom<unknown>('AdmissionReview', 'Pod', null),
          request: fc.record(
            {
              uid: fc.oneof(fc.uuid(), fc.constantFrom<unknown>('', 1, null)),
              kind: fc.oneof(fc.constant({ group: '', version: 'v1', kind: 'Pod' }), fc.jsonValue({ maxDepth: 2 })),
              operation: fc.constantFrom<unknown>('CREATE', 'UPDATE', 'DELETE', 'CONNECT', 5),
              subResource: fc.constantFrom<unknown>(undefined, '', 'status', 'ephemeralcontainers'),
              namespace: fc.oneof(fc.string(), fc.constant(undefined)),
              object: fc.oneof(
                fc.jsonValue({ maxDepth: 4 }),
                fc.record({ metadata: fc.record({ annotations: annotations }), spec: fc.jsonValue({ maxDepth: 3 }) }),
              ),
            },
            { requiredKeys: [] },
          ),
        },
        { requiredKeys: [] },
      )
      const text = mutated(
        REVIEWS.map((r) => JSON.stringify(r, null, 1)),
        ['"Pod"', '"CREATE"', 'null', '[]', '{}', '"txmesh.io/inject": "true",', '"containerPort": 15006,'],
        4,
      )
      const fromText = text.map((t) => {
        try {
          return JSON.parse(t) as unknown
        } catch {
          return { unparsable: true }
        }
      })
      fc.assert(
        fc.property(
          fc.oneof(fc.jsonValue({ maxDepth: 5 }), near, fromText),
          fc.boolean(),
          (body, namespaceEnabled) => void checkAdmit(body, namespaceEnabled),
        ),
        fuzzParams(RUNS * 2),
      )
    },
    fuzzTimeout(RUNS * 2, 20),
  )
})

describe('fuzz: txmesh inject manifests', () => {
  const RUNS = fuzzRuns(500)

  it(
    'mutated manifests inject idempotently or fail with a located InjectError',
    () => {
      const dictionary = [
        ...Object.values(ANNOTATIONS).map((a) => `\n        ${a}: `),
        ...ANNOTATION_VALUES.map((v) => JSON.stringify(v)),
        '---\n',
        '...\n',
        'kind: List\nitems:\n- ',
        'kind: Pod',
        'kind: CronJob',
        '&a ',
        '*a',
        '<<: *a',
        '!!binary ',
        'containerPort: 15006',
        '- name: txmesh-proxy',
        'null',
        '[]',
        '{}',
      ]
      let injected = 0
      fc.assert(
        fc.property(mutated(MANIFESTS, dictionary, 6), (text) => {
          if (checkInject(text) !== undefined && text.includes('txmesh.io/inject')) injected++
        }),
        fuzzParams(RUNS * 2),
      )
      expect(injected).toBeGreaterThan(0)
    },
    fuzzTimeout(RUNS * 2, 40),
  )

  it(
    'annotation values of every kind inject idempotently or fail with a located InjectError',
    () => {
      const base = MANIFESTS.find(
        (m) => m.includes('kind: Deployment') && m.includes('txmesh.io/inject: "true" # opt in'),
      ) as string
      expect(base).toBeDefined()
      const quoted = fc.tuple(annotationValue, fc.boolean()).map(([v, raw]) => (raw ? v : JSON.stringify(v)))
      fc.assert(
        fc.property(fc.dictionary(fc.constantFrom(...Object.values(ANNOTATIONS)), quoted, { maxKeys: 6 }), (ann) => {
          const lines = Object.entries(ann).map(([k, v]) => `        ${k}: ${v}`)
          void checkInject(
            base.replace(
              '        txmesh.io/inject: "true" # opt in',
              ['        txmesh.io/inject: "true" # opt in', ...lines].join('\n'),
            ),
          )
        }),
        fuzzParams(RUNS * 2),
      )
    },
    fuzzTimeout(RUNS * 2, 40),
  )
})
