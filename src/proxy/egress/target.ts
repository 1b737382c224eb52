// Egress: where does an outgoing call of the local app go? The app reaches the egress either as
// its HTTP proxy (absolute-form `GET http://payments/pay`) or through an iptables redirect
// (origin-form `GET /pay` with `Host: payments`). The host is looked up in the config's service
// map; otherwise host:port is used as given (port 80 by default). With peer TLS (config `tls`)
// the services of the map are peer sidecars' ingresses and are reached over HTTPS.
import type { SidecarConfig } from '../../config/types.js'
import { BadRequestError, ProxyLoopError, type TxmeshError } from '../../errors.js'
import { isLocalAddressLiteral } from '../loop.js'
import type { Target, TargetResolver } from '../types.js'
import { splitAuthority } from '../../address.js'

/** The upstream host (lowercased) and port (80 by default) an authority names, or undefined. */
function upstreamOf(authority: string): { host: string; port: number } | undefined {
  const a = splitAuthority(authority)
  if (a === undefined) return undefined
  const host = a.host
  const port = a.port === undefined || a.port === '' ? 80 : Number(a.port)
  if (host === '' || !Number.isInteger(port) || port < 1 || port > 65535 || /[\s/@]/.test(host)) return undefined
  return { host: host.toLowerCase(), port }
}

function origin(scheme: 'http' | 'https', host: string, port: number): string {
  return host.includes(':') ? `${scheme}://[${host}]:${port}` : `${scheme}://${host}:${port}`
}

export function egressResolver(cfg: SidecarConfig, self: () => { host: string; port: number }): TargetResolver {
  return (url: string, hostHeader: string | undefined): Target | TxmeshError => {
    let authority: string | undefined
    let path: string
    if (url.startsWith('/')) {
      authority = hostHeader
      path = url
    } else if (url.length > 7 && url.slice(0, 7).toLowerCase() === 'http://') {
      const slash = url.indexOf('/', 7)
      authority = slash < 0 ? url.slice(7) : url.slice(7, slash)
      path = slash < 0 ? '/' : url.slice(slash)
    } else if (url.slice(0, 8).toLowerCase() === 'https://') {
      return new BadRequestError('https targets are not proxied by egress; send plain HTTP to the sidecar')
    } else {
      return new BadRequestError(`unsupported request target "${url.slice(0, 64)}"`)
    }
    if (authority === undefined || authority === '')
      return new BadRequestError('request has no Host header and no absolute URL')
    const parsed = upstreamOf(authority)
    if (parsed === undefined) return new BadRequestError(`invalid host "${authority.slice(0, 64)}"`)
    const mapped = cfg.services.get(parsed.host)
    const connectHost = mapped?.host ?? parsed.host
    const connectPort = mapped?.port ?? parsed.port
    // Any spelling of a local address is caught here, before connecting; names (localhost
    // too) once connected to what DNS gave (Forwarder.connect), chains by the hop count.
    const me = self()
    if (connectPort === me.port && (connectHost === me.host || isLocalAddressLiteral(connectHost))) {
      return new ProxyLoopError(`request to ${authority} would loop back into the egress`)
    }
    const scheme = mapped !== undefined ? serviceScheme(cfg, parsed.host) : 'http'
    return { origin: origin(scheme, connectHost, connectPort), connectHost, connectPort, host: authority, path }
  }
}

/** With peer TLS, the services of the map are reached over HTTPS unless marked `tls: false`. */
function serviceScheme(cfg: SidecarConfig, name: string): 'http' | 'https' {
  return cfg.tls !== undefined && !cfg.servicesWithoutTls.has(name) ? 'https' : 'http'
}

/**
 * The origins the egress forwards calls to the `services` of the map, as it writes them (host
 * lower-cased): where a coordinator may send a nested step's compensation or cancel.
 */
export function serviceOrigins(cfg: SidecarConfig): ReadonlySet<string> {
  return new Set([...cfg.services].map(([name, a]) => origin(serviceScheme(cfg, name), a.host, a.port).toLowerCase()))
}
