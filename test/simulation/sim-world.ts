// What the simulated mesh (mesh.ts) is built on: one seeded PRNG and scheduler, the machines'
// environment on simulated time, network and disk latencies, timers that die with their node,
// and the trace and violations of a run.
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

  /** A timer of one incarnation of a node: it dies with a crash. */
  protected timer(node: SimNode, delayMs: number, run: () => void): void {
    const incarnation = node.incarnation
    this.sched.after(delayMs, () => {
      if (node.up && node.incarnation === incarnation) run()
    })
  }
}
