// Replay protection of the control listener (issue 8, "timestamp and nonce to stop replays").
// A signed control request is accepted while its timestamp is within LIMITS.controlClockSkewMs
// of our clock; within that window its nonce must be new. The cache remembers each nonce until
// its timestamp leaves the window (ts + skew), after which the timestamp check alone refuses it.
//
// The cache lives in memory, so a restarted sidecar has forgotten the nonces it saw: requests
// signed before the cache was created are refused ('before-start'), or a request captured just
// before a restart could be replayed just after it. A peer whose clock runs behind ours is
// refused for at most that lag after our start, and retries.
//
// Bounded: at most `capacity` unexpired nonces. When full, `check` answers 'full' and the
// request is refused (503, the caller retries): accepting it unchecked would reopen the replay.
// Only requests that carry a valid mesh-key signature reach the cache, so filling it takes the
// mesh key.
import { LIMITS } from '../limits.js'

export type ReplayVerdict = 'fresh' | 'replay' | 'full' | 'before-start'

export class ReplayCache {
  /**
   * nonce -> expiry (ms). Expiries are kept non-decreasing in insertion order (an entry never
   * expires before the one inserted ahead of it), so expired entries are always at the front
   * and are dropped in amortised O(1). Keeping a nonce a little longer than needed is safe.
   */
  private readonly seen = new Map<string, number>()
  private lastExpiry = 0

  constructor(
    /** Our clock when the cache was created: earlier requests may be replays we cannot detect. */
    private readonly since: number,
    private readonly capacity: number = LIMITS.controlReplayCacheEntries,
    private readonly windowMs: number = LIMITS.controlClockSkewMs,
  ) {}

  /** Records `nonce` (of a request signed at `ts`) unless it was seen or the cache is full. */
  check(nonce: string, ts: number, now: number): ReplayVerdict {
    if (ts < this.since) return 'before-start'
    this.expire(now)
    if (this.seen.has(nonce)) return 'replay'
    if (this.seen.size >= this.capacity) return 'full'
    this.lastExpiry = Math.max(this.lastExpiry, ts + this.windowMs)
    this.seen.set(nonce, this.lastExpiry)
    return 'fresh'
  }

  get size(): number {
    return this.seen.size
  }

  private expire(now: number): void {
    for (const [nonce, expiry] of this.seen) {
      if (expiry >= now) return
      this.seen.delete(nonce)
    }
  }
}
