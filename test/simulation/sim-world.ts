// What both simulated worlds (2PC in world.ts, saga/TCC in steps-world.ts) are made of: one seeded
// PRNG and scheduler, the machines' environment on simulated time, a network that loses,
// duplicates and delays messages, request-response with a timeout, timers that die with their
// node's incarnation, and the trace and violations of a run.
import type { Env } from '../../src/tx/core.js'
import { Prng } from './prng.js'
import { Scheduler } from './scheduler.js'

export interface SimNode {
  readonly name: string
  up: boolean
  /** Bumped at every crash: callbacks of an earlier life are dropped. */
  incarnation: number
}

/** The fault rates the network and the disk read (each world draws more of its own). */
export interface NetFaults {
  readonly loss: number
  readonly duplicate: number
  readonly slow: number
}

/** The counters the network keeps in each world's statistics. */
export interface NetStats {
  messages: number
  lost: number
  duplicated: number
}

export abstract class SimWorld {
  protected readonly rng: Prng
  protected readonly sched = new Scheduler()
  protected readonly env: Env
  protected faultsOn = true
  protected readonly violations: string[] = []
  protected abstract readonly faults: NetFaults
  protected abstract readonly stats: NetStats

  protected constructor(
    protected readonly seed: number,
    private readonly trace: ((line: string) => void) | undefined,
  ) {
    this.rng = new Prng(seed)
    const rng = this.rng
    const sched = this.sched
    this.env = {
      get now() {
        return sched.now
      },
      random: () => rng.next(),
    }
  }

  protected log(line: string): void {
    this.trace?.(`${String(this.sched.now).padStart(6)} ${line}`)
  }

  protected violation(what: string): void {
    this.violations.push(`t=${this.sched.now}: ${what}`)
    this.log(`VIOLATION ${what}`)
  }

  protected latency(): number {
    if (this.faultsOn && this.rng.chance(this.faults.slow)) return this.rng.int(100, 1_500)
    return this.rng.chance(0.1) ? this.rng.int(10, 80) : this.rng.int(1, 10)
  }

  /** A forced log write; now and then the disk stalls (fsync behind a busy device). */
  protected diskLatency(): number {
    return this.faultsOn && this.rng.chance(this.faults.slow) ? this.rng.int(50, 600) : this.rng.int(1, 15)
  }

  /** One message; it may be lost, duplicated, delayed past later ones. Delivered only to a node that is up. */
  protected send(to: SimNode, deliver: () => void, duplicable: boolean): void {
    this.stats.messages++
    if (this.faultsOn && this.rng.chance(this.faults.loss)) {
      this.stats.lost++
      return
    }
    const copies = duplicable && this.faultsOn && this.rng.chance(this.faults.duplicate) ? 2 : 1
    if (copies === 2) this.stats.duplicated++
    for (let i = 0; i < copies; i++) {
      this.sched.after(this.latency(), () => {
        if (to.up) deliver()
      })
    }
  }

  /**
   * Request-response with a timeout: `done` runs exactly once, with the first answer or with
   * undefined at the timeout, and only if the caller is still the same incarnation. `onEveryReply`
   * sees every answer that arrives (late and duplicated ones too): the 2PC egress enlists from them.
   */
  protected request<R>(
    from: SimNode,
    to: SimNode,
    timeoutMs: number,
    handle: (reply: (r: R) => void) => void,
    done: (r: R | undefined) => void,
    opts: { duplicable: boolean; onEveryReply?: (r: R) => void } = { duplicable: true },
  ): void {
    const incarnation = from.incarnation
    let settled = false
    const alive = (): boolean => from.up && from.incarnation === incarnation
    this.send(
      to,
      () => {
        const toIncarnation = to.incarnation
        handle((r) => {
          if (!to.up || to.incarnation !== toIncarnation) return
          this.send(
            from,
            () => {
              if (!alive()) return
              opts.onEveryReply?.(r)
              if (settled) return
              settled = true
              done(r)
            },
            opts.duplicable,
          )
        })
      },
      opts.duplicable,
    )
    this.timer(from, timeoutMs, () => {
      if (settled) return
      settled = true
      done(undefined)
    })
  }

  /** A timer of one incarnation of a node: it dies with a crash. */
  protected timer(node: SimNode, delayMs: number, run: () => void): void {
    const incarnation = node.incarnation
    this.sched.after(delayMs, () => {
      if (node.up && node.incarnation === incarnation) run()
    })
  }

  /** Runs a machine call; a throw is a violation, not a crash of the simulation. */
  protected guard<T>(what: string, f: () => T): T | undefined {
    try {
      return f()
    } catch (err) {
      this.violation(`${what} threw: ${err instanceof Error ? err.message : String(err)}`)
      return undefined
    }
  }
}
