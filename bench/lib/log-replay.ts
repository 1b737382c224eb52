// Replay of a large durable log (src/wal/file-log.ts): written first, then timed while
// FileLog.open reads it back. Shared by bench/log-bench.ts and the footprint part.
import { mkdtemp, rm } from 'node:fs/promises'
import { join } from 'node:path'
import { FileLog } from '../../src/wal/file-log.js'

/** One 1 GiB segment: compaction removes nothing, so every record is read back. */
const REPLAY_OPTS = { segmentBytes: 1024 * 1024 * 1024 }
const WRITE_BATCH = 4_096

/** A coordinator's decision record: participants and outcome (DESIGN.md "Commit protocol"). */
export function decision(i: number): Record<string, unknown> {
  return {
    kind: 'commit',
    participants: [`http://orders-${i % 5}.shop.svc:15010`, `http://payments-${i % 3}.shop.svc:15010`],
    deadline: 1_700_000_000_000 + i,
  }
}

export interface ReplayResult {
  readonly writeMs: number
  readonly replayMs: number
  readonly live: number
  readonly replayed: number
  readonly segments: number
  readonly heapMiB: number
}

/** Writes `records` decisions (a share `endedShare` of them then ended) and times their replay. */
export async function measureReplay(parent: string, records: number, endedShare: number): Promise<ReplayResult> {
  const dir = await mkdtemp(join(parent, 'txmesh-log-replay-'))
  try {
    const { log } = await FileLog.open(dir, REPLAY_OPTS)
    const t0 = performance.now()
    const endEvery = endedShare > 0 ? Math.round(1 / (1 - endedShare)) : 0
    for (let b = 0; b < records; b += WRITE_BATCH) {
      const n = Math.min(WRITE_BATCH, records - b)
      await Promise.all(Array.from({ length: n }, (_, j) => log.append(`tx-${b + j}`, decision(b + j))))
      if (endEvery > 0) for (let j = 0; j < n; j++) if ((b + j) % endEvery !== 0) log.end(`tx-${b + j}`)
    }
    await log.close()
    const writeMs = performance.now() - t0
    globalThis.gc?.()
    const heapBefore = process.memoryUsage().heapUsed
    const t1 = performance.now()
    const r = await FileLog.open(dir, REPLAY_OPTS)
    const replayMs = performance.now() - t1
    const heapMiB = (process.memoryUsage().heapUsed - heapBefore) / 2 ** 20
    const s = r.log.stats()
    await r.log.close()
    return { writeMs, replayMs, live: r.records.length, replayed: s.replayedRecords, segments: s.segments, heapMiB }
  } finally {
    await rm(dir, { recursive: true, force: true })
  }
}

// As a child process (the footprint part): `node --max-semi-space-size=2 --import tsx
// bench/lib/log-replay.ts DIR RECORDS` prints one JSON ReplayResult, measured under the sidecar's
// own V8 flags (its small young generation makes a large replay's garbage collection dearer).
if (import.meta.url === `file://${process.argv[1]}`) {
  const [dir, records] = process.argv.slice(2)
  if (dir === undefined || records === undefined) throw new Error('usage: log-replay.ts DIR RECORDS')
  process.stdout.write(JSON.stringify(await measureReplay(dir, Number(records), 0)) + '\n')
}
