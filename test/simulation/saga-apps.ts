// A saga/TCC step service for the mesh simulation that knows only the documented contract
// (docs/sagas-tcc.md): a request's `txmesh-op` says what it is and `txmesh-branch-id` names
// its step. An action (saga) or try (TCC) applies its work in the service's database, keyed by
// the step id, and answers 200 with the work's own id (`{"id":...}`) and, for sagas, its undo in
// `txmesh-compensate`; a compensate, confirm or cancel is idempotent by step id and answers 404
// when there is nothing to undo or confirm. Each request commits on its own: a crash loses the
// requests still running, never what was applied. The service keeps the barrier the contract
// asks of it (txmesh/pg's txm.barrier): a duplicate is answered as the first delivery was; a
// compensate or cancel of work that never ran marks the step so the work cannot run later
// (hanging: answered 409); a refused action stays refused on every delivery.
// It records what it applied, and flags what the contract forbids the sidecars to ask (a confirm
// after a cancel, a cancel after a confirm, an undo naming another step's work).
import { LIMITS } from '../../src/limits.js'
import { BRANCH_ID_HEADER, COMPENSATE_HEADER, OP_HEADER, TX_ID_HEADER } from '../../src/tx/protocol.js'
import type { Prng } from './prng.js'
import { header, SIM_CONFIG, SimProc, type App, type AppAnswer } from './mesh.js'

export type StepOpKind = 'action' | 'try' | 'compensate' | 'confirm' | 'cancel'

/** What the service's database holds for one step id. */
export interface StepWork {
  readonly tx: string
  /** Barrier rows: op -> the op whose request inserted it (a compensate/cancel inserts its origin's). */
  readonly rows: Map<StepOpKind, StepOpKind>
  /** The action/try took effect (once: the barrier), and when. */
  appliedAt: number | undefined
  /** Its undo (compensate/cancel) took effect, and when. */
  undoneAt: number | undefined
  confirmedAt: number | undefined
  /** The first compensate/cancel that reached the service (an empty one too). */
  firstUndoAt: number | undefined
  /** The work's own id, as the action's answer names it. */
  readonly resource: string
  /** Refused outright (4xx): every later delivery is refused too. */
  refused: boolean
  /** Deliveries of each op (duplicates, retries). */
  readonly deliveries: Record<StepOpKind, number>
  readonly history: string[]
}

export interface StepAppFaults {
  /** A request answered 500 without doing anything. */
  readonly failure: number
  /** An action/try that does its work, then answers 503 (a failure the caller cannot tell from the first kind). */
  readonly failAfterWork: number
  /** An answer slower than the caller's timeout. */
  readonly slow: number
  /** An action/try refused outright (409, nothing done). */
  readonly refusal: number
}

export interface StepAppHost {
  readonly rng: Prng
  faultsOn(): boolean
  now(): number
  /** Runs `fn` after `ms` if `proc` is still up. */
  after(proc: SimProc, ms: number, fn: () => void): void
  violation(what: string): void
  log(line: string): void
}

export interface StepAppStats {
  duplicateDeliveries: number
  emptyUndos: number
  hangingRefused: number
  refusals: number
}

export class StepApp implements App {
  proc: SimProc
  readonly work = new Map<string, StepWork>()
  readonly stats: StepAppStats = { duplicateDeliveries: 0, emptyUndos: 0, hangingRefused: 0, refusals: 0 }
  private resources = 0

  constructor(
    readonly name: string,
    private readonly host: StepAppHost,
    private readonly faults: StepAppFaults,
  ) {
    this.proc = new SimProc(`${name}.app`)
  }

  crash(): void {
    // The requests still running die with it; what each one committed stays.
    this.proc.up = false
  }

  restart(): void {
    if (!this.proc.up) this.proc = new SimProc(`${this.name}.app`)
  }

  handle(path: string, headers: readonly string[]): Promise<AppAnswer> | AppAnswer {
    const h = this.host
    const tx = header(headers, TX_ID_HEADER)
    const branch = header(headers, BRANCH_ID_HEADER)
    const op = header(headers, OP_HEADER)
    if (tx === undefined || branch === undefined || !isOp(op)) return { status: 400 }
    if (h.faultsOn() && h.rng.chance(this.faults.failure)) return { status: 500 }
    const answer = this.answer(path, tx, branch, op)
    if (h.faultsOn() && h.rng.chance(this.faults.slow)) {
      const proc = this.proc
      const ms = h.rng.int(LIMITS.stepOpTimeoutMs / 2, LIMITS.stepOpTimeoutMs * 2)
      return new Promise((resolve) => h.after(proc, ms, () => resolve(answer)))
    }
    return answer
  }

  private answer(path: string, tx: string, branch: string, op: StepOpKind): AppAnswer {
    let w = this.work.get(branch)
    if (w === undefined) {
      w = {
        tx,
        rows: new Map(),
        appliedAt: undefined,
        undoneAt: undefined,
        confirmedAt: undefined,
        firstUndoAt: undefined,
        resource: `${op === 'try' ? 'h' : 'o'}${this.resources++}`,
        refused: false,
        deliveries: { action: 0, try: 0, compensate: 0, confirm: 0, cancel: 0 },
        history: [],
      }
      this.work.set(branch, w)
    }
    w.deliveries[op]++
    if (w.tx !== tx) {
      this.host.violation(`${this.name}: step ${branch} of ${w.tx} reached it again as a step of ${tx}`)
      return { status: 409 }
    }
    const wrongPath = this.pathProblem(path, branch, w, op)
    if (wrongPath !== undefined) {
      this.host.violation(`${this.name}: ${op} of ${branch}: ${wrongPath}`)
      return { status: 400 }
    }
    switch (op) {
      case 'action':
      case 'try':
        return this.doWork(w, branch, op)
      case 'compensate':
      case 'cancel':
        return this.undo(w, branch, op)
      case 'confirm':
        return this.confirm(w, branch)
    }
  }

  /** Which request paths name this step's op (the contract lets the caller's templates choose them). */
  private pathProblem(path: string, branch: string, w: StepWork, op: StepOpKind): string | undefined {
    const names = (id: string | undefined): boolean => id === branch || id === w.resource
    const hooks = SIM_CONFIG.hooks
    switch (op) {
      case 'action':
      case 'try':
        return path === '/work' ? undefined : `path ${path}`
      case 'compensate': {
        const m = /^\/things\/([^/]+)$/.exec(path)
        return m !== null && names(m[1])
          ? undefined
          : `path ${path} does not name this step's work (${branch}, ${w.resource})`
      }
      case 'confirm': {
        if (path === hooks.confirm) return undefined
        const m = /^\/holds\/([^/]+)\/capture$/.exec(path)
        return m !== null && names(m[1])
          ? undefined
          : `path ${path} does not name this step's hold (${branch}, ${w.resource})`
      }
      case 'cancel': {
        if (path === hooks.cancel) return undefined
        const m = /^\/holds\/([^/]+)$/.exec(path)
        return m !== null && names(m[1])
          ? undefined
          : `path ${path} does not name this step's hold (${branch}, ${w.resource})`
      }
    }
  }

  private doWork(w: StepWork, branch: string, op: 'action' | 'try'): AppAnswer {
    const h = this.host
    const row = w.rows.get(op)
    if (row !== undefined) {
      this.stats.duplicateDeliveries++
      // Its undo came first and marked it: running it now would leave work nobody undoes.
      if (row !== op) {
        this.stats.hangingRefused++
        w.history.push(`${op} hanging->409`)
        return { status: 409 }
      }
      return this.workAnswer(w, op)
    }
    if (w.refused || (h.faultsOn() && h.rng.chance(this.faults.refusal))) {
      // Refused as such (RFC 9110 15.5): the refusal is recorded, nothing is done.
      if (!w.refused) this.stats.refusals++
      w.refused = true
      w.history.push(`${op} refused`)
      return { status: 409 }
    }
    w.rows.set(op, op)
    w.appliedAt = h.now()
    w.history.push(`${op}@${w.appliedAt}`)
    this.host.log(`${this.name} ${op} ${branch} takes effect (${w.resource})`)
    if (h.faultsOn() && h.rng.chance(this.faults.failAfterWork)) return { status: 503 }
    return this.workAnswer(w, op)
  }

  private workAnswer(w: StepWork, op: 'action' | 'try'): AppAnswer {
    const headers = ['content-type', 'application/json']
    if (op === 'action') headers.push(COMPENSATE_HEADER, `DELETE /things/${w.resource}`)
    return { status: 200, text: JSON.stringify({ id: w.resource }), headers }
  }

  private undo(w: StepWork, branch: string, op: 'compensate' | 'cancel'): AppAnswer {
    const h = this.host
    const origin = op === 'compensate' ? 'action' : 'try'
    w.firstUndoAt ??= h.now()
    if (w.rows.has(op)) {
      this.stats.duplicateDeliveries++
      return { status: w.undoneAt === undefined ? 404 : 200 }
    }
    if (w.confirmedAt !== undefined) {
      this.host.violation(`${this.name}: cancel of ${branch} after it was confirmed`)
      return { status: 409 }
    }
    w.rows.set(op, op)
    if (!w.rows.has(origin)) {
      // Empty: the work never ran; mark it so a late delivery of it is refused.
      w.rows.set(origin, op)
      this.stats.emptyUndos++
      w.history.push(`${op} empty`)
      return { status: 404 }
    }
    w.undoneAt = h.now()
    w.history.push(`${op}@${w.undoneAt}`)
    this.host.log(`${this.name} ${op} ${branch} takes effect`)
    return { status: 200 }
  }

  private confirm(w: StepWork, branch: string): AppAnswer {
    if (w.rows.has('confirm')) {
      this.stats.duplicateDeliveries++
      return { status: w.confirmedAt === undefined ? 404 : 200 }
    }
    if (w.rows.has('cancel')) {
      this.host.violation(`${this.name}: confirm of ${branch} after it was cancelled`)
      return { status: 409 }
    }
    if (w.rows.get('try') !== 'try') return { status: 404 }
    w.rows.set('confirm', 'confirm')
    w.confirmedAt = this.host.now()
    w.history.push(`confirm@${w.confirmedAt}`)
    this.host.log(`${this.name} confirm ${branch} takes effect`)
    return { status: 200 }
  }
}

function isOp(v: string | undefined): v is StepOpKind {
  return v === 'action' || v === 'try' || v === 'compensate' || v === 'confirm' || v === 'cancel'
}
