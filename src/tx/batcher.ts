// Batches small protocol messages bound for the same peer into one HTTP exchange: the 2PC
// control calls a coordinator sends a participant sidecar (prepare, commit, abort) and the hook
// calls a participant sidecar makes to its app (hooks.batch). Each exchange costs both processes
// a few socket writes and wake-ups, which is most of what 2PC costs a sidecar on a loaded machine;
// a batch pays that once for all its items.
//
// No timer adds latency: an item is sent on the next turn of the event loop, together with every
// other item queued for the same peer in the same turn (a group commit that decided several
// transactions at once sends their commits as one batch). While `maxInFlight` batches to a peer
// are out, new items wait and leave together when one comes back, so batches grow with the load.
import { ControlOverloadedError } from '../errors.js'

export interface BatcherOptions<I, R> {
  /** Items per exchange at most. */
  readonly maxItems: number
  /** Exchanges out to one peer at once; more items wait for one to come back. */
  readonly maxInFlight: number
  /** Items waiting for one peer at most; past it `send` answers `overloaded` at once. */
  readonly maxQueued: number
  /**
   * Sends `items` to `key` as one exchange and answers one result per item, in order. Must not
   * reject: a failed exchange answers every item with its failure.
   */
  readonly flush: (key: string, items: readonly I[]) => Promise<readonly R[]>
  /** The result of an item refused because the peer's queue is full. */
  readonly overloaded: (err: ControlOverloadedError) => R
}

interface Waiting<I, R> {
  readonly item: I
  readonly resolve: (r: R) => void
}

interface Peer<I, R> {
  queue: Waiting<I, R>[]
  inFlight: number
  scheduled: boolean
}

export class Batcher<I, R> {
  private readonly peers = new Map<string, Peer<I, R>>()
  /** Items sent and batches used (stats, tests). */
  readonly counters = { items: 0, batches: 0 }

  constructor(private readonly o: BatcherOptions<I, R>) {}

  send(key: string, item: I): Promise<R> {
    let p = this.peers.get(key)
    if (p === undefined) {
      p = { queue: [], inFlight: 0, scheduled: false }
      this.peers.set(key, p)
    }
    if (p.queue.length >= this.o.maxQueued) {
      return Promise.resolve(this.o.overloaded(new ControlOverloadedError(`${p.queue.length} messages already wait for ${key} (limit ${this.o.maxQueued})`)))
    }
    const peer = p
    return new Promise<R>((resolve) => {
      peer.queue.push({ item, resolve })
      this.schedule(key, peer)
    })
  }

  private schedule(key: string, p: Peer<I, R>): void {
    if (p.scheduled || p.inFlight >= this.o.maxInFlight || p.queue.length === 0) return
    p.scheduled = true
    setImmediate(() => {
      p.scheduled = false
      this.flushSome(key, p)
    })
  }

  private flushSome(key: string, p: Peer<I, R>): void {
    while (p.inFlight < this.o.maxInFlight && p.queue.length > 0) {
      const batch = p.queue.splice(0, this.o.maxItems)
      p.inFlight++
      this.counters.batches++
      this.counters.items += batch.length
      void this.o.flush(key, batch.map((w) => w.item)).then((results) => {
        p.inFlight--
        for (let i = 0; i < batch.length; i++) (batch[i] as Waiting<I, R>).resolve(results[i] as R)
        if (p.inFlight === 0 && p.queue.length === 0) this.peers.delete(key)
        else this.schedule(key, p)
      })
    }
  }
}
