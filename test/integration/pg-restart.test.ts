// Postgres itself restarted while a coordinator on the Postgres store runs transactions (real
// sidecar processes, real Postgres with synchronous_commit on): the coordinator waits and resumes,
// and every transaction it acknowledged as committed is committed at every participant.
import { request } from 'undici'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { startPostgres, type PostgresInstance } from '../../harness/pg.js'
import { freePort } from '../../harness/ports.js'
import { rawRequest, sidecarYaml, spawnSidecar, withPgStore } from '../helpers/servers.js'
import { startTxApp, stopAfterTests } from '../helpers/tx-app.js'

const { procs, apps } = stopAfterTests()

let db: PostgresInstance
let url: string

beforeAll(async () => {
  // "Durable" must mean durable here: the helper's default turns synchronous_commit off.
  db = await startPostgres({ extraFlags: ['-c', 'synchronous_commit=on'] })
  await db.createDatabase('restart')
  url = db.connectionString('restart')
}, 60_000)

afterAll(async () => {
  await db?.stop()
})

describe('Postgres restarted under a coordinator on the Postgres store', () => {
  it('the coordinator waits and resumes; every acknowledged commit is applied everywhere, nothing else is', async () => {
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
    const coord = await spawnSidecar(
      withPgStore(
        sidecarYaml('initiator', 1, `services:\n${services}\n`),
        `url: ${JSON.stringify(url)}, schema: restart, instance: c1`,
      ),
    )
    procs.push(coord)
    const admin = `http://127.0.0.1:${coord.ports.admin}`

    const results: { value: string; outcome: string }[] = []
    const one = async (value: string): Promise<void> => {
      try {
        const r = await request(`${admin}/v1/transactions`, {
          method: 'POST',
          headers: { 'content-type': 'application/json' },
          body: JSON.stringify({ mode: '2pc', timeoutMs: 30_000 }),
        })
        const tx = (await r.body.json()) as { id: string; context: string }
        for (const n of names) {
          const c = await rawRequest(coord.ports.egress, {
            method: 'POST',
            path: `http://${n}/write/${value}`,
            headers: { 'txmesh-context': tx.context },
          })
          if (c.status !== 200) throw new Error(`write ${c.status}`)
        }
        const c = await request(`${admin}/v1/transactions/${tx.id}/commit?wait=acks`, { method: 'POST' })
        const body = (await c.body.json()) as { outcome?: string; error?: { code: string } }
        results.push({ value, outcome: body.outcome ?? body.error?.code ?? `HTTP ${c.statusCode}` })
      } catch (err) {
        results.push({ value, outcome: `error: ${(err as Error).message}` })
      }
    }
    const worker = async (w: number): Promise<void> => {
      for (let i = 0; i < 15; i++) await one(`w${w}-${i}`)
    }
    const running = Promise.all([worker(0), worker(1)])
    // Mid-run: a few transactions have committed, others are in flight.
    while (results.length < 6) await new Promise((r) => setTimeout(r, 20))
    await db.restart(2_000)
    await running

    expect(coord.child.exitCode, coord.stderr().slice(-3000)).toBe(null)
    const committed = results.filter((r) => r.outcome === 'committed').map((r) => r.value)
    // Acknowledged commits are applied at both participants; nothing else is.
    expect(new Set(app.orders.committed)).toEqual(new Set(committed.map((v) => `orders:${v}`)))
    expect(new Set(app.payments.committed)).toEqual(new Set(committed.map((v) => `payments:${v}`)))
    // The coordinator resumed: transactions begun after the restart committed too.
    const afterRestart = results.slice(-4)
    expect(afterRestart.map((r) => r.outcome)).toEqual(['committed', 'committed', 'committed', 'committed'])
    expect(results).toHaveLength(30)
    // Batches were sent again across the restart (the commits in flight waited for Postgres).
    const stats = (await (await request(`${admin}/v1/stats`)).body.json()) as { log: { retries: number } }
    expect(stats.log.retries).toBeGreaterThan(0)
  }, 120_000)
})
