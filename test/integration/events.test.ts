// Transactional messages and lifecycle events on a real NATS JetStream, from a real sidecar
// process: published only after commit, never after abort, in order per transaction, and not
// lost when the sidecar is SIGKILLed between the commit and the publish.
import { request } from 'undici'
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest'
import { deleteStream, readStream, startNats, type NatsServer, type Stored } from '../../harness/nats.js'
import { freePort, until } from '../../harness/ports.js'
import { tempDir } from '../../harness/temp.js'
import { rawRequest, sidecarYaml, spawnSidecar, startServer, type SidecarProcess } from '../helpers/servers.js'

let nats: NatsServer
const procs: SidecarProcess[] = []
let closeApp: (() => Promise<void>) | undefined
let appPort = 0

beforeAll(async () => {
  nats = await startNats()
  // A saga step's service: answers and names its own compensation.
  const app = await startServer((req, res) => {
    req.resume()
    res.writeHead(201, { 'content-type': 'application/json', 'txmesh-compensate': 'DELETE /orders/1' }).end('{"id":1}')
  })
  closeApp = app.close
  appPort = app.port
})
afterAll(async () => {
  await closeApp?.()
  await nats.stop()
})
afterEach(() => {
  for (const p of procs.splice(0)) if (p.child.exitCode === null) p.child.kill('SIGKILL')
})

async function start(store: string, control: number, stream = 'TXMESH'): Promise<SidecarProcess> {
  const yaml = sidecarYaml(
    'shop',
    1,
    [
      `services:`,
      `  orders: {address: "127.0.0.1:${appPort}"}`,
      'routes:',
      '  - {name: orders, match: {direction: egress, host: orders}, nonTransactionalTarget: proceed}',
      `events: {nats: {servers: ["${nats.url}"], stream: ${stream}, topics: ["orders.>"]}}`,
    ].join('\n'),
    store,
  )
  const sc = await spawnSidecar(yaml, ['--control-port', String(control)])
  procs.push(sc)
  return sc
}

async function post(
  port: number,
  path: string,
  body?: unknown,
): Promise<{ status: number; body: Record<string, unknown> }> {
  const r = await request(`http://127.0.0.1:${port}${path}`, {
    method: 'POST',
    ...(body === undefined ? {} : { headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) }),
  })
  return { status: r.statusCode, body: (await r.body.json()) as Record<string, unknown> }
}

async function begin(sc: SidecarProcess, mode: string): Promise<{ id: string; context: string }> {
  const r = await post(sc.ports.admin, '/v1/transactions', { mode, timeoutMs: 30_000 })
  expect(r.status).toBe(201)
  return r.body as { id: string; context: string }
}

/** Lifecycle events of one transaction, in stream order. */
const of = (all: Stored[], tx: string): Record<string, unknown>[] =>
  all
    .filter((s) => s.subject === 'txmesh.events.shop')
    .map((s) => s.payload as Record<string, unknown>)
    .filter((p) => p.tx === tx)

describe('event bus on NATS JetStream', () => {
  it('publishes a message only when its transaction commits, and every lifecycle event in order', async () => {
    const sc = await start(tempDir(), await freePort())
    const saga = await begin(sc, 'saga')
    const step = await rawRequest(sc.ports.egress, {
      method: 'POST',
      path: 'http://orders/orders',
      headers: { 'txmesh-context': saga.context, 'content-length': '0' },
    })
    expect(step.status).toBe(201)
    expect(
      (
        await post(sc.ports.admin, `/v1/transactions/${saga.id}/messages`, {
          topic: 'orders.created',
          payload: { id: 1 },
          key: 'o-1',
        })
      ).status,
    ).toBe(201)
    const doomed = await begin(sc, '2pc')
    expect(
      (
        await post(sc.ports.admin, `/v1/transactions/${doomed.id}/messages`, {
          topic: 'orders.cancelled',
          payload: { id: 2 },
        })
      ).status,
    ).toBe(201)
    // Refused: a topic outside the stream, and a message on a finished transaction.
    expect(
      (await post(sc.ports.admin, `/v1/transactions/${doomed.id}/messages`, { topic: 'payments.done', payload: {} }))
        .status,
    ).toBe(400)
    expect((await post(sc.ports.admin, `/v1/transactions/${saga.id}/commit?wait=acks`)).body.outcome).toBe('committed')
    expect((await post(sc.ports.admin, `/v1/transactions/${doomed.id}/abort`)).body.outcome).toBe('aborted')
    expect(
      (await post(sc.ports.admin, `/v1/transactions/${doomed.id}/messages`, { topic: 'orders.x', payload: {} })).status,
    ).toBe(409)

    let all: Stored[] = []
    await until('message and events on the stream', async () => {
      all = await readStream(nats.url, 'TXMESH').catch(() => [])
      const types = of(all, saga.id).map((p) => p.type)
      return (
        all.some((s) => s.subject === 'orders.created') &&
        types.includes('finished') &&
        of(all, doomed.id).some((p) => p.type === 'finished')
      )
    })
    const msg = all.find((s) => s.subject === 'orders.created')!
    expect(msg.payload).toEqual({ tx: saga.id, topic: 'orders.created', key: 'o-1', payload: { id: 1 } })
    expect(msg.msgId).toBe(`${saga.id}:m0`)
    // The aborted transaction's message never reaches the bus.
    expect(all.some((s) => s.subject === 'orders.cancelled')).toBe(false)

    const events = of(all, saga.id)
    expect(events.map((e) => e.type)).toEqual(['begun', 'step', 'committed', 'finished'])
    expect(events.map((e) => e.seq)).toEqual([1, 2, 3, 4])
    expect(
      all
        .filter((s) => s.subject === 'txmesh.events.shop' && (s.payload as { tx?: string }).tx === saga.id)
        .map((s) => s.msgId),
    ).toEqual(events.map((e) => e.id))
    expect(of(all, doomed.id).map((e) => e.type)).toEqual(['begun', 'aborted', 'finished'])
  })

  it('loses no message or event when the sidecar is SIGKILLed between commit and publish', async () => {
    const store = tempDir()
    const control = await freePort()
    // A stream of its own (streams may not share subjects, so the first test's goes).
    await deleteStream(nats.url, 'TXMESH')
    let sc = await start(store, control, 'TXMESH_KILL')
    let tx = { id: '', context: '' }
    // The bus is down: the commit answers (the decision is durable), publishing has to wait.
    await nats.restart(async () => {
      tx = await begin(sc, '2pc')
      expect(
        (await post(sc.ports.admin, `/v1/transactions/${tx.id}/messages`, { topic: 'orders.paid', payload: { id: 3 } }))
          .status,
      ).toBe(201)
      expect((await post(sc.ports.admin, `/v1/transactions/${tx.id}/commit`)).body.outcome).toBe('committed')
      sc.child.kill('SIGKILL')
      await sc.exited
    })
    sc = await start(store, control, 'TXMESH_KILL')
    let all: Stored[] = []
    await until(
      'message and committed event after restart',
      async () => {
        // Not there until the restarted sidecar created the stream.
        all = await readStream(nats.url, 'TXMESH_KILL').catch(() => [])
        return all.some((s) => s.subject === 'orders.paid') && of(all, tx.id).some((p) => p.type === 'committed')
      },
      20_000,
    )
    expect(all.filter((s) => s.subject === 'orders.paid').map((s) => s.payload)).toEqual([
      { tx: tx.id, topic: 'orders.paid', payload: { id: 3 } },
    ])
    // The logged events first, in their order; recovery's own follow with later sequence numbers.
    const events = of(all, tx.id)
    expect(events.map((p) => p.type).slice(0, 2)).toEqual(['begun', 'committed'])
    expect(events.map((p) => p.seq)).toEqual(events.map((_p, i) => i + 1))
  })
})
