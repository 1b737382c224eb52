// The options of createTxmeshPg, their defaults and the checks that refuse bad ones at
// construction (PgConfigError), so nothing later re-checks them.
import type { Pool } from 'pg'
import { PgConfigError } from './errors.js'
import type { TxmeshPgEvent } from './events.js'

export interface TxmeshPgOptions {
  /** The app's pool. Each open branch holds one of its connections: size `max` above maxOpen. */
  pool: Pool
  /** Service name (same as the sidecar's `service`); part of every gid. */
  service: string
  /** The local sidecar's admin listener, for recover(). Default http://127.0.0.1:15000. */
  sidecarAdmin?: string
  /**
   * The sidecar's admin token (its config `admin`), sent as a Bearer token by recover(). Default:
   * the TXMESH_ADMIN_TOKEN environment variable, when set.
   */
  adminToken?: string
  /** Open (unprepared) branches at most; more get 503 TXM_PG_TOO_MANY_OPEN. Default 64. */
  maxOpen?: number
  /** An open branch idle this long is rolled back; its prepare then votes no. Default 60 s. */
  idleTimeoutMs?: number
  /**
   * Every this often, resolve prepared rows of this service older than the interval, as
   * recover() does (rows a restarted sidecar no longer knows). 0: only when recover() is called.
   * Default 30 s.
   */
  recoverIntervalMs?: number
  /** Where the hooks are served. Default /.well-known/txmesh. */
  hookPrefix?: string
  /** Structured events (opened, prepared, failed, recovered, ...). Must not throw. */
  onEvent?: (event: TxmeshPgEvent) => void
}

export const DEFAULT_SIDECAR_ADMIN = 'http://127.0.0.1:15000'
export const DEFAULT_HOOK_PREFIX = '/.well-known/txmesh'

export function checkInt(name: string, v: number, min: number, max: number): number {
  if (!Number.isInteger(v) || v < min || v > max)
    throw new PgConfigError(`${name} must be an integer in [${min}, ${max}], got ${v}`)
  return v
}

export function checkPrefix(p: string): string {
  if (!/^\/[A-Za-z0-9._~\-/]*[^/]$/.test(p))
    throw new PgConfigError(`hookPrefix must be an absolute path without a trailing slash, got ${JSON.stringify(p)}`)
  return p
}

export function checkAdminUrl(u: string): string {
  let url: URL
  try {
    url = new URL(u)
  } catch {
    throw new PgConfigError(`sidecarAdmin must be a URL, got ${JSON.stringify(u)}`)
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:')
    throw new PgConfigError(`sidecarAdmin must be http(s), got ${url.protocol}`)
  return u.replace(/\/+$/, '')
}
