// A saga whose coordinator dies mid-compensation on the shared Postgres store: a sibling instance
// takes the log over and finishes the compensations in reverse order (real sidecar processes).
import { execFileSync } from 'node:child_process'
import type { IncomingMessage, ServerResponse } from 'node:http'
import { request } from 'undici'
import { describe, expect, it } from 'vitest'
import { usePgDatabase } from '../helpers/pg.js'
import { until } from '../../harness/ports.js'
import { CLI } from '../../harness/sidecar.js'
import {
  rawRequest,
  sidecarYaml,
  spawnSidecar,
  startServer,
  withPgStore,
  type SidecarProcess,
} from '../helpers/servers.js'
import { stopAfterTests } from '../helpers/tx-app.js'

const { procs, closers } = stopAfterTests()
const LEASE_MS = 3_000

const store = usePgDatabase('sagas')
const sql = store.sql

/** Every request any app got, in arrival order: `<app> <method> <path> <status> <op>`. */
const arrivals: string[] = []

async function app(
  name: string,
  answer: (req: IncomingMessage) => { status: number; body: unknown; headers?: Record<string, string> },
) {
  const s = await startServer((req, res: ServerResponse) => {
    req.resume()
    req.on('end', () => {
      const a = answer(req)
      arrivals.push(
        `${name} ${req.method ?? ''} ${req.url ?? ''} ${a.status} ${String(req.headers['txmesh-op'] ?? '-')}`,
      )
      // A 204 has no body (a Content-Length on it breaks the exchange for the caller).
      const text = a.status === 204 ? '' : JSON.stringify(a.body)
      res.writeHead(a.status, {
        'content-type': 'application/json',
        'content-length': Buffer.byteLength(text),
        ...a.headers,
      })
      res.end(text)
    })
  })
  closers.push(s.close)
  return s.port
}

describe('takeover of a saga on the Postgres store', () => {
  it('a coordinator SIGKILLed while compensating: a sibling finishes the compensations in reverse order', async () => {
    let refundsDown = true
    const orders = await app('orders', (req) =>
      req.method === 'POST' ? { status: 201, body: { id: 42 } } : { status: 204, body: {} },
    )
    const payments = await app('payments', (req) => {
      if (req.url === '/charge')
        return { status: 200, body: { charged: true }, headers: { 'txmesh-compensate': 'POST /refund/c-7' } }
      return refundsDown
        ? { status: 503, body: { error: 'refunds are down' } }
        : { status: 200, body: { refunded: true } }
    })
    const ordersSc = await spawnSidecar(sidecarYaml('orders', orders))
    procs.push(ordersSc)
    const config = (i: number): string =>
      withPgStore(
        sidecarYaml(
          'shop',
          1,
          [
            'services:',
            `  orders: {address: "127.0.0.1:${ordersSc.ports.ingress}"}`,
            `  payments: {address: "127.0.0.1:${payments}"}`,
            'routes:',
            '  - name: create-order',
            '    match: {direction: egress, host: orders, pathPrefix: /orders, methods: [POST]}',
            '    compensation: {method: DELETE, path: "/orders/{response.json.id}"}',
            '  - name: payments',
            '    match: {direction: egress, host: payments}',
            '    nonTransactionalTarget: proceed',
            // Compensations retried (not stuck) while refunds are down.
            'steps: {attempts: 1000, backoffBaseMs: 50, backoffCapMs: 100}',
          ].join('\n'),
        ),
        `url: ${JSON.stringify(store.url)}, schema: sagas, instance: shop-${i}, leaseMs: ${LEASE_MS}`,
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
    // Compensating: the refund (the last step's undo, first in reverse order) is being retried.
    await until(
      'the refund retried',
      () => arrivals.filter((a) => a.startsWith('payments POST /refund')).length >= 2,
      10_000,
    )
    first.child.kill('SIGKILL')
    await first.exited
    const killedAt = Date.now()
    // A sibling claims the log; its admin API and `txmesh tx list` show the saga as taken over.
    let taker: SidecarProcess | undefined
    await until(
      'the saga listed by a sibling',
      async () => {
        for (const sc of coords.slice(1)) {
          const r = await request(`http://127.0.0.1:${sc.ports.admin}/v1/transactions`)
          const body = (await r.body.json()) as { transactions: { id: string; takenFrom?: string; owner?: string }[] }
          const found = body.transactions.find((t) => t.id === tx.id)
          if (found !== undefined) {
            expect(found).toMatchObject({ takenFrom: 'shop/shop-1' })
            taker = sc
            return true
          }
        }
        return false
      },
      LEASE_MS + 10_000,
    )
    const listed = execFileSync(process.execPath, [
      CLI,
      'tx',
      'list',
      '--admin',
      `http://127.0.0.1:${(taker as SidecarProcess).ports.admin}`,
    ]).toString()
    expect(listed).toMatch(/OWNER/)
    expect(listed).toMatch(new RegExp(`${tx.id}.*shop/shop-[23] \\(taken over from shop/shop-1\\)`))
    refundsDown = false
    await until(
      'both compensations, by a sibling',
      () => arrivals.some((a) => a.startsWith('orders DELETE /orders/42 204')),
      LEASE_MS + 10_000,
    )
    expect(Date.now() - killedAt).toBeLessThan(LEASE_MS + 10_000)
    const refunded = arrivals.findIndex((a) => a.startsWith('payments POST /refund/c-7 200'))
    const deleted = arrivals.findIndex((a) => a.startsWith('orders DELETE /orders/42'))
    // Reverse order: the order is deleted only once the refund went through.
    expect({ refunded: refunded >= 0, inOrder: refunded < deleted }).toEqual({ refunded: true, inOrder: true })
    expect(arrivals.filter((a) => a.startsWith('orders DELETE')).every((a) => a.endsWith('compensate'))).toBe(true)
    const claimed = await Promise.all(
      coords.slice(1).map(async (sc) => {
        const text = await (await request(`http://127.0.0.1:${sc.ports.admin}/metrics`)).body.text()
        return Number(/txmesh_store_takeovers_total\{result="claimed"\} (\d+)/.exec(text)?.[1] ?? 0)
      }),
    )
    expect(claimed.reduce((a, b) => a + b, 0)).toBeGreaterThanOrEqual(1)

    // The taker, done with the log (given up), still runs sagas of its own: finishing the taken
    // one did not close its peer client (it used to: 'The client is destroyed' on every later step).
    const own = taker as SidecarProcess
    await until(
      'the taken log given up',
      async () => {
        const [row] = await sql<{ holder: string | null }>(`SELECT holder FROM sagas.logs WHERE log_id = 'shop/shop-1'`)
        return row?.holder === null
      },
      10_000,
    )
    const second = await request(`http://127.0.0.1:${own.ports.admin}/v1/transactions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ mode: 'saga', timeoutMs: 60_000 }),
    })
    const tx2 = (await second.body.json()) as { id: string; context: string }
    const created = await rawRequest(own.ports.egress, {
      method: 'POST',
      path: 'http://orders/orders',
      headers: { 'txmesh-context': tx2.context, 'content-length': '0' },
    })
    expect(created.status).toBe(201)
    const deletesBefore = arrivals.filter((a) => a.startsWith('orders DELETE /orders/42 204')).length
    const abort2 = await request(`http://127.0.0.1:${own.ports.admin}/v1/transactions/${tx2.id}/abort`, {
      method: 'POST',
    })
    expect(abort2.statusCode).toBe(200)
    await abort2.body.dump()
    await until(
      "the taker's own compensation",
      () => arrivals.filter((a) => a.startsWith('orders DELETE /orders/42 204')).length > deletesBefore,
      10_000,
    )
  }, 90_000)
})
