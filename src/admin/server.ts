// Admin listener (loopback by default): health and readiness for the kubelet and operators.
// The transaction API, /metrics and /ui join it in later parts of the design.
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import { NotFoundError } from '../errors.js'
import { LIMITS } from '../limits.js'
import { respondError } from '../proxy/respond.js'

export type Readiness = 'starting' | 'ready' | 'draining'

function json(res: ServerResponse, status: number, body: unknown): void {
  const text = JSON.stringify(body)
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text), 'cache-control': 'no-store' })
  res.end(text)
}

export function createAdminServer(readiness: () => Readiness): Server {
  const server = createServer({ maxHeaderSize: LIMITS.maxHeaderBytes, headersTimeout: LIMITS.downstreamHeadersTimeoutMs })
  server.on('request', (req: IncomingMessage, res: ServerResponse) => {
    const path = (req.url ?? '/').split('?')[0]
    switch (path) {
      case '/healthz':
        return json(res, 200, { status: 'ok' })
      case '/readyz': {
        const r = readiness()
        return json(res, r === 'ready' ? 200 : 503, { status: r })
      }
      default:
        return respondError(res, new NotFoundError(`no admin endpoint ${req.method ?? ''} ${path ?? ''}`))
    }
  })
  return server
}
