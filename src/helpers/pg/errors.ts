// Error registry of the Postgres participant helper. The helper runs in the app, not in the
// sidecar, so its codes live here (all prefixed TXM_PG_) and are documented in docs/errors.md's
// "txmesh/pg" section. Every answer the helper writes itself carries the
// status, the header `x-txmesh-error: CODE` and `{"error":{"code","message"[,"sqlstate"]}}`,
// the same shape the sidecar uses.

export abstract class TxmeshPgError extends Error {
  abstract readonly code: string
  abstract readonly status: number
  /** Postgres SQLSTATE when the failure came from the server. */
  readonly sqlstate: string | undefined
  constructor(message: string, options?: { cause?: unknown; sqlstate?: string | undefined }) {
    super(message, options?.cause === undefined ? undefined : { cause: options.cause })
    this.name = new.target.name
    this.sqlstate = options?.sqlstate
  }
}

/** Missing or malformed txmesh-tx-id / txmesh-branch-id, or a gid over Postgres' 199 bytes. */
export class PgBadIdError extends TxmeshPgError {
  readonly code = 'TXM_PG_BAD_ID'
  readonly status = 400
}

/** txmesh-op present but not one of action, compensate, try, confirm, cancel (or repeated). */
export class PgBadOpError extends TxmeshPgError {
  readonly code = 'TXM_PG_BAD_OP'
  readonly status = 400
}

/** The batch hook's body is not `{items: [{hook, tx, branch}, ...]}` within the helper's bounds. */
export class PgBadBatchError extends TxmeshPgError {
  readonly code = 'TXM_PG_BAD_BATCH'
  readonly status = 400
}

export class PgMethodNotAllowedError extends TxmeshPgError {
  readonly code = 'TXM_PG_METHOD_NOT_ALLOWED'
  readonly status = 405
}

/** Commit/abort of a gid with nothing open or prepared: already finished (idempotent). */
export class PgNotFoundError extends TxmeshPgError {
  readonly code = 'TXM_PG_NOT_FOUND'
  readonly status = 404
}

/** A business request of a branch that is already prepared or finished. */
export class PgBranchClosedError extends TxmeshPgError {
  readonly code = 'TXM_PG_BRANCH_CLOSED'
  readonly status = 409
}

/** Vote no: a request of the branch failed (status >= 400, connection lost) or it was aborted. */
export class PgBranchFailedError extends TxmeshPgError {
  readonly code = 'TXM_PG_BRANCH_FAILED'
  readonly status = 409
}

/** Vote no: the branch sat idle past idleTimeoutMs and was rolled back. */
export class PgBranchExpiredError extends TxmeshPgError {
  readonly code = 'TXM_PG_BRANCH_EXPIRED'
  readonly status = 409
}

/** Vote no: prepare for a branch this app instance never saw (nothing open, nothing prepared). */
export class PgBranchUnknownError extends TxmeshPgError {
  readonly code = 'TXM_PG_BRANCH_UNKNOWN'
  readonly status = 409
}

/** Vote no: Postgres refused PREPARE TRANSACTION (its transaction is rolled back). */
export class PgPrepareFailedError extends TxmeshPgError {
  readonly code = 'TXM_PG_PREPARE_FAILED'
  readonly status = 409
}

export class PgTooManyOpenError extends TxmeshPgError {
  readonly code = 'TXM_PG_TOO_MANY_OPEN'
  readonly status = 503
}

export class PgBranchBusyError extends TxmeshPgError {
  readonly code = 'TXM_PG_BRANCH_BUSY'
  readonly status = 503
}

/** No pool connection within the connect timeout, or BEGIN failed. */
export class PgUnavailableError extends TxmeshPgError {
  readonly code = 'TXM_PG_UNAVAILABLE'
  readonly status = 503
}

export class PgClosedError extends TxmeshPgError {
  readonly code = 'TXM_PG_CLOSED'
  readonly status = 503
}

/** A one-phase commit lost its connection and Postgres cannot tell the outcome yet: retry. */
export class PgOutcomeUnknownError extends TxmeshPgError {
  readonly code = 'TXM_PG_OUTCOME_UNKNOWN'
  readonly status = 500
}

/** Postgres failed while finishing a branch (COMMIT/ROLLBACK PREPARED, lookups): retry. */
export class PgError extends TxmeshPgError {
  readonly code = 'TXM_PG_ERROR'
  readonly status = 500
}

/** Bad options to createTxmeshPg (thrown, never an HTTP answer). */
export class PgConfigError extends TxmeshPgError {
  readonly code = 'TXM_PG_CONFIG_INVALID'
  readonly status = 500
}

export const PG_ERROR_CLASSES = [
  PgBadIdError,
  PgBadOpError,
  PgBadBatchError,
  PgMethodNotAllowedError,
  PgNotFoundError,
  PgBranchClosedError,
  PgBranchFailedError,
  PgBranchExpiredError,
  PgBranchUnknownError,
  PgPrepareFailedError,
  PgTooManyOpenError,
  PgBranchBusyError,
  PgUnavailableError,
  PgClosedError,
  PgOutcomeUnknownError,
  PgError,
  PgConfigError,
] as const

/** Every code of the helper with its status, for docs and tests. */
export function pgErrorCodes(): { code: string; status: number; name: string }[] {
  return PG_ERROR_CLASSES.map((C) => {
    const e = new C('')
    return { code: e.code, status: e.status, name: C.name }
  })
}

/** A Postgres server error (has a SQLSTATE) as opposed to a connection/client failure. */
export function sqlstateOf(err: unknown): string | undefined {
  // pg's DatabaseError carries `severity` and the SQLSTATE in `code`; Node's socket errors also
  // have a `code` (EPIPE is five letters too) but no severity. Structural, so a second copy of
  // pg in the app's tree does not defeat an instanceof check.
  if (typeof err !== 'object' || err === null || !('code' in err) || !('severity' in err)) return undefined
  const { code, severity } = err as { code: unknown; severity: unknown }
  return typeof code === 'string' && typeof severity === 'string' && /^[0-9A-Z]{5}$/.test(code) ? code : undefined
}

export function messageOf(err: unknown): string {
  return err instanceof Error ? err.message : String(err)
}
