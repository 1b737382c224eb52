// The log's files: creating a segment (durable in its directory before anything is acknowledged
// in it), positional writes to the end, and the directory syncs that make names durable.
import assert from 'node:assert/strict'
import { constants as fsConstants } from 'node:fs'
import type { FileHandle } from 'node:fs/promises'
import { dirname, join, resolve as resolvePath } from 'node:path'
import type { FileLogOptions, LogFs } from './options.js'
import { encodeSegmentHeader, segmentName } from './record.js'

// A positional write that keeps returning short counts is a broken disk, not something to spin on.
const MAX_WRITE_TURNS = 1_000

/** Open flags of a segment written to: O_DSYNC in `dsync` mode; `create` fails if it exists. */
export function segmentFlags(sync: FileLogOptions['sync'], create: boolean): string | number {
  if (sync !== 'dsync') return create ? 'wx+' : 'r+'
  return fsConstants.O_RDWR | (fsConstants.O_DSYNC as number) | (create ? fsConstants.O_CREAT | fsConstants.O_EXCL : 0)
}

export async function createSegment(
  fs: LogFs,
  dir: string,
  seq: number,
  sync: FileLogOptions['sync'],
): Promise<FileHandle> {
  const fh = await fs.open(join(dir, segmentName(seq)), segmentFlags(sync, true))
  try {
    await writeFully(fh, encodeSegmentHeader(seq), 0)
    await fh.sync()
    // The new name must be durable before anything acknowledged lands in the file.
    await syncDir(fs, dir)
  } catch (err) {
    await fh.close()
    throw err
  }
  return fh
}

export async function writeFully(fh: FileHandle, buf: Buffer, position: number): Promise<void> {
  let off = 0
  for (let turn = 0; off < buf.length; turn++) {
    assert(turn < MAX_WRITE_TURNS, 'log write made no progress')
    const { bytesWritten } = await fh.write(buf, off, buf.length - off, position + off)
    off += bytesWritten
  }
}

// Creates the log directory. A directory created here must itself be durable in its parent, or a
// power loss could take the whole log with it; and so must every level above it that an earlier
// process may have created and crashed before syncing (mkdir -p of several levels): each
// directory on the path up to the root is fsynced in its parent (bounded by the path's depth).
// test/simulation/log.sim.test.ts found the one-level case, the mesh simulation
// (test/simulation/twopc.sim.test.ts seed 29404) the two-level one: /data and /data/txmesh made by
// a process that died, the next one syncing only /data, a power loss then dropping /data.
export async function ensureDir(fs: LogFs, dir: string): Promise<void> {
  await fs.mkdir(dir, { recursive: true })
  for (let d = resolvePath(dir); d !== dirname(d); d = dirname(d)) await syncDir(fs, dirname(d))
}

export async function syncDir(fs: LogFs, dir: string): Promise<void> {
  const d = await fs.open(dir, 'r')
  try {
    await d.sync()
  } finally {
    await d.close()
  }
}
