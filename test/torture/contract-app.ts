// The bank participant of the torture's `contract` run (issue 15): an app written from the
// README's hook contract alone ("What the participant sidecar records, and the hook contract"),
// directly on node-postgres. No txmesh/pg, no sweep of pg_prepared_xacts, no recovery of its own
// at start or later, no batch hook: whatever it prepared is finished only by the hooks its
// sidecar calls, so the sidecar's records and recovery are what the run tests.
//
//   POST /apply?transfer=T&account=N&delta=D  a 2pc leg. The branch (txmesh-tx-id and
//        txmesh-branch-id, set by the sidecar) gets its own connection and BEGIN on its first
//        request: UPDATE balance, INSERT ledger 'apply'. A refusal (a lock wait over) rolls the
//        branch back and forgets it, so its prepare answers 409.
//   POST /.well-known/txmesh/prepare  PREPARE TRANSACTION 'gid' on the branch's connection: 200;
//        an overdraft (the deferred check fails the PREPARE) or an unknown branch: 409
//   POST /.well-known/txmesh/commit   COMMIT PREPARED 'gid': 200; no such gid: 404
//   POST /.well-known/txmesh/abort    ROLLBACK of the open branch, else ROLLBACK PREPARED 'gid':
//        200; nothing of the branch: 404
// gid = SERVICE:tx:branch (the gids of one Postgres cluster share one namespace across databases).
//
// The app trusts the contract (a hook never runs while a request of its branch runs here, a
// prepare never overlaps another hook of its branch, commit only after a yes) and does nothing to
// make up for a breach of it; it only reports one: a `contract_breach` JSON line on stderr, which
// the torture counts as a violation (run.ts). It has no safeguard outside the contract by default:
// the sidecar aborts every branch that may hold work (JOINED is durable before a branch's first
// request reaches the app). IDLE_IN_TRANSACTION_MS > 0 sets Postgres's own
// idle_in_transaction_session_timeout for open branches; every branch it ends is a
// `branch_connection_lost` line, which the torture reports.
//
// Environment: DATABASE_URL, SERVICE, PORT (fixed: restarts reuse it). Prints
// {"event":"listening","port":N,"pid":N} on stdout once it listens.
// Usage: node --import tsx test/torture/contract-app.ts
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http'
import type { AddressInfo } from 'node:net'
import pg from 'pg'

function env(name: string): string {
  const v = process.env[name]
  if (v === undefined || v === '') throw new Error(`${name} is not set`)
  return v
}

const SERVICE = env('SERVICE')
// Bounds of the app, each with its reason.
// Connections: one per open branch (8 transfers in flight, one branch each here, plus branches a
// restarted sidecar forgot until Postgres ends them) and one per hook call while it runs.
const POOL_MAX = 64
// Waiting for a connection longer than this is an overload: the request fails (500) and its
// branch aborts, instead of queueing without bound.
const CONNECT_TIMEOUT_MS = 5_000
// Row locks held by a prepared branch whose decision is on its way make other transfers wait:
// they fail after this instead (and abort), so the load keeps moving (as bank-app.ts).
const LOCK_TIMEOUT_MS = 2_000
// Off by default (0): the contract alone must end every open branch. It was needed before the
// sidecar wrote JOINED, for a branch whose sidecar was killed before prepare while its
// coordinator forgot the transaction or never knew the branch (the torture's
// TORTURE_CONTRACT_IDLE_MS sets it, in ms).
const IDLE_IN_TRANSACTION_MS = Number(process.env.IDLE_IN_TRANSACTION_MS ?? 0)
// Branches remembered after their prepare, to report a request or a commit that breaks the
// contract; bounded memory.
const RECENT_KEPT = 10_000
// Keep-alive longer than the sidecar's upstream keep-alive (undici: 4 s), so the sidecar never
// reuses a connection this server is closing.
const KEEP_ALIVE_MS = 120_000

const pool = new pg.Pool({
  connectionString: env('DATABASE_URL'),
  max: POOL_MAX,
  connectionTimeoutMillis: CONNECT_TIMEOUT_MS,
  idleTimeoutMillis: 0,
  options: `-c lock_timeout=${LOCK_TIMEOUT_MS} -c idle_in_transaction_session_timeout=${IDLE_IN_TRANSACTION_MS}`,
})
pool.on('error', (err) => note('idle_connection_error', { error: err.message }))

function note(event: string, data: Record<string, unknown>): void {
  process.stderr.write(`${new Date().toISOString()} ${JSON.stringify({ event, service: SERVICE, ...data })}\n`)
}

// ---- branches ----

interface OpenBranch {
  readonly client: pg.PoolClient
  /** The connection failed (Postgres ended the session, or the network): the work is gone. */
  lost: Error | undefined
  /** Its listener of the client's errors, removed when the connection goes back to the pool. */
  readonly onError: (err: Error) => void
}

/** Branches with an open local transaction, by key (tx:branch). */
const open = new Map<string, OpenBranch>()
/** Requests of a branch running in the app now, by key. */
const running = new Map<string, number>()
/** Hook calls of a branch running in the app now, by key. */
const hooksRunning = new Map<string, { prepare: number; other: number }>()
/** Branches prepared here (this process): a later request or prepare of one breaks the contract. */
const prepared = new Set<string>()

function remember(key: string): void {
  prepared.add(key)
  if (prepared.size > RECENT_KEPT) prepared.delete(prepared.values().next().value as string)
}

const ID = /^[A-Za-z0-9_-]{1,64}$/

function branchKey(req: IncomingMessage): { key: string; gid: string; tx: string; branch: string } | undefined {
  const tx = req.headers['txmesh-tx-id']
  const branch = req.headers['txmesh-branch-id']
  if (typeof tx !== 'string' || typeof branch !== 'string' || !ID.test(tx) || !ID.test(branch)) return undefined
  return { key: `${tx}:${branch}`, gid: `${SERVICE}:${tx}:${branch}`, tx, branch }
}

function count(m: Map<string, number>, key: string, by: number): void {
  const n = (m.get(key) ?? 0) + by
  if (n === 0) m.delete(key)
  else m.set(key, n)
}

function breach(what: string, key: string, detail: Record<string, unknown> = {}): void {
  note('contract_breach', { what, branch: key, ...detail })
}

function send(res: ServerResponse, status: number, body = ''): void {
  res.writeHead(status, { 'content-type': 'text/plain', 'content-length': Buffer.byteLength(body) }).end(body)
}

function sqlstate(err: unknown): string | undefined {
  const c = (err as { code?: unknown }).code
  return typeof c === 'string' && /^[0-9A-Z]{5}$/.test(c) ? c : undefined
}

const CHECK_VIOLATION = '23514'
const LOCK_NOT_AVAILABLE = '55P03'
const UNDEFINED_OBJECT = '42704' // COMMIT/ROLLBACK PREPARED of a gid that does not exist

async function openBranch(key: string): Promise<OpenBranch> {
  const existing = open.get(key)
  if (existing !== undefined) return existing
  const client = await pool.connect()
  // A checked-out client's errors come to it (the pool listens only to idle ones): without this
  // listener, Postgres ending the session would crash the app.
  const onError = (err: Error): void => {
    if (b.lost !== undefined) return
    b.lost = err
    note('branch_connection_lost', { branch: key, code: sqlstate(err) ?? null, error: err.message })
    if (open.get(key) === b) {
      open.delete(key)
      client.removeListener('error', onError)
      client.release(err)
    }
  }
  const b: OpenBranch = { client, lost: undefined, onError }
  client.on('error', onError)
  try {
    await client.query('BEGIN')
  } catch (err) {
    // Not in `open` yet: the error listener did not release it.
    client.removeListener('error', onError)
    client.release(true)
    throw err
  }
  const raced = open.get(key)
  if (raced !== undefined) {
    client.removeListener('error', onError)
    client.release(true)
    return raced
  }
  open.set(key, b)
  return b
}

/** Forgets an open branch and gives its connection back (destroyed when it may be unusable). */
function close(key: string, b: OpenBranch, destroy: boolean): void {
  if (open.get(key) !== b) return
  open.delete(key)
  b.client.removeListener('error', b.onError)
  b.client.release(destroy || b.lost !== undefined ? true : undefined)
}

// ---- the business request ----

async function apply(req: IncomingMessage, res: ServerResponse, url: URL): Promise<void> {
  const ids = branchKey(req)
  if (ids === undefined) return send(res, 400, 'a 2pc leg needs txmesh-tx-id and txmesh-branch-id')
  const transfer = url.searchParams.get('transfer')
  const account = Number(url.searchParams.get('account'))
  const delta = Number(url.searchParams.get('delta'))
  if (
    transfer === null ||
    !ID.test(transfer) ||
    !Number.isSafeInteger(account) ||
    !Number.isSafeInteger(delta) ||
    delta === 0
  )
    return send(res, 400, 'bad leg')
  const { key } = ids
  if (prepared.has(key)) breach('request of a branch after its prepare', key)
  const hooks = hooksRunning.get(key)
  if (hooks !== undefined) breach('request while a hook of its branch runs', key, hooks)
  count(running, key, 1)
  let status = 200
  let body = 'applied'
  let b: OpenBranch | undefined
  try {
    b = await openBranch(key)
    const u = await b.client.query('UPDATE accounts SET balance = balance + $1 WHERE id = $2', [delta, account])
    if (u.rowCount !== 1) throw new Error(`account ${account} does not exist`)
    await b.client.query('INSERT INTO ledger (transfer_id, account, delta, op) VALUES ($1, $2, $3, $4)', [
      transfer,
      account,
      delta,
      'apply',
    ])
  } catch (err) {
    // The branch failed: roll it back now (its prepare answers 409 for an unknown branch).
    const s = sqlstate(err)
    status = s === LOCK_NOT_AVAILABLE ? 409 : 500
    body = s === LOCK_NOT_AVAILABLE ? 'account busy' : (err as Error).message
    if (status === 500) note('apply_failed', { branch: key, code: s ?? null, error: (err as Error).message })
    if (b !== undefined && open.get(key) === b) {
      const rolledBack = await b.client.query('ROLLBACK').then(
        () => true,
        () => false,
      )
      close(key, b, !rolledBack)
    }
  } finally {
    // Before the response head: once it left, the sidecar may send this branch's hooks.
    count(running, key, -1)
  }
  send(res, status, body)
}

// ---- the hooks ----

type Hook = 'prepare' | 'commit' | 'abort'

async function hook(req: IncomingMessage, res: ServerResponse, name: Hook): Promise<void> {
  const ids = branchKey(req)
  if (ids === undefined) return send(res, 400, 'a hook call needs txmesh-tx-id and txmesh-branch-id')
  const { key } = ids
  const n = running.get(key)
  if (n !== undefined) breach(`${name} while a request of its branch runs`, key, { requests: n })
  const h = hooksRunning.get(key) ?? { prepare: 0, other: 0 }
  if (name === 'prepare' && h.prepare + h.other > 0) breach('prepare while another hook of its branch runs', key, h)
  if (name !== 'prepare' && h.prepare > 0) breach(`${name} while the prepare of its branch runs`, key, h)
  if (name === 'commit' && open.has(key)) breach('commit of a branch that never prepared', key)
  h[name === 'prepare' ? 'prepare' : 'other']++
  hooksRunning.set(key, h)
  let answer: [number, string]
  try {
    answer =
      name === 'prepare'
        ? await prepare(key, ids.gid)
        : name === 'commit'
          ? await finishPrepared('COMMIT', ids.gid)
          : await abort(key, ids.gid)
  } finally {
    h[name === 'prepare' ? 'prepare' : 'other']--
    if (h.prepare + h.other === 0 && hooksRunning.get(key) === h) hooksRunning.delete(key)
  }
  send(res, answer[0], answer[1])
}

async function prepare(key: string, gid: string): Promise<[number, string]> {
  const b = open.get(key)
  if (b === undefined || b.lost !== undefined) {
    if (prepared.has(key)) breach('prepare of a branch already prepared', key)
    return [409, 'unknown branch']
  }
  try {
    await b.client.query(`PREPARE TRANSACTION ${pg.escapeLiteral(gid)}`)
  } catch (err) {
    // A failed PREPARE TRANSACTION ends the transaction as a rollback; the sidecar aborts the
    // branch anyway (its abort then finds nothing, or the row if the answer was lost).
    const s = sqlstate(err)
    close(key, b, s !== CHECK_VIOLATION)
    if (s === CHECK_VIOLATION) return [409, 'overdraft']
    note('prepare_failed', { branch: key, code: s ?? null, error: (err as Error).message })
    return [500, (err as Error).message]
  }
  close(key, b, false)
  remember(key)
  return [200, 'prepared']
}

async function finishPrepared(verb: 'COMMIT' | 'ROLLBACK', gid: string): Promise<[number, string]> {
  let client: pg.PoolClient
  try {
    client = await pool.connect()
  } catch (err) {
    return [503, (err as Error).message]
  }
  let broken = false
  try {
    await client.query(`${verb} PREPARED ${pg.escapeLiteral(gid)}`)
    return [200, verb === 'COMMIT' ? 'committed' : 'rolled back']
  } catch (err) {
    const s = sqlstate(err)
    if (s === UNDEFINED_OBJECT) return [404, 'no such prepared transaction']
    broken = s === undefined
    note(`${verb.toLowerCase()}_prepared_failed`, { gid, code: s ?? null, error: (err as Error).message })
    // e.g. "is busy" while another session finishes it: the sidecar retries.
    return [503, (err as Error).message]
  } finally {
    client.release(broken ? true : undefined)
  }
}

async function abort(key: string, gid: string): Promise<[number, string]> {
  const b = open.get(key)
  if (b === undefined) return finishPrepared('ROLLBACK', gid)
  const ok = await b.client.query('ROLLBACK').then(
    () => true,
    () => false,
  )
  close(key, b, !ok)
  // A lost connection rolled back by itself.
  return [200, 'rolled back']
}

// ---- routing ----

const HOOK = /^\/\.well-known\/txmesh\/(prepare|commit|abort)$/

async function handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
  req.resume()
  const url = new URL(req.url ?? '/', 'http://app')
  if (req.method !== 'POST') return send(res, 405)
  if (url.pathname === '/apply') return apply(req, res, url)
  const h = HOOK.exec(url.pathname)
  if (h !== null) return hook(req, res, h[1] as Hook)
  send(res, 404)
}

const server = createServer((req, res) => {
  handle(req, res).catch((err: unknown) => {
    note('request_failed', { method: req.method ?? '', url: req.url ?? '', error: (err as Error).message })
    if (!res.headersSent) res.writeHead(500, { 'content-length': '0' })
    res.end()
  })
})
server.keepAliveTimeout = KEEP_ALIVE_MS
server.listen(Number(env('PORT')), '127.0.0.1', () => {
  const port = (server.address() as AddressInfo).port
  process.stdout.write(JSON.stringify({ event: 'listening', port, pid: process.pid }) + '\n')
})
