// The embedded durable log (DESIGN.md "Durable log"): segmented append-only files, a checksum per
// record, group commit, replay on open, compaction of ended transactions. The coordinator
// force-writes its decision here before phase 2 and the participant its PREPARED before voting
// ("Commit protocol"): an append resolves only once the record is on disk.
//
// Writes. One writer at a time drains the queue: it takes every queued record, writes them with
// one positional write per segment touched, fsyncs once, and resolves them all. Appends that
// arrive while it writes or fsyncs wait in the (bounded) queue for the next turn, so concurrent
// decisions share an fsync (group commit). Lazy records (END) ride with the next durable batch,
// or are written without an fsync after LIMITS.logLazyFlushMs. Where the platform has O_DSYNC
// (option `sync`, default `dsync`) segments are opened with it: the write itself returns durable
// and stands for the fsync (a lazy record written alone is then durable too).
//
// Replay. Segments are read in order. A record that is short or fails its checksum in the LAST
// segment is a torn tail from a crash mid-write (nothing after it was acknowledged, since every
// acknowledged record was fsynced and a segment is fsynced before the next one is created): the
// file is truncated there. The same damage in an earlier segment cannot come from a crash, so
// open fails with TXM_LOG_CORRUPT instead of silently dropping acknowledged decisions.
//
// Compaction (runs in the writer, between batches, after a rollover):
//   1. choose the oldest sealed segments, a prefix S1..Sj, whose live records fit the carry budget
//      (the oldest one may go over it, see compact());
//   2. copy the live records held only in S1..Sj into the current segment, byte for byte (same
//      lsn), and fsync it;
//   3. unlink S1, fsync the directory, unlink S2, fsync the directory, ... oldest first.
// Why a crash at any point replays to the same live set:
//   - before step 2's fsync returns, copies may be torn: they sit at the tail of the last segment,
//     which replay truncates; S1..Sj are all still there, so nothing is lost;
//   - after it, every live record of S1..Sj exists twice; replay keeps one record per lsn (a copy
//     has the lsn of its original, lower than the highest lsn seen), so duplicates change nothing;
//   - deletions are made durable one at a time, oldest first, so the files left are always a
//     suffix of the segment sequence. An ended transaction could only come back if its END were
//     deleted while one of its records survived, but an END follows every record of its
//     transaction in file order (originals are appended before end(), and only live records are
//     copied, before any later END), so a deleted prefix that holds the END holds those too;
//   - a segment in the middle is never deleted, which is why compaction deletes only a prefix and
//     a gap in the sequence is reported as corruption.

import assert from 'node:assert/strict'
import type { FileHandle } from 'node:fs/promises'
import { join } from 'node:path'
import type { TxLog } from '../store/types.js'
import {
  InternalError,
  LogCorruptError,
  LogFailedError,
  LogOverloadedError,
  LogRecordTooLargeError,
  ShuttingDownError,
} from '../errors.js'
import { LIMITS } from '../limits.js'
import { sleep, type Timer } from '../timers.js'
import {
  FRAME_HEADER_BYTES,
  RecordKind,
  SEGMENT_HEADER_BYTES,
  encodeRecord,
  encodeSegmentHeader,
  parseSegmentName,
  segmentName,
} from './record.js'
import { addLive, eachLive, frameOf, sizeOf, type LiveRecord, type LiveSet, type SegmentInfo } from './live.js'
import { resolveOptions, type FileLogOptions, type FileLogStats, type LogEntry } from './options.js'
import { ReplayState, replaySegment, type SegmentReplay } from './replay.js'
import { createSegment, ensureDir, segmentFlags, syncDir, writeFully } from './files.js'

export type { FileLogOptions, FileLogStats, LogEntry, LogFs } from './options.js'

interface Waiter {
  readonly resolve: () => void
  readonly reject: (err: Error) => void
}

interface Pending {
  readonly frame: Buffer
  /** Set for data records, undefined for END. */
  readonly rec: LiveRecord | undefined
  /** Set for durable appends. */
  readonly waiter: Waiter | undefined
  /** Set for END: the records it ends (compaction keeps their segments until it is durable). */
  readonly ended?: LiveSet
}

// Loops that wait for the writer are bounded: close() needs at most a couple of turns (the queue
// cannot grow once closing), more means a bug.
const MAX_CLOSE_TURNS = 16
const EMPTY = Buffer.alloc(0)

export class FileLog implements TxLog {
  private queue: Pending[] = []
  private queuedDurable = 0
  private pendingCount = 0
  private pendingBytes = 0
  private lazyDue = false
  private lazyTimer: Timer | undefined
  private writing = false
  private writer: Promise<void> = Promise.resolve()
  private unsynced = false
  // An END was written since the last fsync (see compact()).
  private unsyncedEnds = false
  private unsyncedFrames = 0
  private closing = false
  private closed = false
  private failed: LogFailedError | undefined
  private closePromise: Promise<void> | undefined
  private readonly counters = { appends: 0, fsyncs: 0, bytes: 0, compactions: 0, ends: 0, carried: 0 }

  private constructor(
    private readonly dir: string,
    private readonly opts: Readonly<FileLogOptions>,
    private fh: FileHandle,
    private seq: number,
    private segBytes: number,
    private nextLsn: number,
    private readonly replay: { truncatedBytes: number; replayedRecords: number; replayMs: number },
    // Live records by transaction (handed over from replay, not copied: it can hold millions).
    private readonly live: Map<string, LiveSet>,
    private liveRecords: number,
    private readonly segments: Map<number, SegmentInfo>,
  ) {}

  /**
   * Opens (creating) the log dir, replays every segment in order, detects and truncates a torn or
   * corrupt tail (never trusts it), and returns the live records in append order. Records of
   * transactions that were ended (see end()) are not returned.
   */
  static async open(
    dir: string,
    options: Partial<FileLogOptions> = {},
  ): Promise<{ log: FileLog; records: LogEntry[] }> {
    const opts = resolveOptions(options)
    const started = performance.now()
    const fs = opts.fs
    await ensureDir(fs, dir)
    const seqs = (await fs.readdir(dir))
      .map(parseSegmentName)
      .filter((s): s is number => s !== undefined)
      .sort((a, b) => a - b)
    for (let i = 1; i < seqs.length; i++) {
      const prev = seqs[i - 1] as number
      const cur = seqs[i] as number
      // Compaction deletes only a prefix of the sequence (see the comment at the top).
      if (cur !== prev + 1)
        throw new LogCorruptError(
          `log ${dir}: segment ${segmentName(prev + 1)} is missing (found ${segmentName(prev)} and ${segmentName(cur)})`,
          { file: join(dir, segmentName(prev + 1)) },
        )
    }

    const state = new ReplayState()
    // Replay reads what earlier runs may have written with a larger record limit.
    const maxPayload = Math.max(opts.maxRecordBytes, LIMITS.logMaxRecordBytes) - FRAME_HEADER_BYTES
    let tail: SegmentReplay | undefined
    for (const [i, seq] of seqs.entries()) {
      const r = await replaySegment(
        fs,
        join(dir, segmentName(seq)),
        seq,
        i === seqs.length - 1,
        maxPayload,
        opts.readChunkBytes,
        state,
      )
      state.segments.set(seq, { bytes: r.validBytes, records: r.records })
      tail = r
    }

    let fh: FileHandle
    let seq: number
    let segBytes: number
    let truncatedBytes = 0
    if (tail === undefined) {
      seq = 1
      fh = await createSegment(fs, dir, seq, opts.sync)
      segBytes = SEGMENT_HEADER_BYTES
      state.segments.set(seq, { bytes: segBytes, records: 0 })
    } else {
      seq = tail.seq
      const file = join(dir, segmentName(seq))
      fh = await fs.open(file, segmentFlags(opts.sync, false))
      try {
        if (tail.dropped !== undefined) {
          truncatedBytes = tail.dropped.bytes
          opts.logger.warn('log.torn_tail', {
            file,
            offset: tail.validBytes,
            droppedBytes: tail.dropped.bytes,
            reason: tail.dropped.reason,
          })
          await fh.truncate(tail.validBytes)
          if (tail.validBytes === 0) {
            const header = encodeSegmentHeader(seq)
            await writeFully(fh, header, 0)
            tail.validBytes = header.length
            state.segments.set(seq, { bytes: header.length, records: 0 })
          }
        }
        // What replay read must be durable before anyone acts on it, and the cut before new
        // records land after it. After a process crash the tail may be only in the page cache
        // (written, never fsynced), and the last segment's name may not be durable (a crash in
        // createSegment before its directory fsync): a later power loss would take back
        // records recovery acted on, or the whole file with the records appended and
        // acknowledged into it since (test/simulation/log.sim.test.ts found both). PostgreSQL
        // fsyncs its data directory at startup for the same reason.
        await fh.sync()
        await syncDir(fs, dir)
      } catch (err) {
        await fh.close()
        throw err
      }
      segBytes = tail.validBytes
    }

    let records: LogEntry[]
    try {
      records = state.liveEntries()
    } catch (err) {
      await fh.close()
      throw err
    }
    const replayMs = performance.now() - started
    const log = new FileLog(
      dir,
      opts,
      fh,
      seq,
      segBytes,
      state.maxLsn + 1,
      { truncatedBytes, replayedRecords: state.replayed, replayMs },
      state.live,
      records.length,
      state.segments,
    )
    opts.logger.info('log.replayed', {
      dir,
      segments: seqs.length,
      records: state.replayed,
      live: records.length,
      ms: Math.round(replayMs),
    })
    return { log, records }
  }

  /**
   * Durable append: resolves only after the record is written and fsynced. Concurrent appends
   * share one fsync (group commit).
   */
  append(txId: string, body: Record<string, unknown>): Promise<void> {
    let rec: LiveRecord
    try {
      this.assertOpen()
      rec = this.encodeData(txId, body)
    } catch (err) {
      return Promise.reject(err as Error)
    }
    return new Promise<void>((resolve, reject) => {
      this.enqueueData(txId, rec, { resolve, reject })
      this.kick()
    })
  }

  /**
   * Lazy append: written with the next batch (or after LIMITS.logLazyFlushMs), no fsync of its
   * own. Throws synchronously when the log is closed, failed or full, or the record is invalid.
   */
  appendLazy(txId: string, body: Record<string, unknown>): void {
    this.assertOpen()
    this.enqueueData(txId, this.encodeData(txId, body), undefined)
    this.scheduleLazy()
  }

  /**
   * The transaction is finished: its records are not returned after a restart (an END record is
   * written lazily) and they become eligible for compaction. A later append under the same id
   * starts a new, unrelated set of records.
   */
  end(txId: string): void {
    // Presumed abort makes a lost END harmless (the transaction replays and is driven again), so
    // a closed or failed log just forgets it.
    if (this.closed || this.failed !== undefined) return
    const recs = this.live.get(txId)
    if (recs === undefined) return
    this.live.delete(txId)
    this.liveRecords -= sizeOf(recs)
    this.counters.ends++
    // END records skip the queue bound: there is at most one per live transaction, memory the
    // log already holds, and refusing one would keep a finished transaction alive.
    const frame = encodeRecord(RecordKind.end, this.nextLsn++, Buffer.from(txId, 'utf8'), null)
    this.enqueue({ frame, rec: undefined, waiter: undefined, ended: recs })
    this.scheduleLazy()
  }

  stats(): FileLogStats {
    return {
      ...this.counters,
      segments: this.segments.size,
      truncatedBytes: this.replay.truncatedBytes,
      replayedRecords: this.replay.replayedRecords,
      replayMs: this.replay.replayMs,
      liveTransactions: this.live.size,
      pending: this.pendingCount,
    }
  }

  /**
   * Makes everything queued so far durable (lazy records included) and waits until the writer is
   * idle, compaction included, or has taken MAX_CLOSE_TURNS more turns under continuing load.
   */
  async flush(): Promise<void> {
    await new Promise<void>((resolve, reject) => {
      this.assertOpen()
      // An empty durable entry: its batch carries every lazy record queued before it and fsyncs.
      this.enqueue({ frame: EMPTY, rec: undefined, waiter: { resolve, reject } })
      this.kick()
    })
    for (let turn = 0; turn < MAX_CLOSE_TURNS && this.writing; turn++) await this.writer
  }

  /** Writes and fsyncs everything queued (lazy records included), then closes the file. */
  close(): Promise<void> {
    this.closePromise ??= this.closeOnce()
    return this.closePromise
  }

  private async closeOnce(): Promise<void> {
    this.closing = true
    this.opts.timers.clear(this.lazyTimer)
    for (let turn = 0; ; turn++) {
      assert(turn < MAX_CLOSE_TURNS, 'log close did not drain its queue')
      this.kick()
      if (!this.writing) break
      await this.writer
    }
    // Lazy records the timer wrote earlier are on the page cache only: the queue may be empty
    // and still not everything durable (test/simulation/log.sim.test.ts found it). A failure
    // here fails the log, as one in the writer would.
    if (this.failed === undefined) {
      try {
        await this.syncNow()
      } catch (err) {
        this.fail(err)
      }
    }
    this.closed = true
    try {
      await this.fh.close()
    } catch (err) {
      // A failed log may have lost its handle mid-rollover; its failure was already reported.
      if (this.failed === undefined) throw err
    }
  }

  // ---- queue and writer ----

  private assertOpen(): void {
    if (this.failed !== undefined) throw this.failed
    if (this.closing) throw new ShuttingDownError('the log is closed')
  }

  private assertRoom(frameBytes: number): void {
    if (
      this.pendingCount + 1 > this.opts.maxQueuedAppends ||
      this.pendingBytes + frameBytes > this.opts.maxQueuedBytes
    ) {
      throw new LogOverloadedError(
        `log append queue is full (${this.pendingCount} appends, ${this.pendingBytes} bytes waiting; limits ${this.opts.maxQueuedAppends} and ${this.opts.maxQueuedBytes})`,
      )
    }
  }

  /**
   * Validates and frames a data record; throws when it is invalid or the queue is full. Every
   * throw here happens before anything is queued: the caller may treat it as "not written".
   */
  private encodeData(txId: string, body: Record<string, unknown>): LiveRecord {
    const id = Buffer.from(txId, 'utf8')
    if (id.length === 0 || id.length > LIMITS.logMaxTxIdBytes) {
      throw new InternalError(`log transaction id must be 1..${LIMITS.logMaxTxIdBytes} bytes, got ${id.length}`)
    }
    let json: unknown
    try {
      json = JSON.stringify(body)
    } catch (err) {
      // A BigInt or a cycle: a bug of the caller, refused like any invalid record.
      throw new InternalError(`log record body for ${txId} cannot be encoded: ${(err as Error).message}`, {
        cause: err,
      })
    }
    if (typeof json !== 'string' || !json.startsWith('{'))
      throw new InternalError(`log record body for ${txId} is not a JSON object`)
    const lsn = this.nextLsn
    const frame = encodeRecord(RecordKind.data, lsn, id, json)
    if (frame.length > this.opts.maxRecordBytes) {
      throw new LogRecordTooLargeError(
        `log record for ${txId} is ${frame.length} bytes, over the ${this.opts.maxRecordBytes}-byte limit (LIMITS.logMaxRecordBytes); nothing was written`,
      )
    }
    this.assertRoom(frame.length)
    this.nextLsn++
    return { lsn, txId, buf: frame, off: 0, len: frame.length, seg: 0, ended: false }
  }

  private enqueueData(txId: string, rec: LiveRecord, waiter: Waiter | undefined): void {
    addLive(this.live, txId, rec)
    this.liveRecords++
    this.counters.appends++
    this.enqueue({ frame: rec.buf, rec, waiter })
  }

  private enqueue(p: Pending): void {
    this.queue.push(p)
    this.pendingCount++
    this.pendingBytes += p.frame.length
    if (p.waiter !== undefined) this.queuedDurable++
  }

  private scheduleLazy(): void {
    // Many lazy records waiting: write them now rather than grow the queue.
    if (this.queue.length >= this.opts.maxQueuedAppends / 2) {
      this.lazyDue = true
      this.kick()
      return
    }
    if (this.lazyTimer !== undefined || this.writing) return
    this.lazyTimer = this.opts.timers.set(() => {
      this.lazyTimer = undefined
      this.lazyDue = true
      this.kick()
    }, this.opts.lazyFlushMs)
  }

  private shouldWrite(): boolean {
    return (
      this.queue.length > 0 && this.failed === undefined && (this.queuedDurable > 0 || this.lazyDue || this.closing)
    )
  }

  private kick(): void {
    if (this.writing || !this.shouldWrite()) return
    this.writing = true
    this.writer = this.drain()
  }

  private async drain(): Promise<void> {
    try {
      // Not a waiting loop: each turn writes one batch, and it ends when nothing is due.
      while (this.shouldWrite()) {
        const delay = this.opts.groupCommitMaxDelayMs ?? 0
        if (delay > 0 && this.queuedDurable > 0 && !this.closing) await sleep(this.opts.timers, delay)
        const batch = this.queue
        this.queue = []
        this.queuedDurable = 0
        this.lazyDue = false
        if (this.lazyTimer !== undefined) {
          this.opts.timers.clear(this.lazyTimer)
          this.lazyTimer = undefined
        }
        await this.writeBatch(batch)
        await this.maybeCompactByEndedFraction()
      }
    } catch (err) {
      this.fail(err)
    } finally {
      this.writing = false
    }
    // Lazy records queued while this turn ran still need their timer.
    if (this.queue.length > 0 && this.failed === undefined) this.scheduleLazy()
  }

  private async writeBatch(batch: Pending[]): Promise<void> {
    let parts: Buffer[] = []
    let partBytes = 0
    let durable = false
    let rolled = false
    try {
      for (const p of batch) {
        const n = p.frame.length
        // Roll over when this record would overflow a segment that already holds records (a
        // record larger than a segment gets a segment of its own; flush()'s empty entry none).
        if (
          n > 0 &&
          this.segBytes + partBytes + n > this.opts.segmentBytes &&
          this.segBytes + partBytes > SEGMENT_HEADER_BYTES
        ) {
          await this.writeParts(parts, partBytes)
          parts = []
          partBytes = 0
          await this.roll()
          rolled = true
        }
        parts.push(p.frame)
        partBytes += n
        if (p.ended !== undefined) this.unsyncedEnds = true
        if (p.rec !== undefined) {
          p.rec.seg = this.seq
          this.segmentInfo().records++
        }
        if (p.waiter !== undefined) durable = true
      }
      await this.writeParts(parts, partBytes)
      if (durable || this.closing) await this.syncNow()
    } catch (err) {
      const failed = this.fail(err)
      for (const p of batch) p.waiter?.reject(failed)
      this.settle(batch)
      throw failed
    }
    this.settle(batch)
    for (const p of batch) p.waiter?.resolve()
    if (rolled) await this.compact()
  }

  private settle(batch: readonly Pending[]): void {
    for (const p of batch) {
      this.pendingCount--
      this.pendingBytes -= p.frame.length
    }
  }

  private async writeParts(parts: Buffer[], bytes: number): Promise<void> {
    if (bytes === 0) return
    const buf = parts.length === 1 ? (parts[0] as Buffer) : Buffer.concat(parts, bytes)
    const started = performance.now()
    await writeFully(this.fh, buf, this.segBytes)
    this.segBytes += bytes
    this.segmentInfo().bytes = this.segBytes
    this.counters.bytes += bytes
    if (this.opts.sync === 'dsync') {
      // O_DSYNC: what the write returned is durable; counted as this mode's sync.
      this.counters.fsyncs++
      this.unsyncedEnds = false
      this.opts.onSync?.(parts.length, (performance.now() - started) / 1000)
      return
    }
    this.unsynced = true
    this.unsyncedFrames += parts.length
  }

  private async syncNow(): Promise<void> {
    if (!this.unsynced) return
    const started = performance.now()
    if (this.opts.sync === 'datasync') await this.fh.datasync()
    else await this.fh.sync()
    this.counters.fsyncs++
    this.unsynced = false
    this.unsyncedEnds = false
    this.opts.onSync?.(this.unsyncedFrames, (performance.now() - started) / 1000)
    this.unsyncedFrames = 0
  }

  private segmentInfo(): SegmentInfo {
    const info = this.segments.get(this.seq)
    assert(info !== undefined, `segment ${this.seq} is not tracked`)
    return info
  }

  private async roll(): Promise<void> {
    // Seal: a segment that is not the last must never end torn, or replay would call it corrupt.
    await this.syncNow()
    await this.fh.close()
    const seq = this.seq + 1
    this.fh = await createSegment(this.opts.fs, this.dir, seq, this.opts.sync)
    this.seq = seq
    this.segBytes = SEGMENT_HEADER_BYTES
    this.segments.set(seq, { bytes: SEGMENT_HEADER_BYTES, records: 0 })
    this.counters.bytes += SEGMENT_HEADER_BYTES
  }

  private async maybeCompactByEndedFraction(): Promise<void> {
    const fraction = this.opts.compactEndedFraction
    if (fraction === undefined || this.segBytes < this.opts.compactMinBytes) return
    let onDisk = 0
    for (const info of this.segments.values()) onDisk += info.records
    if (onDisk === 0 || 1 - this.liveRecords / onDisk < fraction) return
    await this.roll()
    await this.compact()
  }

  /** See "Compaction" at the top of this file for the steps and why each crash point is safe. */
  private async compact(): Promise<void> {
    const sealed = [...this.segments.keys()].filter((s) => s < this.seq).sort((a, b) => a - b)
    if (sealed.length === 0) return
    // An END takes effect on disk only once it is durable: end() drops its records from `live`
    // at once, so they are not copied, and deleting a segment that holds one before the END is
    // on disk would let a crash lose the END and bring back the transaction's other records
    // without these (test/simulation/log.sim.test.ts found it). ENDs already written are made
    // durable here; a segment holding a record of an END still queued is kept for a later turn.
    if (this.unsyncedEnds) await this.syncNow()
    const pinned = new Set<number>()
    for (const p of this.queue) {
      if (p.ended !== undefined) eachLive(p.ended, (r) => r.seg > 0 && pinned.add(r.seg))
    }
    const liveBytes = new Map<number, number>()
    for (const recs of this.live.values()) {
      eachLive(recs, (r) => {
        if (r.seg > 0 && r.seg < this.seq) liveBytes.set(r.seg, (liveBytes.get(r.seg) ?? 0) + r.len)
      })
    }
    // 1. The longest prefix whose live records fit the carry budget. An oldest segment that is
    //    mostly live would pin every segment behind it, so it is carried anyway once the sealed
    //    segments hold two segments' worth of ended records: copying it costs at most a segment
    //    and frees at least twice that as the following prefixes go.
    const budget = this.opts.compactCarryFraction * this.opts.segmentBytes
    let deadBytes = 0
    for (const s of sealed)
      deadBytes += (this.segments.get(s)?.bytes ?? 0) - SEGMENT_HEADER_BYTES - (liveBytes.get(s) ?? 0)
    const oldestLive = liveBytes.get(sealed[0] as number) ?? 0
    const forceOldest = oldestLive > budget && deadBytes >= 2 * this.opts.segmentBytes
    let carryBytes = 0
    let budgeted = 0
    let cut = 0
    for (const s of sealed) {
      if (pinned.has(s)) break
      const b = liveBytes.get(s) ?? 0
      if (cut === 0 && forceOldest) {
        carryBytes += b
        cut++
        continue
      }
      if (budgeted + b > budget) break
      budgeted += b
      carryBytes += b
      cut++
    }
    if (cut === 0) return
    const doomed = sealed.slice(0, cut)
    const last = doomed[doomed.length - 1] as number
    // 2. Copy forward and fsync before anything is deleted.
    const moved: LiveRecord[] = []
    for (const recs of this.live.values()) {
      eachLive(recs, (r) => {
        if (r.seg > 0 && r.seg <= last) moved.push(r)
      })
    }
    moved.sort((a, b) => a.lsn - b.lsn)
    if (moved.length > 0) {
      await this.writeParts(moved.map(frameOf), carryBytes)
      await this.syncNow()
      for (const r of moved) r.seg = this.seq
      this.segmentInfo().records += moved.length
      this.counters.carried += moved.length
    }
    // 3. Delete oldest first, each unlink durable before the next.
    for (const s of doomed) {
      await this.opts.fs.unlink(join(this.dir, segmentName(s)))
      await syncDir(this.opts.fs, this.dir)
      this.segments.delete(s)
    }
    this.counters.compactions++
    this.opts.logger.info('log.compacted', {
      dir: this.dir,
      deletedSegments: doomed.length,
      carriedRecords: moved.length,
      carriedBytes: carryBytes,
    })
  }

  private fail(err: unknown): LogFailedError {
    if (this.failed === undefined) {
      this.failed =
        err instanceof LogFailedError
          ? err
          : new LogFailedError(`log write failed in ${this.dir}: ${err instanceof Error ? err.message : String(err)}`, {
              cause: err,
            })
      this.opts.logger.error('log.failed', { dir: this.dir, error: this.failed.message })
      const queued = this.queue
      this.queue = []
      this.queuedDurable = 0
      for (const p of queued) p.waiter?.reject(this.failed)
      this.settle(queued)
    }
    return this.failed
  }
}
