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
  const hooks = new Set([cfg.hooks.prepare, cfg.hooks.commit, cfg.hooks.abort].map((h) => h.toLowerCase()))
  const hookPrefix = commonDir(cfg.hooks.prepare)
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
    if (hooks.has(folded) || (hookPrefix !== undefined && folded.startsWith(hookPrefix))) {
      return new HookForbiddenError(`${path} is a participant hook; only the app's own sidecar calls it`)
    }
    return { origin, connectHost: host, connectPort: port, host: hostHeader ?? fallbackHost, path: url }
  }
}

/** `/.well-known/txmesh/` for the default hooks: every path under it is refused at ingress. */
function commonDir(hook: string): string | undefined {
  return hook.startsWith('/.well-known/txmesh/') ? '/.well-known/txmesh/' : undefined
}

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
