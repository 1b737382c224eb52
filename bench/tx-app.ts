// A participant app of the transaction benchmark: one account service on its own Postgres
// database, through the txmesh/pg helper. `POST /transfer?id=N&amount=M` adds M to account N.
//
// Requests that carry txmesh-tx-id / txmesh-branch-id (set by the service's sidecar) run in the
// branch the helper opened (BEGIN ... PREPARE TRANSACTION ... COMMIT PREPARED, driven by the
// sidecar's hooks); requests without them (benchmark mode (a), the driver calling the app
// directly) run the same UPDATE on the pool in autocommit. The code path is otherwise the same.
//
// Environment: DATABASE_URL, SERVICE, POOL_MAX, MAX_OPEN. Prints one JSON line
// {"event":"listening","port":N,"pid":N} on stdout.
// Usage: node --import tsx bench/tx-app.ts
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http'
import type { AddressInfo } from 'node:net'
import pg from 'pg'
import { createTxmeshPg, type TxmeshPgTx } from '../src/helpers/pg/index.js'

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

const service = env('SERVICE')
// idleTimeoutMillis 0: connections stay open between benchmark runs (no reconnects mid-run).
const pool = new pg.Pool({ connectionString: env('DATABASE_URL'), max: intEnv('POOL_MAX'), idleTimeoutMillis: 0 })
// A pool error on an idle client must not crash the app (Postgres restarts, killed backends).
pool.on('error', (err) => process.stderr.write(`${service}: idle pool client error: ${err.message}\n`))
const txm = createTxmeshPg({ pool, service, maxOpen: intEnv('MAX_OPEN') })

const UPDATE = 'UPDATE accounts SET balance = balance + $1 WHERE id = $2'

function parseTransfer(req: IncomingMessage): { id: number; amount: number } | undefined {
  const url = req.url ?? ''
  const q = url.indexOf('?')
  if (req.method !== 'POST' || url.slice(0, q < 0 ? undefined : q) !== '/transfer' || q < 0) return undefined
  const params = new URLSearchParams(url.slice(q + 1))
  const id = Number(params.get('id'))
  const amount = Number(params.get('amount'))
  return Number.isSafeInteger(id) && Number.isSafeInteger(amount) ? { id, amount } : undefined
}

async function transfer(req: IncomingMessage, res: ServerResponse, tx: TxmeshPgTx | undefined): Promise<void> {
  req.resume()
  const t = parseTransfer(req)
  if (t === undefined) {
    res.writeHead(404, { 'content-length': '0' }).end()
    return
  }
  const values = [t.amount, t.id]
  const r = tx !== undefined ? await tx.query(UPDATE, values) : await pool.query(UPDATE, values)
  // 409 fails the branch (the helper rolls it back and its prepare votes no).
  res.writeHead(r.rowCount === 1 ? 200 : 409, { 'content-length': '0' }).end()
}

const server = createServer(
  txm.handler(async (req, res, tx) => {
    try {
      await transfer(req, res, tx)
    } catch (err) {
      process.stderr.write(`${service}: transfer failed: ${(err as Error).message}\n`)
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
  void txm
    .close()
    .then(() => pool.end())
    .finally(() => process.exit(0))
}
process.once('SIGTERM', stop)
process.once('SIGINT', stop)
