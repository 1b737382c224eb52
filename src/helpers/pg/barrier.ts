// Sub-transaction barrier for saga and tcc steps (the technique of DTM's barrier): the app's work
// for one (txId, branchId, op) runs in one local transaction together with a row in
// txmesh_barrier, so the effect and the record that it happened commit or vanish together.
// That row filters the three anomalies a retrying, reordering network produces:
//   duplicate: the (tx, branch, op) row exists already -> the step already ran, fn is skipped.
//   empty compensation: compensate/cancel first inserts its origin's row (action/try, reason =
//     the compensating op). If that insert succeeds, the origin never ran: nothing to undo, fn is
//     skipped and the call succeeds.
//   hanging: an action/try whose row a compensate/cancel inserted already came too late: fn is
//     skipped and the caller must refuse it (409), or it would apply an effect nobody undoes.
// Concurrent calls of the same key serialize on the primary key: INSERT ... ON CONFLICT waits for
// the other transaction and then sees its committed row, or inserts if it rolled back.
import type { IncomingMessage } from 'node:http'
import type { PoolClient } from 'pg'
import {
  PgBadIdError,
  PgBadOpError,
  PgError,
  PgOutcomeUnknownError,
  PgUnavailableError,
  messageOf,
  sqlstateOf,
} from './errors.js'
import { isValidId } from './gid.js'
import { PG_HELPER_LIMITS as L } from './limits.js'

/** Request headers the sidecar sets (and overwrites) on saga/tcc calls to its app. */
export const TX_ID_HEADER = 'txmesh-tx-id'
export const BRANCH_ID_HEADER = 'txmesh-branch-id'
export const OP_HEADER = 'txmesh-op'

export const BARRIER_OPS = ['action', 'compensate', 'try', 'confirm', 'cancel'] as const
export type BarrierOp = (typeof BARRIER_OPS)[number]

export interface BarrierIds {
  readonly txId: string
  readonly branchId: string
  readonly op: BarrierOp
}

export type BarrierSkip = 'duplicate' | 'empty' | 'hanging'

/** `ran: false` never throws: the step succeeds (duplicate, empty) or must be refused (hanging). */
export type BarrierResult<T> =
  { readonly ran: true; readonly value: T } | { readonly ran: false; readonly reason: BarrierSkip }

export const BARRIER_TABLE = 'txmesh_barrier'

// reason: the op whose call inserted the row (differs from `op` only for a row a
// compensate/cancel inserted on behalf of its origin, which is how a hanging try is recognised).
const CREATE_TABLE = `CREATE TABLE IF NOT EXISTS ${BARRIER_TABLE} (
  tx_id text NOT NULL,
  branch_id text NOT NULL,
  op text NOT NULL,
  reason text NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (tx_id, branch_id, op)
)`
const INSERT_ROW = `INSERT INTO ${BARRIER_TABLE} (tx_id, branch_id, op, reason) VALUES ($1, $2, $3, $4) ON CONFLICT (tx_id, branch_id, op) DO NOTHING`
const SELECT_REASON = `SELECT reason FROM ${BARRIER_TABLE} WHERE tx_id = $1 AND branch_id = $2 AND op = $3`

/** The op a compensating op undoes; the others have no origin. */
const ORIGIN: Readonly<Partial<Record<BarrierOp, BarrierOp>>> = { compensate: 'action', cancel: 'try' }

export function isBarrierOp(v: unknown): v is BarrierOp {
  return typeof v === 'string' && (BARRIER_OPS as readonly string[]).includes(v)
}

export function badOpError(v: unknown): PgBadOpError {
  const got = v === undefined ? 'nothing' : JSON.stringify(String(v).slice(0, L.echoChars))
  return new PgBadOpError(`${OP_HEADER} must be one of ${BARRIER_OPS.join(', ')}, got ${got}`)
}

/**
 * Validated barrier ids, from the three request headers or from an object (checked again: the
 * ids end up in the table's primary key, and JS callers bypass the types).
 * Throws PgBadIdError / PgBadOpError.
 */
export function barrierIds(from: IncomingMessage | BarrierIds): BarrierIds {
  const raw: { txId: unknown; branchId: unknown; op: unknown } =
    'headers' in from
      ? { txId: from.headers[TX_ID_HEADER], branchId: from.headers[BRANCH_ID_HEADER], op: from.headers[OP_HEADER] }
      : from
  const txId = checkId(TX_ID_HEADER, raw.txId)
  const branchId = checkId(BRANCH_ID_HEADER, raw.branchId)
  if (!isBarrierOp(raw.op)) throw badOpError(raw.op)
  return { txId, branchId, op: raw.op }
}

function checkId(name: string, v: unknown): string {
  if (typeof v === 'string' && isValidId(v)) return v
  const got = v === undefined ? 'nothing' : JSON.stringify(String(v).slice(0, L.echoChars))
  throw new PgBadIdError(`${name} must match [A-Za-z0-9_-]{1,${L.maxIdLength}}, got ${got}`)
}

/**
 * The pure decision, from what the inserts reported. `originInserted` is undefined for ops
 * without an origin; `existingReason` is the reason of the row that made the own insert a no-op.
 */
export function barrierDecision(
  op: BarrierOp,
  originInserted: boolean | undefined,
  ownInserted: boolean,
  existingReason: string | undefined,
): { readonly run: true } | { readonly run: false; readonly reason: BarrierSkip } {
  // The origin row was missing: the origin never ran (and now never will: it would hang).
  if (originInserted === true) return { run: false, reason: 'empty' }
  if (ownInserted) return { run: true }
  // An action/try row a compensating op wrote on its behalf: this call arrived after its undo.
  if (existingReason !== undefined && ORIGIN[existingReason as BarrierOp] === op)
    return { run: false, reason: 'hanging' }
  return { run: false, reason: 'duplicate' }
}

/** CREATE TABLE IF NOT EXISTS that survives other sessions creating the table at the same time. */
export async function createBarrierTable(c: PoolClient): Promise<void> {
  return createTableOnce(c, BARRIER_TABLE, CREATE_TABLE)
}

/** `ddl` (CREATE TABLE IF NOT EXISTS `table`), surviving other sessions creating it at once. */
export async function createTableOnce(c: PoolClient, table: string, ddl: string): Promise<void> {
  for (let attempt = 1; ; attempt++) {
    try {
      // Checked first: an app whose role may not CREATE in the schema (the table made by a
      // migration) must not fail here, and IF NOT EXISTS checks the privilege before existence.
      const found = await c.query<{ t: string | null }>('SELECT to_regclass($1)::text AS t', [table])
      if (found.rows[0]?.t != null) return
      await c.query(ddl)
      return
    } catch (err) {
      const sqlstate = sqlstateOf(err)
      // Two sessions creating the table at once: the loser gets 23505 (pg_type's unique index),
      // 42710 (its row type already exists) or 42P07 once the winner committed. The next attempt
      // finds the table.
      const race = sqlstate === '23505' || sqlstate === '42P07' || sqlstate === '42710'
      if (race && attempt < L.barrierCreateAttempts) continue
      if (sqlstate === undefined) throw err
      throw new PgError(`cannot create ${table}: ${messageOf(err)}`, { sqlstate })
    }
  }
}

/**
 * Runs the barrier and `fn` in one transaction on a connection from `connect`, and gives the
 * connection back (destroyed when it failed). `fn`'s own error is rethrown after ROLLBACK.
 */
export function runBarrier<T>(
  connect: () => Promise<PoolClient>,
  ids: BarrierIds,
  fn: (client: PoolClient) => Promise<T>,
): Promise<BarrierResult<T>> {
  return runLocal(connect, 'the barrier', async (c) => {
    const decision = await bookkeep(c, ids)
    return decision.run ? { ran: true, value: await fn(c) } : { ran: false, reason: decision.reason }
  })
}

/**
 * `work` in one local transaction (BEGIN ... COMMIT) on a connection from `connect`, given back
 * afterwards (destroyed when it failed). `work`'s error is rethrown after ROLLBACK; a COMMIT that
 * Postgres refused is a PgError, one whose outcome the lost connection hides PgOutcomeUnknownError.
 * `what`: the bookkeeping's name in those errors.
 */
export async function runLocal<R>(
  connect: () => Promise<PoolClient>,
  what: string,
  work: (client: PoolClient) => Promise<R>,
): Promise<R> {
  const c = await connect()
  let broken: Error | undefined
  const onError = (err: Error): void => {
    broken ??= err
  }
  c.on('error', onError)
  let phase: 'begin' | 'work' | 'commit' = 'begin'
  try {
    try {
      await c.query('BEGIN')
    } catch (err) {
      throw new PgUnavailableError(`BEGIN failed: ${messageOf(err)}`, { sqlstate: sqlstateOf(err) })
    }
    phase = 'work'
    const result = await work(c)
    phase = 'commit'
    await commit(c, what)
    return result
  } catch (err) {
    if (phase === 'work') {
      // fn's or the bookkeeping's failure: nothing of this call may stay.
      if (broken === undefined) {
        try {
          await c.query('ROLLBACK')
        } catch (e) {
          broken = asError(e) // destroying the session rolls the transaction back as well
        }
      }
    } else if (!(err instanceof PgError)) {
      // BEGIN failed, or the connection was lost during COMMIT: the session is of no more use.
      broken ??= asError(err)
    }
    throw err
  } finally {
    c.removeListener('error', onError)
    c.release(broken)
  }
}

async function bookkeep(
  c: PoolClient,
  ids: BarrierIds,
): Promise<{ readonly run: true } | { readonly run: false; readonly reason: BarrierSkip }> {
  const insert = async (op: BarrierOp): Promise<boolean> =>
    (await sql(() => c.query(INSERT_ROW, [ids.txId, ids.branchId, op, ids.op]))).rowCount === 1
  const origin = ORIGIN[ids.op]
  const originInserted = origin === undefined ? undefined : await insert(origin)
  const ownInserted = await insert(ids.op)
  let existingReason: string | undefined
  if (!ownInserted && originInserted !== true) {
    existingReason = (await sql(() => c.query<{ reason: string }>(SELECT_REASON, [ids.txId, ids.branchId, ids.op])))
      .rows[0]?.reason
  }
  return barrierDecision(ids.op, originInserted, ownInserted, existingReason)
}

async function commit(c: PoolClient, what: string): Promise<void> {
  let command: string
  try {
    command = (await c.query('COMMIT')).command
  } catch (err) {
    const sqlstate = sqlstateOf(err)
    if (sqlstate !== undefined)
      throw new PgError(`COMMIT of ${what} failed (effect and its row rolled back): ${messageOf(err)}`, {
        sqlstate,
      })
    // Committed or not is unknown; a retry is safe either way, which is the bookkeeping's point.
    throw new PgOutcomeUnknownError(
      `the connection was lost during the COMMIT of ${what}; retry (its row makes it safe): ${messageOf(err)}`,
      { cause: err },
    )
  }
  // COMMIT of a transaction in the aborted state (fn caught a failed statement) answers ROLLBACK.
  if (command !== 'COMMIT')
    throw new PgError(`a statement inside ${what} failed, so Postgres rolled back the effect and its row`)
}

/** Bookkeeping statements fail as PgError (with the SQLSTATE when Postgres reported one). */
export async function sql<R>(run: () => Promise<R>, what = 'barrier'): Promise<R> {
  try {
    return await run()
  } catch (err) {
    throw new PgError(`${what} bookkeeping failed: ${messageOf(err)}`, { cause: err, sqlstate: sqlstateOf(err) })
  }
}

function asError(err: unknown): Error {
  return err instanceof Error ? err : new Error(String(err))
}
