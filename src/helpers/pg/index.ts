// txmesh/pg: the Postgres participant helper for Node apps (DESIGN.md "Participant helper").
//
//   import { createTxmeshPg } from 'txmesh/pg'
//   const txm = createTxmeshPg({ pool, service: 'payments' })
//   await txm.recover()
//   http.createServer(txm.handler(async (req, res, tx) => { ... tx?.query(...) ... }))
//   saga/tcc steps: await txm.barrier(req, (client) => client.query(...))
//   subscriptions: await txm.inbox(req, (client) => client.query(...))
export { createTxmeshPg } from './helper.js'
export type {
  Next,
  TxmeshHandler,
  TxmeshPg,
  TxmeshPgOptions,
  TxmeshPgStats,
  TxmeshPgTx,
  TxmeshRequest,
} from './helper.js'
export type { RecoverResult } from './recover.js'
export type { TxmeshPgEvent, TxmeshPgEventName } from './events.js'
export { gidPrefix, isValidId, makeGid, parseGid } from './gid.js'
export { PG_HELPER_LIMITS } from './limits.js'
export { BARRIER_OPS, BARRIER_TABLE } from './barrier.js'
export type { BarrierIds, BarrierOp, BarrierResult, BarrierSkip } from './barrier.js'
export { INBOX_TABLE, MESSAGE_ID_HEADER, SUBSCRIPTION_HEADER } from './inbox.js'
export type { InboxIds, InboxResult } from './inbox.js'
export {
  PG_ERROR_CLASSES,
  PgBadIdError,
  PgBadOpError,
  PgBranchBusyError,
  PgBranchClosedError,
  PgBranchExpiredError,
  PgBranchFailedError,
  PgBranchUnknownError,
  PgClosedError,
  PgConfigError,
  PgError,
  PgMethodNotAllowedError,
  PgNotFoundError,
  PgOutcomeUnknownError,
  PgPrepareFailedError,
  PgTooManyOpenError,
  PgUnavailableError,
  TxmeshPgError,
  pgErrorCodes,
} from './errors.js'
