// The inbox of a subscriber (txm.inbox): a delivered message's effect and a row naming the message
// commit in one local transaction, so the effect happens once per message id and subscription in
// this database however often the message is delivered (delivery is at least once: a sidecar or
// app killed between the effect and the ack delivers it again).
//   first delivery: the row is inserted, fn runs, its answer is stored in the row; all commit.
//   redelivery: the row is there, fn is skipped, the stored answer is returned.
//   two deliveries at once: the second's INSERT waits on the primary key until the first commits
//     (then it is a redelivery) or rolls back (then it runs).
// Not guaranteed: effects outside this transaction (a call to another service, a file), and
// once-ness across databases or after the row is deleted.
import type { IncomingMessage } from 'node:http'
import type { PoolClient } from 'pg'
import { PgBadIdError } from './errors.js'
import { PG_HELPER_LIMITS as L } from './limits.js'
import { createTableOnce, runLocal, sql } from './barrier.js'

/** Request headers the sidecar sets on a subscription's delivery (src/events/subscriber.ts). */
export const MESSAGE_ID_HEADER = 'txmesh-message-id'
export const SUBSCRIPTION_HEADER = 'txmesh-subscription'

export const INBOX_TABLE = 'txmesh_inbox'

const CREATE_TABLE = `CREATE TABLE IF NOT EXISTS ${INBOX_TABLE} (
  subscription text NOT NULL,
  message_id text NOT NULL,
  answer jsonb,
  created_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (subscription, message_id)
)`
const INSERT_ROW = `INSERT INTO ${INBOX_TABLE} (subscription, message_id) VALUES ($1, $2) ON CONFLICT DO NOTHING`
const STORE_ANSWER = `UPDATE ${INBOX_TABLE} SET answer = $3::jsonb WHERE subscription = $1 AND message_id = $2`
const SELECT_ANSWER = `SELECT answer FROM ${INBOX_TABLE} WHERE subscription = $1 AND message_id = $2`

export interface InboxIds {
  readonly subscription: string
  readonly messageId: string
}

/** `ran: false`: a redelivery; `value` is what the first run returned (as JSON stored it). */
export type InboxResult<T> =
  { readonly ran: true; readonly value: T } | { readonly ran: false; readonly value: unknown }

// Message ids: `<tx id>:m<index>` from txmesh's outbox, `<stream>:<sequence>` otherwise.
const MESSAGE_ID = new RegExp(`^[A-Za-z0-9_.:-]{1,${L.inboxIdChars}}$`)
const SUBSCRIPTION = /^[a-z0-9]([a-z0-9-]{0,46}[a-z0-9])?$/

/** Validated ids, from the delivery's headers or given. Throws PgBadIdError (400). */
export function inboxIds(from: IncomingMessage | InboxIds): InboxIds {
  const raw: { subscription: unknown; messageId: unknown } =
    'headers' in from
      ? { subscription: from.headers[SUBSCRIPTION_HEADER], messageId: from.headers[MESSAGE_ID_HEADER] }
      : from
  const check = (name: string, v: unknown, re: RegExp): string => {
    if (typeof v === 'string' && re.test(v)) return v
    const got = v === undefined ? 'nothing' : JSON.stringify(String(v).slice(0, L.echoChars))
    throw new PgBadIdError(`${name} must match ${re.source}, got ${got}`)
  }
  return {
    subscription: check(SUBSCRIPTION_HEADER, raw.subscription, SUBSCRIPTION),
    messageId: check(MESSAGE_ID_HEADER, raw.messageId, MESSAGE_ID),
  }
}

export function createInboxTable(c: PoolClient): Promise<void> {
  return createTableOnce(c, INBOX_TABLE, CREATE_TABLE)
}

/** The inbox row and `fn` in one local transaction (see the top of this file). */
export function runInbox<T>(
  connect: () => Promise<PoolClient>,
  ids: InboxIds,
  fn: (client: PoolClient) => Promise<T>,
): Promise<InboxResult<T>> {
  return runLocal(connect, 'the inbox', async (c): Promise<InboxResult<T>> => {
    const key = [ids.subscription, ids.messageId]
    const inserted = (await sql(() => c.query(INSERT_ROW, key), 'inbox')).rowCount === 1
    if (!inserted) {
      const r = await sql(() => c.query<{ answer: unknown }>(SELECT_ANSWER, key), 'inbox')
      return { ran: false, value: r.rows[0]?.answer ?? null }
    }
    const value = await fn(c)
    const text = JSON.stringify(value ?? null)
    // An answer too large to keep is not kept: a redelivery then answers null (the effect is still once).
    await sql(() => c.query(STORE_ANSWER, [...key, text.length <= L.inboxAnswerChars ? text : 'null']), 'inbox')
    return { ran: true, value }
  })
}
