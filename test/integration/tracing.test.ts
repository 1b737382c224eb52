// Tracing end to end: a real OTLP/HTTP receiver (JSON) collects what three sidecar processes
// export while one transaction runs across them; SIGTERM flushes the spans.
import { randomBytes } from 'node:crypto'
import { request } from 'undici'
import { afterAll, describe, expect, it } from 'vitest'
import {
  MESH_KEY,
  rawRequest,
  sidecarYaml,
  spawnSidecar,
  startServer,
  type SidecarProcess,
} from '../helpers/servers.js'
import { startTxApp, type TxApp } from '../helpers/tx-app.js'
import { startReceiver } from '../helpers/otlp.js'

const SERVER = 2
const CLIENT = 3

const procs: SidecarProcess[] = []
const apps: TxApp[] = []
afterAll(async () => {
  for (const p of procs) if (p.child.exitCode === null) p.child.kill('SIGKILL')
  await Promise.all(apps.map((a) => a.close()))
})

describe('tracing', () => {
  it('exports one trace across three sidecars with HTTP and transaction spans, and no mesh key', async () => {
    const { receiver, spans, payloads } = await startReceiver()
    const env = { OTEL_EXPORTER_OTLP_ENDPOINT: `http://127.0.0.1:${receiver.port}` }
    try {
      // inventory <- orders (nested call) <- initiator (coordinator); each knows the ones it calls.
      const inventory = await startTxApp('inventory')
      const orders = await startTxApp('orders')
      apps.push(inventory, orders)
      const route = 'routes:\n  - name: writes\n    match: {pathPrefix: /write}\n'
      const inv = await spawnSidecar(sidecarYaml('inventory', inventory.port, route), [], env)
      procs.push(inv)
      inventory.egress = inv.ports.egress
      const ord = await spawnSidecar(
        sidecarYaml('orders', orders.port, `services:\n  inventory: {address: "127.0.0.1:${inv.ports.ingress}"}\n`),
        [],
        env,
      )
      procs.push(ord)
      orders.egress = ord.ports.egress
      const services = `services:\n  orders: {address: "127.0.0.1:${ord.ports.ingress}"}\n  inventory: {address: "127.0.0.1:${inv.ports.ingress}"}\n`
      const coord = await spawnSidecar(
        sidecarYaml('initiator', 1, `${services}\nui: {traceUrl: "http://jaeger.local:16686/trace/{traceId}"}\n`),
        [],
        env,
      )
      procs.push(coord)

      const traceId = randomBytes(16).toString('hex')
      const rootSpan = randomBytes(8).toString('hex')
      const traceparent = `00-${traceId}-${rootSpan}-01`
      const begun = await request(`http://127.0.0.1:${coord.ports.admin}/v1/transactions`, {
        method: 'POST',
        headers: { traceparent, 'content-type': 'application/json' },
        body: JSON.stringify({ mode: '2pc', timeoutMs: 10_000 }),
      })
      expect(begun.statusCode).toBe(201)
      const tx = (await begun.body.json()) as { id: string; context: string }
      const call = await rawRequest(coord.ports.egress, {
        method: 'POST',
        path: 'http://orders/write/o1?then=inventory',
        headers: { 'txmesh-context': tx.context, traceparent, tracestate: 'app=1' },
      })
      expect(call.status).toBe(200)
      const committed = (await (
        await request(`http://127.0.0.1:${coord.ports.admin}/v1/transactions/${tx.id}/commit?wait=acks`, {
          method: 'POST',
        })
      ).body.json()) as { outcome: string }
      expect(committed.outcome).toBe('committed')
      // The dashboard links each transaction to its trace through the configured template.
      const view = (await (
        await request(`http://127.0.0.1:${coord.ports.admin}/v1/transactions/${tx.id}`)
      ).body.json()) as { traceId?: string }
      expect(view.traceId).toBe(traceId)
      const uiConfig = (await (await request(`http://127.0.0.1:${coord.ports.admin}/v1/ui-config`)).body.json()) as {
        traceUrl: string
      }
      expect(uiConfig.traceUrl).toBe('http://jaeger.local:16686/trace/{traceId}')
      expect(orders.committed).toEqual(['orders:o1'])
      expect(inventory.committed).toEqual(['inventory:o1'])

      // SIGTERM drains each sidecar, which flushes its batch of spans before exiting.
      for (const p of [coord, ord, inv]) p.child.kill('SIGTERM')
      const exits = await Promise.all([coord, ord, inv].map((p) => p.exited))
      expect(exits.map((e) => e.code)).toEqual([0, 0, 0])

      // One trace, every span's parent known (or the test's own root span).
      expect(spans.length).toBeGreaterThan(0)
      expect(new Set(spans.map((s) => s.traceId))).toEqual(new Set([traceId]))
      const ids = new Set(spans.map((s) => s.spanId))
      for (const s of spans)
        expect(
          s.parentSpanId === rootSpan || ids.has(s.parentSpanId ?? ''),
          `${s.service} ${s.name} has a known parent`,
        ).toBe(true)
      expect(new Set(spans.map((s) => s.service))).toEqual(new Set(['initiator', 'orders', 'inventory']))

      // HTTP spans follow the semantic conventions.
      const servers = spans.filter((s) => s.kind === SERVER)
      const clients = spans.filter((s) => s.kind === CLIENT)
      // initiator egress, orders ingress, orders egress (nested), inventory ingress
      expect(servers).toHaveLength(4)
      expect(clients).toHaveLength(4)
      for (const s of servers) {
        expect(s.attrs['http.request.method']).toBe('POST')
        expect(s.attrs['url.path']).toBe('/write/o1')
        expect(s.attrs['url.scheme']).toBe('http')
        expect(s.attrs['http.response.status_code']).toBe(200)
        expect(typeof s.attrs['server.address']).toBe('string')
      }
      const routed = servers.find((s) => s.service === 'inventory')!
      expect(routed.name).toBe('POST writes')
      expect(routed.attrs['http.route']).toBe('writes')
      const first = servers.find((s) => s.parentSpanId === rootSpan)!
      expect(first.service).toBe('initiator')
      expect(first.name).toBe('POST')
      expect(first.attrs['http.route']).toBeUndefined()
      for (const c of clients) {
        expect(c.attrs['http.request.method']).toBe('POST')
        expect(c.attrs['http.response.status_code']).toBe(200)
        expect(typeof c.attrs['server.port']).toBe('number')
        expect(c.attrs['server.address']).toBe('127.0.0.1')
        expect(String(c.attrs['url.full'])).toMatch(/^http:\/\/127\.0\.0\.1:\d+\/write\/o1$/)
        expect(ids.has(c.parentSpanId ?? '')).toBe(true)
        expect(spans.find((s) => s.spanId === c.parentSpanId)?.kind).toBe(SERVER)
      }
      // Each hop's server span is the child of the previous hop's client span.
      for (const s of servers.filter((x) => x !== first))
        expect(spans.find((p) => p.spanId === s.parentSpanId)?.kind).toBe(CLIENT)

      // The transaction span continues the admin begin's traceparent, with per-participant phases.
      const txSpan = spans.find((s) => s.name === 'txmesh.transaction')!
      expect(txSpan.service).toBe('initiator')
      expect(txSpan.parentSpanId).toBe(rootSpan)
      expect(txSpan.attrs).toMatchObject({
        'txmesh.tx.id': tx.id,
        'txmesh.tx.mode': '2pc',
        'txmesh.outcome': 'committed',
      })
      const children = (name: string) => spans.filter((s) => s.name === name && s.parentSpanId === txSpan.spanId)
      const prepares = children('txmesh.prepare')
      expect(prepares.map((s) => s.attrs['txmesh.participant']).sort()).toEqual(['inventory', 'orders'])
      for (const p of prepares) expect(p.attrs).toMatchObject({ 'txmesh.tx.id': tx.id, 'txmesh.vote': 'prepared' })
      const commits = children('txmesh.commit')
      expect(commits.map((s) => s.attrs['txmesh.participant']).sort()).toEqual(['inventory', 'orders'])
      for (const c of commits) expect(c.attrs['txmesh.tx.id']).toBe(tx.id)
      const enlisted = children('txmesh.enlist').flatMap((s) => s.attrs['txmesh.participant'] as string[])
      expect(enlisted.sort()).toEqual(['inventory', 'orders'])
      expect(children('txmesh.abort')).toEqual([])

      // Neither the mesh key nor the signed context leaves the mesh in a span.
      const all = payloads.join('\n')
      expect(all).not.toContain(MESH_KEY)
      expect(all).not.toContain(tx.context)
    } finally {
      await receiver.close()
    }
  }, 20_000)

  it('makes one client span per upstream attempt, with http.request.resend_count on retries', async () => {
    const { receiver, spans } = await startReceiver()
    let hits = 0
    const upstream = await startServer((_req, res) => {
      hits++
      res.writeHead(hits <= 2 ? 503 : 200).end('x')
    })
    try {
      const sc = await spawnSidecar(sidecarYaml('edge', 1), [], {
        OTEL_EXPORTER_OTLP_ENDPOINT: `http://127.0.0.1:${receiver.port}`,
      })
      procs.push(sc)
      const r = await rawRequest(sc.ports.egress, { path: `http://127.0.0.1:${upstream.port}/flaky` })
      expect(r.status).toBe(200)
      sc.child.kill('SIGTERM')
      await sc.exited
      const server = spans.filter((s) => s.kind === SERVER)
      const clients = spans.filter((s) => s.kind === CLIENT)
      expect(server).toHaveLength(1)
      expect(clients).toHaveLength(3)
      expect(clients.every((c) => c.parentSpanId === server[0]?.spanId)).toBe(true)
      expect(clients.map((c) => c.attrs['http.request.resend_count']).sort()).toEqual([1, 2, undefined])
      expect(clients.map((c) => c.attrs['http.response.status_code']).sort()).toEqual([200, 503, 503])
      expect(server[0]?.attrs['http.response.status_code']).toBe(200)
    } finally {
      await upstream.close()
      await receiver.close()
    }
  })
})
