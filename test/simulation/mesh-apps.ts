// A 2PC participant app for the mesh simulation that knows only the documented hook contract
// (docs/participant-contract.md): a business request opens work under its branch id; prepare
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
  /**
   * A hook or business request answered with an error without doing anything: 500 or 503, and
   * for prepare or a business request also 404 or 409 (a no); never a 404 to commit or abort
   * while work is held, which the contract reserves for "nothing here".
   */
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
  /** `branch`: the branch it concerns (an operator's resolution of it may explain it). */
  violation(what: string, branch?: string): void
  log(line: string): void
  /** The app died (dieAfterPrepare): the world restarts it. */
  died(app: ContractApp): void
  /** The app changed what it holds for a branch: the world checks its invariants at once. */
  applied(app: ContractApp): void
}

export class ContractApp implements App {
  proc: SimProc
  /** What the app did for each branch id (its tx id too). */
  readonly work = new Map<
    string,
    { readonly tx: string; status: BranchWork; wasPrepared: boolean; history: string[] }
  >()

  /** Business requests of each branch the app is still working on (slow ones). */
  private readonly running = new Map<string, number>()

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
    this.running.clear()
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
    if (h.faultsOn() && h.rng.chance(this.faults.failure)) {
      const phase2 = path === SIM_CONFIG.hooks.commit || path === SIM_CONFIG.hooks.abort
      return { status: (phase2 ? [500, 503] : [404, 409, 500, 503])[h.rng.int(0, phase2 ? 1 : 3)] as number }
    }
    // The contract: no hook of a branch reaches the app while a request of that branch still runs
    // in it (the sidecar holds hooks until the request's response head left, LIMITS.hookHoldMs).
    if (path !== '/work' && (this.running.get(branch) ?? 0) > 0)
      this.host.violation(
        `${this.name}: ${path} of ${branch} arrived while a request of the branch still ran in the app`,
      )
    const answer = this.answer(path, tx, branch)
    if (h.faultsOn() && h.rng.chance(this.faults.slow)) {
      const proc = this.proc
      // A slow business request runs (holds its branch) until it answers, past the sidecar's
      // hook timeout but within its hold.
      const ms =
        path === '/work'
          ? h.rng.int(1, LIMITS.hookHoldMs - 1)
          : h.rng.int(LIMITS.hookCallTimeoutMs + 1, LIMITS.hookCallTimeoutMs * 2)
      if (path === '/work') this.running.set(branch, (this.running.get(branch) ?? 0) + 1)
      return new Promise((resolve) =>
        h.after(proc, ms, () => {
          if (path === '/work') this.running.set(branch, (this.running.get(branch) ?? 1) - 1)
          resolve(answer)
        }),
      )
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
        if (w.wasPrepared) this.host.violation(`${this.name}: commit of ${branch} after it was rolled back`, branch)
        return { status: 404 }
      }
      this.apply(w, 'committed', 'commit')
      return { status: 200 }
    }
    if (path === hooks.abort) {
      if (w === undefined) return { status: 404 }
      if (w.status === 'aborted' || w.status === 'read-only') return { status: 200 }
      if (w.status === 'committed') {
        this.host.violation(`${this.name}: abort of ${branch} after it committed`, branch)
        return { status: 409 }
      }
      this.apply(w, 'aborted', 'abort')
      return { status: 200 }
    }
    return { status: 404 }
  }

  private apply(
    w: { status: BranchWork; wasPrepared: boolean; history: string[] },
    status: BranchWork,
    why: string,
  ): void {
    w.status = status
    if (status === 'prepared') w.wasPrepared = true
    w.history.push(`${why}->${status}`)
    this.host.applied(this)
  }
}
