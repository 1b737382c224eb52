// The state of one branch while it is open (its connection, its turn-taking, why it is doomed)
// and the tombstone it leaves when it is finished; the life of a branch is drawn in helper.ts.
import type { PoolClient } from 'pg'
import { PgBranchClosedError, type TxmeshPgError } from './errors.js'
import type { BranchIds } from './gid.js'
import type { BranchQueue } from './queue.js'

export type Tombstone =
  | { readonly kind: 'prepared' | 'read-only' | 'committed' | 'aborted' }
  | { readonly kind: 'failed'; readonly error: TxmeshPgError }
  // PREPARE lost its connection: whether the row exists is known only to pg_prepared_xacts.
  | { readonly kind: 'prepare-unknown' }
  // A one-phase COMMIT lost its connection: txid_status(xid) tells what happened.
  | { readonly kind: 'commit-unknown'; readonly xid: string }

export interface Branch {
  readonly ids: BranchIds
  readonly gid: string
  state: 'opening' | 'open' | 'closed'
  client: PoolClient | undefined
  /** Doomed: prepare votes no with this, and the branch is rolled back when its holder ends. */
  failure: TxmeshPgError | undefined
  /** The connection reported an error: it is destroyed, never returned to the pool. */
  broken: Error | undefined
  /** What requests that waited on a branch that closed meanwhile are told. */
  closedWith: TxmeshPgError | undefined
  readonly queue: BranchQueue
  idleTimer: NodeJS.Timeout | undefined
  readonly onClientError: (err: Error) => void
  /**
   * A data-changing statement run through `tx.query` touched a row, so Postgres has given the
   * transaction an xid: prepare skips its read-only check (one round trip less per branch).
   */
  wrote: boolean
}

/** Command tags whose rows, when any were touched, mean the transaction holds an xid. */
export const WRITE_COMMANDS = new Set(['INSERT', 'UPDATE', 'DELETE', 'MERGE'])

// What a late request of a branch finished normally is told: one instance each, made once (an
// error's stack trace costs more than the rest of closing a branch, and nobody reads it).
export const CLOSED_READ_ONLY = new PgBranchClosedError('the branch is finished (read-only)')
export const CLOSED_PREPARED = new PgBranchClosedError('the branch is already prepared')
export const CLOSED_COMMITTED = new PgBranchClosedError('the branch is committed')

export function lateRequestError(tomb: Tombstone): TxmeshPgError {
  if (tomb.kind === 'failed') return tomb.error
  return new PgBranchClosedError(
    `the branch is already ${tomb.kind === 'prepare-unknown' || tomb.kind === 'commit-unknown' ? 'being finished' : tomb.kind}; a new request cannot join it`,
  )
}

export function openClient(b: Branch): PoolClient {
  if (b.client === undefined) throw new Error(`branch ${b.gid} is open without a connection`)
  return b.client
}

export async function currentXid(client: PoolClient): Promise<string | null> {
  const r = await client.query<{ xid: string | null }>('SELECT txid_current_if_assigned()::text AS xid')
  return r.rows[0]?.xid ?? null
}

export function asError(err: unknown): Error {
  return err instanceof Error ? err : new Error(String(err))
}
