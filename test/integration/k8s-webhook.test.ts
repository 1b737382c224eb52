// The admission webhook on a real HTTPS socket (self-signed certificate made with openssl):
// AdmissionReview fixtures in, JSON Patch out. The patch, applied to the review's Pod by an RFC
// 6902 applier written here (not the one the injector uses), gives exactly what the offline
// injector gives, and the result validates as a v1 Pod. Bad requests get 4xx with stable codes,
// reviews that cannot be injected are denied with the reason, and every admission is logged.
import { spawn, spawnSync } from 'node:child_process'
import { X509Certificate } from 'node:crypto'
import { mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { PassThrough } from 'node:stream'
import { connect } from 'node:tls'
import { Pod } from 'kubernetes-models/v1'
import { Agent, request } from 'undici'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { WEBHOOK } from '../../src/k8s/constants.js'
import { injectObject } from '../../src/k8s/inject.js'
import type { JsonObject } from '../../src/k8s/json-patch.js'
import { startWebhook, type WebhookServer } from '../../src/k8s/webhook.js'
import { LIMITS } from '../../src/limits.js'
import { createLogger } from '../../src/telemetry/logger.js'

const root = join(import.meta.dirname, '../..')
const fixtures = join(root, 'test/fixtures/k8s/admission')
const IMAGE = 'ghcr.io/txmesh/txmesh:golden'

type Obj = Record<string, unknown>
const review = (name: string): Obj => JSON.parse(readFileSync(join(fixtures, name), 'utf8')) as Obj
const podOf = (r: Obj): JsonObject => (r.request as { object: JsonObject }).object

// ---- a minimal RFC 6902 applier (add/replace/remove/test), independent of src/k8s ----
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
    if (Array.isArray(parent)) {
      const i = key === '-' ? parent.length : Number(key)
      if (!Number.isInteger(i) || i < 0 || i > parent.length) throw new Error(`${op} ${path}: bad index`)
      if (op === 'add') parent.splice(i, 0, structuredClone(value))
      else if (op === 'replace') parent[i] = structuredClone(value)
      else if (op === 'remove') parent.splice(i, 1)
      else throw new Error(`unsupported op ${op}`)
    } else if (op === 'add' || op === 'replace') {
      if (op === 'replace' && !(key in parent)) throw new Error(`replace ${path}: missing`)
      parent[key] = structuredClone(value)
    } else if (op === 'remove') delete parent[key]
    else throw new Error(`unsupported op ${op}`)
  }
  return out
}

let dir: string
let cert: string
let key: string
let ca: Buffer
let server: WebhookServer
let dispatcher: Agent
const logLines: Obj[] = []

function makeCert(cn: string, certFile: string, keyFile: string): void {
  const r = spawnSync(
    'openssl',
    [
      'req',
      '-x509',
      '-newkey',
      'ec',
      '-pkeyopt',
      'ec_paramgen_curve:prime256v1',
      '-nodes',
      '-days',
      '1',
      '-subj',
      `/CN=${cn}`,
      '-addext',
      'subjectAltName=IP:127.0.0.1,DNS:localhost',
      '-keyout',
      keyFile,
      '-out',
      certFile,
    ],
    { encoding: 'utf8' },
  )
  if (r.status !== 0) throw new Error(`openssl failed: ${r.stderr}`)
}

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'txmesh-webhook-'))
  cert = join(dir, 'tls.crt')
  key = join(dir, 'tls.key')
  makeCert(`${WEBHOOK.service}.${WEBHOOK.namespace}.svc`, cert, key)
  ca = readFileSync(cert)
  const out = new PassThrough()
  out.on('data', (chunk: Buffer) => {
    for (const line of chunk.toString('utf8').split('\n').filter(Boolean)) logLines.push(JSON.parse(line) as Obj)
  })
  server = await startWebhook({
    cert: readFileSync(cert),
    key: readFileSync(key),
    port: 0,
    host: '127.0.0.1',
    image: IMAGE,
    log: createLogger('info', { component: 'webhook' }, out),
    certFiles: { cert, key },
  })
  // Verify the server against its own certificate, as the API server does with caBundle.
  dispatcher = new Agent({ connect: { ca } })
})

afterAll(async () => {
  await dispatcher?.close()
  await server?.close()
  rmSync(dir, { recursive: true, force: true })
})

async function post(
  body: string | Buffer,
  path: string = WEBHOOK.path,
  headers: Record<string, string> = { 'content-type': 'application/json' },
): Promise<{ status: number; code: string | undefined; json: Obj }> {
  const res = await request(`https://127.0.0.1:${server.port}${path}`, { method: 'POST', body, headers, dispatcher })
  const text = await res.body.text()
  return {
    status: res.statusCode,
    code: res.headers['x-txmesh-error'] as string | undefined,
    json: JSON.parse(text) as Obj,
  }
}

const lastLog = (): Obj | undefined => logLines[logLines.length - 1]

describe('txmesh webhook: AdmissionReview v1 over HTTPS', () => {
  it('has a fixture for every case below', () => {
    expect(readdirSync(fixtures).sort()).toEqual([
      'deployment.json',
      'pod-annotated.json',
      'pod-bad-capture.json',
      'pod-iptables-classic.json',
      'pod-namespace-enabled.json',
      'pod-no-app-port.json',
      'pod-opt-out.json',
      'pod-update.json',
    ])
  })

  for (const [fixture, path] of [
    ['pod-annotated.json', WEBHOOK.path],
    ['pod-iptables-classic.json', WEBHOOK.path],
    ['pod-namespace-enabled.json', WEBHOOK.namespaceEnabledPath],
  ] as const) {
    it(`${fixture}: the JSON Patch turns the Pod into the offline injector's output, which validates`, async () => {
      const r = review(fixture)
      const uid = (r.request as { uid: string }).uid
      const res = await post(JSON.stringify(r), `${path}?timeout=10s`)
      expect(res.status).toBe(200)
      expect(res.json.apiVersion).toBe('admission.k8s.io/v1')
      expect(res.json.kind).toBe('AdmissionReview')
      const response = res.json.response as { uid: string; allowed: boolean; patchType: string; patch: string }
      expect(response.uid).toBe(uid)
      expect(response.allowed).toBe(true)
      expect(response.patchType).toBe('JSONPatch')
      const ops = JSON.parse(Buffer.from(response.patch, 'base64').toString('utf8')) as Op[]
      expect(ops.every((o) => o.op === 'add')).toBe(true)
      // The annotation key's "/" is escaped as ~1 (RFC 6901).
      expect(ops[0]).toEqual({
        op: 'add',
        path: expect.stringMatching(/^\/metadata\/annotations(\/txmesh\.io~1status)?$/),
        value: expect.anything(),
      })
      const pod = applyRfc6902(podOf(r), ops) as JsonObject
      const offline = injectObject(podOf(r), { image: IMAGE, namespaceEnabled: path === WEBHOOK.namespaceEnabledPath })
      expect(pod).toEqual(offline?.object)
      new Pod(pod as never).validate()
      const annotations = (pod.metadata as { annotations: Record<string, string> }).annotations
      expect(annotations['txmesh.io/status']).toBe('injected')
      // TXMESH_SERVICE from the label app; the ReplicaSet's generated name is not used.
      const proxy = [
        ...((pod.spec as { initContainers?: Obj[] }).initContainers ?? []),
        ...(pod.spec as { containers: Obj[] }).containers,
      ].find((c) => c.name === 'txmesh-proxy')
      expect((proxy?.env as Obj[])[0]).toEqual({ name: 'TXMESH_SERVICE', value: 'orders' })
      expect(lastLog()).toMatchObject({
        level: 'info',
        event: 'admission',
        component: 'webhook',
        uid,
        namespace: 'shop',
        outcome: 'injected',
        operations: ops.length,
      })

      // Reinvocation (reinvocationPolicy: IfNeeded) sees the injected pod: no second patch.
      const again = structuredClone(r) as { request: { object: unknown } }
      again.request.object = pod
      const second = await post(JSON.stringify(again), path)
      expect(second.json.response).toEqual({ uid, allowed: true })
      expect(lastLog()).toMatchObject({ outcome: 'skipped', reason: 'already-injected' })
    })
  }

  it('allows pods without the annotation, opted-out pods and updates, with no patch', async () => {
    for (const [fixture, path, reason] of [
      ['pod-namespace-enabled.json', WEBHOOK.path, 'not-annotated'],
      ['pod-opt-out.json', WEBHOOK.namespaceEnabledPath, 'opted-out'],
      ['pod-update.json', WEBHOOK.path, 'not-create'],
    ] as const) {
      const r = review(fixture)
      const res = await post(JSON.stringify(r), path)
      expect(res.status, fixture).toBe(200)
      expect(res.json.response, fixture).toEqual({ uid: (r.request as { uid: string }).uid, allowed: true })
      expect(lastLog(), fixture).toMatchObject({ event: 'admission', outcome: 'skipped', reason })
    }
  })

  it('denies a pod it cannot inject, with the code and reason, rather than admit it without a sidecar', async () => {
    for (const [fixture, code, status, message] of [
      [
        'pod-no-app-port.json',
        'TXM_INJECT_NO_APP_PORT',
        400,
        /no txmesh\.io\/app-port annotation and the first container "worker" declares no containerPort/,
      ],
      [
        'pod-bad-capture.json',
        'TXM_INJECT_INVALID',
        400,
        /txmesh\.io\/capture: must be "env" or "iptables", not "ebpf" \(at \/metadata\/annotations\/txmesh\.io~1capture\)/,
      ],
    ] as const) {
      const r = review(fixture)
      const res = await post(JSON.stringify(r))
      expect(res.status).toBe(200)
      const response = res.json.response as {
        uid: string
        allowed: boolean
        patch?: string
        status: { code: number; reason: string; message: string }
      }
      expect(response.allowed).toBe(false)
      expect(response.patch).toBeUndefined()
      expect(response.status.code).toBe(status)
      expect(response.status.reason).toBe(code)
      expect(response.status.message).toMatch(new RegExp(`^txmesh: ${code}: `))
      expect(response.status.message).toMatch(message)
      expect(lastLog()).toMatchObject({ level: 'warn', event: 'admission', outcome: 'denied', code, uid: response.uid })
    }
  })

  it('allows a non-Pod review with a warning (a misconfigured rule must not block the cluster)', async () => {
    const res = await post(readFileSync(join(fixtures, 'deployment.json')))
    const response = res.json.response as { allowed: boolean; warnings: string[]; patch?: string }
    expect(response.allowed).toBe(true)
    expect(response.patch).toBeUndefined()
    expect(response.warnings[0]).toMatch(/apps\/v1 Deployment is not a Pod/)
    expect(lastLog()).toMatchObject({ level: 'warn', outcome: 'skipped', reason: 'not-a-pod' })
  })

  it('answers 400 TXM_ADMISSION_INVALID to anything that is not an AdmissionReview v1 with a request', async () => {
    const good = review('pod-annotated.json')
    const cases: [string, string | Buffer][] = [
      ['not JSON', '{"apiVersion": "admission.k8s.io/v1",'],
      ['a JSON array', '[]'],
      ['v1beta1', JSON.stringify({ ...good, apiVersion: 'admission.k8s.io/v1beta1' })],
      ['wrong kind', JSON.stringify({ ...good, kind: 'Pod' })],
      ['no request', JSON.stringify({ apiVersion: good.apiVersion, kind: good.kind })],
      ['no uid', JSON.stringify({ ...good, request: { ...(good.request as Obj), uid: undefined } })],
      ['no object', JSON.stringify({ ...good, request: { ...(good.request as Obj), object: null } })],
    ]
    for (const [what, body] of cases) {
      const before = logLines.length
      const res = await post(body)
      expect([res.status, res.code], what).toEqual([400, 'TXM_ADMISSION_INVALID'])
      expect((res.json.error as { code: string }).code, what).toBe('TXM_ADMISSION_INVALID')
      expect(logLines.slice(before), what).toEqual([
        expect.objectContaining({ level: 'warn', event: 'admission_rejected', code: 'TXM_ADMISSION_INVALID' }),
      ])
    }
  })

  it('refuses a body over LIMITS.admissionBodyBytes with 413 TXM_BODY_TOO_LARGE', async () => {
    const res = await post(Buffer.alloc(LIMITS.admissionBodyBytes + 1, 0x20))
    expect([res.status, res.code]).toEqual([413, 'TXM_BODY_TOO_LARGE'])
    expect(lastLog()).toMatchObject({ event: 'admission_rejected', code: 'TXM_BODY_TOO_LARGE' })
  })

  it('serves GET /healthz, 405 for GET on the review path, 404 elsewhere', async () => {
    const health = await request(`https://127.0.0.1:${server.port}/healthz`, { dispatcher })
    expect([health.statusCode, await health.body.json()]).toEqual([200, { status: 'ok' }])
    const get = await request(`https://127.0.0.1:${server.port}${WEBHOOK.path}`, { dispatcher })
    expect([get.statusCode, get.headers['x-txmesh-error']]).toEqual([405, 'TXM_METHOD_NOT_ALLOWED'])
    await get.body.dump()
    for (const path of ['/mutate', '/constructor', '/inject/other']) {
      const other = await post('{}', path)
      expect([other.status, other.code], path).toEqual([404, 'TXM_NOT_FOUND'])
    }
  })

  it('answers requests Node itself refuses (malformed, unknown Expect) with a coded 400', async () => {
    const raw = (text: string): Promise<string> =>
      new Promise((resolve, reject) => {
        let got = ''
        const s = connect({ host: '127.0.0.1', port: server.port, rejectUnauthorized: false }, () => s.write(text))
        s.on('data', (c: Buffer) => (got += c.toString()))
        s.on('end', () => resolve(got))
        s.on('close', () => resolve(got))
        s.on('error', reject)
      })
    const malformed = await raw('NOT HTTP AT ALL\r\n\r\n')
    expect(malformed).toMatch(/^HTTP\/1\.1 400 /)
    expect(malformed.toLowerCase()).toContain('x-txmesh-error: txm_bad_request')
    const expect100 = await raw(
      `POST ${WEBHOOK.path} HTTP/1.1\r\nHost: x\r\nExpect: bogus\r\nContent-Length: 2\r\nConnection: close\r\n\r\n`,
    )
    expect(expect100).toMatch(/^HTTP\/1\.1 400 /)
    expect(expect100.toLowerCase()).toContain('x-txmesh-error: txm_bad_request')
  })

  it('picks up a rotated certificate from its files', async () => {
    const fingerprint = (): Promise<string> =>
      new Promise((resolve, reject) => {
        const s = connect({ host: '127.0.0.1', port: server.port, rejectUnauthorized: false }, () => {
          resolve(s.getPeerCertificate().fingerprint256)
          s.end()
        })
        s.on('error', reject)
      })
    const before = await fingerprint()
    expect(server.reloadCertificate()).toBe(false) // unchanged files
    makeCert('rotated', join(dir, 'new.crt'), join(dir, 'new.key'))
    writeFileSync(key, readFileSync(join(dir, 'new.key')))
    writeFileSync(cert, readFileSync(join(dir, 'new.crt')))
    expect(server.reloadCertificate()).toBe(true)
    const after = await fingerprint()
    expect(after).not.toBe(before)
    expect(after).toBe(new X509Certificate(readFileSync(cert)).fingerprint256)
    expect(lastLog()).toMatchObject({ event: 'certificate_reloaded' })
  })
})

describe('txmesh webhook CLI', () => {
  it('listens with --cert/--key, reports its port, serves reviews and exits 0 on SIGTERM', async () => {
    const child = spawn(
      process.execPath,
      [
        join(root, 'dist/cli/index.js'),
        'webhook',
        '--cert',
        cert,
        '--key',
        key,
        '--port',
        '0',
        '--host',
        '127.0.0.1',
        '--image',
        IMAGE,
      ],
      {
        stdio: ['ignore', 'pipe', 'pipe'],
      },
    )
    let stderr = ''
    child.stderr.on('data', (c: Buffer) => (stderr += c.toString()))
    const port = await new Promise<number>((resolve, reject) => {
      let buf = ''
      child.stdout.on('data', (c: Buffer) => {
        buf += c.toString()
        const line = buf.split('\n')[0]
        if (buf.includes('\n') && line !== undefined) resolve((JSON.parse(line) as { port: number }).port)
      })
      child.once('exit', (code) => reject(new Error(`webhook exited ${String(code)}: ${stderr}`)))
    })
    const agent = new Agent({ connect: { rejectUnauthorized: false } })
    const res = await request(`https://127.0.0.1:${port}${WEBHOOK.path}`, {
      method: 'POST',
      body: readFileSync(join(fixtures, 'pod-annotated.json')),
      dispatcher: agent,
    })
    const body = (await res.body.json()) as { response: { allowed: boolean; patchType: string } }
    expect([res.statusCode, body.response.allowed, body.response.patchType]).toEqual([200, true, 'JSONPatch'])
    await agent.close()
    const exited = new Promise<number | null>((resolve) => child.once('exit', resolve))
    child.kill('SIGTERM')
    expect(await exited).toBe(0)
    const lines = stderr
      .split('\n')
      .filter(Boolean)
      .map((l) => JSON.parse(l) as Obj)
    expect(lines.filter((l) => l.event === 'admission')).toEqual([
      expect.objectContaining({ outcome: 'injected', component: 'webhook' }),
    ])
  })
})
