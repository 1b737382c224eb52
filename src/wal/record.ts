// On-disk format of the durable log (DESIGN.md "Durable log"): segment headers and record frames.
// Pure encoding and decoding, no I/O, so the format can be tested byte by byte.
//
// Segment file `<16-digit seq>.log`:
//   header (20 bytes): magic "TXML" | version u8 | 3 reserved zero bytes | seq u64 LE | crc32 u32 LE
//                      (the crc covers the 16 bytes before it)
//   then records, back to back, to the end of the file.
// Record frame:
//   length u32 LE (payload bytes) | crc32 u32 LE of the payload | payload
//   (as LevelDB's log, the length is not under the checksum: a damaged length frames the wrong
//   bytes, which then fail the checksum or the bounds check.)
// Payload (compact binary, little endian):
//   kind u8 (1 data, 2 end) | lsn u64 | txId length u8 | txId utf8 | body JSON utf8 (data only)
//
// The lsn is the record's log sequence number, unique and increasing in append order. Compaction
// copies a live record forward byte for byte, lsn included, so replay recognises a copy of a
// record it has already seen and keeps one (see file-log.ts, "Compaction").

import { crc32 } from 'node:zlib'

export const SEGMENT_MAGIC = Buffer.from('TXML', 'latin1')
// Bumped on any change to the header, the frame or the payload layout; a reader refuses versions
// it does not know instead of guessing.
export const FORMAT_VERSION = 1
export const SEGMENT_HEADER_BYTES = 20
export const FRAME_HEADER_BYTES = 8

export const RecordKind = { data: 1, end: 2 } as const
export type RecordKind = (typeof RecordKind)[keyof typeof RecordKind]

// kind + lsn + txId length byte + at least one byte of txId.
const PAYLOAD_FIXED_BYTES = 1 + 8 + 1
export const MIN_PAYLOAD_BYTES = PAYLOAD_FIXED_BYTES + 1
const TWO_POW_32 = 2 ** 32

const SEGMENT_NAME = /^(\d{16})\.log$/

export function segmentName(seq: number): string {
  return `${String(seq).padStart(16, '0')}.log`
}

export function parseSegmentName(name: string): number | undefined {
  const m = SEGMENT_NAME.exec(name)
  return m?.[1] === undefined ? undefined : Number(m[1])
}

export function encodeSegmentHeader(seq: number): Buffer {
  const b = Buffer.alloc(SEGMENT_HEADER_BYTES)
  SEGMENT_MAGIC.copy(b, 0)
  b.writeUInt8(FORMAT_VERSION, 4)
  writeU64(b, seq, 8)
  b.writeUInt32LE(crc32(b.subarray(0, 16)), 16)
  return b
}

export type HeaderCheck =
  | { readonly ok: true }
  // torn: short or failing its checksum, as a crash while creating the segment leaves it.
  | { readonly ok: false; readonly torn: boolean; readonly reason: string }

export function checkSegmentHeader(b: Buffer, expectedSeq: number): HeaderCheck {
  if (b.length < SEGMENT_HEADER_BYTES)
    return { ok: false, torn: true, reason: `segment header is ${b.length} bytes, expected ${SEGMENT_HEADER_BYTES}` }
  if (b.readUInt32LE(16) !== crc32(b.subarray(0, 16)))
    return { ok: false, torn: true, reason: 'segment header checksum mismatch' }
  if (!b.subarray(0, 4).equals(SEGMENT_MAGIC))
    return { ok: false, torn: false, reason: 'not a txmesh log segment (bad magic)' }
  const version = b.readUInt8(4)
  if (version !== FORMAT_VERSION)
    return {
      ok: false,
      torn: false,
      reason: `unsupported log format version ${version} (this build reads ${FORMAT_VERSION})`,
    }
  const seq = readU64(b, 8)
  if (seq !== expectedSeq)
    return { ok: false, torn: false, reason: `segment header says seq ${seq}, file name says ${expectedSeq}` }
  return { ok: true }
}

/** Frames one record. `bodyJson` is the body already serialised (data records) or null (end). */
export function encodeRecord(kind: RecordKind, lsn: number, txId: Buffer, bodyJson: string | null): Buffer {
  const bodyBytes = bodyJson === null ? 0 : Buffer.byteLength(bodyJson, 'utf8')
  const payloadBytes = PAYLOAD_FIXED_BYTES + txId.length + bodyBytes
  const b = Buffer.allocUnsafe(FRAME_HEADER_BYTES + payloadBytes)
  b.writeUInt32LE(payloadBytes, 0)
  let o = FRAME_HEADER_BYTES
  b.writeUInt8(kind, o)
  writeU64(b, lsn, o + 1)
  b.writeUInt8(txId.length, o + 9)
  o += PAYLOAD_FIXED_BYTES
  txId.copy(b, o)
  o += txId.length
  if (bodyJson !== null) b.write(bodyJson, o, bodyBytes, 'utf8')
  b.writeUInt32LE(frameChecksum(b, 0, payloadBytes), 4)
  return b
}

export interface DecodedRecord {
  readonly kind: RecordKind
  readonly lsn: number
  readonly txId: string
  /** Total bytes of the frame: FRAME_HEADER_BYTES + payload. */
  readonly frameBytes: number
}

export type Decoded =
  | { readonly kind: 'record'; readonly record: DecodedRecord }
  // The bytes end before the frame does: read more, or at end of file it is a torn tail.
  | { readonly kind: 'short' }
  // The frame cannot be a record: torn or corrupt (a crash leaves garbage or zeros at the tail).
  | { readonly kind: 'bad'; readonly reason: string }
  // A well-formed frame (its checksum holds) that this build does not understand: never
  // truncated away, since it was written on purpose by a newer build.
  | { readonly kind: 'unsupported'; readonly reason: string }

/** Decodes the frame starting at `off` in `b[0, end)`. */
export function decodeRecord(b: Buffer, off: number, end: number, maxPayloadBytes: number): Decoded {
  if (end - off < FRAME_HEADER_BYTES) return { kind: 'short' }
  const payloadBytes = b.readUInt32LE(off)
  if (payloadBytes < MIN_PAYLOAD_BYTES || payloadBytes > maxPayloadBytes) {
    return { kind: 'bad', reason: `record length ${payloadBytes} outside [${MIN_PAYLOAD_BYTES}, ${maxPayloadBytes}]` }
  }
  if (end - off < FRAME_HEADER_BYTES + payloadBytes) return { kind: 'short' }
  if (b.readUInt32LE(off + 4) !== frameChecksum(b, off, payloadBytes))
    return { kind: 'bad', reason: 'record checksum mismatch' }
  const p = off + FRAME_HEADER_BYTES
  const kind = b.readUInt8(p)
  if (kind !== RecordKind.data && kind !== RecordKind.end)
    return { kind: 'unsupported', reason: `unknown record kind ${kind}` }
  const txIdBytes = b.readUInt8(p + 9)
  const bodyStart = p + PAYLOAD_FIXED_BYTES + txIdBytes
  const frameEnd = p + payloadBytes
  if (txIdBytes === 0 || bodyStart > frameEnd)
    return { kind: 'unsupported', reason: `transaction id length ${txIdBytes} does not fit the record` }
  if (kind === RecordKind.end && bodyStart !== frameEnd)
    return { kind: 'unsupported', reason: 'end record with a body' }
  return {
    kind: 'record',
    record: {
      kind,
      lsn: readU64(b, p + 1),
      txId: b.toString('utf8', p + PAYLOAD_FIXED_BYTES, bodyStart),
      frameBytes: FRAME_HEADER_BYTES + payloadBytes,
    },
  }
}

/** Offset in `b` where the body JSON of the data record frame starting at `frameOff` begins. */
export function bodyStartOf(b: Buffer, frameOff: number): number {
  return frameOff + FRAME_HEADER_BYTES + PAYLOAD_FIXED_BYTES + b.readUInt8(frameOff + FRAME_HEADER_BYTES + 9)
}

function frameChecksum(b: Buffer, off: number, payloadBytes: number): number {
  // One zlib call per record: at a million records the per-call cost is most of the replay's
  // checksum time, the bytes themselves are cheap.
  return crc32(new Uint8Array(b.buffer, b.byteOffset + off + FRAME_HEADER_BYTES, payloadBytes))
}

// Sequence numbers stay below 2^53 (safe integers): at a million appends a second that is 285
// years of appends.
function writeU64(b: Buffer, n: number, off: number): void {
  b.writeUInt32LE(n % TWO_POW_32, off)
  b.writeUInt32LE(Math.floor(n / TWO_POW_32), off + 4)
}

function readU64(b: Buffer, off: number): number {
  return b.readUInt32LE(off + 4) * TWO_POW_32 + b.readUInt32LE(off)
}
