// Every record the sidecar writes to its log, in one place: the key each lives under, how it is
// made (the encoders the drivers write with) and how replay reads it back (decodeRecord, the only
// place that looks at a replayed body's fields). The log itself (src/wal/file-log.ts) stores
// `(key, JSON body)` pairs and knows nothing of them.
//
//   key                     record                                  written
//   i:log                   incarnation {id, at}                    once, when the log is created (src/wal/incarnation.ts)
//   c:<tx>                  decision {mode, participants, ...}      2PC COMMIT, forced; END when phase 2 is done
//   p:<tx>:<branch>         joined | preparing | prepared           a branch's identity, forced (prepared = voted yes)
//                           resolved {outcome, by, at, forced?}     an operator's decision, forced before it is carried out
//                           end {outcome, resolved?}                a committed (or resolved) branch is done, forced
//   s:<tx>                  step {mode, step}                       saga/TCC step intent and resolution, forced
//                           decision {outcome, messages?}           saga/TCC COMMIT forced, abort lazy
//                           step-done {step}                        a step's op is finished, lazy
//   e:<tx>                  event {event}                           transaction events for the bus (src/events/outbox.ts)
import type { TxMessage } from '../events/types.js'
import type { BranchId, Outcome, ParticipantRef, TxId } from './core.js'
import type { TxMode } from './protocol.js'
import type { StepMode, StepRecord } from './saga/machine.js'

export const KEY_PREFIX = { coordinator: 'c:', participant: 'p:', steps: 's:', events: 'e:' } as const
export const INCARNATION_KEY = 'i:log'

export const coordinatorKey = (tx: TxId): string => `${KEY_PREFIX.coordinator}${tx}`
export const participantKey = (tx: TxId, branch: BranchId): string => `${KEY_PREFIX.participant}${tx}:${branch}`
export const stepsKey = (tx: TxId): string => `${KEY_PREFIX.steps}${tx}`
export const eventsKey = (tx: string): string => `${KEY_PREFIX.events}${tx}`

export interface IncarnationRecord {
  readonly type: 'incarnation'
  readonly id: string
  readonly at: string
}

export interface DecisionRecord {
  readonly type: 'decision'
  readonly mode: TxMode
  readonly participants: readonly ParticipantRef[]
  readonly messages?: readonly TxMessage[]
  /** The transaction's span, so recovery links its new span to the original trace. */
  readonly traceparent?: string
}

/** What recovery needs to rebuild a branch; `type` says how far it got. */
export interface BranchRecord {
  readonly type: 'joined' | 'preparing' | 'prepared'
  readonly tx: TxId
  readonly branch: BranchId
  readonly coordinator: string
  readonly deadline: number
  /** The signed context the branch joined with (passed to the app's hooks). */
  readonly context: string
  readonly onePhase?: true
}

export interface ResolvedRecord {
  readonly type: 'resolved'
  readonly outcome: Outcome
  readonly by: string
  readonly at: string
  readonly forced?: true
}

export interface BranchEndRecord {
  readonly type: 'end'
  readonly outcome: Outcome
  /** Ended by an operator's resolution: the records stay until the coordinator hears it. */
  readonly resolved?: true
}

export interface StepEntryRecord {
  readonly type: 'step'
  readonly mode: StepMode
  readonly step: StepRecord
}

export interface StepDecisionRecord {
  readonly type: 'decision'
  readonly outcome: Outcome
  readonly messages?: readonly TxMessage[]
}

export interface StepDoneRecord {
  readonly type: 'step-done'
  readonly step: BranchId
}

export interface EventRecord {
  readonly type: 'event'
  readonly event: Readonly<Record<string, unknown>>
}

/** A replayed record, by the part of the sidecar that wrote it. */
export type LogRecord =
  | { readonly kind: 'incarnation'; readonly record: IncarnationRecord }
  | { readonly kind: 'coordinator'; readonly tx: TxId; readonly record: DecisionRecord }
  | {
      readonly kind: 'participant'
      readonly key: string
      readonly record: BranchRecord | ResolvedRecord | BranchEndRecord
    }
  | {
      readonly kind: 'steps'
      readonly tx: TxId
      readonly record: StepEntryRecord | StepDecisionRecord | StepDoneRecord
    }
  | { readonly kind: 'events'; readonly tx: string; readonly record: EventRecord }

type Body = Readonly<Record<string, unknown>>

const isObject = (v: unknown): v is Body => typeof v === 'object' && v !== null && !Array.isArray(v)
const isOutcome = (v: unknown): v is Outcome => v === 'committed' || v === 'aborted'
const isString = (v: unknown): v is string => typeof v === 'string'

function isRef(v: unknown): v is ParticipantRef {
  return (
    isObject(v) &&
    isString(v.service) &&
    isString(v.control) &&
    isString(v.branch) &&
    (v.holder === undefined || isString(v.holder))
  )
}

function isMessages(v: unknown): v is readonly TxMessage[] {
  return Array.isArray(v) && v.every((m) => isObject(m) && isString(m.topic))
}

function isStep(v: unknown): v is StepRecord {
  return isObject(v) && isString(v.id) && isString(v.service) && isString(v.target)
}

/**
 * The record a replayed `(key, body)` is, or undefined when it is none the sidecar writes (another
 * version's, or damaged in a way the log's checksum cannot see): callers skip it.
 */
export function decodeRecord(key: string, body: Body): LogRecord | undefined {
  if (key === INCARNATION_KEY)
    return body.type === 'incarnation' && isString(body.id)
      ? { kind: 'incarnation', record: { type: 'incarnation', id: body.id, at: isString(body.at) ? body.at : '' } }
      : undefined
  const prefix = key.slice(0, 2)
  const rest = key.slice(2)
  switch (prefix) {
    case KEY_PREFIX.coordinator: {
      if (body.type !== 'decision' || !Array.isArray(body.participants) || !body.participants.every(isRef))
        return undefined
      const record: DecisionRecord = {
        type: 'decision',
        mode: body.mode === 'saga' || body.mode === 'tcc' ? body.mode : '2pc',
        participants: body.participants,
        ...(isMessages(body.messages) ? { messages: body.messages } : {}),
        ...(isString(body.traceparent) ? { traceparent: body.traceparent } : {}),
      }
      return { kind: 'coordinator', tx: rest, record }
    }
    case KEY_PREFIX.participant: {
      const record = decodeParticipant(body)
      return record === undefined ? undefined : { kind: 'participant', key, record }
    }
    case KEY_PREFIX.steps: {
      const record = decodeSteps(body)
      return record === undefined ? undefined : { kind: 'steps', tx: rest, record }
    }
    case KEY_PREFIX.events:
      return body.type === 'event' && isObject(body.event)
        ? { kind: 'events', tx: rest, record: { type: 'event', event: body.event } }
        : undefined
  }
  return undefined
}

function decodeParticipant(b: Body): BranchRecord | ResolvedRecord | BranchEndRecord | undefined {
  switch (b.type) {
    case 'joined':
    case 'preparing':
    case 'prepared':
      if (
        !isString(b.tx) ||
        !isString(b.branch) ||
        !isString(b.coordinator) ||
        typeof b.deadline !== 'number' ||
        !isString(b.context)
      )
        return undefined
      return {
        type: b.type,
        tx: b.tx,
        branch: b.branch,
        coordinator: b.coordinator,
        deadline: b.deadline,
        context: b.context,
        ...(b.onePhase === true ? { onePhase: true } : {}),
      }
    case 'resolved':
      if (!isOutcome(b.outcome)) return undefined
      return {
        type: 'resolved',
        outcome: b.outcome,
        by: isString(b.by) ? b.by : '',
        at: isString(b.at) ? b.at : '',
        ...(b.forced === true ? { forced: true } : {}),
      }
    case 'end':
      // An END's outcome was not always written: committed is what a durable END meant.
      return {
        type: 'end',
        outcome: isOutcome(b.outcome) ? b.outcome : 'committed',
        ...(b.resolved === true ? { resolved: true } : {}),
      }
  }
  return undefined
}

function decodeSteps(b: Body): StepEntryRecord | StepDecisionRecord | StepDoneRecord | undefined {
  switch (b.type) {
    case 'step':
      return isStep(b.step) ? { type: 'step', mode: b.mode === 'tcc' ? 'tcc' : 'saga', step: b.step } : undefined
    case 'decision':
      return isOutcome(b.outcome)
        ? { type: 'decision', outcome: b.outcome, ...(isMessages(b.messages) ? { messages: b.messages } : {}) }
        : undefined
    case 'step-done':
      return isString(b.step) ? { type: 'step-done', step: b.step } : undefined
  }
  return undefined
}

/** Decodes a replay in order, skipping what is not a sidecar record. */
export function decodeRecords(records: readonly { readonly txId: string; readonly body: Body }[]): LogRecord[] {
  const out: LogRecord[] = []
  for (const r of records) {
    const d = decodeRecord(r.txId, r.body)
    if (d !== undefined) out.push(d)
  }
  return out
}

/** Transactions whose COMMIT decision is in the log (2PC, or saga/TCC committed). */
export function committedIn(records: readonly LogRecord[]): string[] {
  const out: string[] = []
  for (const r of records) {
    if (
      r.kind === 'coordinator' ||
      (r.kind === 'steps' && r.record.type === 'decision' && r.record.outcome === 'committed')
    )
      out.push(r.tx)
  }
  return out
}

/** Every record the sidecar writes. */
export type WrittenRecord =
  | IncarnationRecord
  | DecisionRecord
  | BranchRecord
  | ResolvedRecord
  | BranchEndRecord
  | StepEntryRecord
  | StepDecisionRecord
  | StepDoneRecord
  | EventRecord

/** The body of a record, as the log stores it (JSON). */
export const body = (r: WrittenRecord): Record<string, unknown> => r as unknown as Record<string, unknown>
