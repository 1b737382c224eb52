// Event sinks against real peers: a nats-server child process with JetStream (harness/nats.ts)
// and webhook receivers on 127.0.0.1 listen(0).
import type { IncomingMessage, ServerResponse } from 'node:http'
import { jetstreamManager } from '@nats-io/jetstream'
import { connect } from '@nats-io/transport-node'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { backoffDelay, DeliveryQueue } from '../../src/events/delivery.js'
import { LIMITS } from '../../src/limits.js'
import { eventSubject, NatsSink, subjectToken } from '../../src/events/nats.js'
import type { BusEvent } from '../../src/events/types.js'
import { WebhookSink } from '../../src/events/webhook.js'
import { readStream, startNats, type NatsServer } from '../../harness/nats.js'
import { until } from '../../harness/ports.js'
import { startServer } from '../helpers/servers.js'

// Fast retries so outage tests take seconds; production defaults are in LIMITS (event bus section).
const FAST = { backoffBaseMs: 20, backoffCapMs: 200, deliveryTimeoutMs: 2_000 } as const

function ev(service: string, i: number): BusEvent {
  return { id: `${service}-${i}`, subject: eventSubject(service), payload: { n: i, tx: `tx-${i}` } }
}

describe('NATS JetStream sink', () => {
  let nats: NatsServer

  beforeAll(async () => {
    nats = await startNats()
  })

  afterAll(async () => {
    await nats?.stop()
  })

  const sinkFor = (stream: string, subjects: string[], extra: { reconnectWaitMs?: number } = {}): Promise<NatsSink> =>
    NatsSink.connect({ servers: [nats.url], stream, subjects, name: `test-${stream}`, timeoutMs: 1_000, ...extra })

  it('creates the stream with file storage, then adds a missing subject on the next connect', async () => {
    const admin = await connect({ servers: nats.url, timeout: 5_000 })
    const jsm = await jetstreamManager(admin)
    const first = await sinkFor('EV_CREATE', [eventSubject('orders')])
    const info = await jsm.streams.info('EV_CREATE')
    expect(info.config.subjects).toEqual(['txmesh.events.orders'])
    expect(info.config.storage).toBe('file')
    expect(info.config.duplicate_window).toBe(120_000_000_000) // server default, 2 min in ns
    await first.close()

    const second = await sinkFor('EV_CREATE', [eventSubject('orders'), eventSubject('payments')])
    expect((await jsm.streams.info('EV_CREATE')).config.subjects).toEqual([
      'txmesh.events.orders',
      'txmesh.events.payments',
    ])
    await second.close()
    await admin.close()
  })

  it('stores a delivered event that a JetStream consumer reads back with its payload and id', async () => {
    const sink = await sinkFor('EV_READ', [eventSubject('read')])
    await sink.deliver({
      id: 'read-1',
      subject: eventSubject('read'),
      payload: { kind: 'tx.committed', tx: 'abc', branches: 2 },
    })
    await sink.close()
    expect(await readStream(nats.url, 'EV_READ')).toEqual([
      {
        subject: 'txmesh.events.read',
        seq: 1,
        msgId: 'read-1',
        payload: { kind: 'tx.committed', tx: 'abc', branches: 2 },
      },
    ])
  })

  it('stores one message when the same event id is published twice (dedup on Nats-Msg-Id)', async () => {
    const sink = await sinkFor('EV_DEDUP', [eventSubject('dedup')])
    const e = ev('dedup', 1)
    await sink.deliver(e)
    await sink.deliver(e) // acknowledged as a duplicate: resolves, stores nothing
    await sink.deliver(ev('dedup', 2))
    await sink.close()
    const stored = await readStream(nats.url, 'EV_DEDUP')
    expect(stored.map((m) => m.msgId)).toEqual(['dedup-1', 'dedup-2'])
  })

  it('delivers 200 queued events one at a time in push order', async () => {
    const sink = await sinkFor('EV_ORDER', [eventSubject('order')])
    const retired: string[] = []
    const q = new DeliveryQueue(sink, { ...FAST, onDelivered: (e) => void retired.push(e.id) })
    const events = Array.from({ length: 200 }, (_, i) => ev('order', i))
    for (const e of events) expect(q.push(e)).toBe(true)
    await until('200 deliveries', () => q.stats().delivered === 200, 20_000)
    expect(q.stats()).toMatchObject({ delivered: 200, failures: 0, pending: 0, lastError: null })
    expect(retired).toEqual(events.map((e) => e.id))
    await q.close()
    await sink.close()
    const stored = await readStream(nats.url, 'EV_ORDER')
    expect(stored.map((m) => m.msgId)).toEqual(events.map((e) => e.id))
    expect(stored.map((m) => m.payload)).toEqual(events.map((e) => e.payload))
  })

  it('delivers events pushed while nats-server is down once it is back: none lost, none doubled, in order', async () => {
    const sink = await sinkFor('EV_OUTAGE', [eventSubject('outage')], { reconnectWaitMs: 100 })
    const q = new DeliveryQueue(sink, FAST)
    const events = Array.from({ length: 50 }, (_, i) => ev('outage', i))
    for (const e of events.slice(0, 10)) q.push(e)
    await until('first 10 deliveries', () => q.stats().delivered === 10)

    await nats.restart(async () => {
      for (const e of events.slice(10)) expect(q.push(e)).toBe(true)
      // The sink refuses while disconnected and the queue keeps retrying the same head event.
      await until('failed attempts while the server is down', () => q.stats().failures >= 3)
      expect(q.stats()).toMatchObject({ delivered: 10, pending: 40 })
      expect(q.stats().lastError).toMatch(/disconnected|publish .* failed/)
    })

    await until('all 50 deliveries after the restart', () => q.stats().delivered === 50, 20_000)
    expect(q.pending).toBe(0)
    await q.close()
    await sink.close()
    const stored = await readStream(nats.url, 'EV_OUTAGE')
    expect(stored.map((m) => m.msgId)).toEqual(events.map((e) => e.id))
  })

  it('fails to connect within the connect timeout when no server listens', async () => {
    const started = Date.now()
    await expect(
      NatsSink.connect({
        servers: ['nats://127.0.0.1:1'],
        stream: 'EV_NONE',
        subjects: ['txmesh.events.none'],
        name: 'none',
        timeoutMs: 500,
      }),
    ).rejects.toThrow(/cannot connect to nats:\/\/127\.0\.0\.1:1/)
    expect(Date.now() - started).toBeLessThan(5_000)
  })
})

describe('subjectToken', () => {
  it('keeps letters, digits, _ and - and replaces dots, spaces and wildcards', () => {
    expect(subjectToken('orders-v2_eu')).toBe('orders-v2_eu')
    expect(subjectToken('orders.eu west*>')).toBe('orders_eu_west__')
    expect(subjectToken('')).toBe('_')
    expect(eventSubject('a.b')).toBe('txmesh.events.a_b')
  })
})

interface Hit {
  key: string | undefined
  subject: string | undefined
  contentType: string | undefined
  body: unknown
}

/** A webhook receiver: records each request, then answers with whatever `answer` decides. */
async function startReceiver(answer: (hit: Hit, n: number, res: ServerResponse) => void) {
  const hits: Hit[] = []
  const s = await startServer((req: IncomingMessage, res: ServerResponse) => {
    let text = ''
    req.setEncoding('utf8')
    req.on('data', (c: string) => (text += c))
    req.on('end', () => {
      const hit: Hit = {
        key: req.headers['idempotency-key'] as string | undefined,
        subject: req.headers['txmesh-event-subject'] as string | undefined,
        contentType: req.headers['content-type'],
        body: JSON.parse(text) as unknown,
      }
      hits.push(hit)
      answer(hit, hits.length, res)
    })
  })
  return { ...s, hits, url: `http://127.0.0.1:${s.port}/hook` }
}

describe('webhook sink', () => {
  it('retries a webhook answering 500 twice then 200 with the same idempotency key, then moves on', async () => {
    const rx = await startReceiver((_hit, n, res) => {
      res.writeHead(n <= 2 ? 500 : 200).end(n <= 2 ? 'db down' : 'ok')
    })
    const sink = new WebhookSink({ url: rx.url, timeoutMs: 2_000 })
    const retired: string[] = []
    const failures: string[] = []
    const q = new DeliveryQueue(sink, {
      ...FAST,
      onDelivered: (e) => void retired.push(e.id),
      onFailure: (_e, err) => void failures.push(err.message),
    })
    q.push(ev('hook', 1))
    q.push(ev('hook', 2))
    await until('both events delivered', () => q.stats().delivered === 2)

    expect(rx.hits.map((h) => h.key)).toEqual(['hook-1', 'hook-1', 'hook-1', 'hook-2'])
    expect(rx.hits[0]).toEqual({
      key: 'hook-1',
      subject: 'txmesh.events.hook',
      contentType: 'application/json',
      body: { n: 1, tx: 'tx-1' },
    })
    expect(retired).toEqual(['hook-1', 'hook-2'])
    expect(failures).toEqual([`webhook ${rx.url} answered 500: db down`, `webhook ${rx.url} answered 500: db down`])
    expect(q.stats()).toMatchObject({ delivered: 2, failures: 2, pending: 0 })
    await q.close()
    await sink.close()
    await rx.close()
  })

  it('rejects with the reason: a non-2xx status, a timeout, a refused connection', async () => {
    const rx = await startReceiver((hit, _n, res) => {
      if (hit.key === 'slow') return // never answers
      res.writeHead(hit.key === 'redirect' ? 302 : 404, { location: '/elsewhere' }).end('x'.repeat(100_000))
    })
    const sink = new WebhookSink({ url: rx.url, timeoutMs: 300 })
    const send = (id: string): Promise<void> => sink.deliver({ id, subject: 's', payload: {} })
    await expect(send('missing')).rejects.toThrow(new RegExp(`^webhook ${rx.url} answered 404: x{200}$`))
    await expect(send('redirect')).rejects.toThrow(/answered 302/)
    await expect(send('slow')).rejects.toThrow(/timed out after 300 ms/)
    await sink.close()
    await rx.close()

    const gone = new WebhookSink({ url: rx.url, timeoutMs: 1_000 })
    await expect(gone.deliver({ id: 'gone', subject: 's', payload: {} })).rejects.toThrow(
      /unreachable: connection refused/,
    )
    await gone.close()
  })

  it('push answers false past the queue bound, and the refused event is never delivered', async () => {
    let release: () => void = () => undefined
    const held = new Promise<void>((r) => (release = r))
    const rx = await startReceiver((_hit, _n, res) => {
      void held.then(() => res.writeHead(204).end())
    })
    const sink = new WebhookSink({ url: rx.url, timeoutMs: 5_000 })
    const q = new DeliveryQueue(sink, { ...FAST, deliveryTimeoutMs: 5_000, maxPending: 3 })
    expect([1, 2, 3].map((i) => q.push(ev('bound', i)))).toEqual([true, true, true])
    expect(q.push(ev('bound', 4))).toBe(false)
    expect(q.pending).toBe(3)
    await until('first request in flight', () => rx.hits.length === 1)
    release()
    await until('three deliveries', () => q.stats().delivered === 3)
    expect(rx.hits.map((h) => h.key)).toEqual(['bound-1', 'bound-2', 'bound-3'])
    expect(q.push(ev('bound', 5))).toBe(true) // room again once the queue drained
    await until('fourth delivery', () => q.stats().delivered === 4)
    expect(rx.hits.map((h) => h.key)).toEqual(['bound-1', 'bound-2', 'bound-3', 'bound-5'])
    await q.close()
    await sink.close()
    await rx.close()
  })

  it('close() stops retrying and waits for an in-flight delivery only up to closeWaitMs', async () => {
    const rx = await startReceiver(() => undefined) // takes the request, never answers
    const sink = new WebhookSink({ url: rx.url, timeoutMs: 5_000 })
    const q = new DeliveryQueue(sink, { ...FAST, deliveryTimeoutMs: 5_000, closeWaitMs: 200 })
    q.push(ev('close', 1))
    await until('request in flight', () => rx.hits.length === 1)
    const started = Date.now()
    await q.close()
    expect(Date.now() - started).toBeLessThan(1_000)
    expect(q.stats()).toMatchObject({ delivered: 0, pending: 1 })
    expect(() => q.push(ev('close', 2))).toThrow(/closed/)
    await rx.close() // drops the held request, so the sink's own close does not wait on it
    await sink.close()
    await new Promise((r) => setTimeout(r, 300))
    expect(rx.hits).toHaveLength(1) // no retry after close
  })
})

describe('backoffDelay', () => {
  it('doubles from the base up to the cap and jitters within the upper half', () => {
    const base = LIMITS.eventBackoffBaseMs
    const cap = LIMITS.eventBackoffCapMs
    expect([1, 2, 3, 4].map((a) => backoffDelay(a, base, cap, () => 0))).toEqual([50, 100, 200, 400])
    expect([1, 2, 3, 4].map((a) => backoffDelay(a, base, cap, () => 0.999999))).toEqual([99, 199, 399, 799])
    expect(backoffDelay(50, base, cap, () => 0)).toBe(cap / 2)
    expect(backoffDelay(50, base, cap, () => 0.999999)).toBe(cap - 1)
  })
})
