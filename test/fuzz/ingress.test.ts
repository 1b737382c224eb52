// Fuzzing the ingress listener over real sockets, where peers' requests and their
// `txmesh-context` / baggage headers arrive: one sidecar in process in front of an echo app.
// Forged, mutated, expired and junk contexts get the context parser's coded 4xx; raw byte streams
// shaped like HTTP get the app's answer or a coded 4xx; never a 5xx (the app is healthy), a bare
// parser error or a hang. The app is never called for a refused context.
import { Agent } from 'node:http'
import fc from 'fast-check'
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest'
import type { Sidecar } from '../../src/sidecar.js'
import { BAGGAGE_ENTRY, CONTEXT_HEADER, signContext, type TxContext } from '../../src/tx/protocol.js'
import { inProcessSidecar, rawRequest, sidecarYaml, startEcho } from '../helpers/servers.js'
import {
  type Answer,
  expectCodedAnswer,
  fuzzParams,
  fuzzRuns,
  fuzzTimeout,
  MB,
  memoryNow,
  type Memory,
  mutated,
  send,
  rawStreamProperty,
} from './fuzz.js'

const KEY = 'fuzz-ingress-mesh-key-0123456789'
const CONTEXT_CODES = new Set([
  'TXM_CONTEXT_INVALID',
  'TXM_CONTEXT_FORGED',
  'TXM_CONTEXT_EXPIRED',
  'TXM_CONTEXT_TOO_LARGE',
  'TXM_COORDINATOR_NOT_ALLOWED',
  'TXM_HEADERS_TOO_LARGE',
])

let echo: Awaited<ReturnType<typeof startEcho>>
let sc: Sidecar
let agent: Agent
let before: Memory
const statuses = new Map<string, number>()

function tally(a: Answer): void {
  const k = `${a.status}${a.code === undefined ? '' : ` ${a.code}`}`
  statuses.set(k, (statuses.get(k) ?? 0) + 1)
}

beforeAll(async () => {
  vi.stubEnv('TXMESH_MESH_KEY', KEY)
  echo = await startEcho()
  sc = await inProcessSidecar(sidecarYaml('fuzzed', echo.port))
  agent = new Agent({ keepAlive: true, maxSockets: 4 })
  for (let i = 0; i < 50; i++)
    await send(sc.ports.ingress, { method: 'GET', path: '/warm', headers: { host: 'app' }, body: '' }, agent)
  before = memoryNow()
})

afterAll(async () => {
  agent?.destroy()
  await sc?.drain(1_000)
  await echo?.close()
  vi.unstubAllEnvs()
})

const id = fc.stringMatching(/^[A-Za-z0-9_-]{1,64}$/)
/** Genuine contexts, but every one is refused: past its deadline, or signed with another key. */
const refusedToken = fc
  .record({
    id,
    mode: fc.constantFrom('2pc' as const, 'saga' as const, 'tcc' as const),
    port: fc.integer({ min: 1, max: 65535 }),
    late: fc.nat({ max: 3_600_000 }),
    wrongKey: fc.boolean(),
  })
  .map((c) => {
    const ctx: TxContext = {
      id: c.id,
      mode: c.mode,
      coordinator: `127.0.0.1:${c.port}`,
      deadline: c.wrongKey ? Date.now() + 60_000 : Date.now() - 1 - c.late,
      parent: undefined,
    }
    return signContext(Buffer.from(c.wrongKey ? 'another-mesh-key-0123456789abcdef' : KEY), ctx)
  })
/**
 * Changed tokens: a change anywhere in a genuine, live token must make it refused. Spaces or tabs
 * added around it are no change: HTTP strips them from a header value (and W3C baggage around
 * its values), so the sidecar receives the genuine token (seed -757779659 made one).
 */
const changedToken = fc
  .record({ id, mode: fc.constantFrom('2pc' as const, 'saga' as const) })
  .map((c) =>
    signContext(Buffer.from(KEY), {
      id: c.id,
      mode: c.mode,
      coordinator: '127.0.0.1:1',
      deadline: Date.now() + 600_000,
      parent: undefined,
    }),
  )
  .chain((t) =>
    mutated([t], ['.', '=', 'v2', '%', 'A'.repeat(43)], 3).filter((m) => m.replace(/^[\t ]+|[\t ]+$/g, '') !== t),
  )
const junk = fc.oneof(
  fc.string({ unit: 'binary-ascii', maxLength: 200 }),
  fc.constantFrom('v1', 'v1..', 'v1.e30.', 'x'.repeat(1025), 'x'.repeat(30_000)),
)
/** What node:http lets a client send as a header value. */
const headerSafe = (s: string): string => s.replace(/[^\t\x20-\x7e]/g, '?')

describe('fuzz: ingress with transaction contexts', () => {
  const RUNS = fuzzRuns(600)

  it(
    'refuses every forged, changed, expired or junk context with its coded 4xx, without calling the app',
    async () => {
      await fc.assert(
        fc.asyncProperty(
          fc.oneof(refusedToken, changedToken, junk).map(headerSafe),
          fc.constantFrom('context', 'baggage'),
          fc.constantFrom('GET', 'POST', 'PUT', 'DELETE'),
          fc.string({ maxLength: 40 }),
          async (token, where, method, body) => {
            const headers =
              where === 'context'
                ? { host: 'app', [CONTEXT_HEADER]: token }
                : { host: 'app', baggage: `a=1,${BAGGAGE_ENTRY}=${token};p=1` }
            const calls = echo.seen.length
            const a = await send(sc.ports.ingress, { method, path: '/pay', headers, body }, agent)
            tally(a)
            const what = `${method} /pay ${where}=${JSON.stringify(token.slice(0, 200))}`
            expectCodedAnswer(a, what)
            expect(a.status >= 400, `accepted: ${what}`).toBe(true)
            expect(CONTEXT_CODES.has(a.code ?? ''), `${a.code}: ${what}`).toBe(true)
            expect(echo.seen.length, `the app was called: ${what}`).toBe(calls)
          },
        ),
        fuzzParams(RUNS * 2),
      )
    },
    fuzzTimeout(RUNS * 2, 40),
  )

  it(
    'answers raw HTTP-shaped byte streams with the app or a coded 4xx, never a 5xx',
    async () => {
      await rawStreamProperty(sc.ports.ingress, ['/pay', '/', '/a?b=c', 'http://app/x'], tally, Math.ceil(RUNS / 2))
    },
    fuzzTimeout(RUNS, 40),
  )

  it('stays healthy and bounded in memory after the fuzzing', async () => {
    expect((await rawRequest(sc.ports.admin, { path: '/readyz' })).status).toBe(200)
    expect((await rawRequest(sc.ports.ingress, { path: '/after', headers: { host: 'app' } })).status).toBe(200)
    const after = memoryNow()
    const heap = (after.heapUsed - before.heapUsed) / MB
    const rss = (after.rss - before.rss) / MB
    console.info(
      `ingress fuzz: ${JSON.stringify(Object.fromEntries([...statuses].sort()))}; heap ${heap.toFixed(1)} MB, rss ${rss.toFixed(1)} MB over the run`,
    )
    expect(heap).toBeLessThan(64)
    // The leak check is the heap after a full GC; in process, RSS also holds the fuzzer's own
    // allocations (see control-api.test.ts): only a runaway is caught here.
    expect(rss).toBeLessThan(256)
  })
})
