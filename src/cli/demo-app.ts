// `txmesh demo-app --service orders|payments|inventory [--port 8080] [--host 127.0.0.1]`: the
// shop app of examples/demo/run.ts as a standalone process, for the Kubernetes example
// (deploy/examples/shop). It runs next to an injected sidecar and knows nothing of txmesh beyond
// the txmesh/pg helper and forwarding `txmesh-context`:
//
//   POST /orders  {item, qty, amount}  orders: records the order, then calls
//                                      http://payments/charge and http://inventory/reserve
//   POST /charge  {amount}             payments
//   POST /reserve {item, qty}          inventory (stock is checked at PREPARE: a deferred trigger)
//   GET  /                             the service's rows, as JSON
//
// Postgres comes from DATABASE_URL (PGPASSWORD and the other PG* variables fill what the URL
// leaves out). Outgoing calls go through undici's EnvHttpProxyAgent, so HTTP_PROXY (set by the
// injector to the sidecar's egress) is honoured on any Node version.
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http'
import { parseArgs } from 'node:util'
import pg from 'pg'
import { EnvHttpProxyAgent, request } from 'undici'
import { createTxmeshPg, type TxmeshPg, type TxmeshPgTx } from '../helpers/pg/index.js'
import { createLogger, type Logger } from '../telemetry/logger.js'
import { UsageError } from './usage.js'

const SERVICES = ['orders', 'payments', 'inventory'] as const
type ShopService = (typeof SERVICES)[number]

// Bounds of the demo app, each with its reason.
const BODY_LIMIT_BYTES = 16 * 1024 // the shop's JSON bodies are tens of bytes
const DB_SETUP_ATTEMPTS = 60 // Postgres may start after the app: ~2 min of retries, then exit
const DB_SETUP_RETRY_MS = 2_000
const RECOVER_ATTEMPTS = 10 // a classic (non-native) sidecar may start after the app
const RECOVER_RETRY_MS = 3_000
const POOL_MAX = 20 // each open branch holds a connection until prepare (helper maxOpen default 64 is above the demo's load)
const CALL_TIMEOUT_MS = 15_000 // below the sidecar's default route timeout, so the sidecar's error is the one seen

const SCHEMA: Record<ShopService, string> = {
  orders:
    'CREATE TABLE IF NOT EXISTS orders (id serial PRIMARY KEY, item text NOT NULL, qty int NOT NULL, amount int NOT NULL)',
  payments: 'CREATE TABLE IF NOT EXISTS payments (id serial PRIMARY KEY, amount int NOT NULL)',
  inventory: `
    CREATE TABLE IF NOT EXISTS stock (item text PRIMARY KEY, qty int NOT NULL);
    INSERT INTO stock VALUES ('widget', 5) ON CONFLICT (item) DO NOTHING;
    -- Checked at PREPARE time: an over-reservation makes inventory vote no in phase 1.
    CREATE OR REPLACE FUNCTION stock_not_negative() RETURNS trigger LANGUAGE plpgsql AS $$
      BEGIN IF NEW.qty < 0 THEN RAISE EXCEPTION 'out of stock: %', NEW.item; END IF; RETURN NEW; END $$;
    DO $$ BEGIN
      IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgname = 'stock_check') THEN
        CREATE CONSTRAINT TRIGGER stock_check AFTER UPDATE ON stock DEFERRABLE INITIALLY DEFERRED
          FOR EACH ROW EXECUTE FUNCTION stock_not_negative();
      END IF;
    END $$;`,
}
const LIST: Record<ShopService, string> = {
  orders: 'SELECT id, item, qty, amount FROM orders ORDER BY id',
  payments: 'SELECT id, amount FROM payments ORDER BY id',
  inventory: 'SELECT item, qty FROM stock ORDER BY item',
}

class BadRequest extends Error {}

function readJson(req: IncomingMessage): Promise<Record<string, unknown>> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = []
    let size = 0
    req.on('data', (c: Buffer) => {
      size += c.length
      if (size <= BODY_LIMIT_BYTES) chunks.push(c) // past the limit the rest is read and dropped
    })
    req.on('error', reject)
    req.on('end', () => {
      if (size > BODY_LIMIT_BYTES) return reject(new BadRequest(`body over ${BODY_LIMIT_BYTES} bytes`))
      try {
        const v: unknown = chunks.length === 0 ? {} : JSON.parse(Buffer.concat(chunks).toString('utf8'))
        if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new BadRequest('body must be a JSON object')
        resolve(v as Record<string, unknown>)
      } catch (err) {
        reject(err instanceof BadRequest ? err : new BadRequest('body is not JSON'))
      }
    })
  })
}

const int = (v: unknown, name: string): number => {
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v <= 0)
    throw new BadRequest(`${name} must be a positive integer`)
  return v
}
const text = (v: unknown, name: string): string => {
  if (typeof v !== 'string' || v === '' || v.length > 64)
    throw new BadRequest(`${name} must be a string of 1-64 characters`)
  return v
}

/** In the transaction's branch when the request has one, else as a plain statement. */
function sql(tx: TxmeshPgTx | undefined, pool: pg.Pool, query: string, values: unknown[]): Promise<pg.QueryResult> {
  return tx !== undefined ? tx.query(query, values) : pool.query(query, values)
}

function send(res: ServerResponse, status: number, body?: unknown): void {
  if (body === undefined) res.writeHead(status).end()
  else res.writeHead(status, { 'content-type': 'application/json' }).end(JSON.stringify(body))
}

// Headers an app forwards from its inbound request to its outbound calls: the transaction
// context (DESIGN.md "Transaction context") and the W3C trace headers, so one trace shows it all.
const FORWARDED = ['txmesh-context', 'baggage', 'traceparent', 'tracestate'] as const

function routes(
  service: ShopService,
  pool: pg.Pool,
  egress: EnvHttpProxyAgent,
): (req: IncomingMessage, res: ServerResponse, tx: TxmeshPgTx | undefined) => Promise<void> {
  return async (req, res, tx) => {
    const path = (req.url ?? '/').split('?')[0]
    try {
      if (req.method === 'GET' && path === '/')
        return send(res, 200, { service, rows: (await pool.query(LIST[service])).rows })
      if (service === 'payments' && req.method === 'POST' && path === '/charge') {
        const body = await readJson(req)
        await sql(tx, pool, 'INSERT INTO payments (amount) VALUES ($1)', [int(body.amount, 'amount')])
        return send(res, 201)
      }
      if (service === 'inventory' && req.method === 'POST' && path === '/reserve') {
        const body = await readJson(req)
        const r = await sql(tx, pool, 'UPDATE stock SET qty = qty - $1 WHERE item = $2', [
          int(body.qty, 'qty'),
          text(body.item, 'item'),
        ])
        return r.rowCount === 0 ? send(res, 404, { error: `no stock item "${String(body.item)}"` }) : send(res, 201)
      }
      if (service === 'orders' && req.method === 'POST' && path === '/orders') {
        const body = await readJson(req)
        const order = { item: text(body.item, 'item'), qty: int(body.qty, 'qty'), amount: int(body.amount, 'amount') }
        await sql(tx, pool, 'INSERT INTO orders (item, qty, amount) VALUES ($1, $2, $3)', [
          order.item,
          order.qty,
          order.amount,
        ])
        const forwarded: Record<string, string> = { 'content-type': 'application/json' }
        for (const h of FORWARDED) {
          const v = req.headers[h]
          if (typeof v === 'string') forwarded[h] = v
        }
        const calls = [
          ['payments', '/charge', { amount: order.amount }],
          ['inventory', '/reserve', { item: order.item, qty: order.qty }],
        ] as const
        for (const [target, p, payload] of calls) {
          const r = await request(`http://${target}${p}`, {
            method: 'POST',
            dispatcher: egress,
            // A fresh object per call: undici's ProxyAgent adds `host` to the headers object it is
            // given, and a shared one would send the second call to the first call's host.
            headers: { ...forwarded },
            body: JSON.stringify(payload),
            headersTimeout: CALL_TIMEOUT_MS,
            bodyTimeout: CALL_TIMEOUT_MS,
          })
          const answer = await r.body.text()
          if (r.statusCode >= 300) {
            return send(res, 502, {
              error: `${target} answered ${r.statusCode}`,
              code: r.headers['x-txmesh-error'] ?? null,
              body: answer.slice(0, 200),
            })
          }
        }
        return send(res, 201, { ordered: order })
      }
      return send(res, 404, { error: `no route ${req.method ?? ''} ${path ?? ''}` })
    } catch (err) {
      if (err instanceof BadRequest) return send(res, 400, { error: err.message })
      throw err // the helper answers 500 and fails the branch
    }
  }
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms))

/** Creates the table (once across replicas: an advisory lock serialises concurrent starts). */
async function setupDatabase(pool: pg.Pool, service: ShopService, log: Logger): Promise<void> {
  for (let attempt = 1; ; attempt++) {
    const client = await pool.connect().catch((err: unknown) => err as Error)
    if (!(client instanceof Error)) {
      try {
        await client.query('BEGIN')
        await client.query("SELECT pg_advisory_xact_lock(hashtext('txmesh-demo-app-schema'))")
        await client.query(SCHEMA[service])
        await client.query('COMMIT')
        return
      } catch (err) {
        await client.query('ROLLBACK').catch(() => undefined)
        throw err
      } finally {
        client.release()
      }
    }
    if (attempt >= DB_SETUP_ATTEMPTS)
      throw new Error(`cannot reach Postgres after ${attempt} attempts: ${client.message}`)
    log.warn('database_unreachable', { attempt, error: client.message, retryInMs: DB_SETUP_RETRY_MS })
    await sleep(DB_SETUP_RETRY_MS)
  }
}

/** Resolves this service's prepared rows left by a previous instance (helper recover()). */
async function recoverPrepared(txm: TxmeshPg, log: Logger): Promise<void> {
  for (let attempt = 1; attempt <= RECOVER_ATTEMPTS; attempt++) {
    try {
      const r = await txm.recover()
      if (r.inDoubt === 0) return void log.info('recovered', { ...r })
      log.warn('recover_in_doubt', { ...r, attempt })
    } catch (err) {
      log.warn('recover_failed', { attempt, error: (err as Error).message })
    }
    await sleep(RECOVER_RETRY_MS)
  }
}

export async function demoAppCommand(argv: string[]): Promise<number> {
  const { values } = parseArgs({
    args: argv,
    options: {
      service: { type: 'string' },
      port: { type: 'string' },
      host: { type: 'string' },
      help: { type: 'boolean', short: 'h' },
    },
    strict: true,
  })
  if (values.help === true) {
    process.stdout.write(
      'usage: txmesh demo-app --service orders|payments|inventory [--port 8080] [--host 127.0.0.1]\n  env: DATABASE_URL (required), PG* variables\n',
    )
    return 0
  }
  const service = values.service as ShopService | undefined
  if (service === undefined || !SERVICES.includes(service))
    throw new UsageError(`demo-app needs --service ${SERVICES.join('|')}`)
  const portText = values.port ?? '8080'
  const port = Number(portText)
  if (!/^\d{1,5}$/.test(portText) || port > 65535)
    throw new UsageError(`--port must be a port number 0-65535, got "${portText}"`)
  // Loopback by default: only the sidecar (same pod) reaches the app; peers go through ingress.
  const host = values.host ?? '127.0.0.1'
  const url = process.env.DATABASE_URL
  if (url === undefined || url === '')
    throw new UsageError('demo-app needs DATABASE_URL (e.g. postgres://shop@postgres:5432/orders)')

  const log = createLogger((process.env.TXMESH_LOG_LEVEL as Parameters<typeof createLogger>[0] | undefined) ?? 'info', {
    app: 'demo-app',
    service,
  })
  const pool = new pg.Pool({ connectionString: url, max: POOL_MAX })
  pool.on('error', (err) => log.warn('pool_error', { error: err.message })) // idle clients see Postgres restart
  const txm = createTxmeshPg({
    pool,
    service,
    onEvent: (e) =>
      e.event.endsWith('error') || e.event.endsWith('failed')
        ? log.warn(e.event, { ...e })
        : log.debug(e.event, { ...e }),
  })
  const egress = new EnvHttpProxyAgent()
  await setupDatabase(pool, service, log)
  const server = createServer(txm.handler(routes(service, pool, egress)))
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject)
    server.listen(port, host, () => resolve())
  })
  const address = server.address()
  const bound = typeof address === 'object' && address !== null ? address.port : port
  process.stdout.write(
    JSON.stringify({ event: 'listening', app: 'demo-app', service, host, port: bound, pid: process.pid }) + '\n',
  )
  void recoverPrepared(txm, log)

  return new Promise<number>((resolve) => {
    const stop = (signal: string): void => {
      log.info('stopping', { signal })
      server.close()
      server.closeAllConnections()
      void Promise.allSettled([txm.close(), egress.close()])
        .then(() => pool.end())
        .then(
          () => resolve(0),
          () => resolve(1),
        )
    }
    process.once('SIGTERM', () => stop('SIGTERM'))
    process.once('SIGINT', () => stop('SIGINT'))
  })
}
