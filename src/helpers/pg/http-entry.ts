// What the HTTP entry points (middleware, handler) need besides PgParticipant: the ids a
// request carries and the answer to a failure of the helper itself.
import type { IncomingMessage } from 'node:http'
import { BRANCH_ID_HEADER, TX_ID_HEADER } from './barrier.js'
import { PgError, TxmeshPgError, messageOf, sqlstateOf } from './errors.js'
import type { BranchIds } from './gid.js'

/** The txmesh ids of a request; undefined when it carries neither header. */
export function readIds(req: IncomingMessage): BranchIds | undefined {
  const txId = req.headers[TX_ID_HEADER]
  const branchId = req.headers[BRANCH_ID_HEADER]
  if (txId === undefined && branchId === undefined) return undefined
  // Half a pair or a repeated header is malformed; makeGid rejects '' and ', ' with a clear error.
  return { txId: typeof txId === 'string' ? txId : '', branchId: typeof branchId === 'string' ? branchId : '' }
}

/** A bug or an unexpected failure of the helper itself: 500 TXM_PG_ERROR with the reason. */
export function internal(err: unknown): TxmeshPgError {
  return err instanceof TxmeshPgError
    ? err
    : new PgError(`txmesh/pg failed: ${messageOf(err)}`, { sqlstate: sqlstateOf(err) })
}

export function isThenable(v: unknown): v is PromiseLike<unknown> {
  return typeof v === 'object' && v !== null && typeof (v as { then?: unknown }).then === 'function'
}
