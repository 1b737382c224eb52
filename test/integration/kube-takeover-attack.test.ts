// Attacks on takeover with the leases on the Kubernetes API (store.lease kubernetes), with real
// sidecar processes, a real Postgres and the loopback Lease API server (test/helpers/kube-api.ts).
// cluster() and writeAndCommit() are copies of those of pg-takeover.test.ts.
import { readFileSync } from 'node:fs'
import { request } from 'undici'
import { describe, expect, it } from 'vitest'
import { KubeLeases, leaseName } from '../../src/store/kube-lease.js'
import { PgLog } from '../../src/store/pg-log.js'
import { silentLogger } from '../../src/telemetry/logger.js'
import { startFaultProxy, type FaultProxy } from '../helpers/fault-proxy.js'
import { startKubeApi, type KubeApi } from '../helpers/kube-api.js'
import { usePgDatabase } from '../helpers/pg.js'
import { freePort, until } from '../../harness/ports.js'
import { rawRequest, sidecarYaml, spawnSidecar, withPgStore, type SidecarProcess } from '../helpers/servers.js'
import { startTxApp, stopAfterTests, type TxApp } from '../helpers/tx-app.js'

const { procs, apps, closers } = stopAfterTests()
const LEASE_MS = 3_000

const store = usePgDatabase('kubeattack')
const sql = store.sql
interface Cluster {
  app: Record<'orders' | 'payments', TxApp>
  /** In front of each participant sidecar's control listener: counts what coordinators send. */
  proxies: FaultProxy[]
  /** The participant sidecars (orders, payments). */
  participants: SidecarProcess[]
  coordinators: SidecarProcess[]
  /** Each coordinator's configuration (a restart of the same instance runs it again). */
  yamls: string[]
  /** store.group's address (with `group`). */
  group: string
}

/** Two participant services and three coordinator instances of `initiator` on one store. */
async function cluster(
  schema: string,
  firstEnv: Record<string, string>,
  o: { group?: boolean; kube?: KubeApi; leaseMs?: number; envs?: Partial<Record<number, Record<string, string>>> } = {},
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
  const yamls: string[] = []
  // store.group: a proxy standing for a Service in front of the instances' control ports (here it
  // routes to the second instance).
  const groupPort = await freePort()
  const group = o.group === true ? `, group: "127.0.0.1:${groupPort}"` : ''
  for (const i of [1, 2, 3]) {
    const yaml = withPgStore(
      sidecarYaml('initiator', 1, `services:\n${services}\n`).replace('log: {level: silent}', 'log: {level: error}'),
      `url: ${JSON.stringify(store.url)}, schema: ${schema}, instance: coord-${i}, leaseMs: ${o.leaseMs ?? LEASE_MS}${group}` +
        (o.kube === undefined ? '' : ', lease: kubernetes'),
    )
    yamls.push(yaml)
    const sc = await spawnSidecar(yaml, [], { ...o.kube?.env, ...(i === 1 ? firstEnv : {}), ...o.envs?.[i] })
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
  return { app, proxies, participants, coordinators, yamls, group: `127.0.0.1:${groupPort}` }
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

describe('takeover on the Kubernetes API: attacks', () => {
  it('a dead coordinator whose log sorts after 16 live, busy siblings: a sibling still takes it over and finishes its commit within the lease + 10 s', async () => {
    const kube = await startKubeApi()
    closers.push(() => kube.close())
    const schema = 'ka_many'
    const c = await cluster(schema, { TXMESH_FAILPOINTS: 'coordinator-after-decision' }, { kube })
    const [first] = c.coordinators as [SidecarProcess]
    await until('the Leases of the three instances', () => kube.leases.size === 3, 10_000)
    // Sixteen more live instances of the service (a service scaled out), each with a transaction
    // in flight in its log (a COMMIT decision, phase 2 under way) and renewing its Lease as a live
    // sidecar does: what a sibling's scan finds of them in the store and on the API is exactly a
    // live, busy sibling. Their names sort before coord-1's.
    const busy = Array.from({ length: 16 }, (_, i) => `busy-${String(i).padStart(2, '0')}`)
    const holderApi = KubeLeases.inCluster(silentLogger, kube.env)
    closers.push(() => holderApi.close())
    for (const b of busy) {
      expect(await holderApi.acquire(`initiator/${b}`, b, LEASE_MS)).toBe(true)
      await sql(`INSERT INTO ${schema}.logs (log_id, token, holder) VALUES ($1, 2, $2)`, [`initiator/${b}`, b])
      await sql(`INSERT INTO ${schema}.records (log_id, lsn, key, body) VALUES ($1, 1, $2, $3::jsonb)`, [
        `initiator/${b}`,
        `c:${b}-tx`,
        JSON.stringify({ type: 'decision', outcome: 'commit' }),
      ])
    }
    let renewing = true
    const renewals = (async () => {
      while (renewing) {
        await Promise.all(busy.map((b) => holderApi.renew(`initiator/${b}`, b, LEASE_MS).catch(() => undefined)))
        await new Promise((r) => setTimeout(r, LEASE_MS / 6))
      }
    })()
    closers.push(async () => {
      renewing = false
      await renewals
    })
    await writeAndCommit(first, 'm1')
    expect(await first.exited).toMatchObject({ signal: 'SIGKILL' })
    const killedAt = Date.now()
    await until(
      'the commit at both participants, by a sibling',
      () => c.app.orders.committed.length === 1 && c.app.payments.committed.length === 1,
      LEASE_MS + 10_000,
    ).catch(() => undefined)
    const name = leaseName('initiator/coord-1')
    expect({
      committed: { orders: c.app.orders.committed, payments: c.app.payments.committed },
      withinLeasePlus10s: Date.now() - killedAt < LEASE_MS + 10_000,
      takers: kube.holders
        .get(name)
        ?.slice(1)
        .filter((h) => h !== undefined).length,
      // The busy siblings were never taken from: they renew.
      busyTaken: busy.filter((b) => (kube.holders.get(leaseName(`initiator/${b}`))?.length ?? 0) > 1),
    }).toEqual({
      committed: { orders: ['orders:m1'], payments: ['payments:m1'] },
      withinLeasePlus10s: true,
      takers: 1,
      busyTaken: [],
    })
  }, 90_000)

  it('the API server away (503) for twice the lease while Postgres is fine, every instance busy: when it is back, no instance takes a log of another that renews as soon as it can, and none is fenced', async () => {
    const kube = await startKubeApi()
    closers.push(() => kube.close())
    const schema = 'ka_away'
    const c = await cluster(schema, {}, { kube })
    await until('the Leases of the three instances', () => kube.leases.size === 3, 10_000)
    // Every instance has a COMMIT decision whose phase 2 is not acknowledged yet (payments' app
    // commits slowly): each log has work a sibling would finish.
    c.app.payments.hookDelayMs.commit = 60_000
    for (const [i, sc] of c.coordinators.entries()) await writeAndCommit(sc, `away${i}`)
    for (const i of [1, 2, 3])
      await until(
        `coord-${i}'s decision`,
        async () => (await decisionsIn(schema, `initiator/coord-${i}`)) === 1,
        10_000,
      )
    kube.unavailable = true
    await new Promise((r) => setTimeout(r, 2 * LEASE_MS + 500))
    // Still unfinished when the API is back: each log is a candidate of the siblings' looks.
    for (const i of [1, 2, 3]) expect(await decisionsIn(schema, `initiator/coord-${i}`)).toBe(1)
    kube.unavailable = false
    await new Promise((r) => setTimeout(r, 2 * LEASE_MS + 2_000))
    const exited = await Promise.all(
      c.coordinators.map((sc) =>
        Promise.race([sc.exited, new Promise<'running'>((r) => setTimeout(() => r('running'), 10))]),
      ),
    )
    expect({
      exited,
      holders: [1, 2, 3].map((i) => kube.holders.get(leaseName(`initiator/coord-${i}`))),
    }).toEqual({
      exited: ['running', 'running', 'running'],
      holders: [['coord-1'], ['coord-2'], ['coord-3']],
    })
    c.app.payments.hookDelayMs.commit = 0
  }, 90_000)

  it('a live, busy holder whose Lease is deleted (kubectl delete lease): no sibling takes its log over while it renews, and it is not fenced', async () => {
    const kube = await startKubeApi()
    closers.push(() => kube.close())
    const schema = 'ka_deleted'
    const c = await cluster(schema, {}, { kube })
    const [first] = c.coordinators as [SidecarProcess]
    await until('the Leases of the three instances', () => kube.leases.size === 3, 10_000)
    c.app.payments.hookDelayMs.commit = 60_000
    await writeAndCommit(first, 'del1')
    await until(
      'the decision, phase 2 under way',
      async () => (await decisionsIn(schema, 'initiator/coord-1')) === 1,
      10_000,
    )
    const name = leaseName('initiator/coord-1')
    expect(kube.deleteLease(name)).toBe(true)
    await new Promise((r) => setTimeout(r, 2 * LEASE_MS + 2_000))
    const exited = await Promise.race([first.exited, new Promise<'running'>((r) => setTimeout(() => r('running'), 10))])
    expect({
      exited,
      holders: kube.holders.get(name),
      holderNow: kube.leases.get(name)?.spec.holderIdentity,
      fenced: /lease_lost|TXM_LOG_FENCED/.test(first.stderr()),
    }).toEqual({ exited: 'running', holders: ['coord-1'], holderNow: 'coord-1', fenced: false })
    c.app.payments.hookDelayMs.commit = 0
  }, 90_000)

  it('an instance paused (SIGSTOP) after its COMMIT decision, restarted meanwhile under the same name (same holderIdentity, its log claimed at once): resumed within its lease, the old process sends no phase-2 message and stops, fenced', async () => {
    const kube = await startKubeApi()
    closers.push(() => kube.close())
    const schema = 'ka_same'
    // A lease long enough that the pause below ends well within it on the old process's clock.
    const c = await cluster(schema, { TXMESH_FAILPOINTS: 'coordinator-after-decision:stop' }, { kube, leaseMs: 10_000 })
    const [first] = c.coordinators as [SidecarProcess]
    const pid = first.child.pid as number
    await writeAndCommit(first, 's1')
    await until('the coordinator paused after its decision', () => statState(pid) === 'T', 10_000)
    const pausedAt = Date.now()
    // The instance restarted under the same name (its pod's container restarted while the old
    // process was stopped, not dead): it claims its own log at once and finishes the commit.
    const second = await spawnSidecar(c.yamls[0] as string, [], kube.env)
    procs.push(second)
    // Its Lease naming its own instance, the new process sends nothing for a whole lease (the
    // older process may act until then): the commit comes after that.
    await until(
      'the commit at both participants, by the new process',
      () => c.app.orders.committed.length === 1 && c.app.payments.committed.length === 1,
      25_000,
    )
    await until(
      'the log finished by the new process',
      async () => (await decisionsIn(schema, 'initiator/coord-1')) === 0,
      10_000,
    )
    const sentBefore = c.proxies.map((p) => p.stats.requestBytes)
    const pausedMs = Date.now() - pausedAt
    process.kill(pid, 'SIGCONT')
    const exited = await Promise.race([
      first.exited,
      new Promise<'running'>((r) => setTimeout(() => r('running'), 10_000)),
    ])
    await new Promise((r) => setTimeout(r, 500))
    // Paused past the new process's quiet lease (10 s) but resumed before its own renewal could
    // have run on its clock, so only the stall guard and the token keep it from acting.
    expect(pausedMs).toBeLessThan(20_000)
    expect({
      exited,
      sentAfterResume: c.proxies.map((p, i) => p.stats.requestBytes - (sentBefore[i] ?? 0)),
      fenced: /lease_lost|TXM_LOG_FENCED/.test(first.stderr()),
    }).toEqual({ exited: { code: 70, signal: null }, sentAfterResume: [0, 0], fenced: true })
    expect({ orders: c.app.orders.committed, payments: c.app.payments.committed }).toEqual({
      orders: ['orders:s1'],
      payments: ['payments:s1'],
    })
  }, 90_000)

  it("an instance opening its own log while a live sibling finishes it, the log's Lease just deleted: it waits for the sibling to give it up, and the sibling is not fenced", async () => {
    const kube = await startKubeApi()
    closers.push(() => kube.close())
    const clients = [1, 2, 3].map(() => KubeLeases.inCluster(silentLogger, kube.env))
    closers.push(() => Promise.all(clients.map((k) => k.close())).then(() => undefined))
    const [own, sib, reopen] = clients as [KubeLeases, KubeLeases, KubeLeases]
    const o = { url: store.url, schema: 'ka_own', logId: 'initiator/own-del', leaseMs: LEASE_MS }
    const first = await PgLog.open({ ...o, holder: 'own-del', kube: own })
    await first.log.append('c:t1', { type: 'decision' })
    await first.log.close()
    // A sibling took it over as claimKube does: the Lease (here free, given up), then the token.
    await own.release(o.logId, 'own-del')
    expect(await sib.acquire(o.logId, 'sib', LEASE_MS)).toBe(true)
    const [claimed] = await sql<{ token: string }>(
      `UPDATE ka_own.logs SET token = token + 1, holder = 'sib', expires_at = NULL WHERE log_id = $1 RETURNING token`,
      [o.logId],
    )
    let fenced = 0
    const sibling = await PgLog.open({
      ...o,
      holder: 'sib',
      kube: sib,
      token: Number(claimed?.token),
      onFenced: () => fenced++,
    })
    expect(kube.deleteLease(leaseName(o.logId))).toBe(true)
    const opening = PgLog.open({ ...o, holder: 'own-del', kube: reopen })
    let opened = false
    void opening.then(() => (opened = true))
    await new Promise((r) => setTimeout(r, 2_500))
    expect({
      opened,
      fenced,
      sibling: sibling.log.leaseHeld(),
      lease: kube.leases.get(leaseName(o.logId))?.spec.holderIdentity,
    }).toEqual({
      opened: false,
      fenced: 0,
      sibling: true,
      lease: 'sib',
    })
    sibling.log.end('c:t1')
    await sibling.log.release()
    const mine = await opening
    expect({ records: mine.records.map((r) => r.txId), token: mine.log.stats().token, fenced }).toEqual({
      records: [],
      token: Number(claimed?.token) + 1,
      fenced: 0,
    })
    await mine.log.close()
  }, 30_000)

  it("two takers each win the dead log's Lease in turn and pause before moving its token on; the first resumes first and wins the token with the Lease another's: it is fenced and sends nothing, and the other finishes the commit", async () => {
    const kube = await startKubeApi()
    closers.push(() => kube.close())
    const schema = 'ka_cas'
    const stop = { TXMESH_FAILPOINTS: 'takeover-after-lease:stop' }
    const c = await cluster(
      schema,
      { TXMESH_FAILPOINTS: 'coordinator-after-decision' },
      { kube, envs: { 2: stop, 3: stop } },
    )
    const [first, second, third] = c.coordinators as [SidecarProcess, SidecarProcess, SidecarProcess]
    const [p2, p3] = [second.child.pid as number, third.child.pid as number]
    await until('the Leases of the three instances', () => kube.leases.size === 3, 10_000)
    // coord-3 cannot run while coord-2 wins the dead log's Lease.
    process.kill(p3, 'SIGSTOP')
    await writeAndCommit(first, 'cas1')
    expect(await first.exited).toMatchObject({ signal: 'SIGKILL' })
    await until('coord-2 paused with the Lease won', () => statState(p2) === 'T', LEASE_MS + 10_000)
    const name = leaseName('initiator/coord-1')
    expect(kube.leases.get(name)?.spec.holderIdentity).toBe('coord-2')
    // coord-3 sees coord-2's Lease unrenewed for a lease, wins it and pauses before the token.
    process.kill(p3, 'SIGCONT')
    await until('coord-3 paused with the Lease won', () => statState(p3) === 'T', 2 * LEASE_MS + 10_000)
    expect(kube.leases.get(name)?.spec.holderIdentity).toBe('coord-3')
    // coord-2 first: its compare-and-set goes through (coord-3 has not moved the token).
    const sentBefore = c.proxies.map((p) => p.stats.requestBytes)
    process.kill(p2, 'SIGCONT')
    // Its renewal finds the Lease another's: fenced on that log (leaseHeld false meanwhile: its
    // claim was sent more than a lease ago).
    await new Promise((r) => setTimeout(r, LEASE_MS))
    const sentByTwo = c.proxies.map((p, i) => p.stats.requestBytes - (sentBefore[i] ?? 0))
    const tokenAfterTwo = (
      await sql<{ token: string; holder: string }>(
        `SELECT token, holder FROM ${schema}.logs WHERE log_id = 'initiator/coord-1'`,
      )
    )[0]
    // Then coord-3, resumed each time its failpoint pauses it again: it finishes the log.
    let done = false
    const resumer = (async () => {
      while (!done) {
        if (statState(p3) === 'T') process.kill(p3, 'SIGCONT')
        await new Promise((r) => setTimeout(r, 200))
      }
    })()
    await until(
      'the commit at both participants',
      () => c.app.orders.committed.length === 1 && c.app.payments.committed.length === 1,
      3 * LEASE_MS + 15_000,
    ).finally(() => (done = true))
    await resumer
    const running = await Promise.all(
      [second, third].map((sc) =>
        Promise.race([sc.exited, new Promise<'running'>((r) => setTimeout(() => r('running'), 10))]),
      ),
    )
    expect({
      sentByTwo,
      tokenAfterTwo,
      running,
      committed: { orders: c.app.orders.committed, payments: c.app.payments.committed },
    }).toEqual({
      sentByTwo: [0, 0],
      tokenAfterTwo: { token: '3', holder: 'coord-2' },
      running: ['running', 'running'],
      committed: { orders: ['orders:cas1'], payments: ['payments:cas1'] },
    })
  }, 120_000)
})

const statState = (pid: number): string => readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]?.[0] ?? '?'
