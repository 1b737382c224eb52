// The log's live records in memory: where each frame is (its own buffer, or a slice of the
// replay arena) and which segment holds it, grouped by transaction.

export interface LiveRecord {
  readonly lsn: number
  readonly txId: string
  /**
   * The frame is buf[off, off + len): its own buffer for an append; for replayed records first a
   * slice of the read chunk, then a shared arena (no per-record buffers for a million records).
   */
  buf: Buffer
  off: number
  readonly len: number
  /** Newest segment that holds this record; 0 while it is still queued. */
  seg: number
  /** Replay only: its transaction's END was read. */
  ended: boolean
}

/**
 * A transaction's live records: the record itself when it has one (a coordinator's decision, a
 * branch's PREPARED: the common case), an array from the second on. No array per transaction
 * saves a million objects to allocate, and for the garbage collector to move, on a large replay.
 */
export type LiveSet = LiveRecord | LiveRecord[]

export function sizeOf(set: LiveSet): number {
  return Array.isArray(set) ? set.length : 1
}

export function eachLive(set: LiveSet, fn: (r: LiveRecord) => void): void {
  if (Array.isArray(set)) for (const r of set) fn(r)
  else fn(set)
}

export function addLive(map: Map<string, LiveSet>, txId: string, rec: LiveRecord): void {
  const set = map.get(txId)
  if (set === undefined) map.set(txId, rec)
  else if (Array.isArray(set)) set.push(rec)
  else map.set(txId, [set, rec])
}

export function frameOf(r: LiveRecord): Buffer {
  return r.off === 0 && r.len === r.buf.length ? r.buf : r.buf.subarray(r.off, r.off + r.len)
}

export interface SegmentInfo {
  bytes: number
  /** Data records (originals and copies) it holds. */
  records: number
}

export function lowerBound(recs: readonly LiveRecord[], lsn: number): number {
  let lo = 0
  let hi = recs.length
  while (lo < hi) {
    const mid = (lo + hi) >>> 1
    if ((recs[mid] as LiveRecord).lsn < lsn) lo = mid + 1
    else hi = mid
  }
  return lo
}
