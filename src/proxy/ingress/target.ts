// Ingress: calls from peer sidecars (or any client when capture is by iptables) go to the local
// app on `app.host:app.port`, keeping the Host the caller used.
import type { SidecarConfig } from '../../config/types.js'
import { BadRequestError, type TxmeshError } from '../../errors.js'
import type { Target, TargetResolver } from '../server.js'

export function ingressResolver(cfg: SidecarConfig): TargetResolver {
  const { host, port } = cfg.app
  const origin = host.includes(':') ? `http://[${host}]:${port}` : `http://${host}:${port}`
  const fallbackHost = `${cfg.service}`
  return (url: string, hostHeader: string | undefined): Target | TxmeshError => {
    if (!url.startsWith('/')) {
      // Absolute-form at ingress: keep only the path; the app is the only upstream here.
      const m = /^https?:\/\/[^/]*(\/.*)?$/i.exec(url)
      if (m === null) return new BadRequestError(`unsupported request target "${url.slice(0, 64)}"`)
      url = m[1] ?? '/'
    }
    return { origin, connectHost: host, connectPort: port, host: hostHeader ?? fallbackHost, path: url }
  }
}
