// Subscriptions (src/events/subscriber.ts): a real sidecar process delivering messages of a real
// NATS JetStream stream to an app on loopback: 2xx acks, a 5xx is delivered again with the
// backoff, `maxDeliver` failures and a 4xx dead-letter (republished with the error), and with
// ordering by key a key being retried holds its later messages while other keys go on.
import { spawnSync } from 'node:child_process'
import { createServer, type IncomingHttpHeaders } from 'node:http'
import type { AddressInfo } from 'node:net'
import { jetstream, jetstreamManager } from '@nats-io/jetstream'
import { connect, headers as natsHeaders, type NatsConnection } from '@nats-io/transport-node'
import { request } from 'undici'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { readWith, startNats, type NatsServer } from '../../harness/nats.js'
import { freePort, until } from '../../harness/ports.js'
import { CLI } from '../../harness/sidecar.js'
import { tempDir } from '../../harness/temp.js'
import { startReceiver } from '../helpers/otlp.js'
import { sidecarYaml, spawnSidecar, type SidecarProcess } from '../helpers/servers.js'
import { stopAfterTests } from '../helpers/tx-app.js'

const { procs, closers } = stopAfterTests()
let nats: NatsServer
let nc: NatsConnection

beforeAll(async () => {
  nats = await startNats()
  nc = await connect({ servers: nats.url })
})
afterAll(async () => {
  await nc.close()
  await nats.stop()
})

interface Delivery {
  readonly path: string
  readonly headers: IncomingHttpHeaders
  readonly body: unknown
}

/** An app that records every delivery and answers with what `answer` says (status). */
async function startApp(answer: (d: Delivery, n: number) => number): Promise<{ port: number; seen: Delivery[] }> {
  const seen: Delivery[] = []
  const server = createServer((req, res) => {
    const chunks: Buffer[] = []
    req.on('data', (c: Buffer) => chunks.push(c))
    req.on('end', () => {
      const d = {
        path: req.url ?? '',
        headers: req.headers,
        body: JSON.parse(Buffer.concat(chunks).toString() || 'null'),
      }
      seen.push(d)
      const status = answer(d, seen.length)
      res.writeHead(status, { 'content-type': 'text/plain' })
      res.end(status >= 300 ? `failed with ${status}` : 'ok')
    })
  })
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r))
  closers.push(() => new Promise<void>((r) => server.close(() => r())))
  return { port: (server.address() as AddressInfo).port, seen }
}

/** Publishes a txmesh message as the outbox does: `{tx, topic, payload, key?}`, id `<tx>:m<i>`. */
async function publish(subject: string, tx: string, payload: unknown, key?: string): Promise<void> {
  const h = natsHeaders()
  h.set('traceparent', '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01')
  await jetstream(nc).publish(
    subject,
    JSON.stringify({ tx, topic: subject, payload, ...(key === undefined ? {} : { key }) }),
    {
      msgID: `${tx}:m0`,
      headers: h,
    },
  )
}

async function subscriber(
  stream: string,
  appPort: number,
  subscription: string,
  env: Record<string, string> = {},
): Promise<SidecarProcess> {
  const yaml = sidecarYaml(
    'history',
    appPort,
    [
      `events: {nats: {servers: ["${nats.url}"], stream: ${stream}, topics: ["${stream.toLowerCase()}.>"]}}`,
      `subscriptions:\n  - ${subscription}`,
    ].join('\n'),
    tempDir(),
  ).replace('log: {level: silent}', 'log: {level: warn}')
  const sc = await spawnSidecar(yaml, ['--control-port', String(await freePort())], env)
  procs.push(sc)
  return sc
}

/** A stream of its own per test: subjects `<stream in lowercase>.>`. */
async function ensureStream(stream: string): Promise<void> {
  const jsm = await jetstreamManager(nc)
  await jsm.streams.add({ name: stream, subjects: [`${stream.toLowerCase()}.>`] })
}

describe('subscriptions deliver committed messages to the app', () => {
  it('delivers with the message headers and acks a 2xx; a 5xx twice is delivered again until it succeeds', async () => {
    await ensureStream('S1')
    let failures = 2
    const app = await startApp((d) => ((d.body as { n: number }).n === 2 && failures-- > 0 ? 503 : 200))
    const sc = await subscriber(
      'S1',
      app.port,
      '{name: hist, subjects: ["s1.>"], route: {path: /events}, consumer: {ackWaitMs: 2000, maxDeliver: 5, backoffMs: [200]}}',
    )
    await publish('s1.created', 'tx1', { n: 1 })
    await publish('s1.created', 'tx2', { n: 2 })
    await until('both delivered and the second acked after two failures', () => app.seen.length === 4, 20_000).catch(
      (err: unknown) => {
        throw new Error(`${String(err)}; sidecar: ${sc.stderr().slice(-2000)}`)
      },
    )
    const first = app.seen[0] as Delivery
    expect({ path: first.path, body: first.body }).toEqual({ path: '/events', body: { n: 1 } })
    expect(first.headers).toMatchObject({
      'txmesh-message-id': 'tx1:m0',
      'txmesh-message-subject': 's1.created',
      'txmesh-message-sequence': '1',
      'txmesh-delivery-attempt': '1',
      'txmesh-subscription': 'hist',
      'txmesh-tx-id': 'tx1',
      traceparent: '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01',
    })
    expect(
      app.seen.filter((d) => (d.body as { n: number }).n === 2).map((d) => d.headers['txmesh-delivery-attempt']),
    ).toEqual(['1', '2', '3'])
    const jsm = await jetstreamManager(nc)
    await until(
      'nothing left unacknowledged',
      async () => {
        const info = await jsm.consumers.info('S1', 'history-hist')
        return info.num_ack_pending === 0 && info.num_pending === 0
      },
      10_000,
    )
  }, 40_000)

  it('dead-letters a message that fails maxDeliver times, and a 4xx at once, with the last error', async () => {
    await ensureStream('S2')
    const app = await startApp((d) => ((d.body as { kind: string }).kind === 'poison' ? 422 : 500))
    await subscriber(
      'S2',
      app.port,
      '{name: dl, subjects: ["s2.>"], route: {path: /e}, consumer: {ackWaitMs: 2000, maxDeliver: 3, backoffMs: [100]}, deadLetter: {subject: dead.history}}',
    )
    await publish('s2.a', 'txa', { kind: 'failing' })
    await publish('s2.b', 'txb', { kind: 'poison' })
    // The dead letters land in a stream of their own subject (the sidecar adds it to S2).
    await until(
      'two dead letters',
      async () => {
        const info = await (await jetstreamManager(nc)).streams.info('S2')
        return info.state.messages === 4
      },
      20_000,
    )
    const stored = await readWith(nc, 'S2')
    const dead = stored.filter((m) => m.subject === 'dead.history')
    expect(dead.map((m) => (m.payload as { tx: string }).tx).sort()).toEqual(['txa', 'txb'])
    expect(app.seen.filter((d) => (d.body as { kind: string }).kind === 'failing')).toHaveLength(3)
    expect(app.seen.filter((d) => (d.body as { kind: string }).kind === 'poison')).toHaveLength(1)
    const js = jetstream(nc)
    const c = await js.consumers.get('S2')
    const got = await c.fetch({ max_messages: 4, expires: 2_000 })
    const errors: Record<string, string | undefined> = {}
    for await (const m of got)
      if (m.subject === 'dead.history')
        errors[(m.json() as { tx: string }).tx] =
          `${m.headers?.get('Txmesh-Dead-Letter-Error')} after ${m.headers?.get('Txmesh-Dead-Letter-Deliveries')}`
    expect(errors).toEqual({ txa: '500: failed with 500 after 3', txb: '422: failed with 422 after 1' })
  }, 40_000)

  it('with ordering by key, a key being retried holds its later messages in stream order while other keys go on', async () => {
    await ensureStream('S3')
    let failures = 3
    const app = await startApp((d) => {
      const b = d.body as { key: string; i: number }
      return b.key === 'k1' && b.i === 1 && failures-- > 0 ? 503 : 200
    })
    await subscriber(
      'S3',
      app.port,
      '{name: ord, subjects: ["s3.>"], route: {path: /e}, consumer: {ackWaitMs: 3000, maxDeliver: 10, backoffMs: [400]}, ordering: {by: key, maxInFlight: 4}}',
    )
    for (let i = 1; i <= 3; i++) await publish('s3.k', `k1-${i}`, { key: 'k1', i }, 'k1')
    for (let i = 1; i <= 3; i++) await publish('s3.k', `k2-${i}`, { key: 'k2', i }, 'k2')
    await until(
      'every message delivered',
      () => app.seen.filter((d) => d.headers['txmesh-delivery-attempt'] !== undefined).length === 9,
      20_000,
    )
    const order = (key: string): string[] =>
      app.seen
        .filter((d) => (d.body as { key: string }).key === key)
        .map((d) => `${(d.body as { i: number }).i}#${d.headers['txmesh-delivery-attempt']}`)
    expect(order('k1')).toEqual(['1#1', '1#2', '1#3', '1#4', '2#1', '3#1'])
    expect(order('k2')).toEqual(['1#1', '2#1', '3#1'])
    // k2 went on while k1's first message was retried: all of k2 before k1's second.
    const at = (key: string, i: number): number =>
      app.seen.findIndex((d) => (d.body as { key: string; i: number }).key === key && (d.body as { i: number }).i === i)
    expect(at('k2', 3)).toBeLessThan(at('k1', 2))
  }, 40_000)

  it("an aborted transaction's messages are never delivered; a committed one's are, after the publisher's sidecar died between the decision and the publish", async () => {
    await ensureStream('S4')
    const app = await startApp(() => 200)
    await subscriber('S4', app.port, '{name: e2e, subjects: ["s4.>"], route: {path: /e}, consumer: {ackWaitMs: 2000}}')
    const dir = tempDir()
    const publisherYaml = sidecarYaml(
      'shop',
      1,
      `events: {nats: {servers: ["${nats.url}"], stream: S4, topics: ["s4.>"]}}`,
      dir,
    )
    const post = async (port: number, path: string, body?: unknown): Promise<Record<string, unknown>> => {
      const r = await request(`http://127.0.0.1:${port}${path}`, {
        method: 'POST',
        ...(body === undefined ? {} : { headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) }),
      })
      return (await r.body.json()) as Record<string, unknown>
    }
    const pub = await spawnSidecar(publisherYaml, ['--control-port', String(await freePort())])
    procs.push(pub)
    const aborted = (await post(pub.ports.admin, '/v1/transactions', { mode: '2pc', timeoutMs: 30_000 })).id as string
    await post(pub.ports.admin, `/v1/transactions/${aborted}/messages`, {
      topic: 's4.order',
      payload: { order: 'aborted' },
    })
    await post(pub.ports.admin, `/v1/transactions/${aborted}/abort`)
    pub.child.kill('SIGTERM')
    await pub.exited
    // Armed: the process dies once the COMMIT decision (with its message) is durable, before publishing.
    const armed = await spawnSidecar(publisherYaml, ['--control-port', String(await freePort())], {
      TXMESH_FAILPOINTS: 'coordinator-after-decision',
    })
    procs.push(armed)
    const committed = (await post(armed.ports.admin, '/v1/transactions', { mode: '2pc', timeoutMs: 30_000 }))
      .id as string
    await post(armed.ports.admin, `/v1/transactions/${committed}/messages`, {
      topic: 's4.order',
      payload: { order: 'committed' },
    })
    await post(armed.ports.admin, `/v1/transactions/${committed}/commit`).catch(() => undefined)
    expect(await armed.exited).toMatchObject({ signal: 'SIGKILL' })
    await new Promise((r) => setTimeout(r, 1_000))
    expect(app.seen).toEqual([])
    // Restarted on the same log: recovery publishes the committed transaction's message.
    const again = await spawnSidecar(publisherYaml, ['--control-port', String(await freePort())])
    procs.push(again)
    await until('the committed message delivered', () => app.seen.length === 1, 20_000)
    await new Promise((r) => setTimeout(r, 1_000))
    expect(app.seen.map((d) => [d.body, d.headers['txmesh-tx-id']])).toEqual([[{ order: 'committed' }, committed]])
  }, 60_000)

  it('replay from a sequence (txmesh events replay) rebuilds the read model to the same content', async () => {
    await ensureStream('S5')
    const model = new Map<string, unknown>()
    const app = await startApp((d) => {
      const b = d.body as { account: string; balance: number }
      model.set(b.account, b.balance)
      return 200
    })
    const sc = await subscriber(
      'S5',
      app.port,
      '{name: model, subjects: ["s5.>"], route: {path: /e}, consumer: {ackWaitMs: 2000}, ordering: {by: key}}',
    )
    const balances: [string, number][] = [
      ['a', 1],
      ['b', 5],
      ['a', 3],
      ['c', 9],
      ['b', 2],
      ['a', 7],
    ]
    for (const [i, [account, balance]] of balances.entries())
      await publish('s5.balance', `r${i}`, { account, balance }, account)
    await until('the read model built', () => app.seen.length === balances.length, 20_000)
    const built = Object.fromEntries(model)
    expect(built).toEqual({ a: 7, b: 2, c: 9 })
    const cli = (...args: string[]): { status: number | null; stdout: string; stderr: string } => {
      const r = spawnSync(process.execPath, [CLI, 'events', ...args, '--admin', `http://127.0.0.1:${sc.ports.admin}`], {
        encoding: 'utf8',
      })
      return { status: r.status, stdout: r.stdout, stderr: r.stderr }
    }
    const listed = cli('list', '--json')
    expect(listed.status).toBe(0)
    expect(
      (JSON.parse(listed.stdout) as { subscriptions: { name: string; delivered: number; lag: number }[] })
        .subscriptions,
    ).toMatchObject([{ name: 'model', delivered: 6, lag: 0 }])
    const metrics = await (await request(`http://127.0.0.1:${sc.ports.admin}/metrics`)).body.text()
    expect(metrics).toMatch(/^txmesh_subscription_lag\{subscription="model"\} 0$/m)
    expect(metrics).toMatch(/^txmesh_subscription_deliveries_total\{subscription="model",result="acked"\} 6$/m)
    // The model is dropped and rebuilt from the stream.
    model.clear()
    const replayed = cli('replay', 'model', '--from-seq', '1')
    expect(replayed).toMatchObject({ status: 0, stdout: 'model: replaying from sequence 1\n' })
    await until('the read model rebuilt', () => app.seen.length === 2 * balances.length, 20_000)
    expect(Object.fromEntries(model)).toEqual(built)
    const bad = cli('replay', 'model')
    expect(bad.status).not.toBe(0)
    expect(bad.stderr).toMatch(/exactly one of --from-seq N and --from-time T/)
    const unknown = cli('replay', 'nothing', '--from-seq', '1')
    expect(unknown).toMatchObject({ status: 1 })
    expect(unknown.stderr).toMatch(/TXM_NOT_FOUND: no subscription nothing runs here/)
    // From a later sequence: only what follows it comes again.
    expect(cli('replay', 'model', '--from-seq', '5').status).toBe(0)
    await until('the replay from sequence 5', () => app.seen.length === 2 * balances.length + 2, 20_000)
    expect(app.seen.slice(-2).map((d) => d.headers['txmesh-message-sequence'])).toEqual(['5', '6'])
  }, 60_000)

  it("traced: the delivery's span is in the publishing transaction's trace, a child of its span, and the app continues under it", async () => {
    // On S4: a sidecar's stream also takes the lifecycle events (txmesh.events.>), which can be
    // in one stream only, and the publisher of the test before put them in S4.
    const { receiver, spans } = await startReceiver()
    closers.push(() => receiver.close())
    const env = { OTEL_EXPORTER_OTLP_ENDPOINT: `http://127.0.0.1:${receiver.port}` }
    const app = await startApp(() => 200)
    const sub = await subscriber('S4', app.port, '{name: traced, subjects: ["s4.traced"], route: {path: /e}}', env)
    const pub = await spawnSidecar(
      sidecarYaml('shop6', 1, `events: {nats: {servers: ["${nats.url}"], stream: S4, topics: ["s4.>"]}}`, tempDir()),
      ['--control-port', String(await freePort())],
      env,
    )
    procs.push(pub)
    const call = async (path: string, body?: unknown): Promise<Record<string, unknown>> =>
      (await (
        await request(`http://127.0.0.1:${pub.ports.admin}${path}`, {
          method: 'POST',
          ...(body === undefined
            ? {}
            : { headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) }),
        })
      ).body.json()) as Record<string, unknown>
    const id = (await call('/v1/transactions', { mode: '2pc', timeoutMs: 30_000 })).id as string
    const attached = await call(`/v1/transactions/${id}/messages`, { topic: 's4.traced', payload: { order: 1 } })
    const committed = await call(`/v1/transactions/${id}/commit`)
    expect({ attached, committed }).toMatchObject({ attached: { messages: 1 }, committed: { outcome: 'committed' } })
    await until('delivered', () => app.seen.length === 1, 20_000).catch(async (err: unknown) => {
      const jsm = await jetstreamManager(nc)
      const info = await jsm.streams.info('S4')
      const ci = await jsm.consumers.info('S4', 'history-traced').catch((e: unknown) => String(e))
      throw new Error(
        `${String(err)}; stream ${JSON.stringify(info.state)}; consumer ${JSON.stringify(ci)}; subscriber: ${sub.stderr().slice(-1500)}; publisher: ${pub.stderr().slice(-6000)}`,
      )
    })
    // SIGTERM drains each sidecar, which flushes its spans.
    for (const sc of [pub, sub]) {
      sc.child.kill('SIGTERM')
      await sc.exited
    }
    await until('the spans exported', () => spans.some((x) => x.name === 'txmesh.delivery'), 10_000)
    const tx = spans.find((x) => x.service === 'shop6' && x.name === 'txmesh.transaction')
    const delivery = spans.find((x) => x.service === 'history' && x.name === 'txmesh.delivery')
    expect(tx).toBeDefined()
    expect({
      trace: delivery?.traceId,
      parent: delivery?.parentSpanId,
      kind: delivery?.kind,
      attrs: delivery?.attrs,
    }).toMatchObject({
      trace: tx?.traceId,
      parent: tx?.spanId,
      kind: 5,
      attrs: {
        'messaging.system': 'nats',
        'txmesh.subscription': 'traced',
        'txmesh.tx.id': id,
        'txmesh.delivery.result': 'acked',
      },
    })
    expect(app.seen[0]?.headers.traceparent).toMatch(new RegExp(`^00-${tx?.traceId}-${delivery?.spanId}-0[01]$`))
  }, 60_000)
})
