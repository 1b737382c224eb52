// Attack on the shared Postgres store: a new process of an instance (a replaced pod, same name)
// takes its log at once (claimOwn: the holder is its own name) while the old process, cut off from
// Postgres, still counts its lease as held on its own clock. Both finish the same saga: the same
// compensation must not run twice at once.
import type { IncomingMessage, ServerResponse } from 'node:http'
import { connect, createServer, type AddressInfo, type Socket } from 'node:net'
import { request } from 'undici'
import { describe, expect, it } from 'vitest'
import { until } from '../../harness/ports.js'
import {
  rawRequest,
  sidecarYaml,
  spawnSidecar,
  startServer,
  withPgStore,
  type SidecarProcess,
} from '../helpers/servers.js'
import { usePgDatabase } from '../helpers/pg.js'
import { stopAfterTests } from '../helpers/tx-app.js'

const { procs, closers } = stopAfterTests()
const LEASE_MS = 15_000
/** How long the app takes to refund once refunds are back (under LIMITS.stepOpTimeoutMs). */
const REFUND_MS = 7_000

const store = usePgDatabase('twoprocs')

/** A TCP gate in front of Postgres: `refuse` cuts the connections open now and refuses new ones. */
async function pgGate(targetPort: number): Promise<{ port: number; refuse(): void; close(): Promise<void> }> {
  const pairs = new Set<{ client: Socket; upstream: Socket }>()
  let refusing = false
  const server = createServer((client) => {
    if (refusing) return void client.destroy()
    const upstream = connect(targetPort, '127.0.0.1')
    const p = { client, upstream }
    pairs.add(p)
    client.pipe(upstream)
    upstream.pipe(client)
    const gone = (): void => {
      pairs.delete(p)
      client.destroy()
      upstream.destroy()
    }
    for (const s of [client, upstream]) {
      s.on('error', gone)
      s.on('close', gone)
    }
  })
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()))
  return {
    port: (server.address() as AddressInfo).port,
    refuse: () => {
      refusing = true
      for (const p of [...pairs]) {
        p.client.resetAndDestroy()
        p.upstream.resetAndDestroy()
      }
    },
    close: () => new Promise<void>((r) => server.close(() => r())),
  }
}

describe('a new process of an instance taking its log while the old one is cut off from Postgres', () => {
  it('the old and the new process never run the same compensation at once', async () => {
    let refunds: 'down' | 'slow' = 'down'
    /** Refunds the app is carrying out now, and the most at once. */
    let running = 0
    let most = 0
    let slowArrived = 0
    let deleted = 0
    const orders = await startServer((req: IncomingMessage, res: ServerResponse) => {
      req.resume()
      req.on('end', () => {
        if (req.method === 'POST') {
          res.writeHead(201, { 'content-type': 'application/json' })
          res.end(JSON.stringify({ id: 42 }))
        } else {
          deleted++
          res.writeHead(204)
          res.end()
        }
      })
    })
    closers.push(orders.close)
    const payments = await startServer((req: IncomingMessage, res: ServerResponse) => {
      req.resume()
      req.on('end', () => {
        if (req.url === '/charge') {
          res.writeHead(200, { 'content-type': 'application/json', 'txmesh-compensate': 'POST /refund/c-7' })
          res.end('{"charged":true}')
          return
        }
        if (refunds === 'down') {
          res.writeHead(503, { 'content-type': 'application/json' })
          res.end('{"error":"refunds are down"}')
          return
        }
        // The refund runs at the app for REFUND_MS, whether or not its caller is still there.
        slowArrived++
        running++
        most = Math.max(most, running)
        setTimeout(() => {
          running--
          if (!res.destroyed) {
            res.writeHead(200, { 'content-type': 'application/json' })
            res.end('{"refunded":true}')
          }
        }, REFUND_MS)
      })
    })
    closers.push(payments.close)
    const ordersSc = await spawnSidecar(sidecarYaml('orders', orders.port))
    procs.push(ordersSc)
    const config = (i: number, url: string = store.url): string =>
      withPgStore(
        sidecarYaml(
          'shop',
          1,
          [
            'services:',
            `  orders: {address: "127.0.0.1:${ordersSc.ports.ingress}"}`,
            `  payments: {address: "127.0.0.1:${payments.port}"}`,
            'routes:',
            '  - name: create-order',
            '    match: {direction: egress, host: orders, pathPrefix: /orders, methods: [POST]}',
            '    compensation: {method: DELETE, path: "/orders/{response.json.id}"}',
            '  - name: payments',
            '    match: {direction: egress, host: payments}',
            '    nonTransactionalTarget: proceed',
            'steps: {attempts: 1000, backoffBaseMs: 50, backoffCapMs: 100}',
          ].join('\n'),
        ),
        `url: ${JSON.stringify(url)}, schema: twoprocs, instance: shop-${i}, leaseMs: ${LEASE_MS}`,
      )
    const gate = await pgGate(store.pg.port)
    closers.push(() => gate.close())
    const old = await spawnSidecar(
      config(1, store.url.replace(`127.0.0.1:${store.pg.port}/`, `127.0.0.1:${gate.port}/`)),
    )
    procs.push(old)
    const coords: SidecarProcess[] = [old]
    const first = coords[0] as SidecarProcess
    const begun = await request(`http://127.0.0.1:${first.ports.admin}/v1/transactions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ mode: 'saga', timeoutMs: 60_000 }),
    })
    const tx = (await begun.body.json()) as { id: string; context: string }
    for (const target of ['http://orders/orders', 'http://payments/charge']) {
      const r = await rawRequest(first.ports.egress, {
        method: 'POST',
        path: target,
        headers: { 'txmesh-context': tx.context, 'content-length': '0' },
      })
      expect(r.status).toBeLessThan(300)
    }
    const abort = await request(`http://127.0.0.1:${first.ports.admin}/v1/transactions/${tx.id}/abort`, {
      method: 'POST',
    })
    await abort.body.dump()
    // The refund is retried by the old process; it loses Postgres (its lease still held by its clock).
    await new Promise((r) => setTimeout(r, 500))
    gate.refuse()
    // The new process of shop-1 takes the log at once and recovers the saga.
    const fresh = await spawnSidecar(config(1))
    procs.push(fresh)
    // Refunds come back, slow.
    refunds = 'slow'
    await until('a refund running', () => slowArrived >= 1, 5_000)
    // Whoever sends it, no refund may start while another one runs.
    await new Promise((r) => setTimeout(r, REFUND_MS + 1_000))
    expect({ refundsStarted: slowArrived >= 1, mostAtOnce: most }).toEqual({ refundsStarted: true, mostAtOnce: 1 })
    // And the saga is still finished, by the remaining instance: refund, then the order deleted.
    await until('the order deleted', () => deleted >= 1, REFUND_MS + LEASE_MS + 10_000)
    expect(most).toBe(1)
  }, 60_000)
})
