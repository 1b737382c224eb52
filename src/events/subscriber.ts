// Subscriptions (config `subscriptions`): committed messages of the event bus delivered to this
// sidecar's app. Per subscription, a durable JetStream pull consumer (explicit acks) on the
// sidecar's stream, filtered to the subscription's subjects; each message goes to the app's route
// over HTTP with headers naming it (id, subject, stream sequence, delivery attempt, publishing
// transaction, the publisher's W3C trace context) and its payload as the JSON body.
//
// Outcomes. 2xx acks. 5xx, a timeout or a connection error is a failed delivery: redelivered
// after the subscription's backoff until `maxDeliver` deliveries, then dead-lettered. A 4xx is a
// poison message: dead-lettered at once (the app said the message itself is wrong; delivering it
// again would say the same). Dead-lettering republishes the message to the dead-letter subject
// with the last error in headers, and only then terminates it, so a message is never dropped: a
// dead-letter publish that fails leaves the message to be delivered again. Deliveries are
// counted by the server (`deliveryCount`, which also counts redeliveries after an ack wait ran
// out, e.g. a sidecar killed mid-delivery) plus the retries made here; a message the server hands
// out more than `maxDeliver` times is dead-lettered without being delivered again. The server's
// own max_deliver is unlimited, so that count is this file's to keep and a message is never
// left unacknowledged on the server by it.
//
// Ordering. `ordering.by: none`: up to maxInFlight messages at once, a failure naks with the
// backoff as delay (the slot is freed meanwhile). `ordering.by: key`: messages of one key (the
// message's `key`, else its subject) are delivered one at a time in stream order, different keys
// in parallel up to maxInFlight; a failed delivery is retried here, holding its key (and telling
// the server it is still being worked on), so no later message of the key overtakes it. After a
// restart the server hands out new messages at once while those the previous process held come
// back only when their ack wait runs out, so for one ack wait after start a key-ordered
// subscription only collects: messages the consumer had delivered before are delivered in stream
// order once the window closes, and new ones behind them.
//
// Effects once: delivery is at least once (a sidecar or app killed after the app's effect and
// before the ack delivers the message again); txmesh/pg's `inbox()` makes the effect once per
// message id in the subscriber's database (docs/events.md).
import type { ConsumerMessages, JetStreamClient, JetStreamManager, JsMsg } from '@nats-io/jetstream'
import type { NatsConnection } from '@nats-io/transport-node'
import type { Dispatcher, Pool } from 'undici'
import type { DeliverFrom, Subscription } from '../config/types.js'
import { LIMITS } from '../limits.js'
import type { Logger } from '../telemetry/logger.js'
import { nodeTimers, sleep, type Timer, type Timers } from '../timers.js'
import { ensureStream } from './nats.js'
import {
  SpanKind,
  SpanStatusCode,
  childSpan,
  extractFromHeaders,
  formatTraceparent,
  linkTo,
  type Tracer,
} from '../telemetry/tracing.js'

/** Request headers of a delivery (lowercase, as HTTP/1.1 sends them). */
export const DELIVERY_HEADERS = {
  id: 'txmesh-message-id',
  subject: 'txmesh-message-subject',
  sequence: 'txmesh-message-sequence',
  attempt: 'txmesh-delivery-attempt',
  subscription: 'txmesh-subscription',
  tx: 'txmesh-tx-id',
  key: 'txmesh-message-key',
} as const

/** Headers a dead letter carries besides the original message's. */
export const DEAD_LETTER_HEADERS = {
  error: 'Txmesh-Dead-Letter-Error',
  subject: 'Txmesh-Dead-Letter-Subject',
  sequence: 'Txmesh-Dead-Letter-Sequence',
  subscription: 'Txmesh-Dead-Letter-Subscription',
  deliveries: 'Txmesh-Dead-Letter-Deliveries',
} as const

export type DeliveryResult = 'acked' | 'retried' | 'dead-lettered'

export interface SubscriberMetrics {
  delivery(subscription: string, result: DeliveryResult): void
}

export interface SubscriberOptions {
  readonly subscription: Subscription
  readonly nc: NatsConnection
  readonly js: JetStreamClient
  readonly jsm: JetStreamManager
  /** The app, as the sidecar reaches it (its own pool). */
  readonly app: Pool
  readonly logger: Logger
  readonly metrics?: SubscriberMetrics
  readonly timers?: Timers
  /** Tracing on: a CONSUMER span per delivery, in the publisher's trace and linked to its transaction. */
  readonly tracer?: Tracer | undefined
}

/** What one subscription shows (admin API, dashboard). */
export interface SubscriptionView {
  readonly name: string
  readonly durable: string
  readonly subjects: readonly string[]
  readonly inFlight: number
  readonly delivered: number
  readonly redelivered: number
  readonly deadLettered: number
  readonly lastError: string | undefined
  /** Messages of the stream the consumer has not delivered yet (last consumer info). */
  readonly lag: number | undefined
}

interface Held {
  readonly msg: JsMsg
  readonly key: string
  /** The payload's fields (undefined: not a txmesh message; delivered as the raw body). */
  readonly body: Buffer
  readonly tx: string | undefined
  attempts: number
}

interface Outcome {
  readonly ok: boolean
  /** 4xx: the app refused the message itself. */
  readonly poison: boolean
  readonly error: string
}

export class Subscriber {
  private readonly s: Subscription
  private readonly timers: Timers
  private messages: ConsumerMessages | undefined
  private loop: Promise<void> | undefined
  private closed = false
  private inFlight = 0
  private readonly slotWaiters: (() => void)[] = []
  /** ordering by key: messages waiting behind the one of their key in flight. */
  private readonly keys = new Map<string, Held[]>()
  private readonly running = new Set<Promise<void>>()
  private keepalive: Timer | undefined
  private readonly held = new Set<Held>()
  private counts = { delivered: 0, redelivered: 0, deadLettered: 0 }
  private lastError: string | undefined
  private lag: number | undefined
  private replaying = false

  constructor(private readonly o: SubscriberOptions) {
    this.s = o.subscription
    this.timers = o.timers ?? nodeTimers
  }

  /** Sets the consumer up (created, or its settings brought to the config's) and starts delivering. */
  async start(): Promise<void> {
    await ensureStream(this.o.jsm, this.s.stream, [this.s.deadLetter.subject], this.o.logger)
    this.scheduleKeepalive()
    await this.open(await this.ensureConsumer(this.s.consumer.deliver))
  }

  private async open(deliveredBefore: number): Promise<void> {
    const consumer = await this.o.js.consumers.get(this.s.stream, this.s.consumer.durable)
    const messages = await consumer.consume({ max_messages: this.s.ordering.maxInFlight })
    this.messages = messages
    this.loop = this.run(messages, deliveredBefore).catch((err: unknown) => {
      if (!this.closed) this.o.logger.error('subscription.failed', { subscription: this.s.name, reason: String(err) })
    })
  }

  /**
   * Replay (txmesh events replay): delivers the stream again from a sequence or a time, to rebuild
   * a read model. Deliveries running end first; the durable consumer is then made again with that
   * start (JetStream consumers cannot be moved back), under the same name. Messages already
   * applied come again: txm.inbox skips them unless the app cleared its inbox with its model.
   */
  async replay(from: { readonly fromSequence: number } | { readonly fromTime: string }): Promise<void> {
    if (this.closed) throw new Error('the subscription is closed')
    if (this.replaying) throw new Error('a replay of this subscription is already running')
    this.replaying = true
    try {
      this.messages?.stop()
      for (const w of this.slotWaiters.splice(0)) w()
      await this.loop
      await Promise.allSettled([...this.running])
      this.keys.clear()
      this.held.clear()
      await this.o.jsm.consumers.delete(this.s.stream, this.s.consumer.durable).catch((err: unknown) => {
        if (!isNotFound(err)) throw err
      })
      await this.ensureConsumer(from)
      this.o.logger.warn('subscription.replay', { subscription: this.s.name, ...from })
      await this.open(0)
    } finally {
      this.replaying = false
    }
  }

  view(): SubscriptionView {
    return {
      name: this.s.name,
      durable: this.s.consumer.durable,
      subjects: this.s.subjects,
      inFlight: this.inFlight,
      ...this.counts,
      lastError: this.lastError,
      lag: this.lag,
    }
  }

  /** Refreshes `lag` from the consumer's info (metrics, dashboard). */
  async refreshLag(): Promise<number | undefined> {
    try {
      const info = await this.o.jsm.consumers.info(this.s.stream, this.s.consumer.durable)
      this.lag = info.num_pending
    } catch {
      // Left as it was; the next refresh tries again.
    }
    return this.lag
  }

  /** Stops pulling; deliveries running end (each within its timeout); what was held is redelivered later. */
  async close(): Promise<void> {
    this.closed = true
    if (this.keepalive !== undefined) this.timers.clear(this.keepalive)
    this.messages?.stop()
    for (const w of this.slotWaiters.splice(0)) w()
    await this.loop
    await Promise.allSettled([...this.running])
  }

  /** The consumer's settings from the config; returns the stream sequence it had delivered up to. */
  private async ensureConsumer(deliver: DeliverFrom): Promise<number> {
    const { AckPolicy, DeliverPolicy } = await import('@nats-io/jetstream')
    const c = this.s.consumer
    const ns = (ms: number): number => ms * 1_000_000
    const mutable = {
      ack_wait: ns(c.ackWaitMs),
      // Counted here (see the top of this file): never left unacknowledged by the server.
      max_deliver: -1,
      max_ack_pending: this.s.ordering.maxInFlight * LIMITS.subscriptionPendingFactor,
      // One subject as filter_subject: filter_subjects needs nats-server 2.10 or later.
      ...(this.s.subjects.length === 1
        ? { filter_subject: this.s.subjects[0] as string }
        : { filter_subjects: [...this.s.subjects] }),
    }
    try {
      const info = await this.o.jsm.consumers.info(this.s.stream, c.durable)
      await this.o.jsm.consumers.update(this.s.stream, c.durable, mutable)
      return info.delivered.stream_seq
    } catch (err) {
      if (!isNotFound(err)) throw err
    }
    const d = deliver
    const start =
      d === 'all'
        ? { deliver_policy: DeliverPolicy.All }
        : d === 'new'
          ? { deliver_policy: DeliverPolicy.New }
          : 'fromSequence' in d
            ? { deliver_policy: DeliverPolicy.StartSequence, opt_start_seq: d.fromSequence }
            : { deliver_policy: DeliverPolicy.StartTime, opt_start_time: new Date(d.fromTime).toISOString() }
    await this.o.jsm.consumers.add(this.s.stream, {
      durable_name: c.durable,
      ack_policy: AckPolicy.Explicit,
      ...start,
      ...mutable,
    })
    this.o.logger.info('subscription.consumer_created', { subscription: this.s.name, durable: c.durable })
    return 0
  }

  private async run(messages: ConsumerMessages, deliveredBefore: number): Promise<void> {
    // ordering by key after a restart: collect for one ack wait (see the top of this file).
    const windowEnds =
      this.s.ordering.by === 'key' && deliveredBefore > 0 ? performance.now() + this.s.consumer.ackWaitMs : 0
    const collected: Held[] = []
    let flushTimer: Timer | undefined
    const flush = (): void => {
      flushTimer = undefined
      collected.sort((a, b) => a.msg.seq - b.msg.seq)
      for (const h of collected.splice(0)) this.admit(h)
    }
    if (windowEnds > 0) {
      this.o.logger.info('subscription.ordering_window', { subscription: this.s.name, ms: this.s.consumer.ackWaitMs })
      flushTimer = this.timers.set(flush, this.s.consumer.ackWaitMs)
    }
    for await (const msg of messages) {
      if (this.closed || this.replaying) break
      const h = this.hold(msg)
      if (h === undefined) continue
      if (flushTimer !== undefined && performance.now() < windowEnds) {
        collected.push(h)
        continue
      }
      await this.slot()
      if (this.closed || this.replaying) break
      this.admit(h)
    }
    if (flushTimer !== undefined) this.timers.clear(flushTimer)
  }

  /** A pulled message, checked: too large or past its deliveries, dead-lettered at once. */
  private hold(msg: JsMsg): Held | undefined {
    const info = msg.info
    if (info.redelivered) this.counts.redelivered++
    const parsed = parseMessage(msg)
    const h: Held = {
      msg,
      key: parsed.key ?? msg.subject,
      body: parsed.body,
      tx: parsed.tx,
      attempts: info.deliveryCount - 1,
    }
    if (h.body.length > LIMITS.subscriptionMaxBodyBytes) {
      this.track(this.deadLetter(h, `message of ${h.body.length} bytes exceeds ${LIMITS.subscriptionMaxBodyBytes}`))
      return undefined
    }
    if (info.deliveryCount > this.s.consumer.maxDeliver) {
      const why = `handed out ${info.deliveryCount} times without an answer (ack wait ${this.s.consumer.ackWaitMs} ms)`
      this.track(this.deadLetter(h, why))
      return undefined
    }
    this.held.add(h)
    return h
  }

  private admit(h: Held): void {
    if (this.s.ordering.by === 'key') {
      const q = this.keys.get(h.key)
      if (q !== undefined) {
        // The same message handed out again while it is here (a stall past the ack wait): once is enough.
        if (q.some((x) => x.msg.seq === h.msg.seq)) return this.release(h)
        q.push(h)
        return
      }
      this.keys.set(h.key, [])
    }
    this.launch(h)
  }

  private launch(h: Held): void {
    this.inFlight++
    const p = this.deliverHeld(h).finally(() => {
      this.running.delete(p)
      this.release(h)
      this.inFlight--
      if (this.s.ordering.by === 'key' && !this.replaying) {
        const q = this.keys.get(h.key)
        const next = q?.shift()
        if (next === undefined) this.keys.delete(h.key)
        else return this.launch(next)
      }
      this.slotWaiters.shift()?.()
    })
    this.running.add(p)
  }

  private track(p: Promise<void>): void {
    this.running.add(p)
    void p.finally(() => this.running.delete(p))
  }

  private release(h: Held): void {
    this.held.delete(h)
  }

  private async slot(): Promise<void> {
    while (this.inFlight >= this.s.ordering.maxInFlight && !this.closed && !this.replaying)
      await new Promise<void>((r) => this.slotWaiters.push(r))
  }

  private async deliverHeld(h: Held): Promise<void> {
    for (;;) {
      h.attempts++
      const r = await this.post(h)
      if ((this.closed || this.replaying) && !r.ok) return
      if (r.ok) {
        h.msg.ack()
        this.counts.delivered++
        this.o.metrics?.delivery(this.s.name, 'acked')
        return
      }
      this.lastError = r.error
      if (r.poison || h.attempts >= this.s.consumer.maxDeliver) {
        await this.deadLetter(h, r.error)
        return
      }
      this.o.metrics?.delivery(this.s.name, 'retried')
      const wait = backoffFor(this.s.consumer.backoffMs, h.attempts)
      if (this.s.ordering.by !== 'key') {
        h.msg.nak(wait)
        return
      }
      // Held here, with its key: the server is told it is still being worked on (keepalive).
      await sleep(this.timers, wait)
      if (this.closed || this.replaying) return
    }
  }

  private async post(h: Held): Promise<Outcome> {
    const info = h.msg.info
    const headers: Record<string, string> = {
      'content-type': 'application/json',
      [DELIVERY_HEADERS.id]: h.msg.headers?.get('Nats-Msg-Id') || `${info.stream}:${h.msg.seq}`,
      [DELIVERY_HEADERS.subject]: h.msg.subject,
      [DELIVERY_HEADERS.sequence]: String(h.msg.seq),
      [DELIVERY_HEADERS.attempt]: String(h.attempts),
      [DELIVERY_HEADERS.subscription]: this.s.name,
    }
    if (h.tx !== undefined) headers[DELIVERY_HEADERS.tx] = h.tx
    if (h.key !== h.msg.subject) headers[DELIVERY_HEADERS.key] = h.key
    const trace: string[] = []
    for (const name of ['traceparent', 'tracestate']) {
      const v = h.msg.headers?.get(name)
      if (v !== undefined && v !== '' && v.length <= LIMITS.subscriptionTraceHeaderChars) {
        headers[name] = v
        trace.push(name, v)
      }
    }
    // One trace from the write to every subscriber: the delivery's span is a child of the
    // publisher's (its transaction), and the app continues under it.
    const span =
      this.o.tracer === undefined
        ? undefined
        : childSpan(
            this.o.tracer,
            'txmesh.delivery',
            SpanKind.CONSUMER,
            extractFromHeaders(trace),
            {
              'messaging.system': 'nats',
              'messaging.destination.name': h.msg.subject,
              'messaging.message.id': headers[DELIVERY_HEADERS.id] as string,
              'txmesh.subscription': this.s.name,
              'txmesh.delivery.attempt': h.attempts,
              ...(h.tx === undefined ? {} : { 'txmesh.tx.id': h.tx }),
            },
            linkTo(headers.traceparent),
          )
    if (span !== undefined) headers.traceparent = formatTraceparent(span.spanContext())
    const r = await this.exchange(h, headers)
    if (span !== undefined) {
      span.setAttribute('txmesh.delivery.result', r.ok ? 'acked' : r.poison ? 'poison' : 'failed')
      if (!r.ok) span.setStatus({ code: SpanStatusCode.ERROR, message: r.error.slice(0, 200) })
      span.end()
    }
    return r
  }

  private async exchange(h: Held, headers: Record<string, string>): Promise<Outcome> {
    const timeout = Math.max(
      LIMITS.subscriptionMinDeliveryMs,
      this.s.consumer.ackWaitMs - LIMITS.subscriptionAckMarginMs,
    )
    try {
      const r = await this.o.app.request({
        method: this.s.route.method as Dispatcher.HttpMethod,
        path: this.s.route.path,
        headers,
        body: h.body,
        headersTimeout: timeout,
        bodyTimeout: timeout,
      })
      // The answer's body is not used; read at most a bound of it for the error text.
      const text = (await readBounded(r.body, LIMITS.subscriptionErrorChars)).trim()
      if (r.statusCode >= 200 && r.statusCode < 300) return { ok: true, poison: false, error: '' }
      const error = `${r.statusCode}${text === '' ? '' : `: ${text}`}`
      return { ok: false, poison: r.statusCode >= 400 && r.statusCode < 500, error }
    } catch (err) {
      return { ok: false, poison: false, error: (err as { code?: string }).code ?? String(err) }
    }
  }

  /** Republishes to the dead-letter subject, then terminates; a failed publish is retried by redelivery. */
  private async deadLetter(h: Held, error: string): Promise<void> {
    const { headers } = await import('@nats-io/transport-node')
    const hdrs = headers()
    for (const [k, vs] of h.msg.headers ?? []) for (const v of vs) if (k !== 'Nats-Msg-Id') hdrs.append(k, v)
    hdrs.set(DEAD_LETTER_HEADERS.error, error.slice(0, LIMITS.subscriptionErrorChars).replace(/[\r\n]+/g, ' '))
    hdrs.set(DEAD_LETTER_HEADERS.subject, h.msg.subject)
    hdrs.set(DEAD_LETTER_HEADERS.sequence, String(h.msg.seq))
    hdrs.set(DEAD_LETTER_HEADERS.subscription, this.s.name)
    hdrs.set(DEAD_LETTER_HEADERS.deliveries, String(h.attempts))
    try {
      await this.o.js.publish(this.s.deadLetter.subject, h.msg.data, {
        headers: hdrs,
        // Once per message and subscription, whatever the retries of this publish.
        msgID: `dl:${this.s.consumer.durable}:${h.msg.seq}`,
        timeout: LIMITS.natsConnectTimeoutMs,
      })
    } catch (err) {
      this.o.logger.warn('subscription.dead_letter_failed', {
        subscription: this.s.name,
        seq: h.msg.seq,
        reason: String(err),
      })
      h.msg.nak(backoffFor(this.s.consumer.backoffMs, h.attempts))
      return
    }
    h.msg.term(error.slice(0, LIMITS.subscriptionErrorChars))
    this.counts.deadLettered++
    this.lastError = error
    this.o.metrics?.delivery(this.s.name, 'dead-lettered')
    this.o.logger.warn('subscription.dead_lettered', {
      subscription: this.s.name,
      seq: h.msg.seq,
      subject: h.msg.subject,
      error: error.slice(0, LIMITS.subscriptionErrorChars),
    })
  }

  /** Held messages (waiting behind their key, or being retried) are kept from redelivery. */
  private scheduleKeepalive(): void {
    if (this.closed) return
    this.keepalive = this.timers.set(
      () => {
        for (const h of this.held) h.msg.working()
        this.scheduleKeepalive()
      },
      Math.max(LIMITS.subscriptionMinDeliveryMs, Math.floor(this.s.consumer.ackWaitMs / 3)),
    )
  }
}

/** The wait before delivery `attempt + 1`: the attempt's entry of the list, the last one repeating. */
export function backoffFor(list: readonly number[], attempt: number): number {
  return list[Math.min(Math.max(0, attempt - 1), list.length - 1)] ?? LIMITS.subscriptionBackoffMs[0] ?? 1_000
}

const UTF8 = new TextDecoder()

/**
 * A txmesh message's body is `{tx, topic, payload, key?}` (src/events/outbox.ts): the app gets
 * `payload`; anything else is delivered as it is.
 */
function parseMessage(msg: JsMsg): { body: Buffer; key: string | undefined; tx: string | undefined } {
  try {
    const v = JSON.parse(UTF8.decode(msg.data)) as Record<string, unknown>
    if (v !== null && typeof v === 'object' && typeof v.tx === 'string' && 'payload' in v) {
      const key = typeof v.key === 'string' && v.key.length <= LIMITS.subscriptionKeyChars ? v.key : undefined
      return { body: Buffer.from(JSON.stringify(v.payload ?? null)), key, tx: v.tx }
    }
  } catch {
    // Not JSON: delivered as it is.
  }
  return { body: Buffer.from(msg.data), key: undefined, tx: undefined }
}

async function readBounded(body: AsyncIterable<Buffer | Uint8Array>, max: number): Promise<string> {
  let out = ''
  for await (const chunk of body) {
    if (out.length < max) out += Buffer.from(chunk).toString('utf8', 0, Math.min(chunk.length, max - out.length))
  }
  return out
}

function isNotFound(err: unknown): boolean {
  const e = err as { code?: unknown; api_error?: { err_code?: number }; message?: string }
  return e.api_error?.err_code === 10014 || /consumer not found/i.test(e.message ?? '')
}

export interface SubscriptionsOptions {
  readonly servers: readonly string[]
  /** The NATS connection's name (the server's connz shows it). */
  readonly name: string
  readonly subscriptions: readonly Subscription[]
  readonly app: Pool
  readonly logger: Logger
  readonly metrics?: SubscriberMetrics
  readonly tracer?: Tracer | undefined
}

/** Every subscription of a sidecar on one NATS connection. */
export class Subscriptions {
  private constructor(
    private readonly nc: NatsConnection,
    readonly all: readonly Subscriber[],
  ) {}

  static async start(o: SubscriptionsOptions): Promise<Subscriptions> {
    const { connect } = await import('@nats-io/transport-node')
    const { jetstream, jetstreamManager } = await import('@nats-io/jetstream')
    const nc = await connect({
      servers: [...o.servers],
      name: o.name,
      timeout: LIMITS.natsConnectTimeoutMs,
      reconnect: true,
      maxReconnectAttempts: -1,
      reconnectTimeWait: LIMITS.natsReconnectWaitMs,
    })
    try {
      const js = jetstream(nc, { timeout: LIMITS.natsConnectTimeoutMs })
      const jsm = await jetstreamManager(nc, { timeout: LIMITS.natsConnectTimeoutMs })
      const subs = o.subscriptions.map(
        (subscription) =>
          new Subscriber({
            subscription,
            nc,
            js,
            jsm,
            app: o.app,
            logger: o.logger,
            ...(o.metrics === undefined ? {} : { metrics: o.metrics }),
            tracer: o.tracer,
          }),
      )
      for (const s of subs) await s.start()
      return new Subscriptions(nc, subs)
    } catch (err) {
      await nc.close()
      throw err
    }
  }

  /** The views with each subscription's lag asked of the server now. */
  async views(): Promise<SubscriptionView[]> {
    await Promise.all(this.all.map((s) => s.refreshLag()))
    return this.all.map((s) => s.view())
  }

  /** Replays subscription `name`; undefined when there is none of that name. */
  async replay(
    name: string,
    from: { readonly fromSequence: number } | { readonly fromTime: string },
  ): Promise<true | undefined> {
    const s = this.all.find((x) => x.view().name === name)
    if (s === undefined) return undefined
    await s.replay(from)
    return true
  }

  async close(): Promise<void> {
    await Promise.all(this.all.map((s) => s.close()))
    if (!this.nc.isClosed()) await this.nc.close()
  }
}

/**
 * Subscriptions.start, again after a failure (NATS down at start) with a capped backoff, until
 * it works or `closed()` says the sidecar is stopping: the sidecar serves while the bus is away.
 * Bounded: LIMITS.subscriptionStartAttempts attempts.
 */
export async function startSubscriptionsRetrying(
  o: SubscriptionsOptions & { started: (s: Subscriptions) => void; closed: () => boolean },
): Promise<void> {
  for (let attempt = 1; attempt <= LIMITS.subscriptionStartAttempts && !o.closed(); attempt++) {
    try {
      const s = await Subscriptions.start(o)
      if (o.closed()) return void (await s.close())
      o.started(s)
      o.logger.info('subscriptions_started', { subscriptions: o.subscriptions.map((x) => x.name) })
      return
    } catch (err) {
      o.logger.warn('subscriptions_start_failed', { attempt, reason: err instanceof Error ? err.message : String(err) })
      await sleep(nodeTimers, Math.min(LIMITS.natsReconnectWaitMs * attempt, LIMITS.subscriptionStartBackoffCapMs))
    }
  }
}
