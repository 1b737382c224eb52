// Replay of the log at open (the header of file-log.ts says what a torn tail and damage in an
// earlier segment mean): the segments read in order, one record kept per lsn, ended
// transactions dropped, the live records packed into a shared arena.
import assert from 'node:assert/strict'
import { LogCorruptError } from '../errors.js'
import { LIMITS } from '../limits.js'
import { addLive, eachLive, lowerBound, sizeOf, type LiveRecord, type LiveSet, type SegmentInfo } from './live.js'
import type { LogEntry, LogFs } from './options.js'
import {
  FRAME_HEADER_BYTES,
  RecordKind,
  SEGMENT_HEADER_BYTES,
  bodyStartOf,
  checkSegmentHeader,
  decodeRecord,
  type DecodedRecord,
} from './record.js'

export class ReplayState {
  readonly live = new Map<string, LiveSet>()
  readonly segments = new Map<number, SegmentInfo>()
  maxLsn = 0
  replayed = 0
  // Data records in lsn order as read (originals come in lsn order; only a copy whose original
  // is gone arrives out of order). Ended ones are dropped by repack().
  private order: LiveRecord[] = []
  private ordered = true
  private liveCount = 0
  private liveBytes = 0
  // Bytes of read chunks that records may still point into.
  private retainedBytes = 0

  retain(bytes: number): void {
    this.retainedBytes += bytes
  }

  apply(r: DecodedRecord, buf: Buffer, off: number, seq: number): void {
    this.replayed++
    if (r.kind === RecordKind.end) {
      const recs = this.live.get(r.txId)
      if (recs !== undefined) {
        eachLive(recs, (rec) => {
          rec.ended = true
          this.liveBytes -= rec.len
        })
        this.liveCount -= sizeOf(recs)
        this.live.delete(r.txId)
      }
      if (r.lsn > this.maxLsn) this.maxLsn = r.lsn
      this.maybeRepack()
      return
    }
    if (r.lsn > this.maxLsn) {
      // An original: lsns grow in file order.
      this.maxLsn = r.lsn
      const rec: LiveRecord = { lsn: r.lsn, txId: r.txId, buf, off, len: r.frameBytes, seg: seq, ended: false }
      addLive(this.live, r.txId, rec)
      this.add(rec)
      return
    }
    // A copy made by compaction: keep one record per lsn, remember the newer segment.
    const set = this.live.get(r.txId)
    const recs = set === undefined ? [] : Array.isArray(set) ? set : [set]
    if (recs !== set) this.live.set(r.txId, recs)
    const i = lowerBound(recs, r.lsn)
    const existing = recs[i]
    if (existing !== undefined && existing.lsn === r.lsn) {
      existing.seg = seq
      return
    }
    const rec: LiveRecord = { lsn: r.lsn, txId: r.txId, buf, off, len: r.frameBytes, seg: seq, ended: false }
    recs.splice(i, 0, rec)
    this.ordered = false
    this.add(rec)
  }

  private add(rec: LiveRecord): void {
    this.order.push(rec)
    this.liveCount++
    this.liveBytes += rec.len
  }

  // Memory stays proportional to the live records, not to the log: once ended records dominate,
  // the live frames move to a fresh arena and the chunks they were read into can be collected.
  private maybeRepack(): void {
    if (this.order.length > 2 * this.liveCount + LIMITS.logReplayEndedSlack || this.needsRepack()) this.repack()
  }

  private needsRepack(): boolean {
    return this.retainedBytes > 2 * this.liveBytes + LIMITS.logReadChunkBytes * 4
  }

  private repack(): void {
    this.order = this.order.filter((r) => !r.ended)
    const arena = Buffer.allocUnsafe(this.liveBytes)
    let at = 0
    for (const r of this.order) {
      r.buf.copy(arena, at, r.off, r.off + r.len)
      r.buf = arena
      r.off = at
      at += r.len
    }
    assert(at === this.liveBytes, 'replay live byte count drifted')
    this.retainedBytes = at
  }

  liveEntries(): LogEntry[] {
    // Records keep pointing into the chunks they were read into unless those hold mostly ended
    // records (the repack rule during replay): copying a log that is all live into a fresh
    // arena would only double its memory for a moment and cost a second pass over it.
    if (this.needsRepack()) this.repack()
    else if (this.order.length > this.liveCount) this.order = this.order.filter((r) => !r.ended)
    if (!this.ordered) this.order.sort((a, b) => a.lsn - b.lsn)
    return this.order.map((rec) => {
      const bodyStart = bodyStartOf(rec.buf, rec.off)
      let body: unknown
      try {
        body = JSON.parse(rec.buf.toString('utf8', bodyStart, rec.off + rec.len))
      } catch (err) {
        throw new LogCorruptError(
          `log record lsn ${rec.lsn} of ${rec.txId} has a valid checksum but its body is not JSON`,
          { cause: err },
        )
      }
      if (typeof body !== 'object' || body === null || Array.isArray(body))
        throw new LogCorruptError(`log record lsn ${rec.lsn} of ${rec.txId} has a body that is not a JSON object`)
      return { txId: rec.txId, body: body as Record<string, unknown> }
    })
  }
}

export interface SegmentReplay {
  readonly seq: number
  /** Bytes up to the end of the last good record (0 when even the header is torn). */
  validBytes: number
  readonly records: number
  readonly dropped: { readonly bytes: number; readonly reason: string } | undefined
}

export async function replaySegment(
  fs: LogFs,
  file: string,
  seq: number,
  isLast: boolean,
  maxPayload: number,
  chunkBytes: number,
  state: ReplayState,
): Promise<SegmentReplay> {
  const fh = await fs.open(file, 'r')
  try {
    const size = (await fh.stat()).size
    const head = Buffer.alloc(SEGMENT_HEADER_BYTES)
    const { bytesRead } = await fh.read(head, 0, SEGMENT_HEADER_BYTES, 0)
    const hc = checkSegmentHeader(head.subarray(0, bytesRead), seq)
    if (!hc.ok) {
      // A crash while a segment is created leaves a short or unsynced header, and nothing after
      // it: the header is fsynced before any record is written. Only the last segment can be new.
      if (hc.torn && isLast && size <= SEGMENT_HEADER_BYTES)
        return { seq, validBytes: 0, records: 0, dropped: { bytes: size, reason: hc.reason } }
      throw new LogCorruptError(`log segment ${file}: ${hc.reason}`, { file, offset: 0 })
    }
    // Room for a full chunk after the unread part of an incomplete frame (at most one frame). A
    // fresh buffer per read: replayed records point into it instead of being copied one by one.
    const cap = chunkBytes + FRAME_HEADER_BYTES + maxPayload
    let buf = Buffer.alloc(0)
    let bufStart = SEGMENT_HEADER_BYTES // file offset of buf[0]
    let bufLen = 0
    let pos = SEGMENT_HEADER_BYTES // file offset of the next frame
    let records = 0
    // Bounded: every turn consumes a frame, reads at least one byte, or returns.
    for (;;) {
      const off = pos - bufStart
      const d = decodeRecord(buf, off, bufLen, maxPayload)
      if (d.kind === 'record') {
        state.apply(d.record, buf, off, seq)
        if (d.record.kind === RecordKind.data) records++
        pos += d.record.frameBytes
        continue
      }
      if (d.kind === 'short') {
        const readTo = bufStart + bufLen
        if (readTo < size) {
          const keep = bufLen - off
          const next = Buffer.allocUnsafe(Math.min(cap, keep + size - readTo))
          buf.copy(next, 0, off, bufLen)
          buf = next
          const { bytesRead: n } = await fh.read(buf, keep, buf.length - keep, readTo)
          state.retain(keep + n)
          bufStart = pos
          bufLen = keep + n
          if (n > 0) continue
        }
        if (pos === size) return { seq, validBytes: pos, records, dropped: undefined }
        if (isLast)
          return {
            seq,
            validBytes: pos,
            records,
            dropped: { bytes: size - pos, reason: 'record cut short by the end of the file' },
          }
        throw new LogCorruptError(
          `log segment ${file} offset ${pos}: record cut short by the end of the file, in a segment that is not the last`,
          { file, offset: pos },
        )
      }
      if (d.kind === 'bad' && isLast)
        return { seq, validBytes: pos, records, dropped: { bytes: size - pos, reason: d.reason } }
      const where =
        d.kind === 'bad'
          ? 'in a segment that is not the last (only the last one can have a torn tail)'
          : 'written by a newer format'
      throw new LogCorruptError(`log segment ${file} offset ${pos}: ${d.reason}, ${where}`, { file, offset: pos })
    }
  } finally {
    await fh.close()
  }
}
