import { appendFile, mkdir, mkdtemp, readFile, readdir, rm, stat, truncate, unlink, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { crc32 } from 'node:zlib'
import { afterEach, describe, expect, it } from 'vitest'
import { FileLog, type FileLogOptions, type LogEntry } from '../../src/wal/file-log.js'
import { SEGMENT_HEADER_BYTES, segmentName } from '../../src/wal/record.js'

const dirs: string[] = []
async function tmp(): Promise<string> {
  const d = await mkdtemp(join(tmpdir(), 'txmesh-log-'))
  dirs.push(d)
  return d
}
afterEach(async () => {
  for (const d of dirs.splice(0)) await rm(d, { recursive: true, force: true })
})

async function reopen(dir: string, opts: Partial<FileLogOptions> = {}): Promise<{ log: FileLog; records: LogEntry[] }> {
  return FileLog.open(dir, opts)
}

async function replayed(dir: string, opts: Partial<FileLogOptions> = {}): Promise<LogEntry[]> {
  const { log, records } = await reopen(dir, opts)
  await log.close()
  return records
}

async function segmentFiles(dir: string): Promise<string[]> {
  return (await readdir(dir)).filter((n) => n.endsWith('.log')).sort()
}

function seg(dir: string, seq: number): string {
  return join(dir, segmentName(seq))
}

describe('FileLog', () => {
  it('replays appended records in append order after reopen', async () => {
    const dir = await tmp()
    const { log, records } = await reopen(dir)
    expect(records).toEqual([])
    await log.append('tx-a', { kind: 'prepared', coordinator: 'http://10.0.0.1:15010' })
    await log.append('tx-b', { kind: 'commit', participants: ['p1', 'p2'], nested: { deep: [1, 2, { x: null }] } })
    await log.append('tx-a', { kind: 'commit' })
    await log.append('tx-ü-日本', { kind: 'prepared', note: 'unicode ids and bodies: ✓' })
    expect(log.stats().appends).toBe(4)
    await log.close()

    expect(await replayed(dir)).toEqual([
      { txId: 'tx-a', body: { kind: 'prepared', coordinator: 'http://10.0.0.1:15010' } },
      { txId: 'tx-b', body: { kind: 'commit', participants: ['p1', 'p2'], nested: { deep: [1, 2, { x: null }] } } },
      { txId: 'tx-a', body: { kind: 'commit' } },
      { txId: 'tx-ü-日本', body: { kind: 'prepared', note: 'unicode ids and bodies: ✓' } },
    ])
    expect(await segmentFiles(dir)).toEqual(['0000000000000001.log'])
  })

  it('does not return records of ended transactions after reopen, and a later append under the same id starts afresh', async () => {
    const dir = await tmp()
    const { log } = await reopen(dir)
    await Promise.all([log.append('a', { n: 1 }), log.append('b', { n: 2 }), log.append('c', { n: 3 })])
    await log.append('b', { n: 4 })
    log.end('b')
    log.end('never-appended') // no records: nothing to end, nothing written
    log.end('a')
    await log.append('a', { n: 5 }) // a new life of `a`: only this record is live
    expect(log.stats()).toMatchObject({ ends: 2, liveTransactions: 2 })
    await log.close()

    expect(await replayed(dir)).toEqual([
      { txId: 'c', body: { n: 3 } },
      { txId: 'a', body: { n: 5 } },
    ])
  })

  it('writes lazy records with the next durable batch, or alone without an fsync after lazyFlushMs (fdatasync mode)', async () => {
    const dir = await tmp()
    const { log } = await reopen(dir, { lazyFlushMs: 50, sync: 'datasync' })
    log.appendLazy('lazy-1', { n: 1 })
    expect(log.stats()).toMatchObject({ bytes: 0, fsyncs: 0 })
    await log.append('durable', { n: 2 })
    // One fsync covered both.
    expect(log.stats().fsyncs).toBe(1)
    const before = log.stats().bytes
    log.appendLazy('lazy-2', { n: 3 })
    log.end('durable')
    await new Promise((r) => setTimeout(r, 200))
    expect(log.stats().bytes).toBeGreaterThan(before)
    expect(log.stats().fsyncs).toBe(1)
    await log.close()
    expect(await replayed(dir)).toEqual([
      { txId: 'lazy-1', body: { n: 1 } },
      { txId: 'lazy-2', body: { n: 3 } },
    ])
  })

  it('with O_DSYNC (the default here) a batch is durable in one write, lazy records riding with it or written durable alone', async () => {
    const dir = await tmp()
    const { log } = await reopen(dir, { lazyFlushMs: 50 })
    log.appendLazy('lazy-1', { n: 1 })
    expect(log.stats()).toMatchObject({ bytes: 0, fsyncs: 0 })
    await log.append('durable', { n: 2 })
    // One durable write covered both.
    expect(log.stats().fsyncs).toBe(1)
    const before = log.stats().bytes
    log.appendLazy('lazy-2', { n: 3 })
    await new Promise((r) => setTimeout(r, 200))
    // Written by the lazy timer: with O_DSYNC that write is durable too (counted as a sync).
    expect(log.stats().bytes).toBeGreaterThan(before)
    expect(log.stats().fsyncs).toBe(2)
    await log.close()
    expect(await replayed(dir)).toEqual([
      { txId: 'lazy-1', body: { n: 1 } },
      { txId: 'durable', body: { n: 2 } },
      { txId: 'lazy-2', body: { n: 3 } },
    ])
  })

  it('detects a torn tail, truncates it, and appends after it', async () => {
    const dir = await tmp()
    const { log } = await reopen(dir)
    for (let i = 0; i < 10; i++) await log.append(`tx-${i}`, { i, pad: 'p'.repeat(i * 3) })
    await log.close()
    const file = seg(dir, 1)
    const full = (await stat(file)).size
    const lastFrame = 8 + 1 + 8 + 1 + 'tx-9'.length + JSON.stringify({ i: 9, pad: 'p'.repeat(27) }).length
    await truncate(file, full - 5) // the crash cut the last record 5 bytes short

    const r = await reopen(dir)
    expect(r.records.map((e) => e.txId)).toEqual(Array.from({ length: 9 }, (_, i) => `tx-${i}`))
    expect(r.log.stats().truncatedBytes).toBe(lastFrame - 5)
    expect((await stat(file)).size).toBe(full - lastFrame)
    await r.log.append('tx-after-1', { ok: true })
    await r.log.append('tx-after-2', { ok: true })
    await r.log.close()

    const again = await reopen(dir)
    expect(again.records.map((e) => e.txId)).toEqual([
      ...Array.from({ length: 9 }, (_, i) => `tx-${i}`),
      'tx-after-1',
      'tx-after-2',
    ])
    expect(again.log.stats().truncatedBytes).toBe(0)
    await again.log.close()
  })

  it('truncates a zero-filled tail (size extended, data never written)', async () => {
    const dir = await tmp()
    const { log } = await reopen(dir)
    for (let i = 0; i < 3; i++) await log.append(`tx-${i}`, { i })
    await log.close()
    await appendFile(seg(dir, 1), Buffer.alloc(4096))
    const r = await reopen(dir)
    expect(r.records).toHaveLength(3)
    expect(r.log.stats().truncatedBytes).toBe(4096)
    await r.log.close()
  })

  it('drops the last record when one of its bytes is flipped, and keeps the records before it', async () => {
    const dir = await tmp()
    const { log } = await reopen(dir)
    await log.append('tx-1', { v: 'first' })
    await log.append('tx-2', { v: 'second' })
    await log.append('tx-3', { v: 'LAST-MARKER' })
    await log.close()
    const file = seg(dir, 1)
    const bytes = await readFile(file)
    const at = bytes.indexOf('LAST-MARKER')
    expect(at).toBeGreaterThan(0)
    bytes[at + 3] = (bytes[at + 3] as number) ^ 0x01
    await writeFile(file, bytes)

    const r = await reopen(dir)
    expect(r.records).toEqual([
      { txId: 'tx-1', body: { v: 'first' } },
      { txId: 'tx-2', body: { v: 'second' } },
    ])
    expect(r.log.stats().truncatedBytes).toBeGreaterThan(0)
    await r.log.close()
  })

  it('resets a last segment whose header was torn while it was created', async () => {
    const dir = await tmp()
    const { log } = await reopen(dir)
    await log.append('tx-1', { n: 1 })
    await log.close()
    await writeFile(seg(dir, 2), Buffer.from('TXML\x01\x00')) // crash mid-header
    const r = await reopen(dir)
    expect(r.records.map((e) => e.txId)).toEqual(['tx-1'])
    expect(r.log.stats().truncatedBytes).toBe(6)
    await r.log.append('tx-2', { n: 2 })
    await r.log.close()
    expect((await stat(seg(dir, 2))).size).toBeGreaterThan(SEGMENT_HEADER_BYTES)
    expect((await replayed(dir)).map((e) => e.txId)).toEqual(['tx-1', 'tx-2'])
  })

  it('raises TXM_LOG_CORRUPT for a damaged header of a segment that holds records, even the last one', async () => {
    const dir = await tmp()
    const { log } = await reopen(dir)
    await log.append('tx-1', { n: 1 })
    await log.close()
    const bytes = await readFile(seg(dir, 1))
    bytes[9] = (bytes[9] as number) ^ 0x10 // the header was fsynced before any record: not a tear
    await writeFile(seg(dir, 1), bytes)
    await expect(reopen(dir)).rejects.toMatchObject({ code: 'TXM_LOG_CORRUPT', offset: 0 })
    expect((await stat(seg(dir, 1))).size).toBe(bytes.length)
  })

  it('raises TXM_LOG_CORRUPT for a corrupt record in a segment that is not the last', async () => {
    const dir = await tmp()
    // No compaction copies (carry budget 0): the first segments stay as written.
    const { log } = await reopen(dir, { segmentBytes: 1024, compactCarryFraction: 0 })
    for (let i = 0; i < 60; i++) await log.append(`tx-${i}`, { i, pad: 'x'.repeat(20) })
    await log.close()
    expect((await segmentFiles(dir)).length).toBeGreaterThan(2)
    const file = seg(dir, 1)
    const bytes = await readFile(file)
    const mid = SEGMENT_HEADER_BYTES + 200
    bytes[mid] = (bytes[mid] as number) ^ 0xff
    await writeFile(file, bytes)
    const sizeBefore = bytes.length

    await expect(reopen(dir)).rejects.toMatchObject({ code: 'TXM_LOG_CORRUPT', status: 500, file })
    await expect(reopen(dir)).rejects.toThrow(/0000000000000001\.log offset \d+: .*not the last/)
    // Nothing was truncated or deleted to get past it.
    expect((await stat(file)).size).toBe(sizeBefore)
  })

  it('raises TXM_LOG_CORRUPT for a short non-last segment, a missing segment, and an unknown format version', async () => {
    const short = await tmp()
    {
      const { log } = await reopen(short, { segmentBytes: 512, compactCarryFraction: 0 })
      for (let i = 0; i < 60; i++) await log.append(`tx-${i}`, { i })
      await log.close()
      expect((await segmentFiles(short)).length).toBeGreaterThan(3)
      const size = (await stat(seg(short, 1))).size
      await truncate(seg(short, 1), size - 3)
      await expect(reopen(short)).rejects.toMatchObject({ code: 'TXM_LOG_CORRUPT' })
      await unlink(seg(short, 2))
      await expect(reopen(short)).rejects.toThrow(/0000000000000002\.log is missing/)
    }
    const version = await tmp()
    {
      const { log } = await reopen(version)
      await log.append('tx', { n: 1 })
      await log.close()
      const bytes = await readFile(seg(version, 1))
      bytes[4] = 2 // a newer build's format, with a valid header checksum
      bytes.writeUInt32LE(crc32(bytes.subarray(0, 16)), 16)
      await writeFile(seg(version, 1), bytes)
      // Even as the last segment it is not "torn": it is refused, not truncated away.
      await expect(reopen(version)).rejects.toThrow(/unsupported log format version 2/)
      expect((await stat(seg(version, 1))).size).toBe(bytes.length)
    }
  })

  it('shares fsyncs between concurrent appends (group commit)', async () => {
    const dir = await tmp()
    const { log } = await reopen(dir)
    await Promise.all(Array.from({ length: 200 }, (_, i) => log.append(`tx-${i}`, { i })))
    const s = log.stats()
    expect(s.appends).toBe(200)
    expect(s.fsyncs).toBeGreaterThan(0)
    expect(s.fsyncs).toBeLessThan(s.appends / 4)
    await log.close()
    const records = await replayed(dir)
    expect(records.map((e) => e.txId)).toEqual(Array.from({ length: 200 }, (_, i) => `tx-${i}`))
  })

  it('rejects appends past the queue bound with TXM_LOG_OVERLOADED and writes none of them', async () => {
    const dir = await tmp()
    const { log } = await reopen(dir, { maxQueuedAppends: 10 })
    const results = await Promise.allSettled(Array.from({ length: 50 }, (_, i) => log.append(`tx-${i}`, { i })))
    const ok = results.flatMap((r, i) => (r.status === 'fulfilled' ? [`tx-${i}`] : []))
    const refused = results.flatMap((r) => (r.status === 'rejected' ? [r.reason as unknown] : []))
    expect(ok).toHaveLength(10)
    expect(refused).toHaveLength(40)
    for (const e of refused) expect(e).toMatchObject({ code: 'TXM_LOG_OVERLOADED', status: 503 })
    expect(() => {
      for (let i = 0; i < 20; i++) log.appendLazy(`lazy-${i}`, { i })
    }).toThrow(/queue is full/)
    // Once the queue drains, appends are accepted again.
    await log.flush()
    await log.append('later', { ok: true })
    await log.close()
    const txIds = (await replayed(dir)).map((e) => e.txId)
    expect(txIds.filter((t) => t.startsWith('tx-'))).toEqual(ok)
    expect(txIds).toContain('later')
  })

  it('rejects a record over maxRecordBytes and an invalid transaction id', async () => {
    const dir = await tmp()
    const { log } = await reopen(dir, { maxRecordBytes: 256 })
    await expect(log.append('big', { pad: 'x'.repeat(500) })).rejects.toThrow(/over the 256-byte limit/)
    await expect(log.append('', { n: 1 })).rejects.toMatchObject({ code: 'TXM_INTERNAL' })
    await expect(log.append('x'.repeat(256), { n: 1 })).rejects.toThrow(/1\.\.255 bytes/)
    await log.append('small', { n: 1 })
    expect(log.stats().appends).toBe(1)
    await log.close()
    expect((await replayed(dir)).map((e) => e.txId)).toEqual(['small'])
  })

  it('waits groupCommitMaxDelayMs so appends a few ms apart share one fsync', async () => {
    const dir = await tmp()
    const { log } = await reopen(dir, { groupCommitMaxDelayMs: 100 })
    const acks: Promise<void>[] = []
    for (let i = 0; i < 5; i++) {
      acks.push(log.append(`tx-${i}`, { i }))
      await new Promise((r) => setTimeout(r, 2))
    }
    await Promise.all(acks)
    expect(log.stats().appends).toBe(5)
    expect(log.stats().fsyncs).toBeLessThanOrEqual(2)
    await log.close()
    expect(await replayed(dir)).toHaveLength(5)
  })

  it('fails every waiting and later append with TXM_LOG_FAILED once a write fails', async () => {
    const dir = await tmp()
    const { log } = await reopen(dir)
    await log.append('before', { ok: true })
    // Pull the file out from under the writer, as a dying disk would.
    await (log as unknown as { fh: { close(): Promise<void> } }).fh.close()
    const results = await Promise.allSettled([log.append('a', { n: 1 }), log.append('b', { n: 2 })])
    for (const r of results)
      expect(r).toMatchObject({ status: 'rejected', reason: { code: 'TXM_LOG_FAILED', status: 503 } })
    await expect(log.append('c', { n: 3 })).rejects.toMatchObject({ code: 'TXM_LOG_FAILED' })
    expect(() => log.appendLazy('d', { n: 4 })).toThrow(/log write failed/)
    await log.close()
    expect((await replayed(dir)).map((e) => e.txId)).toEqual(['before'])
  })

  it('refuses appends once closed', async () => {
    const dir = await tmp()
    const { log } = await reopen(dir)
    await log.close()
    await log.close()
    await expect(log.append('tx', { n: 1 })).rejects.toMatchObject({ code: 'TXM_SHUTTING_DOWN' })
    expect(() => log.appendLazy('tx', { n: 1 })).toThrow(/closed/)
    log.end('tx') // a no-op, not a throw
  })

  it('rolls over segments and compaction deletes old ones, keeping only live records', async () => {
    const dir = await tmp()
    const { log } = await reopen(dir, { segmentBytes: 4096 })
    const live: LogEntry[] = []
    for (let i = 0; i < 1000; i++) {
      const body = { i, decision: 'commit', participants: [`p-${i % 7}`] }
      await log.append(`tx-${i}`, body)
      if (i % 100 === 0) live.push({ txId: `tx-${i}`, body })
      else log.end(`tx-${i}`)
    }
    await log.flush()
    const s = log.stats()
    expect(s.compactions).toBeGreaterThan(5)
    expect(s.carried).toBeGreaterThan(0)
    const files = await segmentFiles(dir)
    expect(files).toHaveLength(s.segments)
    expect(files.length).toBeLessThanOrEqual(3)
    expect(files).not.toContain(segmentName(1))
    // ~80 KB were appended; what is left is the live records plus the current segment.
    let onDisk = 0
    for (const f of files) onDisk += (await stat(join(dir, f))).size
    expect(onDisk).toBeLessThan(3 * 4096 + 1024)
    await log.close()
    expect(await replayed(dir)).toEqual(live)
  })

  it('compacts when a configured fraction of the records is ended, before a segment fills', async () => {
    const dir = await tmp()
    const { log } = await reopen(dir, { segmentBytes: 1024 * 1024, compactEndedFraction: 0.9, compactMinBytes: 8192 })
    for (let i = 0; i < 2000; i++) {
      await log.append(`tx-${i}`, { i })
      if (i % 50 !== 0) log.end(`tx-${i}`)
    }
    await log.flush()
    expect(log.stats().compactions).toBeGreaterThan(0)
    expect((await segmentFiles(dir)).length).toBeLessThanOrEqual(2)
    await log.close()
    expect((await replayed(dir)).map((e) => e.txId)).toEqual(Array.from({ length: 40 }, (_, k) => `tx-${k * 50}`))
  })

  it('replays the same live set from every crash point of a compaction', async () => {
    const dir = await tmp()
    const opts = { segmentBytes: 2048 }
    const { log } = await reopen(dir, opts)
    // The model: live records in append order.
    let model: LogEntry[] = []
    let checked = 0
    let checkedWithDeletes = 0
    let checkedWithCopies = 0
    for (let step = 0; step < 400 && checkedWithDeletes < 4; step++) {
      const pre = await snapshot(dir)
      const before = log.stats().compactions
      const txId = `t${step >> 1}` // two records per transaction
      const body = { step, pad: 'z'.repeat(30) }
      await log.append(txId, body)
      await log.flush()
      const modelPre = model
      model = [...model, { txId, body }]
      if (log.stats().compactions > before) {
        const post = await snapshot(dir)
        checked++
        const seen = await checkCrashPoints(pre, post, modelPre, model, opts)
        if (seen.deleted) checkedWithDeletes++
        if (seen.copies) checkedWithCopies++
      }
      // Three transactions behind, end three out of four.
      const k = (step >> 1) - 3
      if (step % 2 === 1 && k >= 0 && k % 4 !== 0) {
        log.end(`t${k}`)
        model = model.filter((e) => e.txId !== `t${k}`)
        await log.flush()
      }
    }
    expect(checked).toBeGreaterThan(3)
    expect(checkedWithDeletes).toBeGreaterThanOrEqual(4)
    expect(checkedWithCopies).toBeGreaterThan(0)
    expect(log.stats().carried).toBeGreaterThan(0)
    await log.close()
    expect(await replayed(dir)).toEqual(model)
  })

  it('replays the same records whatever the read chunk size', async () => {
    const dir = await tmp()
    const { log } = await reopen(dir, { segmentBytes: 8192 })
    for (let i = 0; i < 200; i++) await log.append(`tx-${i % 37}`, { i, pad: 'q'.repeat((i * 13) % 900) })
    await log.close()
    const big = await replayed(dir)
    expect(big).toHaveLength(200)
    expect(await replayed(dir, { readChunkBytes: 64 })).toEqual(big)
    expect(await replayed(dir, { readChunkBytes: 1 })).toEqual(big)
  })

  it('replays a 200k-record log', async () => {
    const dir = await tmp()
    const { log } = await reopen(dir, { segmentBytes: 4 * 1024 * 1024 })
    const total = 200_000
    const batch = 2_000
    for (let b = 0; b < total; b += batch) {
      await Promise.all(
        Array.from({ length: batch }, (_, j) =>
          log.append(`tx-${b + j}`, { decision: 'commit', participants: ['http://a:15010', 'http://b:15010'] }),
        ),
      )
      // Half the transactions end (their END records are replayed too).
      for (let j = 0; j < batch; j += 2) log.end(`tx-${b + j}`)
    }
    await log.close()
    const t0 = performance.now()
    const r = await reopen(dir, { segmentBytes: 4 * 1024 * 1024 })
    const ms = performance.now() - t0
    console.log(
      `replayed ${r.log.stats().replayedRecords} records (${r.records.length} live, ${r.log.stats().segments} segments) in ${ms.toFixed(0)} ms`,
    )
    expect(r.records).toHaveLength(total / 2)
    expect(r.records[0]?.txId).toBe('tx-1')
    expect(r.records.at(-1)?.txId).toBe(`tx-${total - 1}`)
    await r.log.close()
  })
})

type Files = Map<string, Buffer>

async function snapshot(dir: string): Promise<Files> {
  const out: Files = new Map()
  for (const f of await segmentFiles(dir)) out.set(f, await readFile(join(dir, f)))
  return out
}

async function materialise(files: Files): Promise<string> {
  const d = await tmp()
  await mkdir(d, { recursive: true })
  for (const [name, bytes] of files) await writeFile(join(d, name), bytes)
  return d
}

// Builds the directory a crash could leave at each point of the rollover + compaction that
// happened between `pre` and `post`, and checks each replays to the model. Returns whether the
// compaction deleted segments and copied records forward.
async function checkCrashPoints(
  pre: Files,
  post: Files,
  modelPre: LogEntry[],
  modelPost: LogEntry[],
  opts: Partial<FileLogOptions>,
): Promise<{ deleted: boolean; copies: boolean }> {
  const deleted = [...pre.keys()].filter((f) => !post.has(f)).sort()
  const created = [...post.keys()].filter((f) => !pre.has(f)).sort()
  expect(created).toHaveLength(1) // the rollover's new segment
  const newName = created[0] as string
  const fresh = post.get(newName) as Buffer
  // [header][the appended record][copies carried forward]
  const recordEnd = SEGMENT_HEADER_BYTES + 8 + fresh.readUInt32LE(SEGMENT_HEADER_BYTES)
  const states: { what: string; files: Files; expected: LogEntry[] }[] = []
  const withAllPre = (newBytes: Buffer): Files =>
    new Map([...pre, ...[...post].filter(([f]) => f !== newName), [newName, newBytes]])
  // Crash while creating the segment or writing the record: the append was never acknowledged.
  states.push({ what: 'torn header', files: withAllPre(fresh.subarray(0, 10)), expected: modelPre })
  states.push({ what: 'torn record', files: withAllPre(fresh.subarray(0, recordEnd - 3)), expected: modelPre })
  // Crash while copying forward: nothing deleted yet, copies torn anywhere.
  for (const cut of new Set([
    recordEnd,
    recordEnd + 1,
    (recordEnd + fresh.length) >> 1,
    fresh.length - 1,
    fresh.length,
  ])) {
    if (cut <= fresh.length)
      states.push({
        what: `copies cut at ${cut}/${fresh.length}`,
        files: withAllPre(fresh.subarray(0, cut)),
        expected: modelPost,
      })
  }
  // Crash between unlinks: the oldest k deleted segments are gone, the rest still there.
  for (let k = 0; k <= deleted.length; k++) {
    const files: Files = new Map(post)
    for (const f of deleted.slice(k)) files.set(f, pre.get(f) as Buffer)
    states.push({ what: `${k}/${deleted.length} deleted`, files, expected: modelPost })
  }
  for (const s of states) {
    const d = await materialise(s.files)
    const records = await replayed(d, opts)
    expect(records, s.what).toEqual(s.expected)
    await rm(d, { recursive: true, force: true })
  }
  return { deleted: deleted.length > 0, copies: fresh.length > recordEnd }
}
