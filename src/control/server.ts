// Control listener: peer sidecars reach the coordinator and participant endpoints here
// (`/v1/tx/...`, DESIGN.md). Until those land every path answers TXM_NOT_FOUND.
import { createServer, type Server } from 'node:http'
import { NotFoundError } from '../errors.js'
import { LIMITS } from '../limits.js'
import { respondError } from '../proxy/respond.js'

export function createControlServer(): Server {
  const server = createServer({ maxHeaderSize: LIMITS.maxHeaderBytes, headersTimeout: LIMITS.downstreamHeadersTimeoutMs })
  server.on('request', (req, res) => {
    respondError(res, new NotFoundError(`no control endpoint ${req.method ?? ''} ${(req.url ?? '/').split('?')[0] ?? ''}`))
  })
  return server
}
