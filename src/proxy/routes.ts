// Route policy matching: first route whose direction, host, path prefix and methods all match
// wins; otherwise the config's default policy applies (Gateway API HTTPRoute semantics for
// prefixes: `/pay` matches `/pay` and `/pay/x`, not `/payment`).
import type { Direction, RoutePolicy, SidecarConfig } from '../config/types.js'
import { splitAuthority } from '../address.js'

export function hostName(hostHeader: string | undefined): string {
  if (hostHeader === undefined) return ''
  // [v6]:port, name:port, name; one that is none of these matches routes as written.
  return (splitAuthority(hostHeader)?.host ?? hostHeader).toLowerCase()
}

export function prefixMatches(prefix: string, url: string): boolean {
  if (prefix === '/') return true
  const q = url.indexOf('?')
  const path = q < 0 ? url : url.slice(0, q)
  if (!path.startsWith(prefix)) return false
  if (path.length === prefix.length || prefix.endsWith('/')) return true
  return path.charCodeAt(prefix.length) === 47 /* '/' */
}

export function matchRoute(
  cfg: SidecarConfig,
  direction: Direction,
  host: string,
  path: string,
  method: string,
): RoutePolicy {
  for (const r of cfg.routes) {
    if (!r.directions.has(direction)) continue
    if (r.host !== undefined && r.host !== host) continue
    if (r.methods !== undefined && !r.methods.has(method)) continue
    if (!prefixMatches(r.pathPrefix, path)) continue
    return r
  }
  return cfg.defaultRoute
}
