// A participant app of the saga benchmark: one account service on its own Postgres database,
// through the txmesh/pg helper and its sub-transaction barrier.
//
//   POST /transfer?id=N&amount=M       adds M to account N (a saga's action)
//   POST /transfer/undo?id=N&amount=M  adds -M to account N (the compensation of that action)
//
// A request carrying txmesh-op (set by the service's sidecar on a saga call) runs the UPDATE in
// txm.barrier(req, ...): one local transaction with the barrier row, so a duplicate is skipped,
// an undo of an action that never ran does nothing, and an action arriving after its undo is
// refused with 409 (hanging). A request without it (the benchmark's `direct` mode, the driver
// calling the app itself) runs the same UPDATE in autocommit: the same calls without txmesh.
//
// Environment: DATABASE_URL, SERVICE, POOL_MAX, MAX_OPEN (as bench/tx-app.ts). Prints one JSON
// line {"event":"listening","port":N,"pid":N} on stdout once the barrier table exists.
// Usage: node --import tsx bench/saga-app.ts
import type { IncomingMessage, ServerResponse } from 'node:http'
import { benchApp, serveBenchApp } from './lib/bench-app.js'

const app = benchApp()
const { pool, txm } = app

const UPDATE = 'UPDATE accounts SET balance = balance + $1 WHERE id = $2'

interface Call {
  readonly id: number
  /** What the UPDATE adds: the amount, or its negation for an undo. */
  readonly delta: number
}

function parseCall(req: IncomingMessage): Call | undefined {
  const url = req.url ?? ''
  const q = url.indexOf('?')
  if (req.method !== 'POST' || q < 0) return undefined
  const path = url.slice(0, q)
  if (path !== '/transfer' && path !== '/transfer/undo') return undefined
  const params = new URLSearchParams(url.slice(q + 1))
  const id = Number(params.get('id'))
  const amount = Number(params.get('amount'))
  if (!Number.isSafeInteger(id) || !Number.isSafeInteger(amount) || params.get('amount') === null) return undefined
  return { id, delta: path === '/transfer/undo' ? -amount : amount }
}

/** Thrown inside the barrier so that the barrier row rolls back with the (missing) effect. */
class NoSuchAccount extends Error {}

async function handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
  req.resume()
  const call = parseCall(req)
  if (call === undefined) {
    res.writeHead(404, { 'content-length': '0' }).end()
    return
  }
  const values = [call.delta, call.id]
  if (req.headers['txmesh-op'] === undefined) {
    const r = await pool.query(UPDATE, values)
    res.writeHead(r.rowCount === 1 ? 200 : 409, { 'content-length': '0' }).end()
    return
  }
  try {
    const r = await txm.barrier(req, async (c) => {
      if ((await c.query(UPDATE, values)).rowCount !== 1) throw new NoSuchAccount(`account ${call.id} not found`)
    })
    // duplicate and empty succeed; hanging (an action after its undo) must fail the step.
    res.writeHead(!r.ran && r.reason === 'hanging' ? 409 : 200, { 'content-length': '0' }).end()
  } catch (err) {
    if (!(err instanceof NoSuchAccount)) throw err
    res.writeHead(409, { 'content-length': '0' }).end()
  }
}

// The table exists before the first measured call (and for the consistency check of a run
// that has no saga mode). The middleware passes saga calls (txmesh-op) through without opening
// a 2PC branch.
await txm.ensureBarrier()
serveBenchApp(app, handle)
