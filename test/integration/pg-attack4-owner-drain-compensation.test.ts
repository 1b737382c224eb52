// Attack on the shared Postgres store: the OWNER of a saga (the instance that began it, on its own
// log) is drained (SIGTERM, a rolling update) while one of that saga's compensations is out at the
// app. Its log must not be handed on while that call may still be running: its lease lapsing while
// the refund still runs at the app lets a sibling claim the log and send the same compensation
// again while the first one still runs.
import type { IncomingMessage, ServerResponse } from 'node:http'
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
const LEASE_MS = 3_000
/** How long the app takes to refund once refunds are back (under LIMITS.stepOpTimeoutMs). */
const REFUND_MS = 7_000

const store = usePgDatabase('ownerdrain')

describe('the owner drained while a compensation of its own saga is out', () => {
  it('keeps its log until that compensation came back: the same compensation never runs twice at once', async () => {
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
    const config = (i: number): string =>
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
        `url: ${JSON.stringify(store.url)}, schema: ownerdrain, instance: shop-${i}, leaseMs: ${LEASE_MS}`,
      )
    const coords: SidecarProcess[] = []
    for (const i of [1, 2, 3]) {
      const sc = await spawnSidecar(config(i))
      procs.push(sc)
      coords.push(sc)
    }
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
    // The refund is retried by the owner; refunds come back, but slow: the owner's refund is out at
    // the app, and the owner is drained.
    await new Promise((r) => setTimeout(r, 500))
    refunds = 'slow'
    await until('the owner refunding', () => slowArrived >= 1, 5_000)
    first.child.kill('SIGTERM')
    // Another instance may take the saga over, but its refund must not start while the first runs.
    await new Promise((r) => setTimeout(r, REFUND_MS + 1_000))
    expect({ refundsStarted: slowArrived >= 1, mostAtOnce: most }).toEqual({ refundsStarted: true, mostAtOnce: 1 })
    // And the saga is still finished, by the remaining instance: refund, then the order deleted.
    await until('the order deleted', () => deleted >= 1, REFUND_MS + LEASE_MS + 10_000)
    expect(most).toBe(1)
  }, 60_000)
})
