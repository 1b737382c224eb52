// Fuzzing the transaction context parsers (src/tx/protocol.ts): the `txmesh-context` header and
// its W3C baggage form, and the `txmesh-enlisted` response header. Whatever the input, they never
// throw: they return a registered 4xx TxmeshError, or a context only when the token is one the
// mesh key signed. Tokens are made with the exported signContext/signEnlisted; "sealed" tokens
// (any JSON payload under a valid mac) follow the wire format the protocol module documents.
import { createHmac } from 'node:crypto'
import fc from 'fast-check'
import { describe, expect, it } from 'vitest'
import { LIMITS } from '../../src/limits.js'
import {
  BAGGAGE_ENTRY,
  contextFromBaggage,
  signContext,
  signEnlisted,
  verifyContext,
  verifyEnlisted,
  TX_MODES,
  type TxContext,
} from '../../src/tx/protocol.js'
import { TxmeshError } from '../../src/errors.js'
import { expectClientError, fuzzParams, fuzzRuns, fuzzTimeout, mutated } from './fuzz.js'

const KEY = Buffer.from('fuzz-mesh-key-0123456789abcdef')
const NOW = 1_750_000_000_000
const ALLOW_ALL = Object.freeze(['*'])

const id = fc.stringMatching(/^[A-Za-z0-9_-]{1,64}$/)
const address = fc.oneof(
  fc.tuple(fc.ipV4(), fc.integer({ min: 0, max: 99999 })).map(([h, p]) => `${h}:${p}`),
  fc.tuple(fc.domain(), fc.integer({ min: 1, max: 65535 })).map(([h, p]) => `${h}:${p}`),
  fc.tuple(fc.ipV6(), fc.integer({ min: 1, max: 65535 })).map(([h, p]) => `[${h}]:${p}`),
)

/** A context verifyContext must accept when signed with the mesh key and before its deadline. */
const validContext: fc.Arbitrary<TxContext> = fc
  .record({
    id,
    mode: fc.constantFrom(...TX_MODES),
    coordinator: address,
    deadline: fc.integer({ min: NOW + 1, max: NOW + LIMITS.txTimeoutCapMs }),
    parent: fc.option(id, { nil: undefined }),
    branch: fc.option(id, { nil: undefined }),
    op: fc.option(fc.constantFrom('action', 'compensate', 'try', 'confirm', 'cancel' as const), { nil: undefined }),
  })
  .map((c) => {
    // The payload rules: a step branch only in saga/tcc, an op only with a branch.
    const branch = c.mode === '2pc' ? undefined : c.branch
    return { ...c, branch, op: branch === undefined ? undefined : c.op }
  })
  // Addresses that fit the context's size bound (a 253-char domain twice over would not).
  .filter((c) => c.coordinator.length <= 260)

/** `v1.<base64url JSON>.<mac>` over any payload: what a peer holding the key could send. */
function seal(key: Buffer, payload: unknown): string {
  const body = `v1.${Buffer.from(JSON.stringify(payload) ?? 'null').toString('base64url')}`
  return `${body}.${createHmac('sha256', key).update(body).digest('base64url')}`
}

/** verifyContext must return, never throw; an error is a registered 4xx. */
function verify(
  keys: readonly Buffer[],
  token: string,
  now = NOW,
  allow: readonly string[] = ALLOW_ALL,
): TxContext | TxmeshError {
  let out: TxContext | TxmeshError | undefined
  expect(
    () => (out = verifyContext(keys, token, now, allow)),
    `verifyContext threw on ${JSON.stringify(token.slice(0, 200))}`,
  ).not.toThrow()
  const r = out as TxContext | TxmeshError
  if (r instanceof TxmeshError) expectClientError(r, `verifyContext(${JSON.stringify(token.slice(0, 120))})`)
  return r
}

/** Fields of an accepted context obey the payload rules (DESIGN.md "Transaction context"). */
function expectWellFormed(c: TxContext, now: number): void {
  expect(c.id).toMatch(/^[A-Za-z0-9_-]{1,64}$/)
  expect(TX_MODES).toContain(c.mode)
  expect(c.coordinator).toMatch(/^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]{1,253}):\d{1,5}$/)
  expect(c.deadline).toBeGreaterThan(now)
  if (c.branch !== undefined) expect(c.mode).not.toBe('2pc')
  if (c.op !== undefined) expect(c.branch).toBeDefined()
}

const RUNS = fuzzRuns(1_500)

describe('fuzz: txmesh-context parser', () => {
  it(
    'accepts every genuine token, with either key of a rotation, and returns its fields',
    () => {
      const other = Buffer.from('other-mesh-key-0123456789abcdef')
      fc.assert(
        fc.property(validContext, fc.boolean(), (ctx, rotated) => {
          const token = signContext(KEY, ctx)
          expect(token.length).toBeLessThanOrEqual(LIMITS.contextBytes)
          const got = verify(rotated ? [other, KEY] : [KEY], token)
          expect(got).toEqual({ ...ctx, parent: ctx.parent, branch: ctx.branch, op: ctx.op })
          // The same token as the W3C baggage entry, among other members and properties.
          const baggage = `other=1, ${BAGGAGE_ENTRY}=${encodeURIComponent(token)};prop=x, last=2`
          expect(contextFromBaggage(baggage)).toBe(token)
        }),
        fuzzParams(RUNS),
      )
    },
    fuzzTimeout(RUNS, 2),
  )

  it(
    'refuses a genuine token with a wrong key (401), after its deadline (410) or from a coordinator off the allow-list (403)',
    () => {
      fc.assert(
        fc.property(
          validContext,
          fc.uint8Array({ minLength: 16, maxLength: 64 }),
          fc.nat({ max: LIMITS.txTimeoutCapMs }),
          (ctx, wrong, late) => {
            const token = signContext(KEY, ctx)
            const wrongKey = Buffer.from(wrong)
            if (!wrongKey.equals(KEY))
              expect((verify([wrongKey], token) as TxmeshError).code).toBe('TXM_CONTEXT_FORGED')
            expect((verify([KEY], token, ctx.deadline + late) as TxmeshError).code).toBe('TXM_CONTEXT_EXPIRED')
            expect((verify([KEY], token, NOW, ['127.0.0.1:1']) as TxmeshError).code).toBe(
              ctx.coordinator === '127.0.0.1:1' ? undefined : 'TXM_COORDINATOR_NOT_ALLOWED',
            )
            expect((verify([], token) as TxmeshError).code).toBe('TXM_CONTEXT_FORGED')
          },
        ),
        fuzzParams(RUNS),
      )
    },
    fuzzTimeout(RUNS, 2),
  )

  it(
    'never throws on a mutated token, and accepts none but the token as signed',
    () => {
      // Base64url garbage, separators and oversize pieces spliced into real tokens.
      const dictionary = [
        'v1',
        'v2',
        '.',
        '..',
        '=',
        '==',
        '+',
        '/',
        '_',
        '-',
        'A'.repeat(43),
        'eyJ9',
        'e30',
        'bnVsbA',
        'x'.repeat(1100),
      ]
      const mutants = fc
        .array(validContext, { minLength: 1, maxLength: 3 })
        .map((contexts) => contexts.map((c) => signContext(KEY, c)))
        .chain((tokens) => mutated(tokens, dictionary, 4).map((mutant) => ({ tokens, mutant })))
      fc.assert(
        fc.property(mutants, ({ tokens, mutant }) => {
          const got = verify([KEY], mutant)
          if (got instanceof TxmeshError) return
          // Accepted: only a token exactly as signed (a mutation may undo itself, e.g. a
          // duplication that is then truncated away).
          const i = tokens.indexOf(mutant)
          expect(i, `accepted a token that was changed: ${mutant}`).toBeGreaterThanOrEqual(0)
        }),
        fuzzParams(RUNS * 4),
      )
    },
    fuzzTimeout(RUNS * 4, 2),
  )

  it(
    'never throws on arbitrary strings or baggage headers, small or huge',
    () => {
      const text = fc.oneof(
        fc.string({ unit: 'binary', maxLength: 300 }),
        fc.string({ unit: 'grapheme-ascii', maxLength: 2000 }),
        fc
          .tuple(fc.string({ maxLength: 8 }), fc.integer({ min: 1, max: 200_000 }))
          .map(([s, n]) => s.repeat(Math.ceil(n / Math.max(1, s.length)))),
        fc.array(fc.base64String({ maxLength: 400 }), { minLength: 1, maxLength: 4 }).map((p) => p.join('.')),
        fc
          .tuple(fc.base64String({ maxLength: 800 }), fc.base64String({ maxLength: 60 }))
          .map(([p, m]) => `v1.${p}.${m}`),
      )
      fc.assert(
        fc.property(text, fc.string({ unit: 'binary', maxLength: 200 }), (token, baggage) => {
          const got = verify([KEY], token)
          expect(got).toBeInstanceOf(TxmeshError)
          if (token.length > LIMITS.contextBytes) expect((got as TxmeshError).code).toBe('TXM_CONTEXT_TOO_LARGE')
          for (const b of [baggage, `${BAGGAGE_ENTRY}=${baggage}`, `${BAGGAGE_ENTRY}=${token}`]) {
            let entry: string | undefined
            expect(() => (entry = contextFromBaggage(b))).not.toThrow()
            if (entry !== undefined) expect(verify([KEY], entry)).toBeInstanceOf(TxmeshError)
          }
        }),
        fuzzParams(RUNS),
      )
    },
    fuzzTimeout(RUNS, 10),
  )

  it(
    'checks every field of a signed payload: arbitrary JSON under a valid mac is refused or well formed',
    () => {
      const field = fc.oneof(
        fc.jsonValue({ maxDepth: 2 }),
        id,
        address,
        fc.constantFrom<unknown>(...TX_MODES, 'xa', '', 'action', 'cancel', NOW + 1000, NOW - 1, 1e308, -0, null),
      )
      const payload = fc.oneof(
        {
          weight: 4,
          arbitrary: fc.record(
            { i: field, m: field, c: field, d: field, p: field, b: field, o: field },
            { requiredKeys: [] },
          ),
        },
        { weight: 1, arbitrary: fc.jsonValue({ maxDepth: 3 }) },
      )
      fc.assert(
        fc.property(payload, (p) => {
          const got = verify([KEY], seal(KEY, p))
          if (!(got instanceof TxmeshError)) expectWellFormed(got, NOW)
        }),
        fuzzParams(RUNS * 2),
      )
    },
    fuzzTimeout(RUNS * 2, 2),
  )
})

describe('fuzz: txmesh-enlisted parser', () => {
  const ref = fc.record({ service: fc.domain(), control: address, branch: id })
  const genuine = fc
    .record({ tx: id, refs: fc.array(ref, { maxLength: 8 }) })
    .map((g) => ({ ...g, token: signEnlisted(KEY, g.tx, g.refs) }))
    .chain((g) => mutated([g.token], ['.', '=', 'v2', '[]', 'null']).map((mutant) => ({ ...g, mutant })))
  it(
    'round-trips genuine lists and never throws on mutated or sealed garbage',
    () => {
      fc.assert(
        fc.property(genuine, fc.jsonValue({ maxDepth: 3 }), ({ tx, refs, token, mutant }, garbage) => {
          if (token.length <= LIMITS.enlistedBytes) expect(verifyEnlisted([KEY], token, tx)).toEqual(refs)
          const inputs = [
            mutant,
            seal(KEY, garbage),
            seal(KEY, { i: tx, p: garbage }),
            seal(KEY, { i: tx, p: [garbage] }),
          ]
          for (const t of inputs) {
            let out: unknown
            expect(
              () => (out = verifyEnlisted([KEY], t, tx)),
              `verifyEnlisted threw on ${t.slice(0, 200)}`,
            ).not.toThrow()
            if (out instanceof TxmeshError) expectClientError(out, 'verifyEnlisted')
            else expect(Array.isArray(out)).toBe(true)
          }
        }),
        fuzzParams(RUNS),
      )
    },
    fuzzTimeout(RUNS, 4),
  )
})
