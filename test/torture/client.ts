// The bank's client: the seeded list of transfers, and the initiating app that runs them through
// the coordinator sidecar (begin on its admin API, one call per leg through its egress with the
// context, commit or abort on its admin API), keeping a fixed number in flight. It records what
// it saw of each transfer:
//   committed   commit answered outcome "committed"
//   aborted     commit answered "aborted", or a leg failed and the client never asked to commit
//               (by the protocols no transaction commits unless asked: presumed abort, saga/tcc
//               abort at their deadline), or commit answered TXM_TX_UNKNOWN (the coordinator
//               restarted and has no decision for it: presumed abort)
//   unknown     commit was sent and no outcome came back (connection lost, timeout, 5xx)
//   not-begun   begin failed (coordinator down): no call of it was ever sent
import { Agent as HttpAgent, request as httpRequest } from 'node:http'
import type { Prng } from '../simulation/prng.js'
import { SERVICES, type Service } from './cluster.js'
import type { Mode } from './schema.js'

export interface Leg {
  readonly service: Service
  readonly account: number
  /** Negative: a debit. */
  readonly delta: number
}

export interface Transfer {
  readonly id: string
  /** In the order the client calls them. */
  readonly legs: readonly Leg[]
}

export type Seen = 'committed' | 'aborted' | 'unknown' | 'not-begun'

export interface ClientRecord {
  readonly transfer: Transfer
  readonly seen: Seen
  /** What the client got, for failure reports (e.g. "leg bank-b 502 TXM_UPSTREAM_PROTOCOL"). */
  readonly detail: string
  readonly txId: string | undefined
  /** When the client began and finished it (ISO time), for the timeline. */
  readonly began: string
  readonly ended: string
}

// Bounds of the client, each with its reason.
// A transaction's deadline: longer than a transfer's calls and commit under delays, short enough
// that a participant forgotten by a restarted coordinator aborts its branch soon.
export const TX_TIMEOUT_MS = 10_000
// The client's own wait for any one answer: above the egress call timeout (4 s) and a commit's
// prepare round (control calls time out at 5 s), so the sidecar answers first when it can.
const CLIENT_REQUEST_TIMEOUT_MS = 12_000
// Sockets to the coordinator's admin and egress listeners (one per transfer in flight, plus room).
const CLIENT_SOCKETS = 32
// A worker whose transfer did not commit waits this long before its next one, as a client backs
// off from a failing service: while a process is down, transfers would otherwise fail as fast as
// they start and the whole load would pass inside one outage.
const FAILURE_BACKOFF_MS = 1_000
// Largest ordinary amount moved by one transfer.
const MAX_AMOUNT = 200
// Share of transfers that try to move more than any account holds (an overdraft must be refused:
// a no vote at PREPARE in 2pc, a failed step in saga/tcc).
const OVERDRAFT_SHARE = 0.05

/** Seeded transfers: 2 or 3 services each, one account per service, summing to zero. */
export function planTransfers(
  rng: Prng,
  mode: Mode,
  count: number,
  accounts: number,
  initialBalance: number,
): Transfer[] {
  const out: Transfer[] = []
  for (let i = 0; i < count; i++) {
    const services = rng.chance(0.5) ? [...SERVICES] : pickTwo(rng)
    const amount = rng.chance(OVERDRAFT_SHARE) ? initialBalance * 10 : rng.int(2, MAX_AMOUNT)
    const deltas: number[] = []
    if (services.length === 2) {
      deltas.push(-amount, amount)
    } else {
      const part = rng.int(1, Math.min(amount - 1, MAX_AMOUNT))
      // One debit and two credits, or two debits and one credit.
      deltas.push(...(rng.chance(0.5) ? [-amount, part, amount - part] : [-part, -(amount - part), amount]))
    }
    shuffle(rng, deltas)
    const legs = services.map((service, k) => ({ service, account: rng.int(1, accounts), delta: deltas[k] as number }))
    out.push({ id: `t${i}`, legs: callOrder(mode, legs) })
  }
  return out
}

/**
 * 2pc: service order, so every transfer takes its row locks in the same order across databases
 * (Postgres cannot see a deadlock that spans two databases). saga/tcc: debits first, so a refused
 * debit fails the transfer before any credit was made (nothing to undo on a refusal).
 */
function callOrder(mode: Mode, legs: Leg[]): Leg[] {
  const bySvc = [...legs].sort((a, b) => SERVICES.indexOf(a.service) - SERVICES.indexOf(b.service))
  if (mode === '2pc') return bySvc
  return [...bySvc.filter((l) => l.delta < 0), ...bySvc.filter((l) => l.delta > 0)]
}

function pickTwo(rng: Prng): Service[] {
  const skip = rng.int(0, SERVICES.length - 1)
  return SERVICES.filter((_, i) => i !== skip)
}

function shuffle<T>(rng: Prng, a: T[]): void {
  for (let i = a.length - 1; i > 0; i--) {
    const j = rng.int(0, i)
    ;[a[i], a[j]] = [a[j] as T, a[i] as T]
  }
}

function legPath(mode: Mode, l: Leg, transfer: string): string {
  const q = `transfer=${transfer}&account=${l.account}&delta=${l.delta}`
  if (mode === '2pc') return `/apply?${q}`
  if (mode === 'saga') return `/saga/action?${q}`
  return `/tcc/try?${q}`
}

interface Answer {
  readonly status: number
  readonly body: string
  readonly error: string | undefined
}

/** One HTTP exchange; network failures come back as status 0 with the error code. */
function call(
  agent: HttpAgent,
  port: number,
  method: string,
  path: string,
  headers: Record<string, string>,
  body: string,
): Promise<Answer> {
  return new Promise((resolve) => {
    const req = httpRequest(
      {
        host: '127.0.0.1',
        port,
        method,
        path,
        headers: { ...headers, 'content-length': String(Buffer.byteLength(body)) },
        agent,
        timeout: CLIENT_REQUEST_TIMEOUT_MS,
      },
      (res) => {
        const chunks: Buffer[] = []
        res.on('data', (c: Buffer) => chunks.push(c))
        res.on('end', () =>
          resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString(), error: undefined }),
        )
        res.on('error', (err) =>
          resolve({ status: 0, body: '', error: (err as { code?: string }).code ?? err.message }),
        )
      },
    )
    req.on('timeout', () => req.destroy(Object.assign(new Error('client timeout'), { code: 'CLIENT_TIMEOUT' })))
    req.on('error', (err) => resolve({ status: 0, body: '', error: (err as { code?: string }).code ?? err.message }))
    req.end(body)
  })
}

function errorCode(a: Answer): string {
  if (a.error !== undefined) return a.error
  try {
    const code = (JSON.parse(a.body) as { error?: { code?: string } }).error?.code
    return `${a.status}${code === undefined ? '' : ` ${code}`}`
  } catch {
    return `${a.status} ${a.body.slice(0, 60)}`
  }
}

/** The coordinator sidecar a transfer runs on: its admin and egress ports. */
export interface CoordinatorPorts {
  readonly admin: number
  readonly egress: number
}

export interface ClientOptions {
  readonly mode: Mode
  /**
   * The coordinator transfer `index` runs on, asked as it starts (the shared run spreads transfers
   * over the instances up, whose ports change when one is replaced).
   */
  readonly coordinator: (index: number) => CoordinatorPorts
  readonly inFlight: number
  /** Called as each transfer starts (the fault driver schedules by it). */
  readonly onStart: (index: number) => void
  /** Called as each transfer ends, with what the client saw (kills planned after an abort). */
  readonly onEnd?: (index: number, r: ClientRecord) => void
}

export async function runClient(o: ClientOptions, transfers: readonly Transfer[]): Promise<ClientRecord[]> {
  const agent = new HttpAgent({ keepAlive: true, maxSockets: CLIENT_SOCKETS })
  const records: ClientRecord[] = new Array<ClientRecord>(transfers.length)
  let next = 0
  const worker = async (): Promise<void> => {
    for (;;) {
      const i = next++
      const t = transfers[i]
      if (t === undefined) return
      o.onStart(i)
      const began = new Date().toISOString()
      const r = { ...(await runTransfer(o.mode, o.coordinator(i), agent, t)), began, ended: new Date().toISOString() }
      records[i] = r
      o.onEnd?.(i, r)
      if (r.seen !== 'committed') await new Promise((resolve) => setTimeout(resolve, FAILURE_BACKOFF_MS))
    }
  }
  try {
    await Promise.all(Array.from({ length: o.inFlight }, worker))
  } finally {
    agent.destroy()
  }
  return records
}

async function runTransfer(
  mode: Mode,
  o: CoordinatorPorts,
  agent: HttpAgent,
  t: Transfer,
): Promise<Omit<ClientRecord, 'began' | 'ended'>> {
  const json = { 'content-type': 'application/json' }
  const begun = await call(
    agent,
    o.admin,
    'POST',
    '/v1/transactions',
    json,
    JSON.stringify({ mode, timeoutMs: TX_TIMEOUT_MS }),
  )
  let tx: { id: string; context: string }
  try {
    if (begun.status !== 201) throw new Error('not begun')
    tx = JSON.parse(begun.body) as { id: string; context: string }
  } catch {
    return { transfer: t, seen: 'not-begun', detail: `begin: ${errorCode(begun)}`, txId: undefined }
  }
  let failed: string | undefined
  for (const l of t.legs) {
    // Absolute-form through the egress, as an app using it as HTTP_PROXY sends it.
    const a = await call(
      agent,
      o.egress,
      'POST',
      `http://${l.service}${legPath(mode, l, t.id)}`,
      { 'txmesh-context': tx.context },
      '',
    )
    if (a.status !== 200) {
      failed = `leg ${l.service} ${errorCode(a)}`
      break
    }
  }
  const base = `/v1/transactions/${tx.id}`
  if (failed !== undefined) {
    const a = await call(agent, o.admin, 'POST', `${base}/abort`, {}, '')
    return {
      transfer: t,
      seen: 'aborted',
      detail: `${failed}; abort: ${a.status === 200 ? 'aborted' : errorCode(a)}`,
      txId: tx.id,
    }
  }
  const c = await call(agent, o.admin, 'POST', `${base}/commit`, {}, '')
  if (c.status === 200) {
    let outcome: unknown
    try {
      outcome = (JSON.parse(c.body) as { outcome?: unknown }).outcome
    } catch {
      outcome = undefined
    }
    if (outcome === 'committed' || outcome === 'aborted')
      return { transfer: t, seen: outcome, detail: `commit: ${outcome}`, txId: tx.id }
    return { transfer: t, seen: 'unknown', detail: `commit: 200 without an outcome`, txId: tx.id }
  }
  const code = errorCode(c)
  // The coordinator answered and has no decision for it: presumed abort.
  if (c.status === 404 && code.includes('TXM_TX_UNKNOWN'))
    return { transfer: t, seen: 'aborted', detail: `commit: ${code}`, txId: tx.id }
  return { transfer: t, seen: 'unknown', detail: `commit: ${code}`, txId: tx.id }
}
