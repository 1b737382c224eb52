// Types shared by the pure protocol core (coordinator and participant state machines) and the
// drivers that perform its actions. DESIGN.md "Commit protocol": presumed-abort 2PC; the
// coordinator force-writes one decision record (participants + COMMIT) before phase 2; absence
// of a record means abort; participants force-write PREPARED before voting yes.
//
// The machines are pure: `(state, event, env) => { state, actions }`. No I/O, no Date.now(), no
// Math.random(): `env` carries the clock and the RNG so a simulation can replay any schedule.

export type TxId = string
export type BranchId = string
export type Outcome = 'committed' | 'aborted'

/** A participant is a sidecar instance (its control address), not a service name. */
export interface ParticipantRef {
  readonly service: string
  /** host:port of the participant sidecar's control listener. */
  readonly control: string
  readonly branch: BranchId
  /**
   * TCC step refs: the log incarnation of the sidecar that ran the try, so a confirm or cancel
   * reaching another sidecar at that address (a reused pod IP) is refused there, never "done".
   */
  readonly holder?: string
}

export type Vote =
  { readonly kind: 'prepared' } | { readonly kind: 'read-only' } | { readonly kind: 'refused'; readonly reason: string }

export interface Env {
  /** Milliseconds, monotonic enough for deadlines and backoff. */
  readonly now: number
  /** Uniform in [0, 1). */
  readonly random: () => number
}

export interface Transition<S, A> {
  readonly state: S
  readonly actions: readonly A[]
}

// ---------------------------------------------------------------------------------------------
// Coordinator: one state per transaction, held by the initiator's sidecar.

export type CoordinatorStatus = 'active' | 'preparing' | 'committing' | 'aborting' | 'committed' | 'aborted'

export interface CoordinatorParticipant {
  readonly ref: ParticipantRef
  /** undefined until the participant answered prepare. */
  readonly vote: Vote | undefined
  /** Phase 2 acknowledged (or nothing to send: read-only). */
  readonly acked: boolean
  /** Phase-2 sends so far (for backoff). */
  readonly attempts: number
  /**
   * The participant answered phase 2 with the other outcome (an operator resolved it by hand
   * before the decision reached it): a heuristic outcome. It counts as finished, not as agreeing.
   */
  readonly heuristic?: Outcome
}

export interface CoordinatorState {
  readonly id: TxId
  readonly deadline: number
  readonly status: CoordinatorStatus
  readonly participants: readonly CoordinatorParticipant[]
  /** COMMIT decision durable in the log. */
  readonly decisionLogged: boolean
  /** Why it aborted, when it did. */
  readonly reason: string | undefined
  /**
   * One-phase commit (exactly one participant at commit-requested): the participant decides and
   * the coordinator logs nothing; while it waits (`committing`, decision not logged) the
   * outcome is unknown to it.
   */
  readonly onePhase: boolean
  /**
   * Messages are attached: a commit must leave a durable decision record (they are published
   * from it), so no one-phase commit and a record even with nothing to prepare.
   */
  readonly mustLog: boolean
}

export type CoordinatorEvent =
  | { readonly type: 'enlist'; readonly participants: readonly ParticipantRef[] }
  | { readonly type: 'must-log' }
  | { readonly type: 'commit-requested' }
  | { readonly type: 'abort-requested'; readonly reason: string }
  /** Answer to send-prepare. A failed/timed-out prepare arrives as a refused vote. */
  | { readonly type: 'vote'; readonly branch: BranchId; readonly vote: Vote }
  | { readonly type: 'decision-logged' }
  /** The log refused the COMMIT record before writing anything (too large, queue full): abort. */
  | { readonly type: 'decision-refused'; readonly reason: string }
  /**
   * Answer to send-commit / send-abort: the participant finished the branch, with `outcome` when
   * it said which (an outcome other than the decision is a heuristic one).
   */
  | { readonly type: 'ack'; readonly branch: BranchId; readonly outcome?: Outcome }
  /** A phase-2 send failed (unreachable, 5xx, timeout): the machine schedules a retry. */
  | { readonly type: 'send-failed'; readonly branch: BranchId }
  | { readonly type: 'retry-due'; readonly branch: BranchId }
  /** The transaction's deadline passed (driver timer). */
  | { readonly type: 'deadline' }
  /**
   * Answer to send-commit-one-phase: the participant decided and finished its branch. A failed
   * or timed-out call arrives as send-failed (the outcome is unknown until the participant answers).
   */
  | { readonly type: 'one-phase-result'; readonly branch: BranchId; readonly outcome: Outcome }

export type CoordinatorAction =
  | { readonly type: 'send-prepare'; readonly to: ParticipantRef }
  /** The only participant prepares and commits on its own and answers with the outcome. */
  | { readonly type: 'send-commit-one-phase'; readonly to: ParticipantRef }
  /** Force-write the COMMIT decision with the participants that must hear it; then feed decision-logged. */
  | { readonly type: 'log-decision'; readonly participants: readonly ParticipantRef[] }
  | { readonly type: 'send-commit'; readonly to: ParticipantRef }
  | { readonly type: 'send-abort'; readonly to: ParticipantRef }
  | { readonly type: 'schedule-retry'; readonly branch: BranchId; readonly delayMs: number }
  /** Every participant acknowledged: an END record may be written lazily and the state dropped. */
  | { readonly type: 'log-end' }
  /** The outcome is known (and, for commit, durable): answer whoever waits on it. */
  | { readonly type: 'outcome'; readonly outcome: Outcome; readonly reason?: string }
  /** A participant finished its branch the other way (heuristic mixed): report it. */
  | { readonly type: 'heuristic'; readonly to: ParticipantRef; readonly outcome: Outcome }

// ---------------------------------------------------------------------------------------------
// Participant: one state per branch, held by the sidecar of the instance that did the work.

export type ParticipantStatus =
  | 'active' // the business request ran; no prepare yet
  | 'recording' // PREPARING being force-written, before the app is asked to prepare
  | 'preparing' // asked the app to prepare
  | 'logging' // app voted yes; PREPARED being force-written
  | 'prepared' // voted yes; waits for the decision
  | 'committing' // asked the app to commit
  | 'aborting' // asked the app to abort
  | 'committed'
  | 'aborted'

export interface ParticipantState {
  readonly tx: TxId
  readonly branch: BranchId
  /** host:port of the coordinator's control listener. */
  readonly coordinator: string
  readonly deadline: number
  readonly status: ParticipantStatus
  /** Vote given (answer to duplicate prepares). */
  readonly vote: Vote | undefined
  /** App hook or outcome-query attempts so far (for backoff). */
  readonly attempts: number
  /**
   * One-phase commit: this branch is the transaction's only participant and decides itself.
   * Once PREPARED(onePhase) is durable it has decided commit and never asks anyone; once
   * committed it keeps that record until the coordinator no longer waits for its answer.
   */
  readonly onePhase: boolean
}

export type ParticipantEvent =
  | { readonly type: 'prepare' }
  /** The coordinator's one-phase commit: prepare, decide and finish alone; answer with the outcome. */
  | { readonly type: 'commit-one-phase' }
  | { readonly type: 'app-voted'; readonly vote: Vote }
  /** PREPARING is durable (or could not be written: `ok` false): the app may now be asked to prepare. */
  | { readonly type: 'preparing-logged'; readonly ok: boolean }
  | { readonly type: 'prepared-logged' }
  /** Decision from the coordinator (message or outcome-query answer). */
  | { readonly type: 'decision'; readonly outcome: Outcome }
  /** The app's commit/abort hook succeeded (2xx or 404). */
  | { readonly type: 'app-done' }
  /** The app's commit/abort hook failed (5xx, unreachable, timeout): retry later. */
  | { readonly type: 'app-failed' }
  /** Outcome query found no answer yet (coordinator unreachable or still deciding). */
  | { readonly type: 'outcome-unknown' }
  | { readonly type: 'retry-due' }
  | { readonly type: 'deadline' }

export type ParticipantAction =
  | { readonly type: 'call-app'; readonly hook: 'prepare' | 'commit' | 'abort' }
  /**
   * Force-write PREPARING(tx, branch, coordinator[, onePhase]) before the app is asked to
   * prepare; then feed preparing-logged. A branch found with only this record never voted yes.
   */
  | { readonly type: 'log-preparing' }
  /** Force-write PREPARED(tx, branch, coordinator[, onePhase]); then feed prepared-logged. */
  | { readonly type: 'log-prepared' }
  /** Answer the coordinator's pending prepare(s). */
  | { readonly type: 'reply-vote'; readonly vote: Vote }
  /** Answer the coordinator's pending commit/abort(s): branch finished with this outcome. */
  | { readonly type: 'reply-done'; readonly outcome: Outcome }
  /**
   * Ask the coordinator for the outcome (after a restart, or prepared past the deadline). A
   * committed one-phase branch asks too: any answer but "unknown" means the coordinator no
   * longer waits for it, so the branch may be forgotten.
   */
  | { readonly type: 'query-outcome' }
  | { readonly type: 'schedule-retry'; readonly delayMs: number }
  /** The branch is finished: an END record may be written lazily and the state dropped. */
  | { readonly type: 'log-end'; readonly outcome: Outcome }
