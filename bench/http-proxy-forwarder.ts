// The baseline Node forwarder: http-proxy 1.18 behind node:http, upstream through a keep-alive
// http.Agent. The minimal setup most Node projects would write. Prints one JSON line
// {"event":"listening","port":N,"pid":N} on stdout.
// Usage: node --import tsx bench/http-proxy-forwarder.ts --target-port N [--port N]
import { Agent, createServer, ServerResponse, type IncomingMessage } from 'node:http'
import type { Socket } from 'node:net'
import { parseArgs } from 'node:util'
import httpProxy from 'http-proxy'

const { values } = parseArgs({
  options: { port: { type: 'string', default: '0' }, 'target-port': { type: 'string' } },
  strict: true,
})
const targetPort = Number(values['target-port'])
if (!Number.isInteger(targetPort) || targetPort <= 0) {
  process.stderr.write('http-proxy-forwarder: --target-port N is required\n')
  process.exit(2)
}

const agent = new Agent({ keepAlive: true, maxSockets: 128, maxFreeSockets: 128 })
const proxy = httpProxy.createProxyServer({ target: `http://127.0.0.1:${targetPort}`, agent })

// Without an error listener http-proxy crashes the process on the first upstream error.
proxy.on('error', (err: Error, _req: IncomingMessage, res: ServerResponse | Socket) => {
  if (res instanceof ServerResponse) {
    if (res.headersSent) res.destroy()
    else res.writeHead(502, { 'content-type': 'text/plain' }).end(`bad gateway: ${err.message}\n`)
  } else {
    res.destroy()
  }
})

const server = createServer((req: IncomingMessage, res: ServerResponse) => proxy.web(req, res))
server.keepAliveTimeout = 65_000
server.listen(Number(values.port), '127.0.0.1', () => {
  const addr = server.address()
  const port = typeof addr === 'object' && addr !== null ? addr.port : 0
  process.stdout.write(JSON.stringify({ event: 'listening', port, pid: process.pid }) + '\n')
})

const stop = (): void => {
  server.close(() => process.exit(0))
  server.closeAllConnections()
  agent.destroy()
}
process.once('SIGTERM', stop)
process.once('SIGINT', stop)
