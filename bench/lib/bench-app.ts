// What the benchmark's participant apps (bench/tx-app.ts, bench/saga-app.ts) share: their pool
// and txmesh/pg helper from the environment (DATABASE_URL, SERVICE, POOL_MAX, MAX_OPEN), and a
// server that prints {"event":"listening","port":N,"pid":N} and stops on SIGTERM/SIGINT.
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http'
import type { AddressInfo } from 'node:net'
import pg from 'pg'
import { createTxmeshPg, type TxmeshPg, type TxmeshPgTx } from '../../src/helpers/pg/index.js'

function env(name: string): string {
  const v = process.env[name]
  if (v === undefined || v === '') throw new Error(`${name} is not set`)
  return v
}

function intEnv(name: string): number {
  const n = Number(env(name))
  if (!Number.isInteger(n) || n < 1) throw new Error(`${name} must be a positive integer`)
  return n
}

export interface BenchApp {
  readonly service: string
  readonly pool: pg.Pool
  readonly txm: TxmeshPg
}

export function benchApp(): BenchApp {
  const service = env('SERVICE')
  // idleTimeoutMillis 0: connections stay open between benchmark runs (no reconnects mid-run).
  const pool = new pg.Pool({ connectionString: env('DATABASE_URL'), max: intEnv('POOL_MAX'), idleTimeoutMillis: 0 })
  // A pool error on an idle client must not crash the app (Postgres restarts, killed backends).
  pool.on('error', (err) => process.stderr.write(`${service}: idle pool client error: ${err.message}\n`))
  return { service, pool, txm: createTxmeshPg({ pool, service, maxOpen: intEnv('MAX_OPEN') }) }
}

/** Serves `handle` behind the helper; a failure answers 500 and is reported on stderr. */
export function serveBenchApp(
  app: BenchApp,
  handle: (req: IncomingMessage, res: ServerResponse, tx: TxmeshPgTx | undefined) => Promise<void>,
): void {
  const server = createServer(
    app.txm.handler(async (req, res, tx) => {
      try {
        await handle(req, res, tx)
      } catch (err) {
        process.stderr.write(`${app.service}: ${req.url ?? ''} failed: ${(err as Error).message}\n`)
        if (!res.headersSent) res.writeHead(500, { 'content-length': '0' })
        res.end()
      }
    }),
  )
  // Longer than the sidecar's and the driver's upstream keep-alive (undici: 4 s), so neither ever
  // reuses a connection the app is closing.
  server.keepAliveTimeout = 120_000
  server.listen(0, '127.0.0.1', () => {
    const port = (server.address() as AddressInfo).port
    process.stdout.write(JSON.stringify({ event: 'listening', port, pid: process.pid }) + '\n')
  })
  const stop = (): void => {
    server.close()
    server.closeAllConnections()
    void app.txm
      .close()
      .then(() => app.pool.end())
      .finally(() => process.exit(0))
  }
  process.once('SIGTERM', stop)
  process.once('SIGINT', stop)
}
