// A bank participant app of the torture test (test/torture/bank.ts): one service owning the
// accounts of its own Postgres database through the txmesh/pg helper, behind its own sidecar.
// Every effect on a balance writes a ledger row in the same local transaction, so the checker
// can tell, per transfer and account, what happened.
//
//   2pc   POST /apply?transfer=T&account=N&delta=D       in the branch the helper holds open:
//                                                        UPDATE balance, INSERT ledger 'apply';
//                                                        an overdraft fails the deferred check at
//                                                        PREPARE TRANSACTION (the vote is no)
//   saga  POST /saga/action?transfer=T&account=N&delta=D  under txm.barrier: UPDATE + ledger
//                                                        'action'; CHECK (balance >= 0) -> 409
//         POST /saga/undo/T/N/D                          the compensation (the coordinator's
//                                                        route template): -D, ledger 'compensate'
//   tcc   POST /tcc/try?transfer=T&account=N&delta=D      under the barrier: a hold row; a debit
//                                                        also freezes -D (CHECK balance >= frozen)
//         POST /tcc/confirm/{step}, /tcc/cancel/{step},  the hooks (route templates, or this
//         POST /.well-known/txmesh/{confirm,cancel}      sidecar's default hooks): apply or
//                                                        release the hold the branch made
//
// Environment: DATABASE_URL, SERVICE, PORT (fixed: restarts reuse it), SIDECAR_ADMIN. Runs
// txm.recover() before it
// listens, then prints {"event":"listening","port":N,"pid":N,"recovered":{...}} on stdout.
// Usage: node --import tsx test/torture/bank-app.ts
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http'
import type { AddressInfo } from 'node:net'
import pg from 'pg'
import { createTxmeshPg, type TxmeshPgTx } from '../../src/helpers/pg/index.js'

function env(name: string): string {
  const v = process.env[name]
  if (v === undefined || v === '') throw new Error(`${name} is not set`)
  return v
}

const SERVICE = env('SERVICE')
// Bounds of the app, each with its reason.
// Branches open at once: the client keeps at most 8 transfers in flight, one branch each here;
// stale ones (their sidecar forgot them in a restart) linger until IDLE_TIMEOUT_MS.
const MAX_OPEN = 48
// Each open branch holds a connection; hooks, barrier calls and recovery need more.
const POOL_MAX = MAX_OPEN + 16
// A branch whose sidecar forgot it (restarted before prepare) is rolled back after this, which
// frees its row locks; the sidecar's own deadline abort (10 s transactions) usually comes first.
const IDLE_TIMEOUT_MS = 15_000
// Row locks held by a prepared branch whose coordinator is down make other transfers wait:
// they fail after this instead (and abort), so the load keeps moving.
const LOCK_TIMEOUT_MS = 2_000
// The helper's periodic recovery (resolves prepared rows its sidecar forgot): shorter than its
// 30 s default so such a row is resolved inside a short run's recovery window.
const RECOVER_INTERVAL_MS = 5_000
// Keep-alive longer than the sidecar's upstream keep-alive (undici: 4 s), so the sidecar never
// reuses a connection this server is closing.
const KEEP_ALIVE_MS = 120_000

const pool = new pg.Pool({
  connectionString: env('DATABASE_URL'),
  max: POOL_MAX,
  idleTimeoutMillis: 0,
  options: `-c lock_timeout=${LOCK_TIMEOUT_MS}`,
})
pool.on('error', (err) => process.stderr.write(`${SERVICE}: idle pool client error: ${err.message}\n`))
// The helper's events, except the routine ones of every transfer, go to the log (diagnosis).
const ROUTINE = new Set(['branch_opened', 'branch_prepared', 'branch_committed'])
const txm = createTxmeshPg({
  pool,
  service: SERVICE,
  sidecarAdmin: env('SIDECAR_ADMIN'),
  maxOpen: MAX_OPEN,
  idleTimeoutMs: IDLE_TIMEOUT_MS,
  recoverIntervalMs: RECOVER_INTERVAL_MS,
  onEvent: (e) => {
    if (!ROUTINE.has(e.event)) process.stderr.write(`${new Date().toISOString()} ${JSON.stringify(e)}\n`)
  },
})

interface Leg {
  readonly transfer: string
  readonly account: number
  readonly delta: number
}

const ID = /^[A-Za-z0-9_-]{1,64}$/

function leg(
  transfer: string | null | undefined,
  account: string | null | undefined,
  delta: string | null | undefined,
): Leg | undefined {
  const a = Number(account)
  const d = Number(delta)
  if (
    typeof transfer !== 'string' ||
    !ID.test(transfer) ||
    !Number.isSafeInteger(a) ||
    !Number.isSafeInteger(d) ||
    d === 0
  )
    return undefined
  return { transfer, account: a, delta: d }
}

function fromQuery(url: URL): Leg | undefined {
  return leg(url.searchParams.get('transfer'), url.searchParams.get('account'), url.searchParams.get('delta'))
}

function send(res: ServerResponse, status: number, body = ''): void {
  res.writeHead(status, { 'content-type': 'text/plain', 'content-length': Buffer.byteLength(body) }).end(body)
}

/** Thrown inside a barrier so the barrier row rolls back with the refused effect. */
class Refused extends Error {
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message)
  }
}

const CHECK_VIOLATION = '23514'
const LOCK_NOT_AVAILABLE = '55P03'

function sqlstate(err: unknown): string | undefined {
  const c = (err as { code?: unknown }).code
  return typeof c === 'string' && /^[0-9A-Z]{5}$/.test(c) ? c : undefined
}

/** Business refusals (overdraft, lock wait over) become a 409; a missing account is a bug (500). */
async function refusing<T>(run: () => Promise<T>): Promise<T> {
  try {
    return await run()
  } catch (err) {
    const s = sqlstate(err)
    if (s === CHECK_VIOLATION) throw new Refused(409, 'overdraft')
    if (s === LOCK_NOT_AVAILABLE) throw new Refused(409, 'account busy')
    throw err
  }
}

/** The branch's query (2pc) or a barrier connection's (saga, tcc). */
type Query = (text: string, values: unknown[]) => Promise<{ rowCount: number | null }>

/**
 * balance += delta (and frozen += frozenDelta in the same statement: CHECK (balance >= frozen)
 * is checked per statement, so a debit's confirm must move both at once), plus its ledger row.
 */
async function updateBalance(query: Query, l: Leg, delta: number, op: string, frozenDelta = 0): Promise<void> {
  const r = await query('UPDATE accounts SET balance = balance + $1, frozen = frozen + $2 WHERE id = $3', [
    delta,
    frozenDelta,
    l.account,
  ])
  if (r.rowCount !== 1) throw new Error(`account ${l.account} does not exist`)
  await query('INSERT INTO ledger (transfer_id, account, delta, op) VALUES ($1, $2, $3, $4)', [
    l.transfer,
    l.account,
    delta,
    op,
  ])
}

// ---- 2pc ----

async function apply(res: ServerResponse, l: Leg, tx: TxmeshPgTx | undefined): Promise<void> {
  if (tx === undefined) return send(res, 400, 'a 2pc transfer needs a transaction')
  try {
    await refusing(() => updateBalance((t, v) => tx.query(t, v), l, l.delta, 'apply'))
  } catch (err) {
    // Any failure fails the branch (status >= 400): the helper rolls it back, prepare votes no.
    if (err instanceof Refused) return send(res, err.status, err.message)
    throw err
  }
  send(res, 200, 'applied')
}

// ---- saga ----

async function sagaStep(req: IncomingMessage, res: ServerResponse, l: Leg, undo: boolean): Promise<void> {
  let r
  try {
    r = await txm.barrier(req, (c) =>
      refusing(() =>
        updateBalance((t, v) => c.query(t, v), l, undo ? -l.delta : l.delta, undo ? 'compensate' : 'action'),
      ),
    )
  } catch (err) {
    if (err instanceof Refused) return send(res, err.status, err.message)
    throw err
  }
  // duplicate and empty succeed; hanging (an action after its undo) must fail the step.
  if (!r.ran && r.reason === 'hanging') return send(res, 409, 'hanging action refused')
  send(res, 200, r.ran ? 'done' : r.reason)
}

// ---- tcc ----

async function tccTry(req: IncomingMessage, res: ServerResponse, l: Leg): Promise<void> {
  const txId = req.headers['txmesh-tx-id']
  const branchId = req.headers['txmesh-branch-id']
  let r
  try {
    r = await txm.barrier(req, (c) =>
      refusing(async () => {
        await c.query(
          "INSERT INTO holds (tx_id, branch_id, transfer_id, account, delta, status) VALUES ($1, $2, $3, $4, $5, 'held')",
          [txId, branchId, l.transfer, l.account, l.delta],
        )
        if (l.delta < 0) {
          const u = await c.query('UPDATE accounts SET frozen = frozen - $1 WHERE id = $2', [l.delta, l.account])
          if (u.rowCount !== 1) throw new Error(`account ${l.account} does not exist`)
        }
      }),
    )
  } catch (err) {
    if (err instanceof Refused) return send(res, err.status, err.message)
    throw err
  }
  if (!r.ran && r.reason === 'hanging') return send(res, 409, 'hanging try refused')
  send(res, 200, r.ran ? 'held' : r.reason)
}

/** Confirm or cancel the hold this branch's try made (keyed by the ids the sidecar sets). */
async function tccFinish(
  req: IncomingMessage,
  res: ServerResponse,
  op: 'confirm' | 'cancel',
  stepInPath: string | undefined,
): Promise<void> {
  const txId = req.headers['txmesh-tx-id']
  const branchId = req.headers['txmesh-branch-id']
  if (stepInPath !== undefined && stepInPath !== branchId)
    return send(res, 400, `step ${stepInPath} in the path is not the branch ${String(branchId)}`)
  let r
  try {
    r = await txm.barrier(req, async (c) => {
      const h = await c.query<{ transfer_id: string; account: number; delta: string; status: string }>(
        'SELECT transfer_id, account, delta::text, status FROM holds WHERE tx_id = $1 AND branch_id = $2 FOR UPDATE',
        [txId, branchId],
      )
      const hold = h.rows[0]
      // Cancel of a try that left nothing (it was refused): nothing to release. A confirm always
      // follows a successful try, so a missing hold is an error the coordinator retries (stuck).
      if (hold === undefined) {
        if (op === 'cancel') return 'nothing held'
        throw new Refused(409, 'no hold to confirm')
      }
      if (hold.status !== 'held') throw new Refused(409, `hold is ${hold.status}, cannot ${op}`)
      const delta = Number(hold.delta)
      const l: Leg = { transfer: hold.transfer_id, account: hold.account, delta }
      if (op === 'confirm') {
        // A debit's hold is released as the balance drops.
        await updateBalance((t, v) => c.query(t, v), l, delta, 'confirm', delta < 0 ? delta : 0)
      } else if (delta < 0) {
        await c.query('UPDATE accounts SET frozen = frozen + $1 WHERE id = $2', [delta, l.account])
      }
      await c.query('UPDATE holds SET status = $1 WHERE tx_id = $2 AND branch_id = $3', [
        op === 'confirm' ? 'confirmed' : 'cancelled',
        txId,
        branchId,
      ])
      return op
    })
  } catch (err) {
    if (err instanceof Refused) return send(res, err.status, err.message)
    throw err
  }
  send(res, 200, r.ran ? String(r.value) : r.reason)
}

// ---- routing ----

const UNDO = /^\/saga\/undo\/([A-Za-z0-9_-]{1,64})\/(-?\d{1,15})\/(-?\d{1,15})$/
const TCC_HOOK = /^\/tcc\/(confirm|cancel)\/([A-Za-z0-9_-]{1,64})$/
const DEFAULT_HOOK = /^\/\.well-known\/txmesh\/(confirm|cancel)$/

async function handle(req: IncomingMessage, res: ServerResponse, tx: TxmeshPgTx | undefined): Promise<void> {
  req.resume()
  const url = new URL(req.url ?? '/', 'http://app')
  if (req.method !== 'POST') return send(res, 405)
  const p = url.pathname
  if (p === '/apply') {
    const l = fromQuery(url)
    return l === undefined ? send(res, 400, 'bad leg') : apply(res, l, tx)
  }
  if (p === '/saga/action') {
    const l = fromQuery(url)
    return l === undefined ? send(res, 400, 'bad leg') : sagaStep(req, res, l, false)
  }
  const undo = UNDO.exec(p)
  if (undo !== null) {
    const l = leg(undo[1], undo[2], undo[3])
    return l === undefined ? send(res, 400, 'bad leg') : sagaStep(req, res, l, true)
  }
  if (p === '/tcc/try') {
    const l = fromQuery(url)
    return l === undefined ? send(res, 400, 'bad leg') : tccTry(req, res, l)
  }
  const hook = TCC_HOOK.exec(p)
  if (hook !== null) return tccFinish(req, res, hook[1] as 'confirm' | 'cancel', hook[2])
  const def = DEFAULT_HOOK.exec(p)
  if (def !== null) return tccFinish(req, res, def[1] as 'confirm' | 'cancel', undefined)
  send(res, 404)
}

const recovered = await txm.recover()
await txm.ensureBarrier()
const server = createServer(
  txm.handler(async (req, res, tx) => {
    try {
      await handle(req, res, tx)
    } catch (err) {
      process.stderr.write(`${SERVICE}: ${req.method ?? ''} ${req.url ?? ''} failed: ${(err as Error).message}\n`)
      if (!res.headersSent) res.writeHead(500, { 'content-length': '0' })
      res.end()
    }
  }),
)
server.keepAliveTimeout = KEEP_ALIVE_MS
server.listen(Number(env('PORT')), '127.0.0.1', () => {
  const port = (server.address() as AddressInfo).port
  process.stdout.write(JSON.stringify({ event: 'listening', port, pid: process.pid, recovered }) + '\n')
})
