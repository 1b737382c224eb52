// Wire formats of txmesh transactions (DESIGN.md "Transaction context", "Enlistment").
//
// Context header `txmesh-context: v1.<payload>.<mac>`: payload is base64url JSON
// {i: tx id, m: mode, c: coordinator control address, d: deadline (epoch ms), p?: parent
// branch, b?: step branch id, o?: step op (saga/tcc)}; mac is base64url HMAC-SHA256 over "v1." + payload with the mesh key. At most
// LIMITS.contextBytes. The same token may arrive as the W3C baggage entry `txmesh`.
//
// Enlistment header `txmesh-enlisted: v1.<payload>.<mac>` on responses from a participant's
// ingress: payload {i: tx id, p: [{s: service, c: control address, b: branch}]} listing the
// participant itself and the participants it enlisted in nested calls.
import { createHmac, randomFillSync, timingSafeEqual } from 'node:crypto'
import { BlockList, isIP } from 'node:net'
import {
  ContextExpiredError,
  ContextForgedError,
  ContextInvalidError,
  ContextTooLargeError,
  CoordinatorNotAllowedError,
  TxmeshError,
} from '../errors.js'
import { LIMITS } from '../limits.js'
import type { BranchId, ParticipantRef, TxId } from './core.js'
import { authorityHost, splitAuthority } from '../address.js'

export const CONTEXT_HEADER = 'txmesh-context'
export const ENLISTED_HEADER = 'txmesh-enlisted'
export const TX_ID_HEADER = 'txmesh-tx-id'
export const BRANCH_ID_HEADER = 'txmesh-branch-id'
export const BAGGAGE_ENTRY = 'txmesh'
/** Set by the ingress on saga/tcc requests to its app: action | compensate | try | confirm | cancel. */
export const OP_HEADER = 'txmesh-op'
/** On a saga step's response: the compensation the service names for itself, `METHOD /path`. */
export const COMPENSATE_HEADER = 'txmesh-compensate'
/** On responses of implicit transactions: committed | aborted. */
export const OUTCOME_HEADER = 'txmesh-outcome'
/**
 * Where a coordinator sends the cancel of a TCC try it recorded before its answer (it knows the
 * target's ingress, not its sidecar's control address or hooks): the target's ingress takes it,
 * with a signed tcc context whose op is cancel, to its app's own `hooks.cancel`.
 */
export const STEP_CANCEL_PATH = '/.well-known/txmesh/cancel'

export type TxMode = '2pc' | 'saga' | 'tcc'
export const TX_MODES: readonly TxMode[] = ['2pc', 'saga', 'tcc']
/** What a saga/tcc request is to the app: the step itself, or the op that finishes it. */
export type StepOpKind = 'action' | 'compensate' | 'try' | 'confirm' | 'cancel'
const STEP_OPS: readonly StepOpKind[] = ['action', 'compensate', 'try', 'confirm', 'cancel']

export interface TxContext {
  readonly id: TxId
  readonly mode: TxMode
  /** Coordinator's control address, host:port. */
  readonly coordinator: string
  readonly deadline: number
  readonly parent: BranchId | undefined
  /** saga/tcc: the step this request belongs to (set by the caller's egress, or the coordinator). */
  readonly branch?: BranchId | undefined
  /** saga/tcc: what the request is to the step (absent: the step itself). */
  readonly op?: StepOpKind | undefined
  /**
   * 2PC on a shared store (store.group): a control address any live instance of the coordinator's
   * service answers at (a Service in front of their control ports). A branch whose coordinator
   * cannot be reached asks there (src/store/takeover.ts answers from the store).
   */
  readonly group?: string | undefined
}

const VERSION = 'v1'
const ID_RE = /^[A-Za-z0-9_-]{1,64}$/
const ADDRESS_RE = /^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]{1,253}):\d{1,5}$/

/**
 * A transaction id names its coordinator (DESIGN.md "Enlistment", "Coordinator identity"):
 * `<random>_<incarnation>_<base64url of the coordinator's control address>`. The incarnation is
 * the coordinator log's own id (src/wal/incarnation.ts), made when the log was created: presumed
 * abort ("no record means aborted") is only sound from the log that would hold the record, so a
 * sidecar answers "aborted" only for ids of its own incarnation. The address lets a sibling
 * instance, or a sidecar that lost its log, ask the coordinator about a prepared row it finds in
 * the database; addresses too long to fit the 64-character id are left out (such rows stay in
 * doubt until an operator resolves them). On a shared store (store.group) the address is the
 * group's: any live instance of the service answers for the id from the store and names the
 * instance holding its log (the owner), and the incarnation names that log (`<service>/<instance>`
 * in the store), so an id outlives the instance that made it.
 */
export function newTxId(
  coordinator: string,
  incarnation: string,
  run = '',
  randomChars: (n: number) => string = randomBase64url,
): TxId {
  // Alphanumeric only: '_' separates the parts, and an id starting with '-' would read as a
  // flag on a command line (txmesh tx show ID). The random part starts with the run tag of the
  // process that made it (isOfRun).
  const random = (run + randomChars(12).replace(/[-_]/g, 'x')).slice(0, 16)
  const encoded = Buffer.from(coordinator).toString('base64url')
  const head = `${random}_${incarnation}`
  return head.length + 1 + encoded.length <= 64 ? `${head}_${encoded}` : head
}

/** A log incarnation: INCARNATION_CHARS alphanumeric characters. */
const INCARNATION_RE = new RegExp(`^[A-Za-z0-9]{${LIMITS.incarnationChars}}$`)

export function isIncarnation(s: string): boolean {
  return INCARNATION_RE.test(s)
}

/** A fresh incarnation id (CSPRNG, alphanumeric). */
export function newIncarnation(chars: number = LIMITS.incarnationChars): string {
  let out = ''
  // Bounded: each turn keeps about 3/4 of 16 characters, so two turns nearly always suffice.
  for (let turn = 0; out.length < chars && turn < 64; turn++) out += randomBase64url(12).replace(/[-_]/g, '')
  if (out.length < chars) throw new Error('the random pool gave no alphanumeric characters')
  return out.slice(0, chars)
}

/**
 * A run tag: made by each start of a coordinator process, the first characters of every id it
 * makes. It tells the coordinator which unknown ids of its own log it made in this run (isOfRun).
 */
export function newRunTag(): string {
  return newIncarnation(LIMITS.runTagChars)
}

export function isOfRun(id: TxId, run: string): boolean {
  return run !== '' && id.startsWith(run)
}

/**
 * The coordinator log incarnation an id names, if any. Ids made before incarnations existed
 * (`<random>_<address>`) name none: their coordinator cannot vouch for them, so they are in doubt.
 */
export function incarnationOfTx(id: TxId): string | undefined {
  const first = id.indexOf('_')
  if (first < 0) return undefined
  const second = id.indexOf('_', first + 1)
  const part = second < 0 ? id.slice(first + 1) : id.slice(first + 1, second)
  return isIncarnation(part) ? part : undefined
}

/** A control address as the protocol writes one (`host:port`, `[v6]:port`). */
export function isAddress(s: unknown): s is string {
  return typeof s === 'string' && ADDRESS_RE.test(s)
}

/** The coordinator control address a transaction id names, if any. */

export function coordinatorOfTx(id: TxId): string | undefined {
  const first = id.indexOf('_')
  if (first < 0) return undefined
  const inc = incarnationOfTx(id)
  // Current ids: after the incarnation; older ones: right after the random part.
  const start = inc === undefined ? first + 1 : id.indexOf('_', first + 1) + 1
  if (inc !== undefined && start === 0) return undefined
  const address = Buffer.from(id.slice(start), 'base64url').toString('utf8')
  return ADDRESS_RE.test(address) ? address : undefined
}

const randomPool = Buffer.alloc(LIMITS.randomPoolBytes)
let randomUsed = randomPool.length

/** `n` fresh CSPRNG bytes in base64url, from the pool (LIMITS.randomPoolBytes); never reused. */
export function randomBase64url(n: number): string {
  if (randomUsed + n > randomPool.length) {
    randomFillSync(randomPool)
    randomUsed = 0
  }
  const s = randomPool.toString('base64url', randomUsed, randomUsed + n)
  randomUsed += n
  return s
}

/**
 * A branch id; a 2PC branch's names the log incarnation of the sidecar that holds it
 * (`<random>_<incarnation>`), so a sidecar reached at the holder's old address (a pod IP reused
 * by another pod) can tell a decision for a branch that is not its own from one for a branch
 * its own lost log held.
 */
export function newBranchId(holder?: string, randomChars: (n: number) => string = randomBase64url): BranchId {
  const random = randomChars(6).replace(/[-_]/g, 'x')
  return holder === undefined ? random : `${random}_${holder}`
}

/** `holder` (the log incarnation a branch or TCC step names) is another sidecar's log than `own`. */
export function heldByAnotherLog(own: string | undefined, holder: string | undefined): boolean {
  return holder !== undefined && own !== undefined && holder !== own
}

/** The log incarnation of the sidecar holding a 2PC branch, if its id names one. */
export function holderOfBranch(branch: BranchId): string | undefined {
  const sep = branch.indexOf('_')
  if (sep < 0) return undefined
  const inc = branch.slice(sep + 1)
  return isIncarnation(inc) ? inc : undefined
}

export function isId(s: unknown): s is string {
  return typeof s === 'string' && ID_RE.test(s)
}

function mac(key: Buffer, data: string): string {
  return createHmac('sha256', key).update(data).digest('base64url')
}

function seal(key: Buffer, payload: unknown): string {
  const body = `${VERSION}.${Buffer.from(JSON.stringify(payload)).toString('base64url')}`
  return `${body}.${mac(key, body)}`
}

/** Checks the token's shape, size and signature and returns its decoded payload. */
function open(keys: readonly Buffer[], token: string, what: string, limit: number): unknown | TxmeshError {
  if (token.length > limit) return new ContextTooLargeError(`${what} is ${token.length} bytes; the limit is ${limit}`)
  const parts = token.split('.')
  if (parts.length !== 3 || parts[0] !== VERSION) return new ContextInvalidError(`${what} is not a ${VERSION} token`)
  const body = `${parts[0]}.${parts[1] as string}`
  const given = Buffer.from(parts[2] as string, 'base64url')
  // Node's base64url decoder skips characters outside the alphabet and ignores padding bits, so
  // `<mac>=` or `<mac>!` would decode to the same bytes: only the canonical spelling is the
  // token that was signed (test/fuzz/context.test.ts).
  const canonical = given.toString('base64url') === parts[2]
  const ok = keys.some((k) => {
    const want = Buffer.from(mac(k, body), 'base64url')
    return want.length === given.length && timingSafeEqual(want, given)
  })
  if (!ok || !canonical) return new ContextForgedError(`${what} signature does not verify with the mesh key`)
  let payload: unknown
  try {
    payload = JSON.parse(Buffer.from(parts[1] as string, 'base64url').toString('utf8')) as unknown
  } catch {
    return new ContextInvalidError(`${what} payload is not JSON`)
  }
  // A signed `null` or array would make the field checks read properties of nothing (found by
  // test/fuzz/context.test.ts): only an object is a payload.
  if (typeof payload !== 'object' || payload === null || Array.isArray(payload))
    return new ContextInvalidError(`${what} payload is not a JSON object`)
  return payload
}

export function signContext(key: Buffer, ctx: TxContext): string {
  const p: Record<string, unknown> = { i: ctx.id, m: ctx.mode, c: ctx.coordinator, d: ctx.deadline }
  if (ctx.parent !== undefined) p.p = ctx.parent
  if (ctx.branch !== undefined) p.b = ctx.branch
  if (ctx.op !== undefined) p.o = ctx.op
  if (ctx.group !== undefined) p.g = ctx.group
  return seal(key, p)
}

/**
 * A compiled `mesh.coordinators` allow-list. Entries: `*`, exact `host:port`, `host:*`, and CIDR
 * networks `10.0.0.0/8:15010`, `10.0.0.0/8:*`, `[fd00::/8]:15010`, `[fd00::/8]:*` (pod IPs in
 * Kubernetes are not known in advance, their network is).
 */
interface AllowMatcher {
  readonly any: boolean
  /** Exact `host:port` entries, compared as strings (as the context carries them). */
  readonly exact: ReadonlySet<string>
  /** Hosts of `host:*` entries. */
  readonly anyPort: ReadonlySet<string>
  /** Networks allowed on every port, and per port. */
  readonly netAnyPort: BlockList | undefined
  readonly netByPort: ReadonlyMap<number, BlockList>
}

export interface AllowListProblem {
  readonly index: number
  readonly message: string
}

const ALLOW_ENTRY_RE = /^(?:\[([0-9a-fA-F:.]+)(?:\/(\d{1,3}))?\]|([A-Za-z0-9.-]+)(?:\/(\d{1,3}))?):(\*|\d{1,5})$/

function compileAllowList(allow: readonly string[]): { matcher: AllowMatcher; problems: AllowListProblem[] } {
  let any = false
  const exact = new Set<string>()
  const anyPort = new Set<string>()
  let netAnyPort: BlockList | undefined
  const netByPort = new Map<number, BlockList>()
  const problems: AllowListProblem[] = []
  allow.forEach((entry, index) => {
    if (entry === '*') {
      any = true
      return
    }
    const m = ALLOW_ENTRY_RE.exec(entry)
    if (m === null)
      return void problems.push({
        index,
        message: `"${entry}" is not *, host:port, host:*, a.b.c.d/N:port or [v6::/N]:port`,
      })
    const [, v6, v6Prefix, name, v4Prefix, portText] = m as unknown as [
      string,
      string | undefined,
      string | undefined,
      string | undefined,
      string | undefined,
      string,
    ]
    const port = portText === '*' ? undefined : Number(portText)
    if (port !== undefined && port > 65535)
      return void problems.push({ index, message: `"${entry}": port ${port} is over 65535` })
    const prefixText = v6Prefix ?? v4Prefix
    if (prefixText === undefined) {
      if (port === undefined) anyPort.add(v6 === undefined ? (name as string) : `[${v6}]`)
      else exact.add(entry)
      return
    }
    const ip = (v6 ?? name) as string
    const family = v6 === undefined ? 4 : 6
    if (isIP(ip) !== family)
      return void problems.push({ index, message: `"${entry}": ${ip} is not an IPv${family} address` })
    const prefix = Number(prefixText)
    const max = family === 4 ? 32 : 128
    if (prefix > max)
      return void problems.push({ index, message: `"${entry}": prefix /${prefix} is longer than ${max} bits` })
    let list: BlockList | undefined
    if (port === undefined) list = netAnyPort ??= new BlockList()
    else {
      list = netByPort.get(port)
      if (list === undefined) netByPort.set(port, (list = new BlockList()))
    }
    list.addSubnet(ip, prefix, family === 4 ? 'ipv4' : 'ipv6')
  })
  return { matcher: { any, exact, anyPort, netAnyPort, netByPort }, problems }
}

// Lists compiled at config load (src/config/load.ts), keyed by the frozen array the config
// holds: coordinatorAllowed runs on every call carrying a context and must not re-parse them.
const compiledAllowLists = new WeakMap<readonly string[], AllowMatcher>()

/**
 * Compiles an allow-list once and returns the problems of its entries (empty: all valid). A
 * frozen list is remembered, so coordinatorAllowed finds it compiled.
 */
export function compileCoordinators(allow: readonly string[]): AllowListProblem[] {
  const { matcher, problems } = compileAllowList(allow)
  if (Object.isFrozen(allow)) compiledAllowLists.set(allow, matcher)
  return problems
}

/** Whether a context may name `address` (host:port) as its coordinator. Invalid entries match nothing. */
export function coordinatorAllowed(allow: readonly string[], address: string): boolean {
  let m = compiledAllowLists.get(allow)
  if (m === undefined) {
    m = compileAllowList(allow).matcher
    if (Object.isFrozen(allow)) compiledAllowLists.set(allow, m)
  }
  if (m.any || m.exact.has(address)) return true
  const a = splitAuthority(address)
  if (a?.port === undefined) return false
  if (m.anyPort.has(authorityHost(a))) return true
  if (m.netAnyPort === undefined && m.netByPort.size === 0) return false
  const ip = a.host
  const family = isIP(ip)
  if (family === 0) return false
  const type = family === 4 ? 'ipv4' : 'ipv6'
  if (m.netAnyPort?.check(ip, type) === true) return true
  return m.netByPort.get(Number(a.port))?.check(ip, type) === true
}

export function verifyContext(
  keys: readonly Buffer[],
  token: string,
  now: number,
  allow: readonly string[],
): TxContext | TxmeshError {
  const raw = open(keys, token, 'txmesh-context', LIMITS.contextBytes)
  if (raw instanceof TxmeshError) return raw
  const p = raw as {
    i?: unknown
    m?: unknown
    c?: unknown
    d?: unknown
    p?: unknown
    b?: unknown
    o?: unknown
    g?: unknown
  }
  if (
    !isId(p.i) ||
    !TX_MODES.includes(p.m as TxMode) ||
    typeof p.c !== 'string' ||
    !ADDRESS_RE.test(p.c) ||
    typeof p.d !== 'number' ||
    (p.p !== undefined && !isId(p.p)) ||
    (p.b !== undefined && (!isId(p.b) || p.m === '2pc')) ||
    (p.o !== undefined && (!STEP_OPS.includes(p.o as StepOpKind) || p.b === undefined)) ||
    (p.g !== undefined && (typeof p.g !== 'string' || !ADDRESS_RE.test(p.g)))
  ) {
    return new ContextInvalidError('txmesh-context payload has missing or malformed fields')
  }
  const ctx: TxContext = {
    id: p.i,
    mode: p.m as TxMode,
    coordinator: p.c,
    deadline: p.d,
    parent: p.p as string | undefined,
    branch: p.b as string | undefined,
    op: p.o as StepOpKind | undefined,
    ...(p.g === undefined ? {} : { group: p.g as string }),
  }
  const late = expired(ctx, now)
  if (late !== undefined) return late
  if (!coordinatorAllowed(allow, p.c))
    return new CoordinatorNotAllowedError(`coordinator ${p.c} is not in the allow-list`)
  return ctx
}

/**
 * The group address of a context this sidecar verified when the branch joined (kept in its log
 * with the branch), if it names one; undefined for anything else.
 */
export function contextGroup(token: string): string | undefined {
  const parts = token.split('.')
  if (parts.length !== 3 || parts[0] !== VERSION) return undefined
  try {
    const g = (JSON.parse(Buffer.from(parts[1] as string, 'base64url').toString('utf8')) as { g?: unknown }).g
    return typeof g === 'string' && ADDRESS_RE.test(g) ? g : undefined
  } catch {
    return undefined
  }
}

/** A context past its deadline is refused (also one verified earlier and remembered). */
export function expired(ctx: TxContext, now: number): ContextExpiredError | undefined {
  return ctx.deadline <= now ? new ContextExpiredError(`transaction ${ctx.id} passed its deadline`) : undefined
}

/** The txmesh entry of a W3C baggage header, if any (`txmesh=<token>`). */
export function contextFromBaggage(baggage: string): string | undefined {
  for (const member of baggage.split(',')) {
    const eq = member.indexOf('=')
    if (eq < 0) continue
    if (member.slice(0, eq).trim() !== BAGGAGE_ENTRY) continue
    const value =
      member
        .slice(eq + 1)
        .split(';')[0]
        ?.trim() ?? ''
    try {
      return decodeURIComponent(value)
    } catch {
      return value
    }
  }
  return undefined
}

export function signEnlisted(key: Buffer, tx: TxId, refs: readonly ParticipantRef[]): string {
  return seal(key, {
    i: tx,
    p: refs.map((r) => ({
      s: r.service,
      c: r.control,
      b: r.branch,
      ...(r.holder === undefined ? {} : { h: r.holder }),
    })),
  })
}

export function verifyEnlisted(keys: readonly Buffer[], token: string, tx: TxId): ParticipantRef[] | TxmeshError {
  const raw = open(keys, token, 'txmesh-enlisted', LIMITS.enlistedBytes)
  if (raw instanceof TxmeshError) return raw
  const p = raw as { i?: unknown; p?: unknown }
  if (p.i !== tx) return new ContextInvalidError('txmesh-enlisted names another transaction')
  if (!Array.isArray(p.p) || p.p.length > LIMITS.maxParticipants)
    return new ContextInvalidError('txmesh-enlisted has a malformed participant list')
  const out: ParticipantRef[] = []
  for (const e of p.p as ({ s?: unknown; c?: unknown; b?: unknown; h?: unknown } | null)[]) {
    if (
      typeof e !== 'object' ||
      e === null ||
      typeof e.s !== 'string' ||
      e.s.length > LIMITS.serviceNameChars ||
      typeof e.c !== 'string' ||
      !ADDRESS_RE.test(e.c) ||
      !isId(e.b)
    ) {
      return new ContextInvalidError('txmesh-enlisted has a malformed participant')
    }
    if (e.h !== undefined && (typeof e.h !== 'string' || !isIncarnation(e.h)))
      return new ContextInvalidError('txmesh-enlisted has a malformed holder')
    out.push({ service: e.s, control: e.c, branch: e.b, ...(typeof e.h === 'string' ? { holder: e.h } : {}) })
  }
  return out
}

/**
 * Signature of a control request, the `txmesh-auth` header: `<ts>.<nonce>.<mac>`. ts is epoch
 * milliseconds, nonce 128 random bits (base64url), mac the base64url HMAC-SHA256 with the mesh
 * key over ts, nonce, method, path and body. The control server refuses a stale ts and a nonce
 * it has seen within the skew window (src/control/replay.ts), so a captured request cannot be
 * sent again. Every call, retries included, gets a new nonce.
 */
export function signControl(
  key: Buffer,
  ts: number,
  method: string,
  path: string,
  body: string,
  nonce: string = newControlNonce(),
): string {
  return `${ts}.${nonce}.${mac(key, controlInput(ts, nonce, method, path, body))}`
}

export function newControlNonce(): string {
  return randomBase64url(LIMITS.controlNonceBytes)
}

function controlInput(ts: number, nonce: string, method: string, path: string, body: string): string {
  return `${ts}\n${nonce}\n${method}\n${path}\n${body}`
}

export type ControlAuth =
  | { readonly ok: true; readonly ts: number; readonly nonce: string }
  | { readonly ok: false; readonly reason: 'missing' | 'malformed' | 'stale' | 'signature' }

// ts: up to 16 digits (epoch ms until the year 2286 and beyond); nonce: exactly controlNonceBytes
// in base64url; mac: 32 bytes in base64url (43 characters).
const CONTROL_AUTH_RE = new RegExp(
  `^(\\d{1,16})\\.([A-Za-z0-9_-]{${Math.ceil((LIMITS.controlNonceBytes * 4) / 3)}})\\.([A-Za-z0-9_-]{43})$`,
)

/**
 * Checks a `txmesh-auth` header: shape, timestamp within LIMITS.controlClockSkewMs of `now`, and
 * the mac with any of the keys (rotation). The nonce's freshness is the caller's (ReplayCache).
 */
export function verifyControl(
  keys: readonly Buffer[],
  header: string | undefined,
  now: number,
  method: string,
  path: string,
  body: string,
): ControlAuth {
  if (header === undefined) return { ok: false, reason: 'missing' }
  const m = CONTROL_AUTH_RE.exec(header)
  if (m === null) return { ok: false, reason: 'malformed' }
  const [, tsText, nonce, macText] = m as unknown as [string, string, string, string]
  const ts = Number(tsText)
  if (Math.abs(now - ts) > LIMITS.controlClockSkewMs) return { ok: false, reason: 'stale' }
  const given = Buffer.from(macText, 'base64url')
  const input = controlInput(ts, nonce, method, path, body)
  const ok = keys.some((k) => {
    const want = Buffer.from(mac(k, input), 'base64url')
    return want.length === given.length && timingSafeEqual(want, given)
  })
  return ok ? { ok: true, ts, nonce } : { ok: false, reason: 'signature' }
}

/**
 * Signature of a control answer, the `txmesh-auth` header of the response: the base64url
 * HMAC-SHA256 with the signing mesh key over the answering sidecar's control address (its
 * advertised `self`, the address its peers call it at), the `txmesh-auth` of the request it
 * answers (timestamp, nonce and mac, so also method, path and body), the status and the body.
 * Votes, outcomes and acknowledgements are what a coordinator and a participant decide on: a man
 * in the middle on plain HTTP must not be able to write them (issue 15, hole 12). Bound to the
 * request (every request has a new nonce), an answer cannot be shown for another request; bound to
 * the address, a request redirected to another sidecar of the mesh (which would answer with its
 * own view: "unknown branch", nothing to commit) cannot pass for the answer of the one called.
 * The input starts with a word where a request's starts with digits: neither can stand for the other.
 */
export function signAnswer(key: Buffer, responder: string, requestAuth: string, status: number, body: string): string {
  return mac(key, answerInput(responder, requestAuth, status, body))
}

function answerInput(responder: string, requestAuth: string, status: number, body: string): string {
  return `answer\n${responder}\n${requestAuth}\n${status}\n${body}`
}

// A mac: 32 bytes in base64url (43 characters).
const ANSWER_AUTH_RE = /^[A-Za-z0-9_-]{43}$/

/**
 * Checks a control answer's `txmesh-auth` against the request we sent (`requestAuth`) to the
 * address we called (`responder`), with any of the keys (rotation: peers sign with their current key).
 */
export function verifyAnswer(
  keys: readonly Buffer[],
  header: string | undefined,
  responder: string,
  requestAuth: string,
  status: number,
  body: string,
): 'ok' | 'missing' | 'signature' {
  if (header === undefined) return 'missing'
  if (!ANSWER_AUTH_RE.test(header)) return 'signature'
  const given = Buffer.from(header, 'base64url')
  const input = answerInput(responder, requestAuth, status, body)
  const ok = keys.some((k) => {
    const want = Buffer.from(mac(k, input), 'base64url')
    return want.length === given.length && timingSafeEqual(want, given)
  })
  return ok ? 'ok' : 'signature'
}
