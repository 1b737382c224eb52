// Attacks on the takeover of the Postgres store (src/store/takeover.ts), with real sidecar
// processes on loopback and embedded Postgres: schedules under which a sibling that claimed a
// lapsed log keeps acting on it after its Postgres lease has lapsed and another instance holds it.
import { connect, createServer, type AddressInfo, type Socket } from 'node:net'
import { request } from 'undici'
import { describe, expect, it } from 'vitest'
import { startFaultProxy, type FaultProxy } from '../helpers/fault-proxy.js'
import { usePgDatabase } from '../helpers/pg.js'
import { freePort, until } from '../../harness/ports.js'
import { rawRequest, sidecarYaml, spawnSidecar, withPgStore, type SidecarProcess } from '../helpers/servers.js'
import { startTxApp, stopAfterTests, type TxApp } from '../helpers/tx-app.js'

const { procs, apps, closers } = stopAfterTests()
const LEASE_MS = 15_000

const store = usePgDatabase('attack')
const sql = store.sql

interface Cluster {
  app: Record<'orders' | 'payments', TxApp>
  services: string
  /** The yaml of coordinator instance `coord-<i>` (store url as given). */
  coordinatorYaml: (i: number, storeUrl: string) => string
}

/** Two participant services; coordinators of `initiator` are spawned by the test. */
async function participants(schema: string, groupPort: number): Promise<Cluster> {
  const names = ['orders', 'payments'] as const
  const fixed = { orders: await freePort(), payments: await freePort() }
  const services = names.map((n) => `  ${n}: {address: "127.0.0.1:${fixed[n]}"}`).join('\n')
  const app = { orders: await startTxApp('orders'), payments: await startTxApp('payments') }
  for (const n of names) {
    apps.push(app[n])
    const sc = await spawnSidecar(sidecarYaml(n, app[n].port, `services:\n${services}\n`), [
      '--ingress-port',
      String(fixed[n]),
    ])
    procs.push(sc)
  }
  const coordinatorYaml = (i: number, storeUrl: string): string =>
    withPgStore(
      sidecarYaml('initiator', 1, `services:\n${services}\n`).replace(
        'log: {level: silent}',
        `log: {level: ${process.env.ATTACK_LOG ?? 'error'}}`,
      ),
      `url: ${JSON.stringify(storeUrl)}, schema: ${schema}, instance: coord-${i}, leaseMs: ${LEASE_MS}, group: "127.0.0.1:${groupPort}"`,
    )
  return { app, services, coordinatorYaml }
}

async function writeAndCommit(
  coord: SidecarProcess,
  value: string,
  timeoutMs = 60_000,
): Promise<{ id: string; commit: Promise<unknown> }> {
  const r = await request(`http://127.0.0.1:${coord.ports.admin}/v1/transactions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ mode: '2pc', timeoutMs }),
  })
  const tx = (await r.body.json()) as { id: string; context: string }
  for (const n of ['orders', 'payments']) {
    const c = await rawRequest(coord.ports.egress, {
      method: 'POST',
      path: `http://${n}/write/${value}`,
      headers: { 'txmesh-context': tx.context },
    })
    expect(c.status).toBe(200)
  }
  const commit = request(`http://127.0.0.1:${coord.ports.admin}/v1/transactions/${tx.id}/commit`, {
    method: 'POST',
  }).then(
    async (res) => ({ status: res.statusCode, body: await res.body.text() }),
    (e: unknown) => e,
  )
  return { id: tx.id, commit }
}

/**
 * A TCP gate in front of Postgres for one instance: `slowExisting` makes the connections open now
 * carry every chunk `ms` late (both ways, order kept) while new connections pass; `refuse` cuts
 * everything and refuses new connections.
 */
async function pgGate(
  targetPort: number,
): Promise<{ port: number; slowExisting(ms: number): void; refuse(): void; close(): Promise<void> }> {
  const pairs = new Set<{ client: Socket; upstream: Socket; delayMs: number }>()
  let refusing = false
  const server = createServer((client) => {
    if (refusing) return void client.destroy()
    const upstream = connect(targetPort, '127.0.0.1')
    const p = { client, upstream, delayMs: 0 }
    pairs.add(p)
    const forward = (to: Socket) => (chunk: Buffer) => {
      if (p.delayMs === 0) to.write(chunk)
      else setTimeout(() => to.writable && to.write(chunk), p.delayMs)
    }
    client.on('data', forward(upstream))
    upstream.on('data', forward(client))
    const gone = (): void => {
      pairs.delete(p)
      client.destroy()
      upstream.destroy()
    }
    for (const s of [client, upstream]) {
      s.on('error', gone)
      s.on('close', gone)
    }
  })
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()))
  return {
    port: (server.address() as AddressInfo).port,
    slowExisting: (ms) => {
      for (const p of pairs) p.delayMs = ms
    },
    refuse: () => {
      refusing = true
      for (const p of [...pairs]) {
        p.client.resetAndDestroy()
        p.upstream.resetAndDestroy()
      }
    },
    close: () => new Promise<void>((r) => server.close(() => r())),
  }
}

const metric = async (sc: SidecarProcess, re: RegExp): Promise<number> => {
  const m = await request(`http://127.0.0.1:${sc.ports.admin}/metrics`)
  return Number(re.exec(await m.body.text())?.[1] ?? '0')
}

describe('takeover attacks', () => {
  it('a claim whose answer is slow to come back (Postgres slow for the claimer): the claimer counts its lease from when the answer arrived, not from when Postgres granted it, so after the lease lapsed in Postgres and the restarted owner took its log back and decided COMMIT, the claimer still answers the group "aborted" for that transaction', async () => {
    const schema = 'atk_slowclaim'
    const DELAY_MS = 20_000
    const groupPort = await freePort()
    const c = await participants(schema, groupPort)
    // coord-2 reaches Postgres through a proxy the test makes slow, then cuts.
    const pgPort = store.pg.port
    const pgProxy = await pgGate(pgPort)
    closers.push(() => pgProxy.close())
    const slowUrl = store.url.replace(`127.0.0.1:${pgPort}/`, `127.0.0.1:${pgProxy.port}/`)
    const first = await spawnSidecar(c.coordinatorYaml(1, store.url), [], {
      TXMESH_FAILPOINTS: 'coordinator-after-decision',
    })
    procs.push(first)
    const second = await spawnSidecar(c.coordinatorYaml(2, slowUrl))
    procs.push(second)
    // store.group: a Service in front of the instances' control ports; here it routes to coord-2.
    const group = await startFaultProxy({ port: groupPort, targetPort: second.ports.control, random: Math.random })
    closers.push(() => group.close())
    // (Unreachable until coord-2 has opened what it claims: its answers before that are not the point.)
    await group.setMode({ kind: 'refuse' })

    // Its takeover scans have a connection open by now (a new one could not connect while slow).
    await new Promise((r) => setTimeout(r, 4_500))
    // 1. coord-1 dies right after a COMMIT decision (t1): its log has unfinished work.
    await writeAndCommit(first, 't1')
    expect(await first.exited).toMatchObject({ signal: 'SIGKILL' })
    // 2. Postgres is slow for coord-2: its next scan's claim reaches Postgres DELAY_MS later
    //    (the lease has long lapsed there) and its answer DELAY_MS after that.
    pgProxy.slowExisting(DELAY_MS)
    await until(
      'coord-2 claimed coord-1 log in Postgres',
      async () =>
        (
          await sql<{ holder: string | null }>(`SELECT holder FROM ${schema}.logs WHERE log_id = 'initiator/coord-1'`)
        )[0]?.holder === 'coord-2',
      DELAY_MS + 10_000,
      100,
    )
    const grantedAt = Date.now()
    // Its answer comes DELAY_MS later; the new connections that open the claimed log are fast.
    await until(
      'coord-2 opened the claimed log',
      async () => (await metric(second, /txmesh_store_takeovers_total\{result="claimed"\} (\d+)/)) === 1,
      DELAY_MS + 10_000,
      50,
    )
    // 3. Then coord-2 loses Postgres altogether: no renewal of the claimed lease goes through.
    pgProxy.refuse()
    await group.setMode({ kind: 'pass' })
    // 4. coord-1 restarts under its own name: the claim's lease lapsed in Postgres long ago
    //    (LEASE_MS after it was granted), so it takes its log back at once; it stops after its
    //    next COMMIT decision.
    expect(Date.now()).toBeGreaterThan(grantedAt + LEASE_MS)
    const again = await spawnSidecar(c.coordinatorYaml(1, store.url), [], {
      TXMESH_FAILPOINTS: 'coordinator-after-decision:stop',
    })
    procs.push(again)
    const [row] = await sql<{ holder: string }>(`SELECT holder FROM ${schema}.logs WHERE log_id = 'initiator/coord-1'`)
    expect(row?.holder).toBe('coord-1')
    const x = await writeAndCommit(again, 'x', 2_000)
    const pid = again.child.pid as number
    await until(
      'the restarted coord-1 decided and paused',
      async () =>
        (
          await sql<{ n: string }>(
            `SELECT count(*) AS n FROM ${schema}.records WHERE log_id = 'initiator/coord-1' AND key = $1`,
            [`c:${x.id}`],
          )
        )[0]?.n === '1',
      10_000,
    )
    // 5. Its branches, prepared, ask their coordinator (paused) and then the group (coord-2).
    const abortedX = (): string[] =>
      (['orders', 'payments'] as const).filter((n) => c.app[n].hooks.includes(`abort:${x.id}`))
    await until('a branch of x rolled back', () => abortedX().length > 0, 25_000).catch(() => undefined)
    const decided = await sql<{ body: { type?: string } }>(
      `SELECT body FROM ${schema}.records WHERE log_id = 'initiator/coord-1' AND key = $1`,
      [`c:${x.id}`],
    )
    const rolledBack = abortedX()
    // 6. Resumed, coord-1 (its lease renewed: nobody took its log) finishes the commit it decided.
    process.kill(pid, 'SIGCONT')
    const answer = (await Promise.race([x.commit, new Promise((r) => setTimeout(() => r('no answer'), 20_000))])) as
      { body?: string } | string
    const client =
      typeof answer === 'object' ? (JSON.parse(answer.body ?? '{}') as { outcome?: string }).outcome : answer
    // Atomic: the client told committed and no branch of it rolled back.
    expect({ decisionInStore: decided.length, client, rolledBack }).toEqual({
      decisionInStore: 1,
      client: 'committed',
      rolledBack: [],
    })
  }, 180_000)
})
