// The admin API's defences against the operator's own browser (issue 15, hole 10). The admin
// listener is on loopback, and docs/operations.md sends operators to its dashboard through
// `kubectl port-forward`: any page their browser shows can then send requests to it.
//   - DNS rebinding: a page at evil.example whose name is rebound to 127.0.0.1 reads and drives
//     the API as its own origin. Its requests carry `Host: evil.example`: only loopback names,
//     the listener's own address and admin.allowedHosts are accepted.
//   - Cross-site requests: a page may POST to http://127.0.0.1:15000 without CORS if the body is
//     text/plain or a form. Browsers send `Origin` on every such request: it must be the Host's
//     own origin or one of admin.allowedOrigins; and a body is read only when it is declared
//     application/json, which no page of another origin can send without a CORS preflight (which
//     this listener never grants). Browsers also say where a request comes from in
//     `Sec-Fetch-Site`: one another site's page made (cross-site, same-site) is refused unless it
//     is the operator following a link (a navigation) or comes from admin.allowedOrigins, so a
//     page cannot load admin URLs without an Origin either (an <img> or <script> GET, which
//     browsers send without one).
// Clients that are not browsers (the CLI, txmesh/pg, scripts) send a loopback Host and no Origin,
// and JSON bodies as application/json. A request without Host is not a browser's, and passes.
import type { IncomingMessage } from 'node:http'
import {
  AdminHostRefusedError,
  AdminOriginRefusedError,
  UnsupportedMediaTypeError,
  type TxmeshError,
} from '../errors.js'
import { authorityHost, splitAuthority } from '../address.js'

export interface BrowserPolicy {
  /** Host values accepted besides loopback and the listener's address: `name` (any port) or `name:port`, lower case. */
  readonly allowedHosts: readonly string[]
  /** Origins accepted besides the request's own (`http(s)://host[:port]`), lower case. */
  readonly allowedOrigins: readonly string[]
}

/**
 * What a Host header (or an Origin's authority) may be: a name or a [v6] literal, then an optional
 * port, lowercased; the host keeps its brackets.
 */
function parseAuthority(value: string): { host: string; port: string | undefined } | undefined {
  const a = splitAuthority(value.toLowerCase())
  if (a === undefined || !(a.bracketed ? /^[0-9a-f:.]+$/ : /^[a-z0-9.-]{1,253}$/).test(a.host)) return undefined
  if (a.port !== undefined && !/^\d{1,5}$/.test(a.port)) return undefined
  return { host: authorityHost(a), port: a.port }
}

/** localhost, 127.0.0.0/8, [::1] (and the IPv4-mapped 127.0.0.0/8): names no page can own. */
export function isLoopbackHost(host: string): boolean {
  if (host === 'localhost' || host === '[::1]') return true
  const v4 = /^(?:\[::ffff:)?127\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})\]?$/.exec(host)
  if (v4 === null || host.startsWith('[') !== host.endsWith(']')) return false
  return v4.slice(1).every((o) => Number(o) <= 255)
}

/**
 * The listener's own address as the socket saw it (`10.0.0.5`, `::ffff:10.0.0.5`, `fd00::5`): an
 * address literal, not a name, so no other page can be served under it; with the admin listener on
 * the pod IP, Prometheus and the CLI reach it so.
 */
function isLocalAddress(host: string, local: string | undefined): boolean {
  if (local === undefined) return false
  const bare = host.startsWith('[') ? host.slice(1, -1) : host
  const l = local.toLowerCase()
  return bare === l || `::ffff:${bare}` === l
}

function hostAllowed(
  host: { host: string; port: string | undefined },
  policy: BrowserPolicy,
  local: string | undefined,
): boolean {
  if (isLoopbackHost(host.host) || isLocalAddress(host.host, local)) return true
  return policy.allowedHosts.some((entry) => {
    const e = parseAuthority(entry)
    return e !== undefined && e.host === host.host && (e.port === undefined || e.port === host.port)
  })
}

/** The Origin names the same scheme-less authority as Host (default ports made explicit). */
function sameOrigin(origin: string, host: { host: string; port: string | undefined }): boolean {
  const scheme = /^(https?):\/\//.exec(origin)?.[1]
  const o = scheme === undefined ? undefined : parseAuthority(origin.slice(scheme.length + 3))
  if (o === undefined) return false
  const deflt = scheme === 'https' ? '443' : '80'
  return o.host === host.host && (o.port ?? deflt) === (host.port ?? deflt)
}

/** application/json, with any parameters (charset). */
function isJson(contentType: string): boolean {
  return (contentType.split(';')[0] as string).trim().toLowerCase() === 'application/json'
}

/** The Host and Origin checks: why the request is refused, or undefined. Quotes neither value. */
export function hostOrOriginRefusal(req: IncomingMessage, policy: BrowserPolicy): TxmeshError | undefined {
  const hostHeader = req.headers.host
  let host: { host: string; port: string | undefined } | undefined
  if (hostHeader !== undefined) {
    host = parseAuthority(hostHeader)
    if (host === undefined || !hostAllowed(host, policy, req.socket.localAddress)) {
      return new AdminHostRefusedError(
        "the admin API answers only requests whose Host is a loopback name or address, this listener's address, or in admin.allowedHosts",
      )
    }
  }
  const origin = req.headers.origin
  const allowed = origin !== undefined && policy.allowedOrigins.includes(origin.toLowerCase())
  if (origin !== undefined && !allowed && (host === undefined || !sameOrigin(origin.toLowerCase(), host))) {
    return new AdminOriginRefusedError(
      "the admin API answers requests from a page only when its Origin is the admin listener's own or in admin.allowedOrigins",
    )
  }
  const site = req.headers['sec-fetch-site']
  if (
    (site === 'cross-site' || site === 'same-site') &&
    !allowed &&
    !(req.headers['sec-fetch-mode'] === 'navigate' && (req.method === 'GET' || req.method === 'HEAD'))
  ) {
    return new AdminOriginRefusedError(
      "the admin API answers requests another site's page makes only when they come from admin.allowedOrigins (Sec-Fetch-Site)",
    )
  }
  return undefined
}

/**
 * A request that carries a body, or declares a type on a method other than GET/HEAD, must declare
 * application/json: a form or text/plain body is never parsed as JSON.
 */
export function mediaTypeRefusal(req: IncomingMessage): TxmeshError | undefined {
  const type = req.headers['content-type']
  const length = req.headers['content-length']
  const hasBody = req.headers['transfer-encoding'] !== undefined || (length !== undefined && length !== '0')
  const method = req.method ?? 'GET'
  const declares = type !== undefined && method !== 'GET' && method !== 'HEAD'
  if (!hasBody && !declares) return undefined
  if (type !== undefined && isJson(type)) return undefined
  return new UnsupportedMediaTypeError('admin request bodies must be sent as Content-Type: application/json')
}
