// Takeover (config `store: {kind: postgres}`): the sibling instances of a service share one store,
// and each looks, every LIMITS.pgLeaseScanMs, for logs of its service whose lease has lapsed (an
// instance killed, paused or partitioned away) and that still hold unfinished coordinator work:
// COMMIT decisions whose phase 2 is not acknowledged, sagas and TCC transactions being finished,
// events not yet delivered. It claims such a log atomically (token + 1, holder = itself; the row
// lock serializes the claim with the old holder's writes, so every decision the old holder made
// durable is in what the claimer reads, and every write it tries later is refused), runs the
// shipped drivers' recovery on the log's records, renews the log's lease as its own, and gives the
// log up once nothing of that work is left. Participant records (branches of the dead instance's
// own app) stay for that instance: only its app can finish them.
//
// Outcome answers for the group (store.group, DESIGN.md "Coordinator identity"). A branch whose
// coordinator cannot be reached asks the group address, and any live instance answers from the
// store (outcomeFor): for an id of a log it finishes, with that log's drivers; for a log whose
// lease has lapsed, it claims the log first (fencing its old holder, so no COMMIT decision can be
// added to it any more) and then answers as the log's coordinator would, presumed abort included;
// for a log a live instance holds, in doubt, naming that instance's control address as the owner
// (a participant asks there next: it learns who took its coordinator's work over from the answer,
// not from configuration). An id whose incarnation no log of the service has is not the group's
// to answer.
import pg from 'pg'
import { failpoint } from '../failpoints.js'
import { LIMITS } from '../limits.js'
import type { Logger } from '../telemetry/logger.js'
import { nodeTimers, type Timer, type Timers } from '../timers.js'
import { INCARNATION_KEY, KEY_PREFIX } from '../tx/records.js'
import { incarnationOfTx } from '../tx/protocol.js'
import type { KubeLeases } from './kube-lease.js'
import { bumpToken, PgLog } from './pg-log.js'
import type { LogEntry } from './types.js'

/** Record key prefixes of the work a sibling finishes: coordinator decisions, saga/TCC steps, events. */
export const TAKEN_PREFIXES: readonly string[] = [KEY_PREFIX.coordinator, KEY_PREFIX.steps, KEY_PREFIX.events]

export interface TakeoverOptions {
  readonly url: string
  readonly schema: string
  readonly service: string
  /** This instance's name: the holder of what it claims. */
  readonly instance: string
  /** This instance's control address (as peers reach it): named as the owner of what it claims. */
  readonly address?: string
  readonly leaseMs: number
  /** store.lease kubernetes: lapse and claims on the logs' Kubernetes Leases (the token still fences). */
  readonly kube?: KubeLeases
  readonly logger: Logger
  readonly timers?: Timers
  /**
   * Starts the drivers that finish a claimed log from its records (only those under
   * TAKEN_PREFIXES, and the incarnation); returns how to stop them.
   */
  readonly adopt: (log: PgLog, records: readonly LogEntry[], taken: TakenFrom) => Promise<AdoptedLog>
  /** Metrics and the dashboard's events. */
  readonly onTakeover?: (logId: string, token: number, records: number) => void
  readonly onFinished?: (logId: string) => void
  readonly onRenewed?: () => void
  readonly onFenced?: (logId: string) => void
}

/** What the claim learned of the log's previous holder. */
export interface TakenFrom {
  /**
   * performance.now() until which a call with effects the previous holder sent before its lease
   * lapsed (a compensation, a TCC confirm/cancel, each bounded by LIMITS.stepOpTimeoutMs) may still
   * be out: the same call is not sent again before then. 0 when the log was given up (its holder
   * waited for its calls) or lapsed long ago.
   */
  readonly previousCallsUntil: number
}

/** The drivers finishing a taken log. */
export interface AdoptedLog {
  /** The taken log's incarnation (its transaction ids carry it). */
  readonly incarnation: string
  /** What the log's coordinator answers for `id` (presumed abort for its incarnation). */
  outcomeFor(id: string, holder: boolean): GroupOutcome
  /** The transactions being finished (admin API views, with `deadline` in epoch ms). */
  list(): readonly { readonly deadline: number }[]
  close(): Promise<void>
}

export type GroupOutcome = 'committed' | 'aborted' | 'in-doubt' | 'unknown-coordinator'

/** The group's answer: the outcome, and the control address of the instance holding the id's log. */
export interface GroupAnswer {
  readonly outcome: GroupOutcome
  readonly owner?: string | undefined
}

interface Claimed {
  readonly logId: string
  readonly token: number
  /** How long ago (Postgres's clock) the previous holder's lease expired; undefined: given up. */
  readonly lapsedMs: number | undefined
  /** performance.now() when the claim's answer came back. */
  readonly receivedAt: number
  /** performance.now() when the claim was sent. */
  readonly sentAt: number
}

interface Held {
  readonly log: PgLog
  readonly drivers: AdoptedLog
}

export class Takeover {
  private readonly pool: pg.Pool
  private readonly held = new Map<string, Held>()
  private readonly timers: Timers
  private timer: Timer | undefined
  private scanning: Promise<void> = Promise.resolve()
  private closed = false
  /** store.lease kubernetes: the last log a look at the candidates examined (the next starts after it). */
  private kubeCursor = ''

  constructor(private readonly o: TakeoverOptions) {
    this.timers = o.timers ?? nodeTimers
    this.pool = new pg.Pool({
      connectionString: o.url,
      max: LIMITS.pgTakeoverConnections,
      connectionTimeoutMillis: LIMITS.pgStoreConnectMs,
    })
    this.pool.on('error', (err) => o.logger.warn('takeover.pg_idle_error', { reason: err.message }))
  }

  start(): void {
    this.schedule()
  }

  /** Logs this instance holds for siblings, with their tokens (admin API). */
  list(): { log: string; token: number }[] {
    return [...this.held.values()].map((h) => ({ log: h.log.id, token: h.log.stats().token }))
  }

  /** The transactions of the logs this instance finishes for siblings, each with the log it came from. */
  transactions(): { readonly deadline: number; readonly takenFrom: string }[] {
    return [...this.held.values()].flatMap((h) => h.drivers.list().map((v) => ({ ...v, takenFrom: h.log.id })))
  }

  /** One look: claims what lapsed, gives up what is finished. Exposed for tests. */
  scan(): Promise<void> {
    this.scanning = this.scanning
      .then(() => this.scanOnce())
      .catch((err: unknown) => {
        this.o.logger.warn('takeover.scan_failed', { reason: err instanceof Error ? err.message : String(err) })
      })
    return this.scanning
  }

  /** The group's answer for a transaction id of another instance of this service. */
  async outcomeFor(id: string, holder: boolean): Promise<GroupAnswer> {
    const inc = incarnationOfTx(id)
    if (inc === undefined || this.closed) return { outcome: 'unknown-coordinator' }
    const held = this.heldFor(inc)
    if (held !== undefined) return this.answerHeld(held, id, holder)
    const s = this.o.schema
    const r = await this.pool.query<{ log_id: string; lapsed: boolean; address: string | null }>(
      `SELECT l.log_id, (l.expires_at IS NULL OR l.expires_at < now()) AS lapsed, l.address
       FROM ${s}.records r JOIN ${s}.logs l ON l.log_id = r.log_id
       WHERE r.key = $1 AND r.body->>'id' = $2 AND l.log_id LIKE $3 ESCAPE '\\' LIMIT 1`,
      [INCARNATION_KEY, inc, this.prefix()],
    )
    const row = r.rows[0]
    if (row === undefined || row.log_id === this.own()) return { outcome: 'unknown-coordinator' }
    const lapsed = this.o.kube === undefined ? row.lapsed : await this.o.kube.lapsed(row.log_id, this.o.leaseMs)
    // Held by a live instance (its own or a sibling finishing it): that one answers; say which.
    if (!lapsed) return { outcome: 'in-doubt', owner: row.address ?? undefined }
    if (this.held.size >= LIMITS.pgLeaseTakenLogs) return { outcome: 'in-doubt' }
    const claimed = await this.claim(row.log_id)
    if (claimed !== undefined) await this.adopt(claimed)
    const now = this.heldFor(inc)
    return now === undefined ? { outcome: 'in-doubt' } : this.answerHeld(now, id, holder)
  }

  private answerHeld(h: Held, id: string, holder: boolean): GroupAnswer {
    // A lease lapsed on this instance's clock: its drivers may be fenced already; ask again later.
    const outcome = h.log.leaseHeld() ? h.drivers.outcomeFor(id, holder) : 'in-doubt'
    return { outcome, owner: this.o.address }
  }

  private heldFor(incarnation: string): Held | undefined {
    for (const h of this.held.values()) if (h.drivers.incarnation === incarnation) return h
    return undefined
  }

  private own(): string {
    return `${this.o.service}/${this.o.instance}`
  }

  private prefix(): string {
    return `${this.o.service.replace(/[\\%_]/g, '\\$&')}/%`
  }

  async close(): Promise<void> {
    this.closed = true
    if (this.timer !== undefined) this.timers.clear(this.timer)
    await this.scanning
    // Given up unfinished: a sibling (or the log's own instance) claims it at once, not a lease later.
    // In parallel: each waits for its drivers' calls still out (each within its own timeout).
    await Promise.all([...this.held].map(([id, h]) => this.giveUp(id, h)))
    await this.pool.end()
  }

  /**
   * Stops a held log's drivers and releases the log, whatever stopping them met: a log kept with
   * nothing to finish would be held (and renewed) by this instance for good.
   */
  private async giveUp(id: string, h: Held): Promise<void> {
    this.held.delete(id)
    await h.drivers.close().catch((err: unknown) =>
      this.o.logger.warn('takeover.close_failed', {
        log: id,
        reason: err instanceof Error ? err.message : String(err),
      }),
    )
    await h.log.release()
  }

  private schedule(): void {
    if (this.closed) return
    this.timer = this.timers.set(() => {
      this.timer = undefined
      void this.scan().finally(() => this.schedule())
    }, LIMITS.pgLeaseScanMs)
  }

  private async scanOnce(): Promise<void> {
    for (const [id, h] of this.held) {
      if (this.closed) return
      if (!h.log.leaseHeld()) continue
      if ((await h.log.liveKeys(TAKEN_PREFIXES)) > 0) continue
      await this.giveUp(id, h)
      this.o.logger.info('takeover_finished', { log: id })
      this.o.onFinished?.(id)
    }
    for (let n = 0; n < LIMITS.pgLeaseClaimsPerScan && this.held.size < LIMITS.pgLeaseTakenLogs; n++) {
      if (this.closed) return
      const claimed = await this.claim()
      if (claimed === undefined) return
      await this.adopt(claimed)
    }
  }

  /**
   * Atomically claims one lapsed log of this service: `logId` (an outcome asked for), or else any
   * with unfinished work; never one this instance holds already (its lease there lapsed: its
   * drivers wait for a renewal, or for the fence). `sentAt`: when the claim was sent, where the
   * lease it set counts from.
   */
  private async claim(logId?: string): Promise<Claimed | undefined> {
    if (this.o.kube !== undefined) return this.claimKube(this.o.kube, logId)
    const s = this.o.schema
    const sentAt = performance.now()
    const r = await this.pool.query<{ log_id: string; token: string; lapsed_ms: number | null }>(
      `WITH lapsed AS (
         SELECT l.log_id, l.expires_at AS prev_expires FROM ${s}.logs l
         WHERE l.log_id LIKE $1 ESCAPE '\\' AND l.log_id <> $2 AND NOT (l.log_id = ANY($7::text[]))
           AND (l.expires_at IS NULL OR l.expires_at < now())
           AND (l.log_id = $6::text OR ($6::text IS NULL AND EXISTS (SELECT 1 FROM ${s}.records r
                WHERE r.log_id = l.log_id AND substr(r.key, 1, 2) = ANY($3::text[]))))
         ORDER BY l.log_id LIMIT 1 FOR UPDATE SKIP LOCKED)
       UPDATE ${s}.logs l
         SET token = l.token + 1, holder = $4, expires_at = now() + $5 * interval '1 millisecond', address = $8
       FROM lapsed WHERE l.log_id = lapsed.log_id
       RETURNING l.log_id, l.token, (EXTRACT(EPOCH FROM (now() - lapsed.prev_expires)) * 1000)::float8 AS lapsed_ms`,
      [
        this.prefix(),
        this.own(),
        TAKEN_PREFIXES,
        this.o.instance,
        this.o.leaseMs,
        logId ?? null,
        [...this.held.keys()],
        this.o.address ?? null,
      ],
    )
    const row = r.rows[0]
    if (row === undefined) return undefined
    const lapsedMs = row.lapsed_ms === null ? undefined : Number(row.lapsed_ms)
    return { logId: row.log_id, token: Number(row.token), sentAt, lapsedMs, receivedAt: performance.now() }
  }

  /**
   * claim with the leases on the Kubernetes API: among this service's logs with unfinished work
   * (or `logId`), the first whose Lease has lapsed on this process's clock and that this instance
   * then wins (an update naming the version it read), with the token moved on from the one read
   * before the Lease was won (a compare-and-set: a claimer that lost the race moves nothing).
   */
  private async claimKube(kube: KubeLeases, logId?: string): Promise<Claimed | undefined> {
    const s = this.o.schema
    // Postgres cannot tell which of them lapsed (the Lease is the lease): every live sibling with
    // work in flight is a candidate too. A page of them per look, from where the last look stopped
    // (wrapping round), so that every log is looked at in turn: the first page by name alone would
    // be the same live siblings at every look, and a dead log sorting after them stranded.
    const r = await this.pool.query<{ log_id: string; token: string }>(
      `SELECT l.log_id, l.token FROM ${s}.logs l
       WHERE l.log_id LIKE $1 ESCAPE '\\' AND l.log_id <> $2 AND NOT (l.log_id = ANY($5::text[]))
         AND (l.log_id = $4::text OR ($4::text IS NULL AND EXISTS (SELECT 1 FROM ${s}.records r
              WHERE r.log_id = l.log_id AND substr(r.key, 1, 2) = ANY($3::text[]))))
       ORDER BY l.log_id <= $7::text, l.log_id LIMIT $6`,
      [
        this.prefix(),
        this.own(),
        TAKEN_PREFIXES,
        logId ?? null,
        [...this.held.keys()],
        LIMITS.pgLeaseTakenLogs,
        logId === undefined ? this.kubeCursor : '',
      ],
    )
    for (const row of r.rows) {
      if (this.closed) return undefined
      if (logId === undefined) this.kubeCursor = row.log_id
      if (!(await kube.lapsed(row.log_id, this.o.leaseMs))) continue
      const sentAt = performance.now()
      if (!(await kube.acquire(row.log_id, this.o.instance, this.o.leaseMs))) continue
      failpoint('takeover-after-lease')
      const token = await bumpToken(this.pool, s, row.log_id, this.o.instance, this.o.address, Number(row.token))
      // Lapsed on this clock only just now (a Lease's expiry is on no clock of Postgres's): the
      // previous holder's calls are waited out in full (adopt).
      if (token !== undefined) return { logId: row.log_id, token, sentAt, lapsedMs: 0, receivedAt: performance.now() }
    }
    return undefined
  }

  private async adopt({ logId, token, sentAt, lapsedMs, receivedAt }: Claimed): Promise<void> {
    // The previous holder sent nothing once its lease lapsed on its clock (a margin before Postgres's
    // expiry); what it sent before may be out for up to LIMITS.stepOpTimeoutMs after that.
    const margin = Math.min(LIMITS.pgLeaseMarginMs, this.o.leaseMs / 4)
    const previousCallsUntil =
      lapsedMs === undefined ? 0 : receivedAt + Math.max(0, LIMITS.stepOpTimeoutMs - margin - lapsedMs)
    const { log, records } = await PgLog.open({
      url: this.o.url,
      schema: this.o.schema,
      logId,
      holder: this.o.instance,
      leaseMs: this.o.leaseMs,
      token,
      leaseFrom: sentAt,
      ...(this.o.kube === undefined ? {} : { kube: this.o.kube }),
      logger: this.o.logger,
      ...(this.o.onRenewed === undefined ? {} : { onRenewed: this.o.onRenewed }),
      onFenced: () => {
        // Taken from this instance in turn (its own lease on it lapsed): stop finishing it.
        this.o.onFenced?.(logId)
        const h = this.held.get(logId)
        if (h === undefined) return
        this.held.delete(logId)
        void h.drivers.close().then(() => h.log.close())
      },
    })
    const work = records.filter((r) => TAKEN_PREFIXES.includes(r.txId.slice(0, 2)) || r.txId === INCARNATION_KEY)
    this.o.logger.warn('takeover', { log: logId, token, records: work.length })
    this.o.onTakeover?.(logId, token, work.length)
    try {
      const drivers = await this.o.adopt(log, work, { previousCallsUntil })
      this.held.set(logId, { log, drivers })
    } catch (err) {
      this.o.logger.error('takeover_failed', { log: logId, reason: err instanceof Error ? err.message : String(err) })
      // Given up: another look (here or at a sibling) claims it again.
      await log.release()
    }
  }
}
