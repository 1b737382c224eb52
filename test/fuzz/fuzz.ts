// Shared parts of the fuzz targets (test/fuzz/*.test.ts): run counts, the error-registry oracle,
// string mutators and memory measurement.
//
// Every property runs `fuzzRuns(default)` inputs: the default keeps `npx vitest run test/fuzz`
// short; FUZZ_RUNS=N runs N inputs per property instead (`npm run fuzz` runs the full count).
// fast-check prints the seed and path of a failure; FUZZ_SEED=s FUZZ_PATH=p replays it.
import { request as httpRequest, type Agent } from 'node:http'
import { connect } from 'node:net'
import { setFlagsFromString } from 'node:v8'
import { runInNewContext } from 'node:vm'
import fc from 'fast-check'
import { expect } from 'vitest'
import { allErrorCodes, TxmeshError } from '../../src/errors.js'
import { ERROR_HEADER } from '../../src/errors.js'

/** Inputs per property: FUZZ_RUNS when set, else the target's default. */
export function fuzzRuns(defaultRuns: number): number {
  const n = Number(process.env.FUZZ_RUNS ?? '')
  return Number.isInteger(n) && n > 0 ? n : defaultRuns
}

/** fast-check parameters: the run count, and the seed/path of a failure to replay. */
export function fuzzParams<T>(numRuns: number): fc.Parameters<T> {
  const seed = Number(process.env.FUZZ_SEED ?? '')
  return {
    numRuns,
    ...(Number.isInteger(seed) && process.env.FUZZ_SEED !== undefined ? { seed } : {}),
    ...(process.env.FUZZ_PATH !== undefined ? { path: process.env.FUZZ_PATH } : {}),
    // A failing input is reported as found: shrinking a socket property can take minutes.
    endOnFailure: process.env.FUZZ_SHRINK !== '1',
  }
}

/** The vitest timeout of a property: generous per input, never below a minute. */
export function fuzzTimeout(runs: number, msPerRun: number): number {
  return Math.max(60_000, Math.ceil(runs * msPerRun))
}

/** Every registered code and its status (src/errors.ts: the one registry). */
export const REGISTRY: ReadonlyMap<string, number> = new Map(allErrorCodes().map((e) => [e.code, e.status]))

/**
 * 503 answers docs/ documents as "retry later" rather than a bug: the sidecar is starting,
 * full, or its log is overloaded or failed. Any other 5xx on a fuzzed input is a bug.
 */
export const DOCUMENTED_503 = new Set([
  'TXM_NOT_READY',
  'TXM_TX_LIMIT',
  'TXM_CONTROL_OVERLOADED',
  'TXM_LOG_OVERLOADED',
  'TXM_LOG_FAILED',
  'TXM_MESH_KEY_MISSING',
])

/** A rejection of bad input: a registered TxmeshError whose status is 4xx. */
export function expectClientError(e: unknown, what: string): asserts e is TxmeshError {
  expect(e, `${what}: not a TxmeshError: ${String(e)}`).toBeInstanceOf(TxmeshError)
  const err = e as TxmeshError
  expect(REGISTRY.get(err.code), `${what}: ${err.code} is not in the registry`).toBe(err.status)
  expect(err.status >= 400 && err.status < 500, `${what}: ${err.code} has status ${err.status}, not 4xx`).toBe(true)
}

/** An HTTP answer from a listener: status, x-txmesh-error and the body as text. */
export interface Answer {
  readonly status: number
  readonly code: string | undefined
  readonly contentType: string | undefined
  readonly body: string
}

/**
 * The answer a fuzzed request may get: 2xx, or a 4xx with a registered code of that status and
 * the JSON error body, or a documented 503 (with its code). Nothing else: no 3xx, no other 5xx.
 */
export function expectCodedAnswer(a: Answer, what: string, bodyless = false): void {
  const where = `${what} -> ${a.status} ${a.code ?? ''} ${a.body.slice(0, 200)}`
  if (a.status >= 200 && a.status < 300) return
  if (bodyless) {
    // HEAD: the status and code, without the body.
    expect(
      (a.status >= 400 && a.status < 500) || (a.status === 503 && DOCUMENTED_503.has(a.code ?? '')),
      `status: ${where}`,
    ).toBe(true)
    expect(REGISTRY.get(a.code ?? ''), `code not in the registry / status mismatch: ${where}`).toBe(a.status)
    return
  }
  const documented503 = a.status === 503 && a.code !== undefined && DOCUMENTED_503.has(a.code)
  expect((a.status >= 400 && a.status < 500) || documented503, `status: ${where}`).toBe(true)
  expect(a.code, `no x-txmesh-error: ${where}`).toBeDefined()
  expect(REGISTRY.get(a.code as string), `code not in the registry / status mismatch: ${where}`).toBe(a.status)
  expect(a.contentType, `error body not JSON: ${where}`).toBe('application/json')
  let parsed: unknown
  expect(() => (parsed = JSON.parse(a.body)), `error body not JSON: ${where}`).not.toThrow()
  const err = (parsed as { error?: { code?: unknown; message?: unknown } }).error
  expect(err?.code, `body code differs from header: ${where}`).toBe(a.code)
  expect(typeof err?.message, `body without a message: ${where}`).toBe('string')
}

// ---- mutations of a valid input ----

/** Characters that mean something to the parsers under test (YAML, JSON, tokens, HTTP). */
const SPECIAL = [
  ':',
  '-',
  '.',
  ',',
  '{',
  '}',
  '[',
  ']',
  '&',
  '*',
  '!',
  '|',
  '>',
  '#',
  '%',
  '@',
  '`',
  '"',
  "'",
  '\\',
  '\n',
  '\r',
  '\t',
  ' ',
  '\0',
  '=',
  '?',
  '~',
  '<<',
  '\u00e9',
  '\ud83d\ude00',
  '\ufeff',
  '\u2028',
]

/** One edit of a string; positions are taken modulo the string's length. */
type Edit =
  | { kind: 'flip'; at: number; bit: number }
  | { kind: 'delete'; at: number; len: number }
  | { kind: 'insert'; at: number; text: string }
  | { kind: 'special'; at: number; which: number }
  | { kind: 'duplicate'; at: number; len: number }
  | { kind: 'truncate'; at: number }
  | { kind: 'replace'; at: number; len: number; text: string }

const edit: fc.Arbitrary<Edit> = fc.oneof(
  fc.record({ kind: fc.constant('flip' as const), at: fc.nat(), bit: fc.integer({ min: 0, max: 7 }) }),
  fc.record({ kind: fc.constant('delete' as const), at: fc.nat(), len: fc.integer({ min: 1, max: 16 }) }),
  fc.record({ kind: fc.constant('insert' as const), at: fc.nat(), text: fc.string({ unit: 'binary', maxLength: 12 }) }),
  fc.record({ kind: fc.constant('special' as const), at: fc.nat(), which: fc.nat({ max: SPECIAL.length - 1 }) }),
  fc.record({ kind: fc.constant('duplicate' as const), at: fc.nat(), len: fc.integer({ min: 1, max: 64 }) }),
  fc.record({ kind: fc.constant('truncate' as const), at: fc.nat() }),
  fc.record({
    kind: fc.constant('replace' as const),
    at: fc.nat(),
    len: fc.integer({ min: 0, max: 8 }),
    text: fc.string({ unit: 'grapheme-ascii', maxLength: 8 }),
  }),
)

function applyEdit(s: string, e: Edit, dictionary: readonly string[]): string {
  const at = s.length === 0 ? 0 : e.at % (s.length + 1)
  switch (e.kind) {
    case 'flip': {
      if (s.length === 0) return s
      const i = e.at % s.length
      return s.slice(0, i) + String.fromCharCode(s.charCodeAt(i) ^ (1 << e.bit)) + s.slice(i + 1)
    }
    case 'delete':
      return s.slice(0, at) + s.slice(at + e.len)
    case 'insert':
      return s.slice(0, at) + e.text + s.slice(at)
    case 'special': {
      const all = [...SPECIAL, ...dictionary]
      return s.slice(0, at) + (all[e.which % all.length] as string) + s.slice(at)
    }
    case 'duplicate':
      return s.slice(0, at) + s.slice(at, at + e.len) + s.slice(at)
    case 'truncate':
      return s.slice(0, at)
    case 'replace': {
      // With a dictionary, half the replacements are a dictionary word.
      const word =
        dictionary.length > 0 && e.len % 2 === 0 ? (dictionary[e.text.length % dictionary.length] as string) : e.text
      return s.slice(0, at) + word + s.slice(at + e.len)
    }
  }
}

/**
 * Mutated versions of `bases` (bit flips, deletions, insertions of raw or meaningful characters,
 * duplications, truncation, dictionary words): 1 to `maxEdits` edits of one base.
 */
export function mutated(
  bases: readonly string[],
  dictionary: readonly string[] = [],
  maxEdits = 6,
): fc.Arbitrary<string> {
  return fc
    .tuple(fc.nat({ max: bases.length - 1 }), fc.array(edit, { minLength: 1, maxLength: maxEdits }))
    .map(([i, edits]) => edits.reduce((s, e) => applyEdit(s, e, dictionary), bases[i] as string))
}

// ---- memory ----

let gcFn: (() => void) | undefined
/** A full GC (exposed through V8 flags at run time: vitest does not start workers with --expose-gc). */
export function collectGarbage(): void {
  if (gcFn === undefined) {
    setFlagsFromString('--expose-gc')
    gcFn = runInNewContext('gc') as () => void
  }
  gcFn()
  gcFn()
}

export interface Memory {
  readonly heapUsed: number
  readonly rss: number
}

/** Heap in use after a full GC, and RSS, of this process. */
export function memoryNow(): Memory {
  collectGarbage()
  const m = process.memoryUsage()
  return { heapUsed: m.heapUsed, rss: m.rss }
}

export const MB = 1024 * 1024

// ---- requests over real sockets ----

/** Longest a fuzzed request may take before it counts as a hang. */
export const REQUEST_TIMEOUT_MS = 15_000

export interface FuzzRequest {
  readonly method: string
  readonly path: string
  readonly headers: Readonly<Record<string, string>>
  readonly body: string
}

/**
 * One request through node:http on a keep-alive agent; rejects (a hang) when no complete answer
 * arrives within REQUEST_TIMEOUT_MS.
 */
export function send(port: number, r: FuzzRequest, agent: Agent): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      req.destroy()
      reject(new Error(`hang: no answer in ${REQUEST_TIMEOUT_MS} ms to ${r.method} ${r.path}`))
    }, REQUEST_TIMEOUT_MS)
    const req = httpRequest(
      {
        host: '127.0.0.1',
        port,
        method: r.method,
        path: r.path,
        headers: { ...r.headers, 'content-length': String(Buffer.byteLength(r.body)) },
        agent,
      },
      (res) => {
        const chunks: Buffer[] = []
        res.on('data', (c: Buffer) => chunks.push(c))
        res.on('end', () => {
          clearTimeout(timer)
          const code = res.headers[ERROR_HEADER]
          resolve({
            status: res.statusCode ?? 0,
            code: typeof code === 'string' ? code : undefined,
            contentType: res.headers['content-type'],
            body: Buffer.concat(chunks).toString(),
          })
        })
        res.on('error', (err) => {
          clearTimeout(timer)
          reject(err)
        })
      },
    )
    req.on('error', (err) => {
      clearTimeout(timer)
      reject(err)
    })
    req.end(r.body)
  })
}

/**
 * Every byte a listener sends back to `bytes` written on a fresh connection. `halfClose`: the
 * client then shuts its side (FIN) and the listener must close within REQUEST_TIMEOUT_MS, or it
 * counts as a hang. Otherwise the client keeps its side open, as HTTP clients do (Node's server
 * drops a request whose client half-closed before it was answered), and hangs up once answers
 * stopped coming for a moment (or nothing came: a head still incomplete waits for more bytes).
 */
export function sendRaw(port: number, bytes: Buffer, halfClose = true): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = []
    const socket = connect(port, '127.0.0.1', () => (halfClose ? socket.end(bytes) : socket.write(bytes)))
    const timer = setTimeout(() => {
      socket.destroy()
      reject(
        new Error(
          `hang: connection not closed in ${REQUEST_TIMEOUT_MS} ms after ${JSON.stringify(bytes.toString('latin1').slice(0, 200))}`,
        ),
      )
    }, REQUEST_TIMEOUT_MS)
    let quiet: NodeJS.Timeout | undefined
    const settle = (ms: number): void => {
      if (halfClose) return
      clearTimeout(quiet)
      quiet = setTimeout(() => socket.destroy(), ms)
    }
    settle(250)
    socket.on('data', (c: Buffer) => {
      chunks.push(c)
      settle(50)
    })
    // A reset after the answer (the server closes while bytes are still unread) is fine.
    socket.on('error', () => undefined)
    socket.on('close', () => {
      clearTimeout(timer)
      clearTimeout(quiet)
      resolve(Buffer.concat(chunks))
    })
  })
}

/** The responses in a raw byte stream (Content-Length framing, as every txmesh answer has). */
export function parseResponses(raw: Buffer): { answers: Answer[]; rest: string } {
  const answers: Answer[] = []
  let text = raw.toString('latin1')
  for (;;) {
    const end = text.indexOf('\r\n\r\n')
    if (end < 0) break
    const head = text.slice(0, end).split('\r\n')
    const m = /^HTTP\/1\.[01] (\d{3}) /.exec(head[0] ?? '')
    if (m === null) break
    const headers = new Map(
      head.slice(1).map((l) => [l.slice(0, l.indexOf(':')).toLowerCase(), l.slice(l.indexOf(':') + 1).trim()]),
    )
    // A HEAD answer declares its length but has no body: the next response follows at once.
    const length = text.startsWith('HTTP/1.', end + 4) ? 0 : Number(headers.get('content-length') ?? 0)
    const body = text.slice(end + 4, end + 4 + length)
    // 100 Continue is an interim answer: the final one follows.
    if (!m[1]?.startsWith('1'))
      answers.push({
        status: Number(m[1]),
        code: headers.get(ERROR_HEADER),
        contentType: headers.get('content-type'),
        body,
      })
    text = text.slice(end + 4 + length)
  }
  return { answers, rest: text }
}

/**
 * The raw-stream property every socket target shares: HTTP-shaped bytes (half-closed or not) sent
 * to `port` get only whole responses back, each coded (or a bodyless 200-free close), each tallied.
 */
export function rawStreamProperty(
  port: number,
  paths: readonly string[],
  tally: (a: Answer) => void,
  numRuns: number,
): Promise<void> {
  return fc.assert(
    fc.asyncProperty(rawRequests(paths), fc.boolean(), async (bytes, halfClose) => {
      const out = await sendRaw(port, bytes, halfClose)
      const { answers, rest } = parseResponses(out)
      const what = `raw${halfClose ? ' (half-closed)' : ''} ${JSON.stringify(bytes.toString('latin1').slice(0, 300))} -> ${JSON.stringify(out.toString('latin1').slice(0, 300))}`
      // Everything the listener wrote is whole responses.
      expect(rest, what).toBe('')
      for (const a of answers) {
        tally(a)
        expectCodedAnswer(a, what, a.body === '' && a.status !== 200)
      }
    }),
    fuzzParams(numRuns),
  )
}

/** Arbitrary bytes shaped like HTTP/1.1 requests: broken request lines, framing, headers, bodies. */
export function rawRequests(paths: readonly string[]): fc.Arbitrary<Buffer> {
  // Mostly well-formed parts, so that requests get past the parser as often as they fail in it.
  const token = fc.oneof(
    { weight: 4, arbitrary: fc.constantFrom('GET', 'POST', 'PUT', 'HEAD', 'DELETE', 'OPTIONS', 'PATCH') },
    { weight: 1, arbitrary: fc.constantFrom('CONNECT', 'PRI', 'get', 'G ET', '', 'M-SEARCH', 'PROPFIND') },
    { weight: 1, arbitrary: fc.string({ unit: 'binary-ascii', maxLength: 8 }) },
  )
  const target = fc.oneof(
    { weight: 4, arbitrary: fc.constantFrom(...paths) },
    {
      weight: 1,
      arbitrary: fc.constantFrom(
        '*',
        '/',
        'http://x/healthz',
        '//',
        '/%00',
        '/a b',
        '/\u00ff',
        '',
        '/healthz?x',
        '/v1/../healthz',
      ),
    },
    { weight: 1, arbitrary: fc.string({ unit: 'binary-ascii', maxLength: 40 }) },
  )
  const version = fc.oneof(
    { weight: 6, arbitrary: fc.constant('HTTP/1.1') },
    { weight: 1, arbitrary: fc.constantFrom('HTTP/1.0', 'HTTP/2.0', 'HTTP/1.1 x', 'http/1.1', 'HTTP/9', '') },
  )
  const header = fc.oneof(
    // Host: 127.0.0.1 too: the admin listener refuses other names (TXM_ADMIN_HOST_REFUSED) before it looks further.
    {
      weight: 6,
      arbitrary: fc.constantFrom('Host: x', 'Host: 127.0.0.1', 'Content-Type: application/json', 'Accept: */*'),
    },
    {
      weight: 3,
      arbitrary: fc.constantFrom(
        'Host: x',
        'Content-Length: 5',
        'Content-Length: 0',
        'Content-Length: -1',
        'Content-Length: 99999999999999999999',
        'Content-Length: 1, 2',
        'Transfer-Encoding: chunked',
        'Transfer-Encoding: gzip, chunked',
        'Transfer-Encoding: identity',
        'Connection: close',
        'Connection: upgrade',
        'Upgrade: websocket',
        'Expect: 100-continue',
        'Expect: nonsense',
        ' folded: line',
        'Bad Header: x',
        ': empty',
        'x-a:\u0000',
        'txmesh-auth: 1.2.3',
        'Authorization: Bearer x',
        `x-big: ${'y'.repeat(40 * 1024)}`,
      ),
    },
    {
      weight: 1,
      arbitrary: fc
        .tuple(fc.string({ unit: 'binary-ascii', maxLength: 12 }), fc.string({ unit: 'binary-ascii', maxLength: 24 }))
        .map(([n, v]) => `${n}: ${v}`),
    },
  )
  // Mostly none: bytes after a head without framing headers are the next request's (invalid) method.
  const body = fc.oneof(
    { weight: 6, arbitrary: fc.constant('') },
    {
      weight: 2,
      arbitrary: fc.constantFrom('hello', '0\r\n\r\n', '5\r\nhello\r\n0\r\n\r\n', 'zz\r\n', '{"branch":"b"}'),
    },
    { weight: 1, arbitrary: fc.string({ unit: 'binary-ascii', maxLength: 64 }) },
  )
  const eol = fc.oneof(
    { weight: 8, arbitrary: fc.constant('\r\n') },
    { weight: 1, arbitrary: fc.constantFrom('\n', '\r', '\r\r\n') },
  )
  const one = fc
    .tuple(token, target, version, fc.array(header, { maxLength: 6 }), eol, body)
    .map(([m, t, v, hs, nl, b]) => `${m} ${t} ${v}${nl}${hs.map((h) => h + nl).join('')}${nl}${b}`)
  return fc
    .oneof(
      { weight: 4, arbitrary: one },
      { weight: 1, arbitrary: fc.array(one, { minLength: 2, maxLength: 3 }).map((r) => r.join('')) },
      { weight: 1, arbitrary: fc.string({ unit: 'binary', maxLength: 200 }) },
    )
    .map((s) => Buffer.from(s, 'latin1'))
}
