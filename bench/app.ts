// The app under the benchmark: a tiny node:http server answering every request with the same
// 100-byte JSON body. Prints one JSON line {"event":"listening","port":N,"pid":N} on stdout.
// Usage: node --import tsx bench/app.ts [--port N]
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http'
import { parseArgs } from 'node:util'

const { values } = parseArgs({ options: { port: { type: 'string', default: '0' } }, strict: true })

const BODY_BYTES = 100
const prefix = '{"ok":true,"service":"bench-app","pad":"'
const suffix = '"}\n'
const BODY = Buffer.from(prefix + 'x'.repeat(BODY_BYTES - prefix.length - suffix.length) + suffix, 'latin1')
const HEADERS: string[] = ['content-type', 'application/json', 'content-length', String(BODY.length)]

function onRequest(req: IncomingMessage, res: ServerResponse): void {
  // GET load carries no body; resume() discards one if a client sends it anyway.
  req.resume()
  res.writeHead(200, HEADERS)
  res.end(BODY)
}

const server = createServer(onRequest)
// Longer than any proxy's upstream idle timeout (nginx keepalive_timeout 60 s, http.Agent, undici
// 4 s) so no proxy ever reuses a connection the app is closing between two load runs.
server.keepAliveTimeout = 120_000
server.listen(Number(values.port), '127.0.0.1', () => {
  const addr = server.address()
  const port = typeof addr === 'object' && addr !== null ? addr.port : 0
  process.stdout.write(JSON.stringify({ event: 'listening', port, pid: process.pid }) + '\n')
})

const stop = (): void => {
  server.close(() => process.exit(0))
  server.closeAllConnections()
}
process.once('SIGTERM', stop)
process.once('SIGINT', stop)
