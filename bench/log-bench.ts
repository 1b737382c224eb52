// Durable log benchmark (src/wal/file-log.ts), standalone:
//
//   npx tsx bench/log-bench.ts
//   LOG_BENCH_SECONDS=5 LOG_BENCH_DIR=/var/lib/txmesh npx tsx bench/log-bench.ts
//
// Environment:
//   LOG_BENCH_SECONDS      duration of each append measurement (default 3)
//   LOG_BENCH_CONCURRENCY  comma-separated concurrencies (default 1,8,32,128)
//   LOG_BENCH_REPLAY       records in the replay measurement (default 1000000)
//   LOG_BENCH_DIR          parent of the temporary log directories (default the OS tmpdir; put
//                          it on the disk the log will live on: fsync cost is the disk's)
//
// Prints, for fdatasync and fsync: appends/s, fsyncs per append and p50/p99 append latency at
// each concurrency (each in-flight append is one decision waiting to be durable); then the time
// to replay a log of 1M records, all live and with 90% of the transactions ended (plus their END
// records). The replay logs use one 1 GiB segment so compaction removes nothing: every record
// is read back.
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { FileLog, type FileLogOptions } from '../src/wal/file-log.js'
import { decision, measureReplay } from './lib/log-replay.js'

const seconds = Number(process.env.LOG_BENCH_SECONDS ?? 3)
const concurrencies = (process.env.LOG_BENCH_CONCURRENCY ?? '1,8,32,128').split(',').map(Number)
const replayRecords = Number(process.env.LOG_BENCH_REPLAY ?? 1_000_000)
const parent = process.env.LOG_BENCH_DIR ?? tmpdir()

async function withDir<T>(fn: (dir: string) => Promise<T>): Promise<T> {
  const dir = await mkdtemp(join(parent, 'txmesh-log-bench-'))
  try {
    return await fn(dir)
  } finally {
    await rm(dir, { recursive: true, force: true })
  }
}

function percentile(sorted: Float64Array, p: number): number {
  return sorted.length === 0 ? 0 : (sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))] as number)
}

interface AppendResult {
  concurrency: number
  appendsPerSec: number
  fsyncsPerAppend: number
  p50Ms: number
  p99Ms: number
}

async function measureAppends(sync: FileLogOptions['sync'], concurrency: number): Promise<AppendResult> {
  return withDir(async (dir) => {
    const { log } = await FileLog.open(dir, { sync })
    const latencies: number[] = []
    let next = 0
    const until = performance.now() + seconds * 1000
    const worker = async (): Promise<void> => {
      while (performance.now() < until) {
        const i = next++
        const t = performance.now()
        await log.append(`tx-${i}`, decision(i))
        latencies.push(performance.now() - t)
        log.end(`tx-${i}`)
      }
    }
    const started = performance.now()
    await Promise.all(Array.from({ length: concurrency }, worker))
    const elapsed = (performance.now() - started) / 1000
    const s = log.stats()
    await log.close()
    const sorted = Float64Array.from(latencies).sort()
    return {
      concurrency,
      appendsPerSec: s.appends / elapsed,
      fsyncsPerAppend: s.fsyncs / s.appends,
      p50Ms: percentile(sorted, 0.5),
      p99Ms: percentile(sorted, 0.99),
    }
  })
}

const pad = (v: string | number, w: number): string => String(v).padStart(w)

console.log(`txmesh durable log benchmark: node ${process.version}, ${seconds}s per point, logs under ${parent}`)
for (const sync of ['datasync', 'fsync'] as const) {
  console.log(`\nappend (${sync === 'datasync' ? 'fdatasync' : 'fsync'}), each append then ended lazily`)
  console.log(
    `${pad('concurrency', 11)} ${pad('appends/s', 10)} ${pad('fsyncs/append', 13)} ${pad('p50 ms', 8)} ${pad('p99 ms', 8)}`,
  )
  for (const c of concurrencies) {
    const r = await measureAppends(sync, c)
    console.log(
      `${pad(c, 11)} ${pad(Math.round(r.appendsPerSec), 10)} ${pad(r.fsyncsPerAppend.toFixed(3), 13)} ${pad(r.p50Ms.toFixed(2), 8)} ${pad(r.p99Ms.toFixed(2), 8)}`,
    )
  }
}

console.log(`\nreplay of ${replayRecords} records`)
for (const ended of [0, 0.9]) {
  const r = await measureReplay(parent, replayRecords, ended)
  console.log(
    `${ended === 0 ? 'all live      ' : '90% tx ended  '} replay ${pad(r.replayMs.toFixed(0), 6)} ms  (${r.replayed} records read incl. END, ${r.live} live, ${r.segments} segments, heap +${r.heapMiB.toFixed(0)} MiB; written in ${(r.writeMs / 1000).toFixed(1)} s)`,
  )
}
