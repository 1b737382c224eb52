// The coordinator's records in Postgres (config `store: {kind: postgres}`), for services whose
// sibling instances share one store: the same records as the file log (src/tx/records.ts), in
// rows instead of segments. Each log is one `log_id` (a coordinator instance's own log; a sibling
// that takes it over writes under the same id with a newer fencing token).
//
// Writes. One writer drains the queue as the file log does: every record queued while the
// previous batch was being committed goes in the next one, so concurrent decisions share one
// Postgres transaction and one WAL flush (group commit). An append resolves once its batch's
// COMMIT returned (synchronous_commit as the server has it; `on`, its default, is what makes
// "durable" mean durable). Each record gets its lsn when it is queued; END is a record too: it
// deletes the rows of its key with a lower lsn, so a record of the same key appended after it
// (a late step) survives, as in the file log.
//
// Failures. A batch is idempotent (rows keyed by lsn, INSERT ... ON CONFLICT DO NOTHING, deletes
// by lsn bound): when a connection breaks mid-commit and the outcome is unknown, the writer sends
// the same batch again, with a capped backoff, for LIMITS.pgStoreRetryMs; Postgres restarted
// meanwhile, the coordinators wait and resume and nothing acknowledged is lost. Past that bound
// the log fails (LogFailedError): the drivers stop the process and recovery decides at restart.
//
// Fencing. Every batch first locks the log's row in `logs` and checks its token: a log taken over
// by a sibling (token moved on) refuses every later write of the old owner (LogFencedError), which
// stops coordinating.
//
// Leases. The row also names the log's holder and when its lease expires (Postgres's clock). An
// instance claims its own log at open (token + 1, which fences any older process of it) unless a
// live sibling holds it, renews the lease every third of `leaseMs`, and counts it lapsed a margin
// early on its own monotonic clock (leaseHeld: the coordinators send no protocol message while it
// has lapsed, so a process paused past its lease and resumed does not act before it learns it
// was fenced). A sibling claims a lapsed log (src/store/takeover.ts) with the same token + 1.
import pg from 'pg'
import {
  LogFailedError,
  LogFencedError,
  LogOverloadedError,
  LogRecordTooLargeError,
  ShuttingDownError,
} from '../errors.js'
import { fullJitterMs } from '../backoff.js'
import { LIMITS } from '../limits.js'
import { silentLogger, type Logger } from '../telemetry/logger.js'
import type { KubeLeases } from './kube-lease.js'
import { nodeTimers, sleep, type Timer, type Timers } from '../timers.js'
import type { LogEntry, LogStats, OpenedLog, TxLog } from './types.js'

export interface PgLogOptions {
  /** A connection string (postgres://...). */
  readonly url: string
  /** Schema of the tables (created when missing). Default `txmesh`. */
  readonly schema?: string
  /** This log's id in the shared tables: `<service>/<instance>`. */
  readonly logId: string
  readonly logger?: Logger
  readonly timers?: Timers
  /** Called after every committed batch with its records and how long it took (metrics). */
  readonly onSync?: (records: number, seconds: number) => void
  /** Who holds the lease (this instance's name). Default the log id. */
  readonly holder?: string
  /**
   * The holder's control address, as peers reach it: the group's outcome answers name it as the
   * log's owner, so a participant learns where to ask (not from configuration).
   */
  readonly address?: string
  /** Lease length; undefined: no lease (the log is held until another open claims it). */
  readonly leaseMs?: number
  /** A log a sibling claimed for this instance (takeover) with this token: opened without claiming. */
  readonly token?: number
  /**
   * With `token`: performance.now() when the claim that set the lease's expiry was sent. The lease
   * counts from there, not from this open: a claim whose answer came back late (Postgres slow)
   * must not be counted as held past the expiry Postgres gave it.
   */
  readonly leaseFrom?: number
  /** The lease was found taken over (a renewal matched no row): the log refuses writes from now on. */
  readonly onFenced?: (err: LogFencedError) => void
  /** A renewal went through (metrics). */
  readonly onRenewed?: () => void
  /**
   * store.lease kubernetes: the lease is the log's Kubernetes Lease (src/store/kube-lease.ts), not
   * the row's expiry; the row's token still fences every write.
   */
  readonly kube?: KubeLeases
}

export interface PgLogStats extends LogStats {
  readonly kind: 'postgres'
  /** Postgres transactions that made batches durable. */
  readonly commits: number
  /** Batches sent again after a failure whose outcome was unknown. */
  readonly retries: number
  /** The fencing token this log writes with. */
  readonly token: number
  /** Lease renewals that went through. */
  readonly renewals: number
}

interface Pending {
  readonly lsn: number
  readonly key: string
  /** JSON text of the body; undefined for END. */
  readonly body: string | undefined
  readonly waiter: { resolve: () => void; reject: (err: Error) => void } | undefined
}

const SCHEMA_RE = /^[a-z_][a-z0-9_]{0,62}$/

/** The DDL of a store's tables; idempotent. */
function ddl(schema: string): string {
  return `
CREATE SCHEMA IF NOT EXISTS ${schema};
CREATE TABLE IF NOT EXISTS ${schema}.logs (
  log_id text PRIMARY KEY,
  token bigint NOT NULL DEFAULT 1,
  created_at timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE ${schema}.logs ADD COLUMN IF NOT EXISTS holder text, ADD COLUMN IF NOT EXISTS expires_at timestamptz,
  ADD COLUMN IF NOT EXISTS address text;
CREATE TABLE IF NOT EXISTS ${schema}.records (
  log_id text NOT NULL,
  lsn bigint NOT NULL,
  key text NOT NULL,
  body jsonb NOT NULL,
  PRIMARY KEY (log_id, lsn)
);
CREATE INDEX IF NOT EXISTS records_by_key ON ${schema}.records (log_id, key);`
}

/** Connection failures whose batch may or may not have committed: sent again. */
function retryable(err: unknown): boolean {
  const code = (err as { code?: unknown }).code
  if (typeof code !== 'string') return err instanceof Error && /Connection terminated|connect/i.test(err.message)
  // Node's socket errors, and Postgres's admin shutdown / cannot connect now / connection classes.
  return /^E[A-Z]+$/.test(code) || code.startsWith('08') || code === '57P01' || code === '57P02' || code === '57P03'
}

export class PgLog implements TxLog {
  private queue: Pending[] = []
  private queuedBytes = 0
  private writing = false
  private writer: Promise<void> = Promise.resolve()
  private lazyTimer: Timer | undefined
  private closing = false
  private failed: LogFailedError | undefined
  private readonly counters = { appends: 0, ends: 0, commits: 0, retries: 0, renewals: 0 }
  private renewTimer: Timer | undefined
  private renewing = false
  private releasing = false
  /** performance.now() at the last beat of the event loop (stall detection, see leaseHeld). */
  private beat = performance.now()
  private beatTimer: Timer | undefined
  /** A stall ended here: the lease is not held until a renewal sent after it went through. */
  private renewAfter = -Infinity
  /** A renewal is wanted as soon as the one in flight is done (a stall seen meanwhile). */
  private renewAgain = false

  private constructor(
    private readonly pool: pg.Pool,
    private readonly schema: string,
    private readonly logId: string,
    private readonly token: number,
    private nextLsn: number,
    private readonly logger: Logger,
    private readonly timers: Timers,
    private readonly onSync: PgLogOptions['onSync'],
    private readonly replay: { records: number; ms: number; live: number },
    private readonly lease: Lease | undefined,
  ) {
    if (lease !== undefined) {
      this.scheduleRenewal()
      this.scheduleBeat()
    }
  }

  /** The log's id in the store (`<service>/<instance>`). */
  get id(): string {
    return this.logId
  }

  /**
   * Whether this instance may act on the log's transactions now: its lease has not lapsed (by its
   * own clock, a margin early) and no write or renewal found it fenced. Always true without a lease.
   */
  leaseHeld(): boolean {
    if (this.failed instanceof LogFencedError || this.closing) return false
    if (this.lease === undefined) return true
    const now = performance.now()
    // Paused (SIGSTOP, a stall) and resumed: whatever runs first must not act on a lease another
    // process may have claimed meanwhile, though the lease's time is not up on this clock.
    if (now - this.beat > this.stallMs()) {
      this.stalled(now)
      return false
    }
    if (this.lease.from < this.renewAfter) return false
    // An older process of this instance may act until the lease this one replaced would have lapsed.
    if (now < this.lease.quietUntil) return false
    return now < this.lease.from + this.lease.ms - Math.min(LIMITS.pgLeaseMarginMs, this.lease.ms / 4)
  }

  private stallMs(): number {
    return Math.min(LIMITS.pgLeaseStallMs, (this.lease?.ms ?? Infinity) / 4)
  }

  /** The event loop could not run until `now`: the lease counts again after a renewal sent from here. */
  private stalled(now: number): void {
    this.beat = now
    this.renewAfter = Math.max(this.renewAfter, now)
    this.logger.warn('store.lease_stalled', { log: this.logId })
    if (this.renewing) this.renewAgain = true
    else void this.renew()
  }

  private scheduleBeat(): void {
    if (this.closing || this.releasing || this.failed instanceof LogFencedError) return
    this.beatTimer = this.timers.set(() => {
      this.beatTimer = undefined
      const now = performance.now()
      if (now - this.beat > this.stallMs()) this.stalled(now)
      else this.beat = now
      this.scheduleBeat()
    }, LIMITS.pgLeaseBeatMs)
  }

  /**
   * Connects (waiting, bounded, for a Postgres that is starting), creates the tables when
   * missing, registers the log and returns its live records in append order.
   */
  static async open(o: PgLogOptions): Promise<OpenedLog<PgLog>> {
    const schema = o.schema ?? 'txmesh'
    if (!SCHEMA_RE.test(schema)) throw new RangeError(`store schema "${schema}" is not a lowercase SQL identifier`)
    const logger = o.logger ?? silentLogger
    const timers = o.timers ?? nodeTimers
    const pool = new pg.Pool({
      connectionString: o.url,
      max: LIMITS.pgStoreConnections,
      connectionTimeoutMillis: LIMITS.pgStoreConnectMs,
      idleTimeoutMillis: 0,
    })
    // An idle client's error (the server restarted) must not crash the process; the next query
    // reconnects.
    pool.on('error', (err) => logger.warn('store.pg_idle_error', { reason: err.message }))
    try {
      const started = performance.now()
      const holder = o.holder ?? o.logId
      let leaseFrom = o.leaseFrom ?? performance.now()
      let quietUntil = 0
      const { token, rows } = await withRetries(logger, timers, 'open', async () => {
        const c = await pool.connect()
        // The server ending the session between two queries (a restart) is an 'error' event of
        // the checked-out client: kept, never an uncaught exception; the client is then dropped.
        let lost: Error | undefined
        const onError = (err: Error): void => void (lost = err)
        c.on('error', onError)
        try {
          await c.query(ddl(schema))
          let token = o.token
          if (token === undefined) {
            // Counted from the claim that went through, not from before the wait for a sibling.
            const claimed =
              o.kube === undefined
                ? await claimOwn(c, schema, o.logId, holder, o.address, o.leaseMs, logger, timers)
                : await claimOwnKube(c, schema, o.kube, o.logId, holder, o.address, o.leaseMs, logger, timers)
            token = claimed.token
            leaseFrom = claimed.sentAt
            quietUntil = claimed.quietUntil
          }
          const t = await c.query<{ token: string }>(`SELECT token FROM ${schema}.logs WHERE log_id = $1`, [o.logId])
          if (Number(t.rows[0]?.token) !== token)
            throw new LogFencedError(`log ${o.logId} was claimed again before it was opened (token ${token})`)
          const r = await c.query<{ lsn: string; key: string; body: Record<string, unknown> }>(
            `SELECT lsn, key, body FROM ${schema}.records WHERE log_id = $1 ORDER BY lsn`,
            [o.logId],
          )
          return { token, rows: r.rows }
        } finally {
          c.removeListener('error', onError)
          c.release(lost)
        }
      })
      const records: LogEntry[] = rows.map((r) => ({ txId: r.key, body: r.body }))
      const last = rows.length === 0 ? 0 : Number(rows[rows.length - 1]?.lsn)
      const live = new Set(records.map((r) => r.txId)).size
      const lease =
        o.leaseMs === undefined
          ? undefined
          : {
              ms: o.leaseMs,
              from: leaseFrom,
              quietUntil,
              onFenced: o.onFenced,
              onRenewed: o.onRenewed,
              holder,
              kube: o.kube,
            }
      const log = new PgLog(
        pool,
        schema,
        o.logId,
        token,
        last + 1,
        logger,
        timers,
        o.onSync,
        { records: rows.length, ms: performance.now() - started, live },
        lease,
      )
      return { log, records }
    } catch (err) {
      await pool.end()
      throw err
    }
  }

  append(key: string, body: Record<string, unknown>): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      const refused = this.enqueue(key, body, { resolve, reject })
      if (refused !== undefined) reject(refused)
    })
  }

  appendLazy(key: string, body: Record<string, unknown>): void {
    const refused = this.enqueue(key, body, undefined)
    if (refused !== undefined) this.logger.warn('store.lazy_dropped', { key, reason: refused.message })
  }

  end(key: string): void {
    if (this.closing || this.failed !== undefined) return
    this.counters.ends++
    this.queue.push({ lsn: this.nextLsn++, key, body: undefined, waiter: undefined })
    this.scheduleLazy()
  }

  async flush(): Promise<void> {
    for (let turn = 0; turn < LIMITS.pgStoreFlushTurns && (this.queue.length > 0 || this.writing); turn++) {
      this.kick()
      await this.writer
    }
  }

  async close(): Promise<void> {
    if (this.closing) return
    await this.flush()
    this.closing = true
    if (this.lazyTimer !== undefined) this.timers.clear(this.lazyTimer)
    if (this.renewTimer !== undefined) this.timers.clear(this.renewTimer)
    this.timers.clear(this.beatTimer)
    await this.pool.end()
  }

  /**
   * Whether this log is still this process's, asked of Postgres now (its token is the log's): a
   * lease held by this process's clock is not enough where a new process of the same instance may
   * have claimed the log at once (claimOwn). Found taken over: fenced, as a renewal would find it.
   * Postgres unreachable: false (nothing can be vouched for).
   */
  async stillHeld(): Promise<boolean> {
    if (this.failed !== undefined || this.closing) return false
    try {
      if ((await this.logToken()) === this.token) return true
      if (this.failed === undefined) {
        const fenced = new LogFencedError(
          `log ${this.logId} was taken over: token ${this.token} is no longer the log's (outcome check)`,
        )
        this.fail(fenced, [])
        this.lease?.onFenced?.(fenced)
      }
      return false
    } catch (err) {
      this.logger.warn('store.held_check_failed', { log: this.logId, reason: (err as Error).message })
      return false
    }
  }

  /** Keys with live records under `prefixes` (a taken-over log is finished once none is left). */
  async liveKeys(prefixes: readonly string[]): Promise<number> {
    await this.flush()
    const r = await this.pool.query<{ n: string }>(
      `SELECT count(DISTINCT key) AS n FROM ${this.schema}.records
       WHERE log_id = $1 AND substr(key, 1, 2) = ANY($2::text[])`,
      [this.logId, prefixes],
    )
    return Number(r.rows[0]?.n ?? 0)
  }

  /** Gives a finished log's lease up (its own instance may claim it at once) and closes it. */
  async release(): Promise<void> {
    await this.flush()
    // No renewal from here on: one landing after the release would take the lease back.
    this.releasing = true
    if (this.renewTimer !== undefined) this.timers.clear(this.renewTimer)
    for (let turn = 0; this.renewing && turn < LIMITS.pgStoreFlushTurns; turn++) await sleep(this.timers, 5)
    const kube = this.lease?.kube
    if (this.failed === undefined && kube !== undefined)
      await kube
        .release(this.logId, (this.lease as Lease).holder)
        .catch((err: unknown) =>
          this.logger.warn('store.release_failed', { log: this.logId, reason: (err as Error).message }),
        )
    if (this.failed === undefined)
      await this.pool
        .query(
          `UPDATE ${this.schema}.logs SET holder = NULL, expires_at = NULL, address = NULL WHERE log_id = $1 AND token = $2`,
          [this.logId, this.token],
        )
        .catch((err: unknown) =>
          this.logger.warn('store.release_failed', { log: this.logId, reason: (err as Error).message }),
        )
    await this.close()
  }

  private scheduleRenewal(): void {
    const lease = this.lease
    if (lease === undefined || this.closing || this.releasing || this.failed instanceof LogFencedError) return
    this.renewTimer = this.timers.set(
      () => {
        this.renewTimer = undefined
        void this.renew().finally(() => this.scheduleRenewal())
      },
      Math.max(1, Math.floor(lease.ms / 3)),
    )
  }

  /** Moves the lease's expiry on, if the token is still this log's; else the log is fenced. */
  private async renew(): Promise<void> {
    const lease = this.lease
    if (lease === undefined || this.renewing || this.closing || this.releasing) return
    this.renewing = true
    const started = performance.now()
    try {
      const renewed =
        lease.kube === undefined
          ? (
              await this.pool.query(
                `UPDATE ${this.schema}.logs SET expires_at = now() + $3 * interval '1 millisecond'
                 WHERE log_id = $1 AND token = $2`,
                [this.logId, this.token, lease.ms],
              )
            ).rowCount === 1
          : // The token first: a newer process of this same instance (same holderIdentity) that
            // claimed the log fenced this one, though the Lease still names this holder.
            (await this.logToken()) === this.token &&
            (await lease.kube.renew(this.logId, lease.holder, lease.ms)) === 'renewed'
      if (renewed) {
        lease.from = started
        this.counters.renewals++
        lease.onRenewed?.()
        return
      }
      const fenced = new LogFencedError(
        lease.kube === undefined
          ? `log ${this.logId} was taken over: the lease of token ${this.token} matched no row at renewal`
          : `log ${this.logId} was taken over: its token moved on from ${this.token}, or its Kubernetes Lease names another holder, at renewal`,
      )
      this.fail(fenced, [])
      lease.onFenced?.(fenced)
    } catch (err) {
      // Postgres (or the API server) away: the lease lapses by time if this lasts (leaseHeld), the
      // next renewal retries.
      this.logger.warn('store.lease_renew_failed', { log: this.logId, reason: (err as Error).message })
    } finally {
      this.renewing = false
      if (this.renewAgain) {
        this.renewAgain = false
        void this.renew()
      }
    }
  }

  /** The log's token in the store now (NaN without a row). */
  private async logToken(): Promise<number> {
    const r = await this.pool.query<{ token: string }>(`SELECT token FROM ${this.schema}.logs WHERE log_id = $1`, [
      this.logId,
    ])
    return Number(r.rows[0]?.token ?? NaN)
  }

  stats(): PgLogStats {
    return {
      kind: 'postgres',
      appends: this.counters.appends,
      ends: this.counters.ends,
      pending: this.queue.length,
      replayedRecords: this.replay.records,
      replayMs: this.replay.ms,
      liveTransactions: this.replay.live,
      commits: this.counters.commits,
      retries: this.counters.retries,
      token: this.token,
      renewals: this.counters.renewals,
    }
  }

  private enqueue(key: string, body: Record<string, unknown>, waiter: Pending['waiter']): Error | undefined {
    if (this.failed !== undefined) return this.failed
    if (this.closing) return new ShuttingDownError('the store is closing')
    const text = JSON.stringify(body)
    if (text.length > LIMITS.logMaxRecordBytes)
      return new LogRecordTooLargeError(`record of ${text.length} bytes exceeds ${LIMITS.logMaxRecordBytes}`)
    if (this.queue.length >= LIMITS.logMaxQueuedAppends || this.queuedBytes + text.length > LIMITS.logMaxQueuedBytes)
      return new LogOverloadedError('the store has too many records waiting to be written')
    this.counters.appends++
    this.queuedBytes += text.length
    this.queue.push({ lsn: this.nextLsn++, key, body: text, waiter })
    if (waiter === undefined) this.scheduleLazy()
    else this.kick()
    return undefined
  }

  private scheduleLazy(): void {
    if (this.lazyTimer !== undefined) return
    this.lazyTimer = this.timers.set(() => {
      this.lazyTimer = undefined
      this.kick()
    }, LIMITS.logLazyFlushMs)
  }

  private kick(): void {
    if (this.writing || this.queue.length === 0 || this.failed !== undefined) return
    this.writing = true
    this.writer = this.drain().finally(() => {
      this.writing = false
      // What arrived after the last batch was taken: at once when someone waits for it, else
      // with the lazy timer (one that fired while this writer ran found it busy).
      if (this.queue.some((p) => p.waiter !== undefined)) this.kick()
      else if (this.queue.length > 0) this.scheduleLazy()
    })
  }

  private async drain(): Promise<void> {
    while (this.queue.length > 0 && this.failed === undefined) {
      const batch = this.queue.splice(0, LIMITS.pgStoreBatchRecords)
      const bytes = batch.reduce((n, p) => n + (p.body?.length ?? 0), 0)
      const started = performance.now()
      try {
        await withRetries(
          this.logger,
          this.timers,
          'write',
          () => this.writeBatch(batch),
          () => this.counters.retries++,
        )
      } catch (err) {
        this.fail(err, batch)
        return
      }
      this.queuedBytes -= bytes
      this.counters.commits++
      this.onSync?.(batch.length, (performance.now() - started) / 1000)
      for (const p of batch) p.waiter?.resolve()
    }
  }

  /** One Postgres transaction: the fence check, the rows, the ENDs. Safe to send again. */
  private async writeBatch(batch: readonly Pending[]): Promise<void> {
    const rows = batch.filter((p) => p.body !== undefined)
    const ends = batch.filter((p) => p.body === undefined)
    const c = await this.pool.connect()
    let broken = false
    // As in open: the session ended between two queries is an 'error' event, not a crash.
    const onError = (): void => void (broken = true)
    c.on('error', onError)
    try {
      await c.query('BEGIN')
      const t = await c.query<{ token: string }>(`SELECT token FROM ${this.schema}.logs WHERE log_id = $1 FOR UPDATE`, [
        this.logId,
      ])
      const token = Number(t.rows[0]?.token ?? NaN)
      if (token !== this.token)
        throw new LogFencedError(
          `log ${this.logId} was taken over (token ${token}, this instance writes with ${this.token}): its writes are refused`,
        )
      if (rows.length > 0)
        await c.query(
          `INSERT INTO ${this.schema}.records (log_id, lsn, key, body)
           SELECT $1, l, k, b::jsonb FROM unnest($2::bigint[], $3::text[], $4::text[]) AS r(l, k, b)
           ON CONFLICT (log_id, lsn) DO NOTHING`,
          [this.logId, rows.map((p) => p.lsn), rows.map((p) => p.key), rows.map((p) => p.body)],
        )
      if (ends.length > 0)
        await c.query(
          `DELETE FROM ${this.schema}.records r USING unnest($2::text[], $3::bigint[]) AS e(k, l)
           WHERE r.log_id = $1 AND r.key = e.k AND r.lsn < e.l`,
          [this.logId, ends.map((p) => p.key), ends.map((p) => p.lsn)],
        )
      await c.query('COMMIT')
    } catch (err) {
      broken ||= retryable(err)
      if (!broken) await c.query('ROLLBACK').catch(() => undefined)
      throw err
    } finally {
      c.removeListener('error', onError)
      c.release(broken)
    }
  }

  private fail(err: unknown, batch: readonly Pending[]): void {
    const failed =
      err instanceof LogFencedError
        ? err
        : new LogFailedError(`the Postgres store failed: ${err instanceof Error ? err.message : String(err)}`)
    this.failed = failed
    this.logger.error('store.failed', { log: this.logId, reason: failed.message })
    for (const p of [...batch, ...this.queue.splice(0)]) p.waiter?.reject(failed)
  }
}

interface Lease {
  readonly ms: number
  /** performance.now() when the last renewal that went through was sent. */
  from: number
  /**
   * performance.now() until which the lease replaced at open (one of this instance's own name, an
   * older process of it that may still run and act on its own clock) could still be counted held
   * by that process: nothing is sent before then.
   */
  readonly quietUntil: number
  readonly onFenced: ((err: LogFencedError) => void) | undefined
  readonly onRenewed: (() => void) | undefined
  readonly holder: string
  readonly kube: KubeLeases | undefined
}

/**
 * Claims this instance's own log (token + 1, fencing any older process of it) when nobody else
 * holds it: free, already its own, or with a lease that has lapsed. A live sibling holding it is
 * finishing its transactions: wait (bounded) for it to give the log up.
 */
async function claimOwn(
  c: pg.PoolClient,
  schema: string,
  logId: string,
  holder: string,
  address: string | undefined,
  leaseMs: number | undefined,
  logger: Logger,
  timers: Timers,
): Promise<{ token: number; sentAt: number; quietUntil: number }> {
  const until = Date.now() + LIMITS.pgLeaseOpenWaitMs
  for (let attempt = 0; ; attempt++) {
    const sentAt = performance.now()
    // In one transaction with the claim: how long the lease it replaces had left (a live lease of
    // this instance's own name: an older process of it, which may still act until then).
    await c.query('BEGIN')
    let r: pg.QueryResult<{ token: string }>
    let leftMs = 0
    try {
      const prev = await c.query<{ left_ms: number | null }>(
        `SELECT GREATEST(0, EXTRACT(EPOCH FROM (expires_at - now())) * 1000)::float8 AS left_ms
         FROM ${schema}.logs WHERE log_id = $1 AND holder = $2 FOR UPDATE`,
        [logId, holder],
      )
      leftMs = Number(prev.rows[0]?.left_ms ?? 0)
      r = await c.query<{ token: string }>(
        `INSERT INTO ${schema}.logs (log_id, holder, expires_at, address)
         VALUES ($1, $2, now() + $3 * interval '1 millisecond', $4)
         ON CONFLICT (log_id) DO UPDATE
           SET token = logs.token + 1, holder = $2, expires_at = EXCLUDED.expires_at, address = EXCLUDED.address
         WHERE logs.holder IS NULL OR logs.holder = $2 OR logs.expires_at IS NULL OR logs.expires_at < now()
         RETURNING token`,
        [logId, holder, leaseMs ?? null, address ?? null],
      )
      await c.query('COMMIT')
    } catch (err) {
      await c.query('ROLLBACK').catch(() => undefined)
      throw err
    }
    const token = r.rows[0]?.token
    // Counted on this clock from when the answer came back (later than Postgres's now()).
    if (token !== undefined) return { token: Number(token), sentAt, quietUntil: performance.now() + leftMs }
    const held = await c.query<{ holder: string | null }>(`SELECT holder FROM ${schema}.logs WHERE log_id = $1`, [
      logId,
    ])
    if (Date.now() >= until)
      throw new LogFailedError(
        `log ${logId} is held by ${held.rows[0]?.holder ?? 'a sibling'} (taking it over) past ${LIMITS.pgLeaseOpenWaitMs} ms`,
      )
    if (attempt === 0) logger.warn('store.log_held', { log: logId, holder: held.rows[0]?.holder ?? null })
    await sleep(timers, LIMITS.pgLeaseScanMs)
  }
}

/**
 * claimOwn with the lease on the Kubernetes API: the instance's Lease first (free, its own, or
 * lapsed), then the token moved on from the one read before (a compare-and-set: a sibling that
 * claimed meanwhile wins, and this open tries again).
 */
async function claimOwnKube(
  c: pg.PoolClient,
  schema: string,
  kube: KubeLeases,
  logId: string,
  holder: string,
  address: string | undefined,
  leaseMs: number | undefined,
  logger: Logger,
  timers: Timers,
): Promise<{ token: number; sentAt: number; quietUntil: number }> {
  const until = Date.now() + LIMITS.pgLeaseOpenWaitMs
  const ms = leaseMs ?? LIMITS.pgLeaseMs
  await c.query(`INSERT INTO ${schema}.logs (log_id) VALUES ($1) ON CONFLICT (log_id) DO NOTHING`, [logId])
  for (let attempt = 0; ; attempt++) {
    const seen = await c.query<{ token: string; holder: string | null }>(
      `SELECT token, holder FROM ${schema}.logs WHERE log_id = $1`,
      [logId],
    )
    // A sibling holds the log (it claimed it and has not given it up): its Lease missing means
    // deleted under it, not free; claimed only once it has been missing for a lease (lapsed).
    const other = (seen.rows[0]?.holder ?? holder) !== holder
    // A Lease held in this instance's own name: an older process of it, which may still act
    // until that lease lapses on its clock; its renewTime is another machine's, so the whole
    // lease length is waited out (as claimOwn does with what the row's lease had left).
    const ownHeld = (await kube.holderOf(logId)) === holder
    const sentAt = performance.now()
    if ((!other || (await kube.lapsed(logId, ms))) && (await kube.acquire(logId, holder, ms))) {
      const token = await bumpToken(c, schema, logId, holder, address, Number(seen.rows[0]?.token))
      if (token !== undefined) return { token, sentAt, quietUntil: ownHeld ? performance.now() + ms : 0 }
    }
    if (Date.now() >= until)
      throw new LogFailedError(
        `log ${logId}: its Kubernetes Lease is held by a sibling past ${LIMITS.pgLeaseOpenWaitMs} ms`,
      )
    if (attempt === 0) logger.warn('store.log_held', { log: logId, lease: 'kubernetes' })
    await sleep(timers, LIMITS.pgLeaseScanMs)
  }
}

/** Moves a log's token on from `seen` (undefined when another moved it first); no row expiry. */
export async function bumpToken(
  q: Pick<pg.PoolClient, 'query'>,
  schema: string,
  logId: string,
  holder: string,
  address: string | undefined,
  seen: number,
): Promise<number | undefined> {
  const r = await q.query<{ token: string }>(
    `UPDATE ${schema}.logs SET token = token + 1, holder = $2, address = $3, expires_at = NULL
     WHERE log_id = $1 AND token = $4 RETURNING token`,
    [logId, holder, address ?? null, seen],
  )
  const token = r.rows[0]?.token
  return token === undefined ? undefined : Number(token)
}

/** Runs `fn`, again after a capped, jittered backoff while it fails retryably, for LIMITS.pgStoreRetryMs. */
async function withRetries<T>(
  logger: Logger,
  timers: Timers,
  what: string,
  fn: () => Promise<T>,
  onRetry?: () => void,
): Promise<T> {
  const until = Date.now() + LIMITS.pgStoreRetryMs
  for (let attempt = 0; ; attempt++) {
    try {
      return await fn()
    } catch (err) {
      if (!retryable(err) || Date.now() >= until || attempt >= LIMITS.pgStoreRetries) throw err
      onRetry?.()
      logger.warn('store.pg_retry', { what, attempt, reason: err instanceof Error ? err.message : String(err) })
      await sleep(timers, fullJitterMs(attempt + 1, LIMITS.pgStoreRetryBaseMs, LIMITS.pgStoreRetryMaxMs, Math.random))
    }
  }
}
