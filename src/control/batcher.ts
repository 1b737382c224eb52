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
// A batch answers when its slowest item does (an app's prepare may wait for a running request),
// so one out longer than `holdMs` stops holding the others back: a slow transaction delays the
// messages of the others to the same peer by `holdMs` at most.
import { ControlOverloadedError } from '../errors.js'

export interface BatcherOptions<I, R> {
  /** Items per exchange at most. */
  readonly maxItems: number
  /** Exchanges out to one peer at once (younger than holdMs); more items wait for one to come back. */
  readonly maxInFlight: number
  /** An exchange out this long no longer counts against maxInFlight. */
  readonly holdMs: number
  /** Items waiting for one peer at most; past it `send` answers `overloaded` at once. */
  readonly maxQueued: number
  /**
   * Sends `items` to `key` as one exchange and answers one result per item, in order. Must not
   * reject: a failed exchange answers every item with its failure.
   */
  readonly flush: (key: string, items: readonly I[]) => Promise<readonly R[]>
  /** The result of an item refused because the peer's queue is full. */
  readonly overloaded: (err: ControlOverloadedError) => R
  /** The result of every item of an exchange whose flush broke its contract (threw or rejected). */
  readonly failed: (err: Error) => R
  /** Injected for tests. */
  readonly now?: () => number
}

interface Waiting<I, R> {
  readonly item: I
  readonly resolve: (r: R) => void
}

interface Peer<I, R> {
  queue: Waiting<I, R>[]
  /** Start times of the exchanges out, oldest first. */
  readonly out: number[]
  scheduled: boolean
  /** Set while waiting for the oldest exchange out to pass holdMs. */
  timer: NodeJS.Timeout | undefined
}

export class Batcher<I, R> {
  private readonly peers = new Map<string, Peer<I, R>>()
  private readonly now: () => number
  /** Items sent and batches used (stats, tests). */
  readonly counters = { items: 0, batches: 0 }

  constructor(private readonly o: BatcherOptions<I, R>) {
    this.now = o.now ?? performance.now.bind(performance)
  }

  send(key: string, item: I): Promise<R> {
    let p = this.peers.get(key)
    if (p === undefined) {
      p = { queue: [], out: [], scheduled: false, timer: undefined }
      this.peers.set(key, p)
    }
    if (p.queue.length >= this.o.maxQueued) {
      return Promise.resolve(
        this.o.overloaded(
          new ControlOverloadedError(`${p.queue.length} messages already wait for ${key} (limit ${this.o.maxQueued})`),
        ),
      )
    }
    const peer = p
    return new Promise<R>((resolve) => {
      peer.queue.push({ item, resolve })
      this.schedule(key, peer)
    })
  }

  /** Exchanges out to `p` that still hold new items back. */
  private holding(p: Peer<I, R>): number {
    const since = this.now() - this.o.holdMs
    let n = 0
    for (const t of p.out) if (t > since) n++
    return n
  }

  private schedule(key: string, p: Peer<I, R>): void {
    if (p.scheduled || p.queue.length === 0) return
    if (this.holding(p) >= this.o.maxInFlight) {
      // Wait for one to come back, or for the oldest to pass holdMs.
      if (p.timer === undefined) {
        const oldest = p.out.find((t) => t > this.now() - this.o.holdMs) ?? this.now()
        p.timer = setTimeout(
          () => {
            p.timer = undefined
            this.schedule(key, p)
          },
          Math.max(1, Math.ceil(oldest + this.o.holdMs - this.now())),
        )
      }
      return
    }
    p.scheduled = true
    setImmediate(() => {
      p.scheduled = false
      this.flushSome(key, p)
    })
  }

  private flushSome(key: string, p: Peer<I, R>): void {
    while (p.queue.length > 0 && this.holding(p) < this.o.maxInFlight) {
      const batch = p.queue.splice(0, this.o.maxItems)
      const started = this.now()
      p.out.push(started)
      this.counters.batches++
      this.counters.items += batch.length
      const done = (results: readonly R[] | Error): void => {
        p.out.splice(p.out.indexOf(started), 1)
        const broken =
          results instanceof Error
            ? results
            : results.length === batch.length
              ? undefined
              : new Error(`the exchange answered ${results.length} results for ${batch.length} items`)
        for (let i = 0; i < batch.length; i++) {
          const w = batch[i] as Waiting<I, R>
          w.resolve(broken === undefined ? ((results as readonly R[])[i] as R) : this.o.failed(broken))
        }
        if (p.out.length === 0 && p.queue.length === 0) {
          clearTimeout(p.timer)
          this.peers.delete(key)
        } else this.schedule(key, p)
      }
      let sent: Promise<readonly R[]>
      try {
        sent = this.o.flush(
          key,
          batch.map((w) => w.item),
        )
      } catch (err) {
        sent = Promise.reject(err as Error)
      }
      // Every waiting caller gets an answer, whatever the flush does.
      sent.then(done, (err: unknown) => done(err instanceof Error ? err : new Error(String(err))))
    }
    // What the loop left (all exchanges out are young): wait as schedule() does.
    this.schedule(key, p)
  }
}

/**
 * The serving side of a batch: one item's answer, or `late()` once `ms` passed without it, so one
 * slow item does not hold its batch past the caller's timeout (the control listener's
 * /v1/batch and txmesh/pg's batch hook). The item keeps running; only its answer is given up.
 */
export function answerWithin<T>(run: Promise<T>, ms: number, late: () => T): Promise<T> {
  let timer: NodeJS.Timeout | undefined
  const deadline = new Promise<T>((resolve) => {
    timer = setTimeout(() => resolve(late()), ms)
  })
  return Promise.race([run, deadline]).finally(() => clearTimeout(timer))
}
