// Part (d) of the demo: a saga. The orders sidecar's route `place-order-saga` (mode: saga)
// begins a saga for each POST /saga-orders; every call the orders app makes in it is a step that
// the sidecar records before the answer reaches the app. Each step commits locally at once, in
// the service's own database, under the txmesh/pg barrier. When a later step fails and the app
// answers non-2xx, the sidecar compensates the earlier steps in reverse order:
//
//   step 1  payments  POST /saga/charge          undo from the route template: POST /saga/refund/{response.json.id}
//   step 2  inventory POST /saga/reserve widget  undo named by inventory itself: txmesh-compensate
//   step 3  inventory POST /saga/reserve gadget  out of stock: 409, nothing done, not a step
//
// The lifecycle events are read from the orders sidecar's event stream (SSE /v1/events, always
// on) and, when a nats-server is installed, from the NATS JetStream stream it publishes to.
import type { IncomingMessage, ServerResponse } from 'node:http'
import type pg from 'pg'
import { request, type Dispatcher } from 'undici'
import type { TxmeshPg } from '../../src/helpers/pg/index.js'

/** The orders sidecar's routes for the saga (appended to its `routes:`). */
export const SAGA_ROUTES = [
  '  - name: place-order-saga',
  '    match: {direction: ingress, pathPrefix: /saga-orders, methods: [POST]}',
  '    transaction: required',
  '    mode: saga',
  '    timeoutMs: 10000',
  '  - name: saga-charge',
  '    match: {direction: egress, host: payments, pathPrefix: /saga/charge}',
  '    compensation: {method: POST, path: "/saga/refund/{response.json.id}"}',
].join('\n')

/** Retry quickly in the demo (defaults suit production: longer backoff, more attempts). */
export const SAGA_STEPS = 'steps: {attempts: 5, backoffBaseMs: 50, backoffCapMs: 500}'

/** Waits for an event to come true, polling; bounded. */
const WAIT_MS = 15_000

function send(res: ServerResponse, status: number, body?: unknown, headers: Record<string, string> = {}): void {
  const text = body === undefined ? '' : JSON.stringify(body)
  res
    .writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text), ...headers })
    .end(text)
}

/** Thrown inside the barrier so the barrier row rolls back with the work that did not happen. */
class Refused extends Error {}

/** payments: POST /saga/charge -> 201 {id}; POST /saga/refund/:id deletes that charge. */
export async function paymentsSaga(
  txm: TxmeshPg,
  req: IncomingMessage,
  res: ServerResponse,
  body: Record<string, unknown>,
): Promise<void> {
  const refund = /^\/saga\/refund\/(\d+)$/.exec(req.url ?? '')
  const r = await txm.barrier(req, async (c) => {
    if (refund !== null) return void (await c.query('DELETE FROM payments WHERE id = $1', [Number(refund[1])]))
    return (await c.query<{ id: number }>('INSERT INTO payments (amount) VALUES ($1) RETURNING id', [body.amount]))
      .rows[0]!.id
  })
  // A duplicate or an undo of an action that never ran did nothing and is still a success; an
  // action arriving after its undo (hanging) must fail.
  if (!r.ran) return send(res, r.reason === 'hanging' ? 409 : 200, { skipped: r.reason })
  send(res, refund === null ? 201 : 200, refund === null ? { id: r.value } : { refunded: Number(refund[1]) })
}

/** inventory: POST /saga/reserve {item, qty} names its own undo; POST /saga/release?item&qty. */
export async function inventorySaga(
  txm: TxmeshPg,
  req: IncomingMessage,
  res: ServerResponse,
  body: Record<string, unknown>,
): Promise<void> {
  const url = new URL(req.url ?? '/', 'http://inventory')
  const release = url.pathname === '/saga/release'
  const item = release ? url.searchParams.get('item') : String(body.item)
  const qty = release ? Number(url.searchParams.get('qty')) : Number(body.qty)
  try {
    const r = await txm.barrier(req, async (c) => {
      const sql = release
        ? 'UPDATE stock SET qty = qty + $1 WHERE item = $2'
        : 'UPDATE stock SET qty = qty - $1 WHERE item = $2 AND qty >= $1'
      if ((await c.query(sql, [qty, item])).rowCount !== 1) throw new Refused(`${item} is out of stock`)
    })
    if (!r.ran) return send(res, r.reason === 'hanging' ? 409 : 200, { skipped: r.reason })
    const undo = release
      ? {}
      : { 'txmesh-compensate': `POST /saga/release?item=${encodeURIComponent(item ?? '')}&qty=${qty}` }
    send(res, release ? 200 : 201, { item, qty }, undo)
  } catch (err) {
    if (!(err instanceof Refused)) throw err
    send(res, 409, { error: err.message })
  }
}

/** orders: the saga's orchestrator; its answer ends the saga (2xx confirms, else compensate). */
export async function ordersSaga(egress: Dispatcher, req: IncomingMessage, res: ServerResponse): Promise<void> {
  req.resume()
  const headers = { 'txmesh-context': req.headers['txmesh-context'] as string, 'content-type': 'application/json' }
  const calls = [
    ['payments', '/saga/charge', { amount: 300 }],
    ['inventory', '/saga/reserve', { item: 'widget', qty: 1 }],
    ['inventory', '/saga/reserve', { item: 'gadget', qty: 1 }],
  ] as const
  for (const [svc, path, payload] of calls) {
    const r = await request(`http://${svc}${path}`, {
      method: 'POST',
      dispatcher: egress,
      headers,
      body: JSON.stringify(payload),
    })
    const text = await r.body.text()
    if (r.statusCode >= 300) return send(res, 409, { failed: `${svc} ${path}`, answer: text })
  }
  send(res, 201, { ordered: true })
}

interface SseEvent {
  type: string
  data: Record<string, unknown>
}

/** Follows a sidecar's SSE /v1/events feed; `events` fills as they arrive. */
export async function followEvents(adminPort: number): Promise<{ events: SseEvent[]; close: () => void }> {
  const ac = new AbortController()
  const events: SseEvent[] = []
  const r = await request(`http://127.0.0.1:${adminPort}/v1/events`, {
    signal: ac.signal,
    headers: { accept: 'text/event-stream' },
  })
  let buf = ''
  r.body.setEncoding('utf8')
  r.body.on('data', (chunk: string) => {
    buf += chunk
    for (let end = buf.indexOf('\n\n'); end >= 0; end = buf.indexOf('\n\n')) {
      const block = buf.slice(0, end)
      buf = buf.slice(end + 2)
      let type = ''
      let data = ''
      for (const line of block.split('\n')) {
        if (line.startsWith('event: ')) type = line.slice(7)
        else if (line.startsWith('data: ')) data += line.slice(6)
      }
      if (type !== '' && data !== '') events.push({ type, data: JSON.parse(data) as Record<string, unknown> })
    }
  })
  r.body.on('error', () => undefined) // aborted on close
  return { events, close: () => ac.abort() }
}

export async function waitFor(cond: () => boolean | Promise<boolean>): Promise<boolean> {
  for (const start = Date.now(); Date.now() - start < WAIT_MS;) {
    if (await cond()) return true
    await new Promise((r) => setTimeout(r, 50))
  }
  return false
}

/** One line per lifecycle event of a transaction, as the demo prints them. */
export function describeEvent(e: SseEvent): string {
  const d = e.data
  const who = typeof d.service === 'string' ? `${d.service} step ${String(d.branch ?? '')}`.trim() : ''
  switch (e.type) {
    case 'tx-begin':
      return `begun        mode ${String(d.mode)}, route ${String(d.route)}`
    case 'tx-step':
      return `step         ${who}`
    case 'tx-outcome':
      return `${String(d.outcome).padEnd(12)} ${String(d.reason ?? '')}`
    case 'tx-compensated':
      return `compensated  ${who}`
    case 'tx-stuck':
      return `stuck        ${who}: ${String(d.error)}`
    case 'tx-finished':
      return `finished     ${String(d.outcome)}`
    default:
      return `${e.type.replace(/^tx-/, '').padEnd(12)} ${who}`
  }
}

/** Barrier rows of a transaction in one database: "op" per step, in insertion order. */
export async function barrierOps(pool: pg.Pool, tx: string): Promise<string[]> {
  const r = await pool.query<{ op: string }>('SELECT op FROM txmesh_barrier WHERE tx_id = $1 ORDER BY created_at, op', [
    tx,
  ])
  return r.rows.map((row) => row.op)
}
