// Takeover on the shared Postgres store (src/store/takeover.ts), with real sidecar processes: three
// coordinator instances of one service share a store; one stops after its COMMIT decision with
// phase 2 not sent, and a sibling finishes the commit from the store. Paused past its lease and
// resumed, the old holder sends nothing more for what was taken and stops (its log is fenced).
import { readFileSync } from 'node:fs'
import { request } from 'undici'
import { describe, expect, it } from 'vitest'
import { leaseName } from '../../src/store/kube-lease.js'
import { PgLog } from '../../src/store/pg-log.js'
import { silentLogger } from '../../src/telemetry/logger.js'
import { leasedControl, type ControlTransport } from '../../src/tx/io.js'
import { coordinatorOfTx } from '../../src/tx/protocol.js'
import { startFaultProxy, type FaultProxy } from '../helpers/fault-proxy.js'
import { startKubeApi, type KubeApi } from '../helpers/kube-api.js'
import { usePgDatabase } from '../helpers/pg.js'
import { freePort, until } from '../../harness/ports.js'
import { rawRequest, sidecarYaml, spawnSidecar, withPgStore, type SidecarProcess } from '../helpers/servers.js'
import { startTxApp, stopAfterTests, type TxApp } from '../helpers/tx-app.js'

const { procs, apps, closers } = stopAfterTests()
const LEASE_MS = 3_000

const store = usePgDatabase('takeover')
const sql = store.sql

interface Cluster {
  app: Record<'orders' | 'payments', TxApp>
  /** In front of each participant sidecar's control listener: counts what coordinators send. */
  proxies: FaultProxy[]
  /** The participant sidecars (orders, payments). */
  participants: SidecarProcess[]
  coordinators: SidecarProcess[]
  /** store.group's address (with `group`). */
  group: string
}

/** Two participant services and three coordinator instances of `initiator` on one store. */
async function cluster(
  schema: string,
  firstEnv: Record<string, string>,
  o: { group?: boolean; kube?: KubeApi } = {},
): Promise<Cluster> {
  const names = ['orders', 'payments'] as const
  const fixed = { orders: await freePort(), payments: await freePort() }
  const services = names.map((n) => `  ${n}: {address: "127.0.0.1:${fixed[n]}"}`).join('\n')
  const app = { orders: await startTxApp('orders'), payments: await startTxApp('payments') }
  const proxies: FaultProxy[] = []
  const participants: SidecarProcess[] = []
  for (const n of names) {
    apps.push(app[n])
    const proxyPort = await freePort()
    const sc = await spawnSidecar(
      sidecarYaml(n, app[n].port, `services:\n${services}\nmesh: {advertise: "127.0.0.1:${proxyPort}"}\n`),
      ['--ingress-port', String(fixed[n])],
    )
    procs.push(sc)
    participants.push(sc)
    const proxy = await startFaultProxy({ port: proxyPort, targetPort: sc.ports.control, random: Math.random })
    closers.push(() => proxy.close())
    proxies.push(proxy)
  }
  const coordinators: SidecarProcess[] = []
  // store.group: a proxy standing for a Service in front of the instances' control ports (here it
  // routes to the second instance).
  const groupPort = await freePort()
  const group = o.group === true ? `, group: "127.0.0.1:${groupPort}"` : ''
  for (const i of [1, 2, 3]) {
    const yaml = withPgStore(
      sidecarYaml('initiator', 1, `services:\n${services}\n`).replace('log: {level: silent}', 'log: {level: error}'),
      `url: ${JSON.stringify(store.url)}, schema: ${schema}, instance: coord-${i}, leaseMs: ${LEASE_MS}${group}` +
        (o.kube === undefined ? '' : ', lease: kubernetes'),
    )
    const sc = await spawnSidecar(yaml, [], { ...o.kube?.env, ...(i === 1 ? firstEnv : {}) })
    procs.push(sc)
    coordinators.push(sc)
  }
  if (o.group === true) {
    const service = await startFaultProxy({
      port: groupPort,
      targetPort: (coordinators[1] as SidecarProcess).ports.control,
      random: Math.random,
    })
    closers.push(() => service.close())
  }
  return { app, proxies, participants, coordinators, group: `127.0.0.1:${groupPort}` }
}

/** Begins a 2PC transaction on `coord` with a write at both participants, and asks it to commit. */
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
  }).catch((e: unknown) => e)
  return { id: tx.id, commit }
}

/** The coordinator records still live in a log of the store. */
const decisionsIn = async (schema: string, logId: string): Promise<number> =>
  Number(
    (
      await sql<{ n: string }>(
        `SELECT count(*) AS n FROM ${schema}.records WHERE log_id = $1 AND substr(key, 1, 2) = 'c:'`,
        [logId],
      )
    )[0]?.n,
  )

const statState = (pid: number): string => readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]?.[0] ?? '?'

describe('takeover by a sibling on the Postgres store', () => {
  it('a coordinator SIGKILLed after its COMMIT decision, nothing left of it but the store: a sibling finishes the commit within the lease + 10 s', async () => {
    const c = await cluster('tk_kill', { TXMESH_FAILPOINTS: 'coordinator-after-decision' })
    const [first] = c.coordinators as [SidecarProcess]
    const tx = await writeAndCommit(first, 'k1')
    expect(await first.exited).toMatchObject({ signal: 'SIGKILL' })
    const killedAt = Date.now()
    expect(c.app.orders.committed).toEqual([])
    await until(
      'the commit at both participants',
      () => c.app.orders.committed.length === 1 && c.app.payments.committed.length === 1,
      LEASE_MS + 10_000,
    )
    expect(Date.now() - killedAt).toBeLessThan(LEASE_MS + 10_000)
    expect({ orders: c.app.orders.committed, payments: c.app.payments.committed }).toEqual({
      orders: ['orders:k1'],
      payments: ['payments:k1'],
    })
    // The taker finishes the log (END after the acknowledgements) and gives it up.
    await until('the dead log finished', async () => (await decisionsIn('tk_kill', 'initiator/coord-1')) === 0, 10_000)
    await until(
      'the dead log released',
      async () =>
        (await sql<{ holder: string | null }>(`SELECT holder FROM tk_kill.logs WHERE log_id = 'initiator/coord-1'`))[0]
          ?.holder === null,
      10_000,
    )
    const claims = await Promise.all(
      c.coordinators.slice(1).map(async (sc) => {
        const m = await request(`http://127.0.0.1:${sc.ports.admin}/metrics`)
        const text = await m.body.text()
        return /txmesh_store_takeovers_total\{result="claimed"\} (\d+)/.exec(text)?.[1] ?? '0'
      }),
    )
    expect(claims.map(Number).reduce((a, b) => a + b, 0)).toBe(1)
    void tx.commit
  }, 60_000)

  it('a coordinator SIGKILLed during prepare: its prepared branches ask the group, a sibling claims the log and answers aborted, every branch rolls back within the lease + 10 s', async () => {
    const c = await cluster('tk_prepare', {}, { group: true })
    const [first] = c.coordinators as [SidecarProcess]
    // payments prepares slowly: the coordinator dies between the two prepares.
    c.app.payments.hookDelayMs.prepare = 1_500
    const tx = await writeAndCommit(first, 'p1', 4_000)
    await until('orders prepared', () => c.app.orders.hooks.includes(`prepare:${tx.id}`), 10_000)
    first.child.kill('SIGKILL')
    const killedAt = Date.now()
    await first.exited
    await until(
      'both branches rolled back',
      () => c.app.orders.hooks.includes(`abort:${tx.id}`) && c.app.payments.hooks.includes(`abort:${tx.id}`),
      LEASE_MS + 10_000,
    )
    expect(Date.now() - killedAt).toBeLessThan(LEASE_MS + 10_000)
    expect({
      orders: c.app.orders.committed,
      payments: c.app.payments.committed,
      paymentsPrepared: c.app.payments.hooks.includes(`prepare:${tx.id}`),
    }).toEqual({ orders: [], payments: [], paymentsPrepared: true })
  }, 60_000)

  it('a branch whose coordinator died learns the new owner from the group: the instance it asks names the sibling that took the log over, and asking that one commits it', async () => {
    // The group address routes to coord-2 only; coord-2 is paused while coord-1 dies, so coord-3
    // takes coord-1's log over. Phase 2 cannot reach the participants (their control listeners
    // refuse): each branch learns the outcome by asking, and only the owner coord-2 names has it.
    const c = await cluster('tk_owner', { TXMESH_FAILPOINTS: 'coordinator-after-decision' }, { group: true })
    const [first, second, third] = c.coordinators as [SidecarProcess, SidecarProcess, SidecarProcess]
    const paused = second.child.pid as number
    process.kill(paused, 'SIGSTOP')
    try {
      const tx = await writeAndCommit(first, 'o1', 4_000)
      expect(await first.exited).toMatchObject({ signal: 'SIGKILL' })
      for (const p of c.proxies) await p.setMode({ kind: 'refuse' })
      const holder = async (): Promise<string | null | undefined> =>
        (await sql<{ holder: string | null }>(`SELECT holder FROM tk_owner.logs WHERE log_id = 'initiator/coord-1'`))[0]
          ?.holder
      await until('coord-3 took the log over', async () => (await holder()) === 'coord-3', LEASE_MS + 10_000)
      process.kill(paused, 'SIGCONT')
      await until(
        'the commit at both participants, learned by asking the owner',
        () => c.app.orders.committed.length === 1 && c.app.payments.committed.length === 1,
        30_000,
      )
      const [owner] = await sql<{ address: string | null }>(
        `SELECT address FROM tk_owner.logs WHERE log_id = 'initiator/coord-1'`,
      )
      expect({
        orders: c.app.orders.committed,
        payments: c.app.payments.committed,
        // The log's owner: coord-3, still holding it (its phase 2 cannot reach the participants).
        owner: owner?.address,
      }).toEqual({
        orders: ['orders:o1'],
        payments: ['payments:o1'],
        owner: `127.0.0.1:${third.ports.control}`,
      })
      // The id names the group, not coord-1: a sidecar that finds a prepared row of it without
      // its context (txmesh/pg at start) asks the group, which names the owner, which answers.
      expect(coordinatorOfTx(tx.id)).toBe(c.group)
      const [orders] = c.participants as [SidecarProcess]
      const asked = await request(`http://127.0.0.1:${orders.ports.admin}/v1/branches/${tx.id}/zzzzzzzz/outcome`)
      expect(await asked.body.json()).toMatchObject({ outcome: 'committed' })
      void tx.commit
    } finally {
      process.kill(paused, 'SIGCONT')
    }
  }, 60_000)

  it('a coordinator paused past its lease and resumed after a sibling took over sends no phase-2 message for it and stops, fenced', async () => {
    const c = await cluster('tk_stop', { TXMESH_FAILPOINTS: 'coordinator-after-decision:stop' })
    const [first] = c.coordinators as [SidecarProcess]
    const pid = first.child.pid as number
    await writeAndCommit(first, 's1')
    await until('the coordinator paused after its decision', () => statState(pid) === 'T', 10_000)
    await until(
      'the commit at both participants, by a sibling',
      () => c.app.orders.committed.length === 1 && c.app.payments.committed.length === 1,
      LEASE_MS + 10_000,
    )
    await until('the taken log finished', async () => (await decisionsIn('tk_stop', 'initiator/coord-1')) === 0, 10_000)
    const sentBefore = c.proxies.map((p) => p.stats.requestBytes)
    process.kill(pid, 'SIGCONT')
    const exited = await Promise.race([
      first.exited,
      new Promise<'running'>((r) => setTimeout(() => r('running'), 10_000)),
    ])
    // Give anything it might still send the time to arrive.
    await new Promise((r) => setTimeout(r, 500))
    expect({
      exited,
      sentAfterResume: c.proxies.map((p, i) => p.stats.requestBytes - (sentBefore[i] ?? 0)),
      fenced: /lease_lost|TXM_LOG_FENCED/.test(first.stderr()),
    }).toEqual({ exited: { code: 70, signal: null }, sentAfterResume: [0, 0], fenced: true })
    expect({ orders: c.app.orders.committed, payments: c.app.payments.committed }).toEqual({
      orders: ['orders:s1'],
      payments: ['payments:s1'],
    })
  }, 60_000)
})

describe('takeover with the leases on the Kubernetes API (store.lease kubernetes)', () => {
  it('a coordinator SIGKILLed after its COMMIT decision: a sibling wins its Lease, finishes the commit within the lease + 10 s, and gives the Lease up', async () => {
    const kube = await startKubeApi()
    closers.push(() => kube.close())
    const c = await cluster('tk_kube', { TXMESH_FAILPOINTS: 'coordinator-after-decision' }, { kube })
    const [first] = c.coordinators as [SidecarProcess]
    const name = leaseName('initiator/coord-1')
    await until('the Leases of the three instances', () => kube.leases.size === 3, 10_000)
    expect(kube.leases.get(name)?.spec.holderIdentity).toBe('coord-1')
    await writeAndCommit(first, 'q1')
    expect(await first.exited).toMatchObject({ signal: 'SIGKILL' })
    const killedAt = Date.now()
    await until(
      'the commit at both participants',
      () => c.app.orders.committed.length === 1 && c.app.payments.committed.length === 1,
      LEASE_MS + 10_000,
    )
    expect(Date.now() - killedAt).toBeLessThan(LEASE_MS + 10_000)
    await until('the dead log finished', async () => (await decisionsIn('tk_kube', 'initiator/coord-1')) === 0, 10_000)
    await until('the Lease given up', () => kube.leases.get(name)?.spec.holderIdentity == null, 10_000)
    const taker = kube.holders.get(name)?.[1]
    expect({
      holders: kube.holders.get(name),
      transitions: kube.leases.get(name)?.spec.leaseTransitions,
      // The row carries no expiry: the Lease is the lease. The token moved on at coord-1's open
      // (1 to 2) and again with the sibling's claim.
      row: (await sql(`SELECT holder, expires_at, token FROM tk_kube.logs WHERE log_id = 'initiator/coord-1'`))[0],
    }).toEqual({
      holders: ['coord-1', taker, undefined],
      transitions: 1,
      row: { holder: null, expires_at: null, token: '3' },
    })
    expect(['coord-2', 'coord-3']).toContain(taker)
    expect({ orders: c.app.orders.committed, payments: c.app.payments.committed }).toEqual({
      orders: ['orders:q1'],
      payments: ['payments:q1'],
    })
  }, 60_000)

  it('a coordinator paused past its Lease and resumed after a sibling took over sends no phase-2 message and stops, fenced', async () => {
    const kube = await startKubeApi()
    closers.push(() => kube.close())
    const c = await cluster('tk_kube_stop', { TXMESH_FAILPOINTS: 'coordinator-after-decision:stop' }, { kube })
    const [first] = c.coordinators as [SidecarProcess]
    const pid = first.child.pid as number
    await writeAndCommit(first, 'r1')
    await until('the coordinator paused after its decision', () => statState(pid) === 'T', 10_000)
    await until(
      'the commit at both participants, by a sibling',
      () => c.app.orders.committed.length === 1 && c.app.payments.committed.length === 1,
      LEASE_MS + 10_000,
    )
    await until(
      'the taken log finished',
      async () => (await decisionsIn('tk_kube_stop', 'initiator/coord-1')) === 0,
      10_000,
    )
    const sentBefore = c.proxies.map((p) => p.stats.requestBytes)
    process.kill(pid, 'SIGCONT')
    const exited = await Promise.race([
      first.exited,
      new Promise<'running'>((r) => setTimeout(() => r('running'), 10_000)),
    ])
    await new Promise((r) => setTimeout(r, 500))
    expect({
      exited,
      sentAfterResume: c.proxies.map((p, i) => p.stats.requestBytes - (sentBefore[i] ?? 0)),
      fenced: /lease_lost|TXM_LOG_FENCED/.test(first.stderr()),
    }).toEqual({ exited: { code: 70, signal: null }, sentAfterResume: [0, 0], fenced: true })
    expect({ orders: c.app.orders.committed, payments: c.app.payments.committed }).toEqual({
      orders: ['orders:r1'],
      payments: ['payments:r1'],
    })
  }, 60_000)
})

describe('a lease', () => {
  it("lapses on the holder's own clock while its process cannot run, and nothing is sent through the guard until a renewal went through", async () => {
    const { log } = await PgLog.open({
      url: store.url,
      logId: 'initiator/lease-unit',
      holder: 'lease-unit',
      leaseMs: 1_500,
    })
    let sent = 0
    const transport: ControlTransport = {
      send: () => {
        sent++
        return Promise.resolve({ ok: true, status: 200, body: {} })
      },
      call: () => {
        sent++
        return Promise.resolve({ ok: true, status: 200, body: {} })
      },
    }
    const guarded = leasedControl(transport, () => log.leaseHeld())
    expect(log.leaseHeld()).toBe(true)
    expect((await guarded.send('127.0.0.1:1', { tx: 't', op: 'commit', branch: 'b' })).ok).toBe(true)
    // The event loop blocked past the lease (as a paused process is): no renewal could run.
    Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 1_600)
    expect(log.leaseHeld()).toBe(false)
    const refused = await guarded.send('127.0.0.1:1', { tx: 't', op: 'commit', branch: 'b' })
    const asked = await guarded.call('127.0.0.1:1', 'GET', '/v1/tx/t/outcome')
    expect({ refused: refused.ok, asked: asked.ok, sent }).toEqual({ refused: false, asked: false, sent: 1 })
    // Nobody claimed it meanwhile: the next renewal goes through and the lease holds again.
    await until('the lease renewed', () => log.leaseHeld(), 5_000)
    expect(log.stats().renewals).toBeGreaterThan(0)
    await log.close()
  })

  it('on the Kubernetes API: a newer process of the same instance fences the older one at its next renewal, though the Lease names the same holder', async () => {
    const kube = await startKubeApi()
    closers.push(() => kube.close())
    const { KubeLeases } = await import('../../src/store/kube-lease.js')
    const leases = KubeLeases.inCluster(silentLogger, kube.env)
    closers.push(() => leases.close())
    let fenced = 0
    const older = await PgLog.open({
      url: store.url,
      logId: 'initiator/kube-same',
      holder: 'kube-same',
      leaseMs: 1_500,
      kube: leases,
      onFenced: () => fenced++,
    })
    const newer = await PgLog.open({
      url: store.url,
      logId: 'initiator/kube-same',
      holder: 'kube-same',
      leaseMs: 1_500,
      kube: leases,
    })
    // The Lease named this instance: the older process may act until its lease lapses on its own
    // clock, so the newer one sends nothing for a whole lease.
    expect(newer.log.leaseHeld()).toBe(false)
    await until('the older process fenced', () => fenced === 1, 5_000)
    await expect(older.log.append('c:t9', { type: 'decision' })).rejects.toThrow(/taken over/)
    expect(older.log.leaseHeld()).toBe(false)
    await newer.log.append('c:t9', { type: 'decision' })
    await until('the newer process past its quiet lease', () => newer.log.leaseHeld(), 5_000)
    await Promise.all([older.log.close(), newer.log.close()])
  })

  it('held by a live sibling, a log is not opened by its own instance until the sibling gives it up', async () => {
    const first = await PgLog.open({ url: store.url, logId: 'initiator/held', holder: 'held', leaseMs: 60_000 })
    await first.log.append('c:t1', { type: 'decision' })
    await first.log.close()
    // A sibling claims it as takeover does (token + 1, holder = sibling, a live lease).
    const [claimed] = await sql<{ token: string }>(
      `UPDATE txmesh.logs SET token = token + 1, holder = 'sibling', expires_at = now() + interval '1 minute'
       WHERE log_id = 'initiator/held' RETURNING token`,
    )
    const opening = PgLog.open({ url: store.url, logId: 'initiator/held', holder: 'held', leaseMs: 60_000 })
    let opened = false
    void opening.then(() => (opened = true))
    await new Promise((r) => setTimeout(r, 2_500))
    expect(opened).toBe(false)
    const sibling = await PgLog.open({
      url: store.url,
      logId: 'initiator/held',
      holder: 'sibling',
      leaseMs: 60_000,
      token: Number(claimed?.token),
    })
    sibling.log.end('c:t1')
    await sibling.log.release()
    const own = await opening
    expect({ records: own.records.map((r) => r.txId), token: own.log.stats().token }).toEqual({
      records: [],
      token: Number(claimed?.token) + 1,
    })
    await own.log.close()
  }, 30_000)
})
