// After the load: the bounded recovery wait, then the invariants, read from every database and
// compared with what the client saw.
import { request } from 'undici'
import type { BankCluster, Service } from './cluster.js'
import { sleep } from './cluster.js'
import type { ClientRecord, Leg } from './client.js'
import { preparedCount, storeBacklog, type BankState, type Mode } from './schema.js'

// Recovery polling: often enough to end soon after the last branch finished.
const RECOVERY_POLL_MS = 250
// One admin call of the poll; the sidecars are local and up, so slower is a hang.
const ADMIN_CALL_TIMEOUT_MS = 5_000
// Violations printed in full (the count is always printed).
export const VIOLATIONS_SHOWN = 25

export interface RecoveryStatus {
  readonly prepared: number
  /** Transactions the coordinator has not finished (2pc phase 2, saga/tcc steps). */
  readonly unfinished: number
  /** Steps past their retry budget (saga/tcc). */
  readonly stuck: number
  /** Branches the participant sidecars still hold. */
  readonly branches: number
  /** Calls of the poll that failed (a sidecar not answering). */
  readonly unreachable: number
  /** Shared run: coordinator records left in the store (a dead instance's log not taken over yet included). */
  readonly storeRecords: number
  /** Shared run: logs a sibling still holds, taken over and not finished. */
  readonly takenLogs: number
}

function settled(s: RecoveryStatus): boolean {
  return (
    s.prepared === 0 &&
    s.unfinished === 0 &&
    s.branches === 0 &&
    s.unreachable === 0 &&
    s.storeRecords === 0 &&
    s.takenLogs === 0
  )
}

async function adminJson(port: number, path: string): Promise<Record<string, unknown> | undefined> {
  try {
    const r = await request(`http://127.0.0.1:${port}${path}`, {
      headersTimeout: ADMIN_CALL_TIMEOUT_MS,
      bodyTimeout: ADMIN_CALL_TIMEOUT_MS,
    })
    const body = (await r.body.json()) as Record<string, unknown>
    return r.statusCode === 200 ? body : undefined
  } catch {
    return undefined
  }
}

export async function recoveryStatus(
  cluster: BankCluster,
  connectionString: (db: string) => string,
): Promise<RecoveryStatus> {
  let prepared = 0
  let unreachable = 0
  for (const n of cluster.nodes) {
    try {
      prepared += await preparedCount(connectionString(n.db))
    } catch {
      unreachable++
    }
  }
  let unfinished = 0
  let stuck = 0
  for (const c of cluster.coordinators) {
    const txs = await adminJson(c.ports.admin, '/v1/transactions')
    if (txs === undefined) unreachable++
    else {
      for (const t of (txs.transactions ?? []) as { status?: string; stuck?: number }[]) {
        if (t.status !== 'committed' && t.status !== 'aborted') unfinished++
        stuck += t.stuck ?? 0
      }
    }
  }
  let storeRecords = 0
  let takenLogs = 0
  if (cluster.shared !== undefined) {
    try {
      ;({ records: storeRecords, takenLogs } = await storeBacklog(cluster.shared.url, cluster.shared.schema))
    } catch {
      unreachable++
    }
  }
  let branches = 0
  for (const n of cluster.nodes) {
    const b = await adminJson(n.sidecarPorts.admin, '/v1/branches')
    if (b === undefined) unreachable++
    else branches += ((b.branches ?? []) as unknown[]).length
  }
  return { prepared, unfinished, stuck, branches, unreachable, storeRecords, takenLogs }
}

/** Polls until nothing is left to finish, or the cap. */
export async function waitRecovered(
  cluster: BankCluster,
  connectionString: (db: string) => string,
  capMs: number,
): Promise<{ ok: boolean; ms: number; last: RecoveryStatus }> {
  const started = Date.now()
  const maxPolls = Math.ceil(capMs / RECOVERY_POLL_MS) + 1
  let last = await recoveryStatus(cluster, connectionString)
  for (let i = 0; i < maxPolls && !settled(last) && Date.now() - started < capMs; i++) {
    await sleep(RECOVERY_POLL_MS)
    last = await recoveryStatus(cluster, connectionString)
  }
  return { ok: settled(last), ms: Date.now() - started, last }
}

export interface Violation {
  readonly invariant: string
  readonly transfer: string | undefined
  readonly detail: string
}

type LegState =
  { readonly kind: 'applied' } | { readonly kind: 'none' } | { readonly kind: 'anomaly'; readonly why: string }

/** What one service's database says happened to one leg of a transfer. */
function legState(mode: Mode, db: BankState, transfer: string, l: Leg): LegState {
  const rows = db.ledger.filter((r) => r.transfer === transfer && r.account === l.account)
  const d = BigInt(l.delta)
  const show = (): string => rows.map((r) => `${r.op} ${r.delta}`).join(', ') || 'no ledger rows'
  if (mode === '2pc') {
    if (rows.length === 0) return { kind: 'none' }
    if (rows.length === 1 && rows[0]?.op === 'apply' && rows[0].delta === d) return { kind: 'applied' }
    return { kind: 'anomaly', why: show() }
  }
  if (mode === 'saga') {
    const action = rows.find((r) => r.op === 'action' && r.delta === d)
    const undo = rows.find((r) => r.op === 'compensate' && r.delta === -d)
    if (rows.length !== (action ? 1 : 0) + (undo ? 1 : 0)) return { kind: 'anomaly', why: show() }
    if (action && !undo) return { kind: 'applied' }
    if (!action && undo) return { kind: 'anomaly', why: 'compensated without its action' }
    return { kind: 'none' }
  }
  const holds = db.holds.filter((h) => h.transfer === transfer && h.account === l.account)
  const confirmed = rows.find((r) => r.op === 'confirm' && r.delta === d)
  if (holds.length > 1 || rows.length > (confirmed ? 1 : 0))
    return { kind: 'anomaly', why: `${holds.length} holds; ${show()}` }
  const h = holds[0]
  if (h === undefined) return confirmed ? { kind: 'anomaly', why: 'confirmed without a hold' } : { kind: 'none' }
  if (h.status === 'held') return { kind: 'anomaly', why: 'hold never confirmed or cancelled' }
  if (h.status === 'confirmed' && confirmed) return { kind: 'applied' }
  if (h.status === 'cancelled' && !confirmed) return { kind: 'none' }
  return { kind: 'anomaly', why: `hold ${h.status}; ${show()}` }
}

export interface CheckInput {
  readonly mode: Mode
  readonly records: readonly ClientRecord[]
  readonly states: ReadonlyMap<Service, BankState>
  readonly initialBalance: number
  readonly accounts: number
}

export function checkInvariants(c: CheckInput): Violation[] {
  const v: Violation[] = []
  const add = (invariant: string, transfer: string | undefined, detail: string): void =>
    void v.push({ invariant, transfer, detail })
  const initial = BigInt(c.initialBalance)

  let total = 0n
  for (const [service, db] of c.states) {
    if (db.prepared.length > 0)
      add(
        'pg_prepared_xacts empty',
        undefined,
        `${service}: ${db.prepared.length} left: ${db.prepared.slice(0, 5).join(', ')}`,
      )
    if (db.accounts.size !== c.accounts)
      add('accounts intact', undefined, `${service}: ${db.accounts.size} accounts, expected ${c.accounts}`)
    const sums = new Map<number, bigint>()
    for (const r of db.ledger) sums.set(r.account, (sums.get(r.account) ?? 0n) + r.delta)
    const heldDebits = new Map<number, bigint>()
    for (const h of db.holds)
      if (h.status === 'held' && h.delta < 0n) heldDebits.set(h.account, (heldDebits.get(h.account) ?? 0n) - h.delta)
    for (const [id, a] of db.accounts) {
      total += a.balance
      if (a.balance < 0n) add('no account negative', undefined, `${service} account ${id}: balance ${a.balance}`)
      if (a.frozen < 0n || a.frozen > a.balance)
        add('no account negative', undefined, `${service} account ${id}: frozen ${a.frozen} of balance ${a.balance}`)
      const expected = initial + (sums.get(id) ?? 0n)
      if (expected !== a.balance)
        add(
          'ledger sums equal balances',
          undefined,
          `${service} account ${id}: balance ${a.balance}, initial + ledger = ${expected}`,
        )
      const held = heldDebits.get(id) ?? 0n
      if (a.frozen !== held)
        add(
          'frozen equals open holds',
          undefined,
          `${service} account ${id}: frozen ${a.frozen}, open debit holds ${held}`,
        )
    }
  }
  const expectedTotal = initial * BigInt(c.accounts) * BigInt(c.states.size)

  // Every effect in a database belongs to a leg the client planned there.
  const planned = new Map<string, Set<string>>()
  for (const r of c.records)
    for (const l of r.transfer.legs) planned.set(`${l.service}:${r.transfer.id}:${l.account}`, new Set())
  for (const [service, db] of c.states) {
    for (const r of db.ledger)
      if (!planned.has(`${service}:${r.transfer}:${r.account}`))
        add(
          'no stray effects',
          r.transfer,
          `${service}: ledger row ${r.op} ${r.delta} on account ${r.account} of no planned leg`,
        )
    for (const h of db.holds)
      if (!planned.has(`${service}:${h.transfer}:${h.account}`))
        add('no stray effects', h.transfer, `${service}: hold ${h.status} on account ${h.account} of no planned leg`)
  }

  for (const r of c.records) {
    const t = r.transfer
    const states = t.legs.map((l) => {
      const db = c.states.get(l.service)
      return {
        l,
        s:
          db === undefined
            ? ({ kind: 'anomaly', why: 'no database state' } as LegState)
            : legState(c.mode, db, t.id, l),
      }
    })
    const describe = (): string =>
      `${states.map(({ l, s }) => `${l.service}#${l.account} ${l.delta}: ${s.kind === 'anomaly' ? `anomaly (${s.why})` : s.kind}`).join('; ')} | client: ${r.seen} (${r.detail}) tx ${r.txId ?? '-'}`
    const applied = states.filter(({ s }) => s.kind === 'applied').length
    const none = states.filter(({ s }) => s.kind === 'none').length
    const before = v.length
    if (r.seen === 'committed' && applied !== states.length)
      add('committed transfers present everywhere', t.id, describe())
    if ((r.seen === 'aborted' || r.seen === 'not-begun') && none !== states.length)
      add('aborted transfers present nowhere', t.id, describe())
    if (r.seen === 'unknown' && applied !== states.length && none !== states.length)
      add('unknown transfers all-or-nothing', t.id, describe())
    // A malformed leg not already reported through the transfer's outcome.
    if (v.length === before)
      for (const { l, s } of states)
        if (s.kind === 'anomaly') add('ledger rows well-formed', t.id, `${l.service}: ${s.why} | ${describe()}`)
  }
  if (total !== expectedTotal)
    add(
      'total balance unchanged',
      undefined,
      `total ${total}, expected ${expectedTotal} (difference ${total - expectedTotal})`,
    )
  return v
}

/** How the unknown transfers turned out (all applied or all undone), for the report. */
export function resolvedUnknowns(c: CheckInput): { applied: number; none: number } {
  let applied = 0
  let none = 0
  for (const r of c.records) {
    if (r.seen !== 'unknown') continue
    const states = r.transfer.legs.map((l) => {
      const db = c.states.get(l.service)
      return db === undefined ? 'anomaly' : legState(c.mode, db, r.transfer.id, l).kind
    })
    if (states.every((s) => s === 'applied')) applied++
    else if (states.every((s) => s === 'none')) none++
  }
  return { applied, none }
}
