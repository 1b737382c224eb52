// One branch has one Postgres connection, so its requests and hooks take turns: a FIFO lock
// with a bounded number of waiters and a wait timeout per waiter.

export type Holder = 'request' | 'hook'

export type Acquired =
  { readonly ok: true; readonly release: () => void } | { readonly ok: false; readonly reason: 'full' | 'timeout' }

interface Waiter {
  readonly kind: Holder
  readonly grant: (release: () => void) => void
  timer: NodeJS.Timeout | undefined
}

export class BranchQueue {
  private heldBy: Holder | undefined
  private readonly waiters: Waiter[] = []

  /** `onIdle` runs when the lock is released and nobody waits (arms the idle timer). */
  constructor(
    private readonly maxWaiters: number,
    private readonly onIdle: () => void,
  ) {}

  get holder(): Holder | undefined {
    return this.heldBy
  }

  get waiting(): number {
    return this.waiters.length
  }

  /** Takes the lock now if it is free. */
  tryAcquire(kind: Holder): (() => void) | undefined {
    if (this.heldBy !== undefined) return undefined
    this.heldBy = kind
    return this.releaser()
  }

  acquire(kind: Holder, timeoutMs: number): Promise<Acquired> {
    const now = this.tryAcquire(kind)
    if (now) return Promise.resolve({ ok: true, release: now })
    if (this.waiters.length >= this.maxWaiters) return Promise.resolve({ ok: false, reason: 'full' })
    return new Promise<Acquired>((resolve) => {
      const waiter: Waiter = {
        kind,
        grant: (release) => resolve({ ok: true, release }),
        timer: undefined,
      }
      waiter.timer = setTimeout(() => {
        const i = this.waiters.indexOf(waiter)
        if (i >= 0) this.waiters.splice(i, 1)
        resolve({ ok: false, reason: 'timeout' })
      }, timeoutMs)
      this.waiters.push(waiter)
    })
  }

  private releaser(): () => void {
    let done = false
    return () => {
      if (done) return
      done = true
      const next = this.waiters.shift()
      if (next) {
        clearTimeout(next.timer)
        this.heldBy = next.kind
        next.grant(this.releaser())
        return
      }
      this.heldBy = undefined
      this.onIdle()
    }
  }
}
