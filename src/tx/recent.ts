// A map of recently finished things (transactions, branches), bounded in count and age.
// Insertion order is age order, so expiry sweeps from the front: no timer per entry, which at
// thousands of transactions a second would mean hundreds of thousands of live timers.
import { LIMITS } from '../limits.js'

export class RecentMap<K, V> {
  private readonly entries = new Map<K, { value: V; at: number }>()

  constructor(
    private readonly maxEntries: number = LIMITS.maxFinishedTxRetained,
    private readonly maxAgeMs: number = LIMITS.finishedTxRetentionMs,
    private readonly clock: () => number = Date.now,
  ) {}

  private sweep(now: number): void {
    for (const [k, e] of this.entries) {
      if (this.entries.size <= this.maxEntries && now - e.at < this.maxAgeMs) break
      this.entries.delete(k)
    }
  }

  set(key: K, value: V): void {
    const now = this.clock()
    this.entries.delete(key)
    this.entries.set(key, { value, at: now })
    this.sweep(now)
  }

  get(key: K): V | undefined {
    const e = this.entries.get(key)
    if (e === undefined) return undefined
    if (this.clock() - e.at >= this.maxAgeMs) {
      this.entries.delete(key)
      return undefined
    }
    return e.value
  }

  has(key: K): boolean {
    return this.get(key) !== undefined
  }

  keys(): K[] {
    this.sweep(this.clock())
    return [...this.entries.keys()]
  }
}
