// Retry decisions: which requests may be retried, and a budget that keeps retries a bounded
// fraction of traffic so a failing upstream is not hit by a retry storm (Linkerd's retry
// budget: a ratio of requests plus a small floor per second).
import type { RetryPolicy } from '../config/types.js'
import { fullJitterMs } from '../backoff.js'
import { LIMITS } from '../limits.js'

// RFC 9110 §9.2.2: methods whose repetition has the same effect as one request.
const IDEMPOTENT = new Set(['GET', 'HEAD', 'OPTIONS', 'TRACE', 'PUT', 'DELETE'])

export function methodRetryable(method: string, policy: RetryPolicy): boolean {
  return policy.attempts > 0 && (policy.nonIdempotent || IDEMPOTENT.has(method))
}

/**
 * Token budget over a sliding window: every request deposits `ratio` tokens, every retry
 * withdraws one; `minPerSecond` tokens are always available. Window halves (two buckets) keep
 * it O(1) per call.
 */
export class RetryBudget {
  private current = { start: 0, deposits: 0, withdrawals: 0 }
  private previous = { start: 0, deposits: 0, withdrawals: 0 }

  constructor(
    private readonly ratio: number,
    private readonly minPerSecond: number,
    private readonly now: () => number = Date.now,
    private readonly windowMs: number = LIMITS.retryBudgetWindowMs,
  ) {}

  private roll(): void {
    const t = this.now()
    const half = this.windowMs / 2
    if (t - this.current.start >= half) {
      this.previous = t - this.current.start >= this.windowMs ? { start: t, deposits: 0, withdrawals: 0 } : this.current
      this.current = { start: t, deposits: 0, withdrawals: 0 }
    }
  }

  deposit(): void {
    this.roll()
    this.current.deposits++
  }

  tryWithdraw(): boolean {
    this.roll()
    const deposits = this.current.deposits + this.previous.deposits
    const withdrawals = this.current.withdrawals + this.previous.withdrawals
    const allowed = deposits * this.ratio + (this.minPerSecond * this.windowMs) / 1000
    if (withdrawals + 1 > allowed) return false
    this.current.withdrawals++
    return true
  }
}

/** Capped exponential backoff with full jitter. */
export function backoffMs(attempt: number, random: () => number = Math.random): number {
  return fullJitterMs(attempt + 1, LIMITS.retryBackoffBaseMs, LIMITS.retryBackoffCapMs, random)
}
