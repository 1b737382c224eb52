// Loop detection of the data plane (issue 15, hole 9). A request the egress would send to its
// own listener comes straight back to it, again and again, until X-Forwarded-For outgrows the
// header limit (~2000 hops). Names alone do not show it: `0.0.0.0`, `127.1`, `0x7f.1`,
// `[::ffff:127.0.0.1]` or any DNS name that resolves to this host reach the listener too. So a
// loop is recognized three ways: by the literal address before connecting (no connection is
// made), by the address actually connected to (what DNS gave), and by a hop count that bounds
// the loops no address shows (two sidecars whose service maps point at each other's egress).
import { BlockList, isIP, type Socket } from 'node:net'

/** Hop-count header: sidecar listeners a request passed without an app in between. */
export const HOPS_HEADER = 'txmesh-hops'

// Addresses that always mean "this host": the loopback net, and the unspecified address, which
// a connect() on Linux sends to loopback. IPv4 rules also match their IPv4-mapped IPv6 form.
const LOCAL = new BlockList()
LOCAL.addSubnet('127.0.0.0', 8, 'ipv4')
LOCAL.addAddress('0.0.0.0', 'ipv4')
LOCAL.addAddress('::1', 'ipv6')
LOCAL.addAddress('::', 'ipv6')

function isLocalIp(ip: string): boolean {
  const family = isIP(ip)
  return family !== 0 && LOCAL.check(ip, family === 4 ? 'ipv4' : 'ipv6')
}

/**
 * Whether a host as written in a request is a literal address of this host: loopback or
 * unspecified, in any spelling WHATWG URL parsing (and so undici's connection) accepts: `127.1`,
 * `0x7f.0.0.1`, `2130706433`, `0`, `::ffff:127.0.0.1`, `::`. Names (`localhost` too) are left to
 * DNS and caught once connected (connectedToSelf).
 */
export function isLocalAddressLiteral(host: string): boolean {
  if (isIP(host) !== 0) return isLocalIp(host)
  try {
    const parsed = new URL(`http://${host.includes(':') ? `[${host}]` : host}/`).hostname
    const ip = parsed.startsWith('[') ? parsed.slice(1, -1) : parsed
    return isIP(ip) !== 0 && isLocalIp(ip)
  } catch {
    return false
  }
}

/**
 * Whether a connected socket reached one of `ports` on this host: the peer address is a local
 * one (loopback, or the socket's own address, which is what a connection to one of this host's
 * interface addresses gets) and its port is one of ours.
 */
export function connectedToSelf(socket: Socket, ports: ReadonlySet<number>): boolean {
  const port = socket.remotePort
  if (port === undefined || !ports.has(port)) return false
  const remote = socket.remoteAddress
  if (remote === undefined) return false
  return isLocalIp(remote) || remote === socket.localAddress
}

/**
 * The hop count a request arrived with: the largest of its `txmesh-hops` values, Infinity when
 * one is not a small non-negative integer (refused as a loop rather than reset to zero).
 */
export function parseHops(value: string, current: number): number {
  const n = /^\s*\d{1,6}\s*$/.test(value) ? Number(value) : Infinity
  return n > current ? n : current
}
