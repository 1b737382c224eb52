// A 2PC participant app for the mesh simulation that knows only the documented hook contract
// (README "Participant contract"): a business request opens work under its branch id; prepare
// answers 200 (prepared, kept across a crash like a database's prepared transaction), 204
// (read-only) or 409 (no); commit and abort answer 2xx when done and 404 when there is nothing.
// Open work dies with the app (the database rolls it back). It has no recovery of its own.
// It records what it applied and flags what the contract forbids the sidecar to ask.
import { LIMITS } from '../../src/limits.js'
import { BRANCH_ID_HEADER, TX_ID_HEADER } from '../../src/tx/protocol.js'
import type { Prng } from './prng.js'
import { header, SIM_CONFIG, SimProc, type App, type AppAnswer } from './mesh.js'

export type BranchWork = 'open' | 'prepared' | 'read-only' | 'committed' | 'aborted'

export interface AppFaults {
  /** A hook or business request answered 500 without doing anything. */
  readonly failure: number
  /** An answer slower than the sidecar's hook timeout. */
  readonly slow: number
  /** Prepares, then dies before answering. */
  readonly dieAfterPrepare: number
}

export interface AppHost {
  readonly rng: Prng
  faultsOn(): boolean
  /** Runs `fn` after `ms` if `proc` is still up. */
  after(proc: SimProc, ms: number, fn: () => void): void
  violation(what: string): void
  log(line: string): void
  /** The app died (dieAfterPrepare): the world restarts it. */
  died(app: ContractApp): void
}

export class ContractApp implements App {
  proc: SimProc
  /** What the app did for each branch id (its tx id too). */
  readonly work = new Map<string, { readonly tx: string; status: BranchWork; wasPrepared: boolean; history: string[] }>()

  constructor(
    readonly name: string,
    private readonly host: AppHost,
    private readonly faults: AppFaults,
    /** What it votes at prepare. */
    readonly plannedVote: 'prepared' | 'read-only' | 'refused',
  ) {
    this.proc = new SimProc(`${name}.app`)
  }

  crash(): void {
    if (!this.proc.up) return
    this.proc.up = false
    // The database rolls back open work when its session dies.
    for (const w of this.work.values()) if (w.status === 'open') this.apply(w, 'aborted', 'crash')
  }

  restart(): void {
    if (this.proc.up) return
    this.proc = new SimProc(`${this.name}.app`)
  }

  handle(path: string, headers: readonly string[]): Promise<AppAnswer> | AppAnswer {
    const h = this.host
    const tx = header(headers, TX_ID_HEADER)
    const branch = header(headers, BRANCH_ID_HEADER)
    if (tx === undefined || branch === undefined) return { status: 400 }
    if (h.faultsOn() && h.rng.chance(this.faults.failure)) return { status: 500 }
    const answer = this.answer(path, tx, branch)
    if (h.faultsOn() && h.rng.chance(this.faults.slow)) {
      const proc = this.proc
      return new Promise((resolve) => h.after(proc, h.rng.int(LIMITS.hookCallTimeoutMs + 1, LIMITS.hookCallTimeoutMs * 2), () => resolve(answer)))
    }
    return answer
  }

  private answer(path: string, tx: string, branch: string): AppAnswer {
    const hooks = SIM_CONFIG.hooks
    const w = this.work.get(branch)
    if (path === '/work') {
      if (w !== undefined && w.status !== 'open') return { status: 409 }
      if (w === undefined) this.work.set(branch, { tx, status: 'open', wasPrepared: false, history: ['open'] })
      return { status: 200 }
    }
    if (path === hooks.prepare) {
      if (w === undefined || w.status === 'aborted') return { status: 409 }
      if (w.status === 'prepared') return { status: 200 }
      if (w.status === 'read-only') return { status: 204 }
      if (w.status === 'committed') {
        this.host.violation(`${this.name}: prepare of ${branch} after it committed`)
        return { status: 409 }
      }
      if (this.plannedVote === 'refused') {
        this.apply(w, 'aborted', 'refused')
        return { status: 409 }
      }
      if (this.plannedVote === 'read-only') {
        this.apply(w, 'read-only', 'prepare')
        return { status: 204 }
      }
      this.apply(w, 'prepared', 'prepare')
      if (this.host.faultsOn() && this.host.rng.chance(this.faults.dieAfterPrepare)) {
        this.host.log(`${this.name} prepared ${branch} and dies before answering`)
        this.crash()
        this.host.died(this)
        return { status: 200 }
      }
      return { status: 200 }
    }
    if (path === hooks.commit) {
      if (w === undefined) return { status: 404 }
      if (w.status === 'committed' || w.status === 'read-only') return { status: 200 }
      if (w.status === 'open') {
        this.host.violation(`${this.name}: commit of ${branch}, which never prepared`)
        return { status: 409 }
      }
      if (w.status === 'aborted') {
        if (w.wasPrepared) this.host.violation(`${this.name}: commit of ${branch} after it was rolled back`)
        return { status: 404 }
      }
      this.apply(w, 'committed', 'commit')
      return { status: 200 }
    }
    if (path === hooks.abort) {
      if (w === undefined) return { status: 404 }
      if (w.status === 'aborted' || w.status === 'read-only') return { status: 200 }
      if (w.status === 'committed') {
        this.host.violation(`${this.name}: abort of ${branch} after it committed`)
        return { status: 409 }
      }
      this.apply(w, 'aborted', 'abort')
      return { status: 200 }
    }
    return { status: 404 }
  }

  private apply(w: { status: BranchWork; wasPrepared: boolean; history: string[] }, status: BranchWork, why: string): void {
    w.status = status
    if (status === 'prepared') w.wasPrepared = true
    w.history.push(`${why}->${status}`)
  }
}
