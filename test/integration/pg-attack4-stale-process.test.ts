// Attack on the shared Postgres store (owner hints, group-named ids): an OLD process of an
// instance, cut off from Postgres but still reachable on its control port, keeps answering outcome
// questions for its log's incarnation after a new process of the same instance (a replaced pod of
// a StatefulSet, same name) claimed the log (token + 1) and decided COMMIT there. The old process
// is not the log's holder any more; it must not tell a prepared branch "aborted" (presumed abort)
// for a transaction the holder committed.
import { connect, createServer, type AddressInfo, type Socket } from 'node:net'
import { request } from 'undici'
import { describe, expect, it } from 'vitest'
import { startFaultProxy, type FaultProxy } from '../helpers/fault-proxy.js'
import { usePgDatabase } from '../helpers/pg.js'
import { freePort, until } from '../../harness/ports.js'
import { rawRequest, sidecarYaml, spawnSidecar, withPgStore, type SidecarProcess } from '../helpers/servers.js'
import { startTxApp, stopAfterTests, type TxApp } from '../helpers/tx-app.js'

const { procs, apps, closers } = stopAfterTests()
const LEASE_MS = 3_000

const store = usePgDatabase('attack4')
const sql = store.sql

/** A TCP gate in front of Postgres: `refuse` cuts the connections open now and refuses new ones. */
async function pgGate(targetPort: number): Promise<{ port: number; refuse(): void; close(): Promise<void> }> {
  const pairs = new Set<{ client: Socket; upstream: Socket }>()
  let refusing = false
  const server = createServer((client) => {
    if (refusing) return void client.destroy()
    const upstream = connect(targetPort, '127.0.0.1')
    const p = { client, upstream }
    pairs.add(p)
    client.pipe(upstream)
    upstream.pipe(client)
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

describe('an old process of an instance whose log a new process of it took', () => {
  it('answers no "aborted" for a transaction the new process committed: the branch asking the group (routed to the old process) does not roll back', async () => {
    const schema = 'atk4_stale'
    const names = ['orders', 'payments'] as const
    const fixed = { orders: await freePort(), payments: await freePort() }
    const services = names.map((n) => `  ${n}: {address: "127.0.0.1:${fixed[n]}"}`).join('\n')
    const app: Record<(typeof names)[number], TxApp> = {
      orders: await startTxApp('orders'),
      payments: await startTxApp('payments'),
    }
    const proxies: FaultProxy[] = []
    for (const n of names) {
      apps.push(app[n])
      const proxyPort = await freePort()
      const sc = await spawnSidecar(
        sidecarYaml(n, app[n].port, `services:\n${services}\nmesh: {advertise: "127.0.0.1:${proxyPort}"}\n`),
        ['--ingress-port', String(fixed[n])],
      )
      procs.push(sc)
      const proxy = await startFaultProxy({ port: proxyPort, targetPort: sc.ports.control, random: Math.random })
      closers.push(() => proxy.close())
      proxies.push(proxy)
    }
    const groupPort = await freePort()
    const yaml = (i: number, url: string): string =>
      withPgStore(
        sidecarYaml('initiator', 1, `services:\n${services}\n`).replace(
          'log: {level: silent}',
          `log: {level: ${process.env.ATTACK_LOG ?? 'error'}}`,
        ),
        `url: ${JSON.stringify(url)}, schema: ${schema}, instance: coord-${i}, leaseMs: ${LEASE_MS}, group: "127.0.0.1:${groupPort}"`,
      )
    // The old process of coord-1 reaches Postgres through a gate the test cuts.
    const gate = await pgGate(store.pg.port)
    closers.push(() => gate.close())
    const old = await spawnSidecar(yaml(1, store.url.replace(`127.0.0.1:${store.pg.port}/`, `127.0.0.1:${gate.port}/`)))
    procs.push(old)
    const sibling = await spawnSidecar(yaml(2, store.url))
    procs.push(sibling)
    // store.group: a Service in front of the instances' control ports; here it routes to the old process.
    const group = await startFaultProxy({ port: groupPort, targetPort: old.ports.control, random: Math.random })
    closers.push(() => group.close())

    // 1. The old process loses Postgres (a partition); it is still reachable by its peers.
    gate.refuse()
    // 2. A new process of coord-1 starts (the pod replaced) and takes its log (token + 1); it dies
    //    right after its first COMMIT decision, phase 2 not sent.
    const fresh = await spawnSidecar(yaml(1, store.url), [], { TXMESH_FAILPOINTS: 'coordinator-after-decision' })
    procs.push(fresh)
    // (It sends nothing until the old process's lease would have lapsed: it may still act until then.)
    await new Promise((r) => setTimeout(r, LEASE_MS))
    const r = await request(`http://127.0.0.1:${fresh.ports.admin}/v1/transactions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ mode: '2pc', timeoutMs: 10_000 }),
    })
    const tx = (await r.body.json()) as { id: string; context: string }
    for (const n of names) {
      const c = await rawRequest(fresh.ports.egress, {
        method: 'POST',
        path: `http://${n}/write/o1`,
        headers: { 'txmesh-context': tx.context },
      })
      expect(c.status).toBe(200)
    }
    void request(`http://127.0.0.1:${fresh.ports.admin}/v1/transactions/${tx.id}/commit`, { method: 'POST' }).catch(
      (e: unknown) => e,
    )
    expect(await fresh.exited).toMatchObject({ signal: 'SIGKILL' })
    const [decision] = await sql<{ n: string }>(
      `SELECT count(*) AS n FROM ${schema}.records WHERE log_id = 'initiator/coord-1' AND key = $1`,
      [`c:${tx.id}`],
    )
    expect(decision?.n).toBe('1')
    // 3. payments' control listener is cut off: the sibling that takes the log over commits orders
    //    only; payments, in doubt past its deadline, asks its coordinator (dead), then the group.
    await (proxies[1] as FaultProxy).setMode({ kind: 'refuse' })
    await until('orders committed by the sibling', () => app.orders.committed.length === 1, LEASE_MS + 15_000)
    // payments asks (past its deadline, backing off) for a while: none of its answers may be "aborted".
    await until('payments rolled back', () => app.payments.hooks.includes(`abort:${tx.id}`), 20_000).catch(
      () => undefined,
    )
    const rolledBack = app.payments.hooks.includes(`abort:${tx.id}`)
    // payments reachable again: the sibling holding the log finishes the commit there.
    await (proxies[1] as FaultProxy).setMode({ kind: 'pass' })
    await until('payments committed', () => app.payments.committed.length === 1 || rolledBack, 30_000).catch(
      () => undefined,
    )
    expect({
      orders: app.orders.committed,
      payments: app.payments.committed,
      paymentsRolledBack: rolledBack || app.payments.hooks.includes(`abort:${tx.id}`),
    }).toEqual({ orders: ['orders:o1'], payments: ['payments:o1'], paymentsRolledBack: false })
  }, 120_000)
})
