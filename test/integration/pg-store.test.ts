// The Postgres store (src/store/pg-log.ts) on a real Postgres: what it acknowledges comes back at
// open, in append order, without what END dropped and with what a key wrote after its END;
// concurrent appends share commits; a log taken over (its token moved on) refuses every write
// with TXM_LOG_FENCED; bad input is refused with a code before anything is written. And a real
// coordinator sidecar on it (store.kind postgres, no files): SIGKILLed between its COMMIT
// decision and phase 2, it restarts with nothing on its disk and finishes the commit from the
// store.
import pg from 'pg'
import { request } from 'undici'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { PgLog } from '../../src/store/pg-log.js'
import { startPostgres, type PostgresInstance } from '../../harness/pg.js'
import { freePort, until } from '../../harness/ports.js'
import { rawRequest, sidecarYaml, spawnSidecar, withPgStore } from '../helpers/servers.js'
import { startTxApp, stopAfterTests } from '../helpers/tx-app.js'

const { procs, apps } = stopAfterTests()

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

/** A coordinator's config on the Postgres store: no store dir at all. */
function pgCoordinatorYaml(services: string, instance: string): string {
  return withPgStore(
    sidecarYaml('initiator', 1, `services:\n${services}\n`),
    `url: ${JSON.stringify(url)}, schema: sidecars, instance: ${instance}`,
  )
}

describe('a coordinator sidecar on the Postgres store', () => {
  it('commits, and after a SIGKILL between decision and phase 2 finishes the commit from the store alone', async () => {
    const names = ['orders', 'payments'] as const
    const fixed = { orders: await freePort(), payments: await freePort() }
    const services = names.map((n) => `  ${n}: {address: "127.0.0.1:${fixed[n]}"}`).join('\n')
    const app = { orders: await startTxApp('orders'), payments: await startTxApp('payments') }
    for (const n of names) {
      apps.push(app[n])
      procs.push(
        await spawnSidecar(sidecarYaml(n, app[n].port, `services:\n${services}\n`), [
          '--ingress-port',
          String(fixed[n]),
        ]),
      )
    }
    const control = await freePort()
    const spawnCoordinator = async (env: Record<string, string> = {}) => {
      const sc = await spawnSidecar(pgCoordinatorYaml(services, 'coord-1'), ['--control-port', String(control)], env)
      procs.push(sc)
      return sc
    }
    const run = async (coord: Awaited<ReturnType<typeof spawnCoordinator>>, value: string) => {
      const r = await request(`http://127.0.0.1:${coord.ports.admin}/v1/transactions`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ mode: '2pc', timeoutMs: 20_000 }),
      })
      const tx = (await r.body.json()) as { id: string; context: string }
      for (const n of names) {
        const c = await rawRequest(coord.ports.egress, {
          method: 'POST',
          path: `http://${n}/write/${value}`,
          headers: { 'txmesh-context': tx.context },
        })
        expect(c.status).toBe(200)
      }
      return tx
    }

    const first = await spawnCoordinator()
    const tx1 = await run(first, 'v1')
    const c1 = await request(`http://127.0.0.1:${first.ports.admin}/v1/transactions/${tx1.id}/commit?wait=acks`, {
      method: 'POST',
    })
    expect(((await c1.body.json()) as { outcome: string }).outcome).toBe('committed')
    expect(app.orders.committed).toEqual(['orders:v1'])
    first.child.kill('SIGTERM')
    await first.exited

    const dying = await spawnCoordinator({ TXMESH_FAILPOINTS: 'coordinator-after-decision' })
    const tx2 = await run(dying, 'v2')
    const commit = request(`http://127.0.0.1:${dying.ports.admin}/v1/transactions/${tx2.id}/commit`, {
      method: 'POST',
    }).catch((e: Error) => e)
    expect(await dying.exited).toMatchObject({ signal: 'SIGKILL' })
    expect(await commit).toBeInstanceOf(Error)
    expect(app.payments.committed).toEqual(['payments:v1'])
    // A new process, nothing on disk: the decision is in Postgres.
    await spawnCoordinator()
    await until(
      'the commit of tx2 everywhere',
      () => app.orders.committed.length === 2 && app.payments.committed.length === 2,
      20_000,
    )
    expect(app.orders.committed).toEqual(['orders:v1', 'orders:v2'])
    expect(app.payments.committed).toEqual(['payments:v1', 'payments:v2'])
  })
})
