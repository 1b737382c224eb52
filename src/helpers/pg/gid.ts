// Global transaction ids for PREPARE TRANSACTION: `txm:<service>:<txId>:<branchId>`.
// The service prefix lets recover() find this service's rows in pg_prepared_xacts (siblings
// sharing the database resolve each other's rows, DESIGN.md "Enlistment"); the tx and branch
// ids are what the sidecar's outcome endpoint is keyed by. None of the parts may contain ':',
// so a gid parses back unambiguously.
import { escapeLiteral } from 'pg'
import { PgBadIdError, PgConfigError } from './errors.js'
import { PG_HELPER_LIMITS } from './limits.js'

const ID = /^[A-Za-z0-9_-]{1,64}$/
const SERVICE = /^[A-Za-z0-9][A-Za-z0-9._-]*$/

export interface BranchIds {
  readonly txId: string
  readonly branchId: string
}

export function isValidId(id: string): boolean {
  return id.length <= PG_HELPER_LIMITS.maxIdLength && ID.test(id)
}

export function assertService(service: string): void {
  if (service.length > PG_HELPER_LIMITS.maxServiceLength || !SERVICE.test(service)) {
    throw new PgConfigError(
      `service must be 1-${PG_HELPER_LIMITS.maxServiceLength} characters of [A-Za-z0-9._-] starting with a letter or digit, got ${JSON.stringify(service)}`,
    )
  }
}

export function gidPrefix(service: string): string {
  return `txm:${service}:`
}

/** The gid of a branch; throws PgBadIdError for invalid ids or a gid over Postgres' limit. */
export function makeGid(service: string, ids: BranchIds): string {
  if (!isValidId(ids.txId))
    throw new PgBadIdError(
      `txmesh-tx-id must match [A-Za-z0-9_-]{1,64}, got ${JSON.stringify(ids.txId.slice(0, PG_HELPER_LIMITS.echoChars))}`,
    )
  if (!isValidId(ids.branchId))
    throw new PgBadIdError(
      `txmesh-branch-id must match [A-Za-z0-9_-]{1,64}, got ${JSON.stringify(ids.branchId.slice(0, PG_HELPER_LIMITS.echoChars))}`,
    )
  const gid = `${gidPrefix(service)}${ids.txId}:${ids.branchId}`
  // All characters are ASCII, so length is the byte length; the check stays byte-exact anyway.
  const bytes = Buffer.byteLength(gid)
  if (bytes > PG_HELPER_LIMITS.maxGidBytes) {
    throw new PgBadIdError(
      `global id ${gid} would be ${bytes} bytes; Postgres allows ${PG_HELPER_LIMITS.maxGidBytes} (GIDSIZE 200 with its NUL): use shorter tx/branch ids or a shorter service name`,
    )
  }
  return gid
}

/** Inverse of makeGid for rows of this service; undefined for anything that is not ours. */
export function parseGid(service: string, gid: string): BranchIds | undefined {
  const prefix = gidPrefix(service)
  if (!gid.startsWith(prefix)) return undefined
  const parts = gid.slice(prefix.length).split(':')
  if (parts.length !== 2) return undefined
  const [txId, branchId] = parts as [string, string]
  return isValidId(txId) && isValidId(branchId) ? { txId, branchId } : undefined
}

/**
 * The gid as a SQL literal. PREPARE TRANSACTION / COMMIT PREPARED / ROLLBACK PREPARED take no
 * bind parameters, so the gid is spliced into the statement: it is validated above and escaped
 * here as well, so a validation bug cannot become SQL injection.
 */
export function gidLiteral(gid: string): string {
  return escapeLiteral(gid)
}
