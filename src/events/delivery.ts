// Ordered, at-least-once delivery of BusEvents to one Sink.
//
// One event is in flight at a time, in push order, and the head of the queue is retried until
// the sink acknowledges it: an event is never skipped, so the order the outbox pushed (and with
// it each transaction's order) is the order the sink stores. A retry can follow a timed-out
// attempt that did reach the sink; the event id is the sink's idempotency key, which turns that
// into one stored copy (at-least-once sending, effectively-once storing).
import assert from 'node:assert/strict'
import { LIMITS } from '../limits.js'
import type { BusEvent, Sink } from './types.js'

/** Time source and timers, injectable so a test can drive backoff without waiting. */
export interface QueueClock {
  now(): number
  setTimeout(fn: () => void, ms: number): unknown
  clearTimeout(handle: unknown): void
}

export const systemClock: QueueClock = {
  now: () => Date.now(),
  setTimeout: (fn, ms) => setTimeout(fn, ms),
  clearTimeout: (h) => clearTimeout(h as NodeJS.Timeout),
}

export interface DeliveryQueueOptions {
  /** Called (and awaited) after the sink acknowledged `e`, in push order; the outbox retires its record here. */
  onDelivered?: (e: BusEvent) => void | Promise<void>
  /** Called after each failed attempt (observability hook); `attempt` counts from 1 for this event. */
  onFailure?: (e: BusEvent, error: Error, attempt: number, retryInMs: number) => void
  /** Defaults come from LIMITS (event bus section); each is checked against it. */
  maxPending?: number
  backoffBaseMs?: number
  backoffCapMs?: number
  deliveryTimeoutMs?: number
  closeWaitMs?: number
  clock?: QueueClock
  /** Uniform in [0, 1); jitter source. */
  random?: () => number
}

export interface DeliveryStats {
  delivered: number
  failures: number
  pending: number
  lastError: string | null
  lastErrorAt: number | null
}

/**
 * Delay before retry number `attempt` (1 = first retry): exponential from `baseMs`, capped at
 * `capMs`, with "equal jitter" (half fixed, half random) so a fleet of sidecars that lost the
 * same sink does not retry in lockstep, yet no retry comes sooner than half the nominal delay.
 */
export function backoffDelay(attempt: number, baseMs: number, capMs: number, random: () => number): number {
  assert(attempt >= 1)
  const nominal = Math.min(capMs, baseMs * 2 ** Math.min(attempt - 1, 30))
  return Math.floor(nominal / 2 + random() * (nominal / 2))
}

export class DeliveryQueue {
  readonly sink: Sink
  private readonly items: BusEvent[] = []
  private readonly maxPending: number
  private readonly backoffBaseMs: number
  private readonly backoffCapMs: number
  private readonly deliveryTimeoutMs: number
  private readonly closeWaitMs: number
  private readonly clock: QueueClock
  private readonly random: () => number
  private readonly onDelivered: DeliveryQueueOptions['onDelivered']
  private readonly onFailure: DeliveryQueueOptions['onFailure']
  private delivered = 0
  private failures = 0
  private lastError: string | null = null
  private lastErrorAt: number | null = null
  private closed = false
  // `running` is cleared inside run() itself (not in a .finally on its promise), so a push that
  // lands between the loop's last check and its promise settling still starts a new loop.
  private running = false
  private loop: Promise<void> = Promise.resolve()
  private wake: (() => void) | null = null

  constructor(sink: Sink, opts: DeliveryQueueOptions = {}) {
    this.sink = sink
    this.maxPending = opts.maxPending ?? LIMITS.eventQueueLength
    this.backoffBaseMs = opts.backoffBaseMs ?? LIMITS.eventBackoffBaseMs
    this.backoffCapMs = opts.backoffCapMs ?? LIMITS.eventBackoffCapMs
    this.deliveryTimeoutMs = opts.deliveryTimeoutMs ?? LIMITS.eventDeliveryTimeoutMs
    this.closeWaitMs = opts.closeWaitMs ?? LIMITS.eventCloseWaitMs
    this.clock = opts.clock ?? systemClock
    this.random = opts.random ?? Math.random
    this.onDelivered = opts.onDelivered
    this.onFailure = opts.onFailure
    assert(
      Number.isInteger(this.maxPending) && this.maxPending >= 1 && this.maxPending <= LIMITS.eventQueueLength,
      'maxPending out of range',
    )
    assert(
      this.backoffBaseMs >= 1 &&
        this.backoffBaseMs <= this.backoffCapMs &&
        this.backoffCapMs <= LIMITS.eventBackoffCapMs,
      'backoff out of range',
    )
    assert(
      this.deliveryTimeoutMs >= 1 && this.deliveryTimeoutMs <= LIMITS.eventDeliveryTimeoutCapMs,
      'deliveryTimeoutMs out of range',
    )
    assert(this.closeWaitMs >= 0 && this.closeWaitMs <= LIMITS.eventCloseWaitMs, 'closeWaitMs out of range')
  }

  /** Events pushed and not yet acknowledged, including the one in flight. */
  get pending(): number {
    return this.items.length
  }

  /**
   * Queues `e` behind every earlier event. Returns false (and keeps nothing) when the queue is at
   * its bound: the caller stops feeding and pushes again once `pending` drops.
   */
  push(e: BusEvent): boolean {
    if (this.closed) throw new Error(`delivery queue for sink ${this.sink.name} is closed`)
    assert(
      e.id.length > 0 && e.id.length <= LIMITS.eventIdMaxChars,
      `event id must be 1..${LIMITS.eventIdMaxChars} chars`,
    )
    if (this.items.length >= this.maxPending) return false
    this.items.push(e)
    if (!this.running) {
      this.running = true
      this.loop = this.run()
    }
    return true
  }

  stats(): DeliveryStats {
    return {
      delivered: this.delivered,
      failures: this.failures,
      pending: this.items.length,
      lastError: this.lastError,
      lastErrorAt: this.lastErrorAt,
    }
  }

  /**
   * Stops delivering: no new attempt starts and a pending backoff is cut short. Waits at most
   * closeWaitMs for an attempt already in flight. Undelivered events stay unacknowledged (the
   * outbox still holds them). Does not close the sink, which the caller owns.
   */
  async close(): Promise<void> {
    this.closed = true
    this.wake?.()
    if (!this.running) return
    let timer: unknown
    await Promise.race([this.loop, new Promise<void>((r) => (timer = this.clock.setTimeout(r, this.closeWaitMs)))])
    this.clock.clearTimeout(timer)
  }

  // Never rejects (it runs unawaited until close()): a throwing hook is recorded, not fatal.
  private async run(): Promise<void> {
    try {
      await this.deliverAll()
    } catch (err) {
      this.lastError = `delivery loop stopped: ${err instanceof Error ? err.message : String(err)}`
      this.lastErrorAt = this.clock.now()
    } finally {
      this.running = false
    }
  }

  private async deliverAll(): Promise<void> {
    let attempt = 0
    while (!this.closed) {
      const e = this.items[0]
      if (e === undefined) return
      try {
        await this.attempt(e)
      } catch (err) {
        attempt++
        const error = err instanceof Error ? err : new Error(String(err))
        this.failures++
        this.lastError = `${this.sink.name}: ${error.message}`
        this.lastErrorAt = this.clock.now()
        const delay = backoffDelay(attempt, this.backoffBaseMs, this.backoffCapMs, this.random)
        try {
          this.onFailure?.(e, error, attempt, delay)
        } catch {
          // An observability hook must not stop delivery.
        }
        await this.sleep(delay)
        continue
      }
      attempt = 0
      this.items.shift()
      this.delivered++
      if (this.onDelivered !== undefined) {
        try {
          await this.onDelivered(e)
        } catch (err) {
          // The sink has the event; failing to retire it only means it is sent again later,
          // which its idempotency key makes harmless. Delivery of the next event goes on.
          this.lastError = `onDelivered(${e.id}): ${err instanceof Error ? err.message : String(err)}`
          this.lastErrorAt = this.clock.now()
        }
      }
    }
  }

  /** One attempt, bounded by deliveryTimeoutMs. A late outcome of a timed-out attempt is ignored. */
  private async attempt(e: BusEvent): Promise<void> {
    let timer: unknown
    const timeout = new Promise<never>((_, reject) => {
      timer = this.clock.setTimeout(
        () => reject(new Error(`no acknowledgement within ${this.deliveryTimeoutMs} ms`)),
        this.deliveryTimeoutMs,
      )
    })
    try {
      // Promise.race subscribes to the sink's promise, so its late rejection is handled.
      await Promise.race([this.sink.deliver(e), timeout])
    } finally {
      this.clock.clearTimeout(timer)
    }
  }

  private sleep(ms: number): Promise<void> {
    return new Promise<void>((resolve) => {
      const handle = this.clock.setTimeout(() => {
        this.wake = null
        resolve()
      }, ms)
      this.wake = () => {
        this.clock.clearTimeout(handle)
        this.wake = null
        resolve()
      }
    })
  }
}
