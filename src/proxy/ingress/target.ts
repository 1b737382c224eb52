// Ingress: calls from peer sidecars (or any client when capture is by iptables) go to the local
// app on `app.host:app.port`, keeping the Host the caller used.
import type { SidecarConfig } from '../../config/types.js'
import { BadRequestError, HookForbiddenError, PathAmbiguousError, type TxmeshError } from '../../errors.js'
import { LIMITS } from '../../limits.js'
import { STEP_CANCEL_PATH } from '../../tx/protocol.js'
import type { Target, TargetResolver } from '../types.js'

export function ingressResolver(cfg: SidecarConfig): TargetResolver {
  const { host, port } = cfg.app
  const origin = host.includes(':') ? `http://[${host}]:${port}` : `http://${host}:${port}`
  const fallbackHost = `${cfg.service}`
  // The participant hooks commit and abort the app's work: only this sidecar calls them.
  // Spelled plainly they are refused 403; in any other spelling an app router may still map to
  // them (escapes, dot-segments, backslashes...), 400 before that check (appReading).
  // The batch hook carries the same calls, several at once: its configured path, and the
  // `batch` beside each hook, where txmesh/pg serves it whether or not hooks.batch is set.
  const twoPhase = [cfg.hooks.prepare, cfg.hooks.commit, cfg.hooks.abort]
  const batchPaths = twoPhase.map((h) => `${h.slice(0, h.lastIndexOf('/'))}/batch`)
  const hooks = new Set(
    [...twoPhase, ...batchPaths, ...(cfg.hooks.batch === undefined ? [] : [cfg.hooks.batch])].map((h) =>
      h.toLowerCase(),
    ),
  )
  const isHook = (p: string): boolean => hooks.has(p) || p.startsWith(HOOK_DIR) || p === STEP_CANCEL_PATH
  return (url: string, hostHeader: string | undefined): Target | TxmeshError => {
    if (!url.startsWith('/')) {
      // Absolute-form at ingress: keep only the path; the app is the only upstream here.
      const m = /^https?:\/\/[^/]*(\/.*)?$/i.exec(url)
      if (m === null) return new BadRequestError(`unsupported request target "${url.slice(0, 64)}"`)
      url = m[1] ?? '/'
    }
    // A request target has no fragment (RFC 9112 3.2): an app router that parses the URL drops
    // one, so `/hooks/batch#x` would reach the batch hook past the check below.
    if (url.includes('#'))
      return new PathAmbiguousError(`${url.slice(0, 64)} has a fragment (#), which no request target may have`)
    const q = url.indexOf('?')
    const path = q < 0 ? url : url.slice(0, q)
    // Compared case-folded: many app routers match paths that way.
    const folded = path.toLowerCase()
    if (MAY_NORMALIZE.test(path)) {
      // Refused before the hook check: what such a path names depends on who decodes it.
      const reading = appReading(path)
      if (reading === undefined)
        return new PathAmbiguousError(
          `${path.slice(0, 64)} has a dot-segment or is encoded more than ${LIMITS.pathDecodeRounds} times`,
        )
      if (reading !== folded && isHook(reading)) {
        return new PathAmbiguousError(
          `${path.slice(0, 64)} reaches ${reading.slice(0, 64)} only once decoded or normalized; call hooks by their plain path`,
        )
      }
    }
    if (folded === STEP_CANCEL_PATH) {
      // A coordinator's cancel of a TCC try it recorded before the try's answer: to this app's
      // own cancel hook, once the server has checked its signed context (ProxyServer.onRequest).
      return {
        origin,
        connectHost: host,
        connectPort: port,
        host: hostHeader ?? fallbackHost,
        path: cfg.hooks.cancel + (q < 0 ? '' : url.slice(q)),
        stepHook: 'cancel',
      }
    }
    if (isHook(folded)) {
      return new HookForbiddenError(`${path} is a participant hook; only the app's own sidecar calls it`)
    }
    return { origin, connectHost: host, connectPort: port, host: hostHeader ?? fallbackHost, path: url }
  }
}

/**
 * Where the default hooks live (and txmesh/pg serves them unless told otherwise): every path
 * under it is refused at ingress, whatever hooks this sidecar is configured with, so an app
 * whose helper still serves the defaults is not reachable there either.
 */
const HOOK_DIR = '/.well-known/txmesh/'

/**
 * Whatever an app server may do to a path before routing it, found in one of: `%` (escapes),
 * `\` (a separator on some servers), `;` (path parameters, dropped by Servlet containers), `//`
 * (collapsed), a raw dot-segment, a trailing slash (ignored by non-strict routers). A path with
 * none of these reads the same everywhere but for case.
 */
const MAY_NORMALIZE = /[%\\;]|\/\/|\/\.\.?(?:\/|$)|.\/$/

/**
 * The path as the most lenient app router reads it (issue 15, hole 11): percent-decoded until
 * nothing changes (byte by byte: the separators and dots that matter are ASCII), `\` taken as
 * `/`, path parameters dropped, empty segments and the trailing slash gone, case-folded. Undefined
 * when it has a dot-segment in any reading (`..`, `%2e%2e`, `..;`, between `/` or `\`) or is
 * still encoded after LIMITS.pathDecodeRounds rounds: such a path is refused whatever it names,
 * since a `..` takes away the segment before it differently for each normalizer. Without one,
 * the readings only split, join or drop segments, and the most lenient one names a hook
 * whenever a stricter one does.
 */
function appReading(path: string): string | undefined {
  let p = path
  for (let round = 0; ; round++) {
    const decoded = p.includes('%') ? p.replace(ESCAPE, decodeEscape) : p
    if (decoded === p) break
    if (round === LIMITS.pathDecodeRounds) return undefined
    p = decoded
  }
  // A router that decodes and then parses the URL drops what follows a decoded %23.
  const hash = p.indexOf('#')
  if (hash >= 0) p = p.slice(0, hash)
  const out: string[] = []
  for (const raw of p.split(/[\\/]/)) {
    const semi = raw.indexOf(';')
    const seg = semi < 0 ? raw : raw.slice(0, semi)
    if (seg === '.' || seg === '..') return undefined
    if (seg !== '') out.push(seg)
  }
  return `/${out.join('/')}`.toLowerCase()
}

// %XX, and IIS's %uXXXX.
const ESCAPE = /%(?:([0-9a-fA-F]{2})|[uU]([0-9a-fA-F]{4}))/g

function decodeEscape(_m: string, byte: string | undefined, unit: string | undefined): string {
  return String.fromCharCode(parseInt(byte ?? (unit as string), 16))
}
