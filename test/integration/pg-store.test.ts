// The Postgres store (src/store/pg-log.ts) on a real Postgres: what it acknowledges comes back at
// open, in append order, without what END dropped and with what a key wrote after its END;
// concurrent appends share commits; a log taken over (its token moved on) refuses every write
// with TXM_LOG_FENCED; bad input is refused with a code before anything is written.
import pg from 'pg'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { PgLog } from '../../src/store/pg-log.js'
import { startPostgres, type PostgresInstance } from '../helpers/pg.js'

let db: PostgresInstance
let url: string

beforeAll(async () => {
  db = await startPostgres()
  await db.createDatabase('store')
  url = db.connectionString('store')
}, 60_000)

afterAll(async () => {
  await db?.stop()
})

const code = (err: unknown): unknown => (err as { code?: unknown }).code

describe('Postgres store', () => {
  it('replays what it acknowledged in append order; END drops the records before it, not a later one', async () => {
    const first = await PgLog.open({ url, logId: 'orders/a' })
    expect(first.records).toEqual([])
    const log = first.log
    await log.append('t1', { type: 'decision', n: 1 })
    await log.append('t2', { type: 'decision', n: 2 })
    log.appendLazy('t2', { type: 'event', n: 3 })
    log.end('t1')
    await log.append('t3', { type: 'decision', n: 4 })
    log.end('t2')
    // A late record of an ended key (a step after END) is kept.
    await log.append('t2', { type: 'decision', n: 5 })
    await log.flush()
    expect(log.stats()).toMatchObject({ kind: 'postgres', appends: 5, ends: 2, pending: 0 })
    await log.close()

    const again = await PgLog.open({ url, logId: 'orders/a' })
    expect(again.records).toEqual([
      { txId: 't3', body: { type: 'decision', n: 4 } },
      { txId: 't2', body: { type: 'decision', n: 5 } },
    ])
    // Another log of the same tables sees none of it.
    const other = await PgLog.open({ url, logId: 'orders/b' })
    expect(other.records).toEqual([])
    await other.log.close()
    // New records continue after the replayed ones.
    await again.log.append('t4', { n: 6 })
    await again.log.close()
    const third = await PgLog.open({ url, logId: 'orders/a' })
    expect(third.records.map((r) => r.txId)).toEqual(['t3', 't2', 't4'])
    await third.log.close()
  })

  it('concurrent appends share Postgres transactions (group commit), all acknowledged and replayed', async () => {
    const { log } = await PgLog.open({ url, logId: 'orders/group' })
    const n = 300
    await Promise.all(Array.from({ length: n }, (_, i) => log.append(`g${i}`, { i })))
    const commits = log.stats().commits
    expect(commits).toBeGreaterThan(0)
    expect(commits).toBeLessThan(n / 2)
    await log.close()
    const { log: again, records } = await PgLog.open({ url, logId: 'orders/group' })
    expect(records).toHaveLength(n)
    expect(new Set(records.map((r) => r.txId)).size).toBe(n)
    await again.close()
  })

  it('a log taken over (token moved on) refuses every later write with TXM_LOG_FENCED', async () => {
    const { log } = await PgLog.open({ url, logId: 'orders/fenced' })
    await log.append('f1', { n: 1 })
    const admin = new pg.Client({ connectionString: url })
    await admin.connect()
    try {
      await admin.query(`UPDATE txmesh.logs SET token = token + 1 WHERE log_id = 'orders/fenced'`)
    } finally {
      await admin.end()
    }
    const refused = await log.append('f2', { n: 2 }).catch((e: unknown) => e)
    expect(code(refused)).toBe('TXM_LOG_FENCED')
    // Every later write too, at once.
    expect(code(await log.append('f3', { n: 3 }).catch((e: unknown) => e))).toBe('TXM_LOG_FENCED')
    await log.close()
    const { log: again, records } = await PgLog.open({ url, logId: 'orders/fenced' })
    expect(records.map((r) => r.txId)).toEqual(['f1'])
    await again.close()
  })

  it('refuses a record over the size limit and a schema that is not an identifier, with codes', async () => {
    const { log } = await PgLog.open({ url, logId: 'orders/limits' })
    const big = await log.append('b', { x: 'y'.repeat(2 * 1024 * 1024) }).catch((e: unknown) => e)
    expect(code(big)).toBe('TXM_LOG_RECORD_TOO_LARGE')
    await log.append('ok', { n: 1 })
    await log.close()
    await expect(PgLog.open({ url, logId: 'x', schema: 'bad; drop' })).rejects.toThrow(/not a lowercase SQL identifier/)
  })
})
