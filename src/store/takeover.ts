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
import pg from 'pg'
import { LIMITS } from '../limits.js'
import type { Logger } from '../telemetry/logger.js'
import { nodeTimers, type Timer, type Timers } from '../timers.js'
import { INCARNATION_KEY, KEY_PREFIX } from '../tx/records.js'
import { PgLog } from './pg-log.js'
import type { LogEntry } from './types.js'

/** Record key prefixes of the work a sibling finishes: coordinator decisions, saga/TCC steps, events. */
export const TAKEN_PREFIXES: readonly string[] = [KEY_PREFIX.coordinator, KEY_PREFIX.steps, KEY_PREFIX.events]

export interface TakeoverOptions {
  readonly url: string
  readonly schema: string
  readonly service: string
  /** This instance's name: the holder of what it claims. */
  readonly instance: string
  readonly leaseMs: number
  readonly logger: Logger
  readonly timers?: Timers
  /**
   * Starts the drivers that finish a claimed log from its records (only those under
   * TAKEN_PREFIXES, and the incarnation); returns how to stop them.
   */
  readonly adopt: (log: PgLog, records: readonly LogEntry[]) => Promise<{ close(): Promise<void> }>
  /** Metrics and the dashboard's events. */
  readonly onTakeover?: (logId: string, token: number, records: number) => void
  readonly onFinished?: (logId: string) => void
  readonly onRenewed?: () => void
  readonly onFenced?: (logId: string) => void
}

interface Held {
  readonly log: PgLog
  readonly drivers: { close(): Promise<void> }
}

export class Takeover {
  private readonly pool: pg.Pool
  private readonly held = new Map<string, Held>()
  private readonly timers: Timers
  private timer: Timer | undefined
  private scanning: Promise<void> = Promise.resolve()
  private closed = false

  constructor(private readonly o: TakeoverOptions) {
    this.timers = o.timers ?? nodeTimers
    this.pool = new pg.Pool({ connectionString: o.url, max: 1, connectionTimeoutMillis: LIMITS.pgStoreConnectMs })
    this.pool.on('error', (err) => o.logger.warn('takeover.pg_idle_error', { reason: err.message }))
  }

  start(): void {
    this.schedule()
  }

  /** Logs this instance holds for siblings, with their tokens (admin API). */
  list(): { log: string; token: number }[] {
    return [...this.held.values()].map((h) => ({ log: h.log.id, token: h.log.stats().token }))
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

  async close(): Promise<void> {
    this.closed = true
    if (this.timer !== undefined) this.timers.clear(this.timer)
    await this.scanning
    // Given up unfinished: a sibling (or the log's own instance) claims it at once, not a lease later.
    for (const [id, h] of this.held) {
      this.held.delete(id)
      await h.drivers.close()
      await h.log.release()
    }
    await this.pool.end()
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
      this.held.delete(id)
      await h.drivers.close()
      await h.log.release()
      this.o.logger.info('takeover_finished', { log: id })
      this.o.onFinished?.(id)
    }
    for (let n = 0; n < LIMITS.pgLeaseClaimsPerScan && this.held.size < LIMITS.pgLeaseTakenLogs; n++) {
      if (this.closed) return
      const claimed = await this.claim()
      if (claimed === undefined) return
      await this.adopt(claimed.logId, claimed.token)
    }
  }

  /** Atomically claims one lapsed log of this service with unfinished work, if there is one. */
  private async claim(): Promise<{ logId: string; token: number } | undefined> {
    const s = this.o.schema
    const own = `${this.o.service}/${this.o.instance}`
    const prefix = `${this.o.service.replace(/[\\%_]/g, '\\$&')}/%`
    const r = await this.pool.query<{ log_id: string; token: string }>(
      `WITH lapsed AS (
         SELECT l.log_id FROM ${s}.logs l
         WHERE l.log_id LIKE $1 ESCAPE '\\' AND l.log_id <> $2
           AND (l.expires_at IS NULL OR l.expires_at < now())
           AND EXISTS (SELECT 1 FROM ${s}.records r
                       WHERE r.log_id = l.log_id AND substr(r.key, 1, 2) = ANY($3::text[]))
         ORDER BY l.log_id LIMIT 1 FOR UPDATE SKIP LOCKED)
       UPDATE ${s}.logs l SET token = l.token + 1, holder = $4, expires_at = now() + $5 * interval '1 millisecond'
       FROM lapsed WHERE l.log_id = lapsed.log_id
       RETURNING l.log_id, l.token`,
      [prefix, own, TAKEN_PREFIXES, this.o.instance, this.o.leaseMs],
    )
    const row = r.rows[0]
    return row === undefined ? undefined : { logId: row.log_id, token: Number(row.token) }
  }

  private async adopt(logId: string, token: number): Promise<void> {
    const { log, records } = await PgLog.open({
      url: this.o.url,
      schema: this.o.schema,
      logId,
      holder: this.o.instance,
      leaseMs: this.o.leaseMs,
      token,
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
      const drivers = await this.o.adopt(log, work)
      this.held.set(logId, { log, drivers })
    } catch (err) {
      this.o.logger.error('takeover_failed', { log: logId, reason: err instanceof Error ? err.message : String(err) })
      // Given up: another look (here or at a sibling) claims it again.
      await log.release()
    }
  }
}
