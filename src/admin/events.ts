// In-process feed of transaction events for the dashboard (GET /v1/events, server-sent events).
// The coordinator and participant drivers call emit(); the hub keeps the most recent events in a
// ring buffer (bounded by LIMITS.adminEventsRing) so a reconnecting EventSource can replay from
// its Last-Event-ID, and fans each event out to a bounded set of subscribers.
import { LIMITS } from '../limits.js'

export interface TxEvent {
  /** Increasing from 1 within this process; the SSE `id:`. */
  readonly id: number
  /** e.g. tx-begin, tx-enlist, tx-vote, tx-outcome, tx-ack, tx-finished, branch-status, branch-resolved */
  readonly type: string
  /** Wall-clock milliseconds. */
  readonly at: number
  readonly data: Readonly<Record<string, unknown>>
}

export type EventListener = (e: TxEvent) => void

export class EventHub {
  private readonly ring: (TxEvent | undefined)[]
  private nextId = 1
  private readonly subscribers = new Set<EventListener>()

  constructor(
    private readonly capacity: number = LIMITS.adminEventsRing,
    private readonly maxSubscribers: number = LIMITS.adminEventStreams,
    private readonly clock: () => number = Date.now,
  ) {
    this.ring = new Array<TxEvent | undefined>(capacity)
  }

  /** Bound to the hub so drivers can take it as a plain callback. */
  readonly emit = (type: string, data: Readonly<Record<string, unknown>>): void => {
    const e: TxEvent = { id: this.nextId++, type, at: this.clock(), data }
    this.ring[e.id % this.capacity] = e
    for (const s of this.subscribers) {
      try {
        s(e)
      } catch {
        // A failing subscriber (a closed stream) must not break the driver that emitted.
        this.subscribers.delete(s)
      }
    }
  }

  /** Id of the most recent event (0: none yet). */
  get lastId(): number {
    return this.nextId - 1
  }

  /** Events after `lastId` still held in the ring buffer, oldest first. */
  since(lastId: number): TxEvent[] {
    const out: TxEvent[] = []
    const first = Math.max(lastId + 1, this.nextId - this.capacity, 1)
    for (let id = first; id < this.nextId; id++) {
      const e = this.ring[id % this.capacity]
      if (e !== undefined && e.id === id) out.push(e)
    }
    return out
  }

  /** Returns the unsubscribe function, or undefined when the subscriber limit is reached. */
  subscribe(listener: EventListener): (() => void) | undefined {
    if (this.subscribers.size >= this.maxSubscribers) return undefined
    this.subscribers.add(listener)
    return () => void this.subscribers.delete(listener)
  }

  get subscriberCount(): number {
    return this.subscribers.size
  }
}
