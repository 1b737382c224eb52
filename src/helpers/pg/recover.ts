// After an app restart (or for a sibling whose instance died after preparing), prepared
// transactions of this service wait in pg_prepared_xacts. Each one is driven to the outcome
// the local sidecar reports (DESIGN.md "Commit protocol": participants ask for the outcome of
// every prepared branch after a restart). In-doubt rows are left alone: only the coordinator may
// decide them, and Postgres keeps them (with their locks) until someone does.
import type { Pool, PoolClient } from 'pg'
import { Agent, request } from 'undici'
import { fullJitterMs } from '../../backoff.js'
import { messageOf, sqlstateOf } from './errors.js'
import { gidLiteral, gidPrefix, parseGid } from './gid.js'
import { PG_HELPER_LIMITS as L } from './limits.js'
import type { Emit } from './events.js'

export interface RecoverResult {
  /** Prepared rows committed (or found already committed by someone else meanwhile). */
  committed: number
  /** Prepared rows rolled back (or found already gone meanwhile). */
  aborted: number
  /** Rows left prepared: outcome in doubt, the sidecar unreachable, or finishing failed. */
  inDoubt: number
}

type Outcome =
  { readonly kind: 'committed' } | { readonly kind: 'aborted' } | { readonly kind: 'in-doubt'; readonly reason: string }

export interface RecoverContext {
  readonly pool: Pool
  readonly service: string
  readonly sidecarAdmin: string
  /** Bearer token of the sidecar's admin API, when it has one. */
  readonly adminToken: string | undefined
  readonly emit: Emit
  readonly withConnection: <T>(fn: (c: PoolClient) => Promise<T>) => Promise<T>
  /** Only rows prepared at least this long ago (0: all; the periodic sweep passes its interval). */
  readonly minAgeMs?: number
}

export async function recoverPrepared(ctx: RecoverContext): Promise<RecoverResult> {
  const prefix = gidPrefix(ctx.service)
  // left()/length() rather than LIKE: '_' in a service name would be a LIKE wildcard.
  const { rows } = await ctx.withConnection((c) =>
    c.query<{ gid: string }>(
      "SELECT gid FROM pg_prepared_xacts WHERE database = current_database() AND left(gid, length($1)) = $1 AND prepared <= now() - $2 * interval '1 millisecond' ORDER BY prepared",
      [prefix, ctx.minAgeMs ?? 0],
    ),
  )
  const result: RecoverResult = { committed: 0, aborted: 0, inDoubt: 0 }
  if (rows.length === 0) return result

  // Its own dispatcher: the app may route undici's global one through HTTP_PROXY (the egress),
  // and the admin listener is local.
  const agent = new Agent({
    connect: { timeout: L.recoverCallTimeoutMs },
    headersTimeout: L.recoverCallTimeoutMs,
    bodyTimeout: L.recoverCallTimeoutMs,
  })
  try {
    // One row at a time: recovery is rare and the sidecar may itself be recovering.
    for (const { gid } of rows) {
      const ids = parseGid(ctx.service, gid)
      if (ids === undefined) {
        result.inDoubt++
        ctx.emit({
          event: 'recover_in_doubt',
          gid,
          message: 'gid has the service prefix but not the txmesh format; left alone',
        })
        continue
      }
      const outcome = await fetchOutcome(agent, ctx.sidecarAdmin, ctx.adminToken, ids.txId, ids.branchId)
      if (outcome.kind === 'in-doubt') {
        result.inDoubt++
        ctx.emit({ event: 'recover_in_doubt', gid, message: outcome.reason })
        continue
      }
      const sql = `${outcome.kind === 'committed' ? 'COMMIT' : 'ROLLBACK'} PREPARED ${gidLiteral(gid)}`
      try {
        await ctx.withConnection((c) => c.query(sql))
      } catch (err) {
        // 42704: finished meanwhile (by the sidecar's phase-2 call through the hooks, or a
        // sibling's recover); the row reached the outcome either way.
        if (sqlstateOf(err) !== '42704') {
          result.inDoubt++
          ctx.emit({ event: 'recover_error', gid, message: `${sql.split(' ', 2).join(' ')} failed: ${messageOf(err)}` })
          continue
        }
      }
      if (outcome.kind === 'committed') result.committed++
      else result.aborted++
      ctx.emit({ event: outcome.kind === 'committed' ? 'recover_committed' : 'recover_aborted', gid })
    }
  } finally {
    await agent.close().catch(() => undefined)
  }
  return result
}

async function fetchOutcome(
  agent: Agent,
  admin: string,
  token: string | undefined,
  txId: string,
  branchId: string,
): Promise<Outcome> {
  const url = `${admin}/v1/branches/${encodeURIComponent(txId)}/${encodeURIComponent(branchId)}/outcome`
  let last = 'no attempt'
  for (let attempt = 1; attempt <= L.recoverAttempts; attempt++) {
    if (attempt > 1) await sleep(backoff(attempt - 1))
    try {
      const res = await request(url, {
        method: 'GET',
        headers: { accept: 'application/json', ...(token === undefined ? {} : { authorization: `Bearer ${token}` }) },
        dispatcher: agent,
        signal: AbortSignal.timeout(L.recoverCallTimeoutMs),
      })
      const text = await readBounded(res.body, L.maxOutcomeBodyBytes)
      if (res.statusCode === 200) return parseOutcome(text)
      last = `sidecar answered ${res.statusCode}`
      // 5xx and 429 are passing states (sidecar starting, overloaded); anything else is final.
      if (res.statusCode < 500 && res.statusCode !== 429)
        return { kind: 'in-doubt', reason: `${last}: ${text.slice(0, 200)}` }
    } catch (err) {
      last = `sidecar unreachable at ${admin}: ${messageOf(err)}`
    }
  }
  return { kind: 'in-doubt', reason: `${last} (after ${L.recoverAttempts} attempts)` }
}

function parseOutcome(text: string): Outcome {
  let value: unknown
  try {
    value = JSON.parse(text)
  } catch {
    return { kind: 'in-doubt', reason: 'sidecar answered invalid JSON' }
  }
  const outcome =
    typeof value === 'object' && value !== null && 'outcome' in value
      ? (value as { outcome: unknown }).outcome
      : undefined
  if (outcome === 'committed') return { kind: 'committed' }
  if (outcome === 'aborted') return { kind: 'aborted' }
  if (outcome === 'in-doubt') return { kind: 'in-doubt', reason: 'the coordinator has not decided yet' }
  return { kind: 'in-doubt', reason: `sidecar answered an unknown outcome ${JSON.stringify(outcome)}` }
}

async function readBounded(
  body: AsyncIterable<Uint8Array> & { destroy(err?: Error): unknown },
  max: number,
): Promise<string> {
  const chunks: Buffer[] = []
  let n = 0
  for await (const chunk of body) {
    n += chunk.byteLength
    if (n > max) {
      body.destroy()
      throw new Error(`answer over ${max} bytes`)
    }
    chunks.push(Buffer.from(chunk))
  }
  return Buffer.concat(chunks).toString('utf8')
}

/** Capped exponential backoff with full jitter (as the sidecar's retries). */
function backoff(retry: number): number {
  return fullJitterMs(retry + 1, L.recoverBackoffBaseMs, L.recoverBackoffCapMs, Math.random)
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms))
}
