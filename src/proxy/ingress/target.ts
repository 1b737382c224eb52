// Ingress: calls from peer sidecars (or any client when capture is by iptables) go to the local
// app on `app.host:app.port`, keeping the Host the caller used.
import type { SidecarConfig } from '../../config/types.js'
import { BadRequestError, HookForbiddenError, type TxmeshError } from '../../errors.js'
import { STEP_CANCEL_PATH } from '../../tx/protocol.js'
import type { Target, TargetResolver } from '../server.js'

export function ingressResolver(cfg: SidecarConfig): TargetResolver {
  const { host, port } = cfg.app
  const origin = host.includes(':') ? `http://[${host}]:${port}` : `http://${host}:${port}`
  const fallbackHost = `${cfg.service}`
  // The participant hooks commit and abort the app's work: only this sidecar calls them.
  // Compared case-folded and percent-decoded: many app routers match paths that way.
  // The batch hook carries the same calls, several at once: its configured path, and the
  // `batch` beside each hook, where txmesh/pg serves it whether or not hooks.batch is set.
  const twoPhase = [cfg.hooks.prepare, cfg.hooks.commit, cfg.hooks.abort]
  const batchPaths = twoPhase.map((h) => `${h.slice(0, h.lastIndexOf('/'))}/batch`)
  const hooks = new Set([...twoPhase, ...batchPaths, ...(cfg.hooks.batch === undefined ? [] : [cfg.hooks.batch])].map((h) => h.toLowerCase()))
  return (url: string, hostHeader: string | undefined): Target | TxmeshError => {
    if (!url.startsWith('/')) {
      // Absolute-form at ingress: keep only the path; the app is the only upstream here.
      const m = /^https?:\/\/[^/]*(\/.*)?$/i.exec(url)
      if (m === null) return new BadRequestError(`unsupported request target "${url.slice(0, 64)}"`)
      url = m[1] ?? '/'
    }
    const q = url.indexOf('?')
    const path = q < 0 ? url : url.slice(0, q)
    const folded = foldPath(path)
    if (folded === STEP_CANCEL_PATH) {
      // A coordinator's cancel of a TCC try it recorded before the try's answer: to this app's
      // own cancel hook, once the server has checked its signed context (ProxyServer.onRequest).
      return { origin, connectHost: host, connectPort: port, host: hostHeader ?? fallbackHost, path: cfg.hooks.cancel + (q < 0 ? '' : url.slice(q)), stepHook: 'cancel' }
    }
    if (hooks.has(folded) || folded.startsWith(HOOK_DIR)) {
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

function foldPath(path: string): string {
  // Runs on every ingress request: decode and collapse only when there is something to.
  let p = path.toLowerCase()
  if (p.includes('%')) {
    try {
      p = decodeURIComponent(p)
    } catch {
      // malformed escapes: compare as sent
    }
  }
  return p.includes('//') ? p.replace(/\/{2,}/g, '/') : p
}
