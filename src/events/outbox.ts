// The durable outbox of a sidecar's event bus (DESIGN.md "transactional messages / events").
//
// Lifecycle events (begun, enlisted, step, voted, committed, aborted, compensated, confirmed,
// cancelled, stuck, and branch changes on participants) are appended to the transaction log
// under `e:<tx>` and handed to one ordered DeliveryQueue per sink (NATS JetStream, webhooks),
// so each sink gets them in order per transaction, at least once, with the event id as
// idempotency key (JetStream de-duplicates on it). Records ride lazily with the log's next
// durable batch: everything before a COMMIT decision is on disk when the decision is. The
// `committed` event itself is force-written, and recovery re-creates it for a decision found
// without it, so a SIGKILL between commit and publish loses nothing.
//
// Transactional messages live in the coordinator's decision record (src/tx/*/driver.ts) and are
// published here only once that record is durable; the coordinator ends the record only after
// publish() resolved, so a restart publishes again what was not acknowledged.
//
// The SSE feed (/v1/events) is the in-memory EventHub, fed by the same callback.
import { eventsKey, type LogRecord } from '../tx/records.js'
import type { Logger } from '../telemetry/logger.js'
import type { TxLog } from '../store/types.js'
import { LIMITS } from '../limits.js'
import { DeliveryQueue } from './delivery.js'
import { eventSubject } from './nats.js'
import type { BusEvent, Sink, TxMessage } from './types.js'

/** Dashboard event types -> bus lifecycle types (others stay on the dashboard feed only). */
const LIFECYCLE: Readonly<Record<string, string>> = {
  'tx-begin': 'begun',
  'tx-enlist': 'enlisted',
  'tx-step': 'step',
  'tx-vote': 'voted',
  'tx-compensated': 'compensated',
  'tx-confirmed': 'confirmed',
  'tx-cancelled': 'cancelled',
  'tx-stuck': 'stuck',
  'tx-finished': 'finished',
  'tx-heuristic': 'heuristic',
  'branch-status': 'branch',
  'branch-resolved': 'branch-resolved',
}

interface TxTrack {
  seq: number
  /** Events recorded and not yet delivered to every sink. */
  pending: number
  /** The transaction's last event was recorded: END once nothing is pending. */
  over: boolean
}

const logKey = eventsKey

/** A transaction's last event here: the coordinator's `finished`, a participant branch's end. */
function isLast(type: string, data: Readonly<Record<string, unknown>>): boolean {
  return type === 'finished' || (type === 'branch' && (data.status === 'committed' || data.status === 'aborted'))
}

export class Outbox {
  private readonly queues: DeliveryQueue[]
  private readonly tracks = new Map<string, TxTrack>()
  /** Delivered (event, sink) pairs per event id, to know when every sink has it. */
  private readonly acks = new Map<string, number>()
  private readonly subject: string
  /** Queues of messages being published (closed with the outbox). */
  private readonly publishing = new Set<DeliveryQueue>()

  constructor(
    private readonly o: {
      log: TxLog
      service: string
      logger: Logger
      sinks: readonly Sink[]
      messages: Sink | undefined
      topics?: readonly string[]
    },
  ) {
    this.subject = eventSubject(o.service)
    this.queues = o.sinks.map(
      (sink) =>
        new DeliveryQueue(sink, {
          onDelivered: (e) => this.delivered(e),
          onFailure: (e, err, attempt) => {
            if (attempt === 1 || attempt % LIMITS.eventFailureLogEvery === 0)
              o.logger.warn('event_delivery_failed', { sink: sink.name, event: e.id, attempt, error: err.message })
          },
        }),
    )
  }

  get enabled(): boolean {
    return this.queues.length > 0
  }

  /** Publishes messages only if a bus takes them (attach is refused otherwise). */
  get acceptsMessages(): boolean {
    return this.o.messages !== undefined
  }

  /** Whether a message topic is one of the stream's subjects (NATS wildcards `*` and `>`). */
  coversTopic(topic: string): boolean {
    const t = topic.split('.')
    return (this.o.topics ?? []).some((pattern) => {
      const p = pattern.split('.')
      for (let i = 0; i < p.length; i++) {
        if (p[i] === '>') return t.length > i
        if (i >= t.length || (p[i] !== '*' && p[i] !== t[i])) return false
      }
      return p.length === t.length
    })
  }

  /** The drivers' event callback: every lifecycle event goes to the log and the sinks. */
  readonly record = (type: string, data: Readonly<Record<string, unknown>>): void => {
    if (!this.enabled) return
    const tx = data.tx
    if (typeof tx !== 'string') return
    let name = LIFECYCLE[type]
    if (type === 'tx-outcome') name = data.outcome === 'committed' ? 'committed' : 'aborted'
    if (name === undefined) return
    const t = this.track(tx)
    t.seq++
    const at = Date.now()
    const payload = {
      id: `${this.o.service}:${tx}:${t.seq}`,
      service: this.o.service,
      tx,
      seq: t.seq,
      type: name,
      at: new Date(at).toISOString(),
      data,
    }
    const e: BusEvent = { id: payload.id, subject: this.subject, payload }
    if (isLast(name, data)) t.over = true
    try {
      if (name === 'committed') {
        // Force-written: the one event a consumer must never miss.
        this.o.log
          .append(logKey(tx), { type: 'event', event: payload })
          .catch((err: unknown) => this.o.logger.warn('event_log_failed', { tx, error: String(err) }))
      } else {
        this.o.log.appendLazy(logKey(tx), { type: 'event', event: payload })
      }
    } catch (err) {
      this.o.logger.warn('event_log_failed', { tx, error: String(err) })
    }
    this.push(t, e)
  }

  private track(tx: string): TxTrack {
    let t = this.tracks.get(tx)
    if (t === undefined) {
      t = { seq: 0, pending: 0, over: false }
      this.tracks.set(tx, t)
    }
    return t
  }

  private push(t: TxTrack, e: BusEvent): void {
    t.pending++
    for (const q of this.queues) {
      // A full queue (a sink down for long) drops from memory only: the record stays in the log
      // and is delivered after the next restart.
      if (!q.push(e)) this.o.logger.warn('event_queue_full', { event: e.id })
    }
  }

  private delivered(e: BusEvent): void {
    const n = (this.acks.get(e.id) ?? 0) + 1
    if (n < this.queues.length) {
      this.acks.set(e.id, n)
      return
    }
    this.acks.delete(e.id)
    const tx = (e.payload as { tx: string }).tx
    const t = this.tracks.get(tx)
    if (t === undefined) return
    t.pending--
    if (t.over && t.pending === 0) {
      this.tracks.delete(tx)
      this.o.log.end(logKey(tx))
    }
  }

  /**
   * Publishes a committed transaction's messages (subject = topic, id = tx + index) and resolves
   * once the bus acknowledged every one; retries until then.
   */
  async publish(tx: string, messages: readonly TxMessage[], traceparent?: string): Promise<void> {
    const sink = this.o.messages
    if (sink === undefined || messages.length === 0) return
    let left = messages.length
    let queue: DeliveryQueue | undefined
    await new Promise<void>((resolve) => {
      queue = new DeliveryQueue(sink, {
        onDelivered: () => {
          if (--left === 0) resolve()
        },
      })
      this.publishing.add(queue)
      messages.forEach((m, i) => {
        const payload: Record<string, unknown> = { tx, topic: m.topic, payload: m.payload }
        if (m.key !== undefined) payload.key = m.key
        queue?.push({
          id: `${tx}:m${i}`,
          subject: m.topic,
          payload,
          // One trace from the write to every subscriber (src/events/subscriber.ts copies it).
          ...(traceparent === undefined ? {} : { headers: { traceparent } }),
        })
      })
    })
    if (queue !== undefined) {
      this.publishing.delete(queue)
      await queue.close()
    }
  }

  /**
   * After a restart: re-sends the events still in the log, and records `committed` for a
   * transaction whose decision is durable but whose committed event was lost.
   */
  recover(records: readonly LogRecord[], committed: readonly string[]): void {
    if (!this.enabled) return
    const seen = new Map<string, { events: Readonly<Record<string, unknown>>[] }>()
    for (const r of records) {
      if (r.kind !== 'events') continue
      let s = seen.get(r.tx)
      if (s === undefined) seen.set(r.tx, (s = { events: [] }))
      s.events.push(r.record.event)
    }
    for (const [tx, s] of seen) {
      const t = this.track(tx)
      for (const payload of s.events) {
        t.seq = Math.max(t.seq, typeof payload.seq === 'number' ? payload.seq : 0)
        if (isLast(String(payload.type), (payload.data ?? {}) as Readonly<Record<string, unknown>>)) t.over = true
        this.push(t, { id: String(payload.id), subject: this.subject, payload })
      }
    }
    for (const tx of committed) {
      const events = seen.get(tx)?.events ?? []
      if (!events.some((p) => p.type === 'committed'))
        this.record('tx-outcome', { tx, outcome: 'committed', recovered: true })
    }
  }

  async close(): Promise<void> {
    await Promise.all([...this.queues, ...this.publishing].map((q) => q.close()))
    await Promise.all(
      [...this.o.sinks, ...(this.o.messages === undefined ? [] : [this.o.messages])].map((s) =>
        s.close().catch(() => undefined),
      ),
    )
  }
}
