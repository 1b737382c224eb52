// What the coordinator drivers (2PC and saga/tcc) share about transactional messages: the
// per-transaction bounds, their publication once a commit is durable, and keeping the decision
// record until the bus has them (a restart publishes again what it finds).
import assert from 'node:assert/strict'
import { MessageTooLargeError, TxLimitError, TxNotActiveError, TxUnknownError, type TxmeshError } from '../errors.js'
import type { TxMessage } from '../events/types.js'
import { LIMITS } from '../limits.js'
import type { TxLog } from '../store/types.js'
import type { TxId } from './core.js'
import type { Timers } from './io.js'

// The messages and the rest of a decision record always fit one log record, so a commit never
// finds its record too large (it would abort: src/tx/*/driver.ts, "decision refused").
assert(
  LIMITS.maxMessageTotalBytes + LIMITS.decisionRecordRestBytes <= LIMITS.logMaxRecordBytes,
  'messages and the rest of a decision record must fit a log record',
)

export interface MessageHolder {
  readonly messages: TxMessage[]
  /** Bytes of the messages as the decision record stores them (JSON, with their separators). */
  messageBytes: number
  /** Publication of the messages; the decision record is ended only after it. */
  publishing: Promise<void> | undefined
}

/** `traceparent`: the transaction's trace (W3C), carried by each message to its subscribers. */
export type Publish = (id: TxId, messages: readonly TxMessage[], traceparent?: string) => Promise<void>

/**
 * Adds a message to a transaction that is still active; the count after, or why not. Its size is
 * counted as the decision record will store it, not as the request carried it: the record
 * serializes the parsed message again, and JSON can grow on the way (a request's 1e20 is stored
 * as 100000000000000000000).
 */
export function addMessage(
  id: TxId,
  holder: (MessageHolder & { readonly state: { readonly status: string } }) | undefined,
  m: TxMessage,
): TxmeshError | number {
  if (holder === undefined) return new TxUnknownError(`transaction ${id} is not coordinated here`)
  if (holder.state.status !== 'active')
    return new TxNotActiveError(`transaction ${id} is ${holder.state.status}; messages attach before commit`)
  if (holder.messages.length >= LIMITS.maxMessagesPerTx)
    return new TxLimitError(`transaction ${id} holds its maximum of ${LIMITS.maxMessagesPerTx} messages`)
  // + 1: the comma that separates it from the others in the record's list.
  const bytes = Buffer.byteLength(JSON.stringify(m)) + 1
  if (bytes > LIMITS.maxMessageBytes)
    return new MessageTooLargeError(
      `the message is ${bytes} bytes as stored in the transaction's record; the limit is ${LIMITS.maxMessageBytes}`,
    )
  if (holder.messageBytes + bytes > LIMITS.maxMessageTotalBytes) {
    return new MessageTooLargeError(
      `transaction ${id} holds ${holder.messageBytes} bytes of messages; this one (${bytes} bytes stored) would take it past ${LIMITS.maxMessageTotalBytes}`,
    )
  }
  holder.messages.push(m)
  holder.messageBytes += bytes
  return holder.messages.length
}

/** The commit is durable: publish the messages (once). */
export function startPublishing(
  id: TxId,
  holder: MessageHolder,
  publish: Publish | undefined,
  traceparent?: string,
): void {
  if (holder.messages.length > 0 && publish !== undefined)
    holder.publishing ??= publish(id, holder.messages, traceparent)
}

/** Ends the decision record, after the messages are on the bus when there are any. */
export function endAfterPublishing(log: TxLog, key: string, holder: MessageHolder): void {
  if (holder.publishing === undefined) log.end(key)
  else void holder.publishing.then(() => log.end(key))
}

/** Waits until `register`'s callback runs, or `ms` at most (a bounded wait for an answer). */
export async function waitAtMost(timers: Timers, register: (done: () => void) => void, ms: number): Promise<void> {
  let timer: object | undefined
  await Promise.race([
    new Promise<void>((resolve) => register(resolve)),
    new Promise<void>((resolve) => (timer = timers.set(resolve, ms))),
  ])
  timers.clear(timer)
}
