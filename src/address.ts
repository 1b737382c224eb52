// The one parser of `host[:port]` authorities (a Host header, the authority of an origin or an
// absolute-form target, a configured listener or service address, a control address): every
// module that needs the host or the port of one splits it here and checks what it needs of the
// parts itself.

export interface Authority {
  /** The host, as written, without the brackets of an IPv6 literal. */
  readonly host: string
  /** The text after the host's colon ('' for `host:`), or undefined when there is no colon. */
  readonly port: string | undefined
  /** The host was an IPv6 literal in brackets (`[fd00::5]:80`). */
  readonly bracketed: boolean
}

/**
 * Splits `host`, `host:port`, `[v6]` or `[v6]:port`. Undefined when it cannot be an authority:
 * an unclosed bracket, anything but `:port` after one, or a host with a colon outside brackets
 * (an IPv6 literal must be bracketed). Neither part is checked further.
 */
export function splitAuthority(s: string): Authority | undefined {
  if (s.startsWith('[')) {
    const end = s.indexOf(']')
    if (end < 0) return undefined
    const rest = s.slice(end + 1)
    if (rest !== '' && !rest.startsWith(':')) return undefined
    return { host: s.slice(1, end), port: rest === '' ? undefined : rest.slice(1), bracketed: true }
  }
  const colon = s.indexOf(':')
  if (colon < 0) return { host: s, port: undefined, bracketed: false }
  if (s.indexOf(':', colon + 1) >= 0) return undefined
  return { host: s.slice(0, colon), port: s.slice(colon + 1), bracketed: false }
}

/** A port as an authority writes it (1-5 digits, 1..65535), or undefined. */
export function portNumber(text: string | undefined): number | undefined {
  if (text === undefined || !/^\d{1,5}$/.test(text)) return undefined
  const port = Number(text)
  return port >= 1 && port <= 65535 ? port : undefined
}

/** The host again as an authority writes it: an IPv6 literal in brackets. */
export function authorityHost(a: Authority): string {
  return a.bracketed ? `[${a.host}]` : a.host
}
