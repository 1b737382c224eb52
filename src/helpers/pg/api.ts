// The public shape of txmesh/pg besides its options: what createTxmeshPg returns and what a
// transactional request carries.
import type { IncomingMessage, ServerResponse } from 'node:http'
import type { PoolClient, QueryResult, QueryResultRow } from 'pg'
import type { BarrierIds, BarrierResult } from './barrier.js'
import type { InboxIds, InboxResult } from './inbox.js'
import type { RecoverResult } from './recover.js'

/** What a transactional request gets as `req.txmesh` (and as `tx` in handler()). */
export interface TxmeshPgTx {
  /** The branch's connection, inside BEGIN. Yours only until your response ends. */
  readonly client: PoolClient
  readonly txId: string
  readonly branchId: string
  /** The gid the branch will be prepared under. */
  readonly gid: string
  /** `client.query`, refused once this request's response has ended. */
  query<R extends QueryResultRow = QueryResultRow>(text: string, values?: unknown[]): Promise<QueryResult<R>>
}

/** A request after the middleware: `txmesh` is set when it belongs to a transaction. */
export type TxmeshRequest = IncomingMessage & { txmesh?: TxmeshPgTx }
export type Next = (err?: unknown) => void
export type TxmeshHandler = (req: IncomingMessage, res: ServerResponse, tx: TxmeshPgTx | undefined) => unknown

export interface TxmeshPgStats {
  /** Branches holding a connection (opening or open, not yet prepared). */
  readonly open: number
  readonly maxOpen: number
  /** Finished branches remembered. */
  readonly remembered: number
}

export interface TxmeshPg {
  /** connect/express middleware: answers the hooks, opens/joins branches, passes the rest. */
  readonly middleware: (req: IncomingMessage, res: ServerResponse, next: Next) => void
  /** node:http request listener around `fn` (tx is undefined for non-transactional requests). */
  handler(fn: TxmeshHandler): (req: IncomingMessage, res: ServerResponse) => void
  /** Resolve this service's prepared rows with the sidecar's outcomes (call on app start). */
  recover(): Promise<RecoverResult>
  /**
   * Runs `fn` in one local transaction with the sub-transaction barrier of a saga/tcc call (ids
   * from the request's txmesh-tx-id / txmesh-branch-id / txmesh-op, or given): the effect and the
   * barrier row commit together. Duplicates and empty compensations are skipped (`ran: false`,
   * answer success); `reason: 'hanging'` must be refused (409). `fn`'s error is rethrown after
   * ROLLBACK. Throws PgBadIdError / PgBadOpError (400) for bad ids, PgUnavailableError (503).
   */
  barrier<T>(req: IncomingMessage | BarrierIds, fn: (client: PoolClient) => Promise<T>): Promise<BarrierResult<T>>
  /** Creates the txmesh_barrier table if it is missing (barrier() does it on first use). */
  ensureBarrier(): Promise<void>
  /**
   * Runs `fn` for a subscription's delivery (ids from the request's txmesh-subscription /
   * txmesh-message-id, or given) in one local transaction with a row in txmesh_inbox: the effect
   * happens once per message id and subscription in this database. A redelivery skips `fn` and
   * returns what the first run returned (`ran: false`). `fn`'s error is rethrown after ROLLBACK.
   * Throws PgBadIdError (400) for bad ids, PgUnavailableError (503).
   */
  inbox<T>(req: IncomingMessage | InboxIds, fn: (client: PoolClient) => Promise<T>): Promise<InboxResult<T>>
  /** Creates the txmesh_inbox table if it is missing (inbox() does it on first use). */
  ensureInbox(): Promise<void>
  /** Roll back open branches and give their connections back. Does not end the pool. */
  close(): Promise<void>
  stats(): TxmeshPgStats
}
