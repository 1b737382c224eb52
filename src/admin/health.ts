// Health listener (listeners.health / --health-port; 0.0.0.0:15021 in Kubernetes): the kubelet's
// probes reach it on the pod IP while the admin API stays on loopback. It serves GET /healthz
// and /readyz with the admin port's answers (answerProbe) and nothing else.
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import { MethodNotAllowedError, NotFoundError } from '../errors.js'
import { LIMITS } from '../limits.js'
import { answerRefusedRequests, respondError } from '../proxy/respond.js'
import { answerProbe, type Readiness } from './server.js'

export function createHealthServer(readiness: () => Readiness): Server {
  const server = createServer({
    maxHeaderSize: LIMITS.healthMaxHeaderBytes,
    headersTimeout: LIMITS.healthHeadersTimeoutMs,
    requestTimeout: LIMITS.healthRequestTimeoutMs,
    connectionsCheckingInterval: LIMITS.connectionsCheckMs,
    // A probe without Host still gets the answer (Node would send a bare 400 without a code).
    requireHostHeader: false,
  })
  server.maxConnections = LIMITS.healthMaxConnections
  server.on('request', (req: IncomingMessage, res: ServerResponse) => {
    // Probes have no body: rather than read one, close the connection after the answer.
    if (req.headers['content-length'] !== undefined || req.headers['transfer-encoding'] !== undefined)
      res.shouldKeepAlive = false
    const path = (req.url ?? '/').split('?')[0] as string
    const method = req.method ?? 'GET'
    if (path !== '/healthz' && path !== '/readyz') {
      return respondError(
        res,
        new NotFoundError(`the health listener serves only GET /healthz and /readyz, not ${method} ${path}`),
      )
    }
    if (method !== 'GET' && method !== 'HEAD') return respondError(res, new MethodNotAllowedError(`use GET ${path}`))
    answerProbe(res, path, readiness)
  })
  answerRefusedRequests(server, LIMITS.healthMaxHeaderBytes)
  return server
}
