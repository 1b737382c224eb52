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
import type { IncomingMessage, ServerResponse } from 'node:http'
import type { TxmeshPgTx } from '../src/helpers/pg/index.js'
import { benchApp, serveBenchApp } from './lib/bench-app.js'

const app = benchApp()
const { pool } = app

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

serveBenchApp(app, transfer)
