// Schedules that once split a transaction's outcome or left a prepared branch behind its
// transaction (issue "Atomicity first"), each run on real sidecar processes and apps: the
// coordinator's address taken over by another log, END ignored at recovery, an app prepared
// before its sidecar wrote anything, a prepare that timed out, an operator racing the
// coordinator, and hooks racing the branch's own requests.
import { spawnSync } from 'node:child_process'
import { request } from 'undici'
import { describe, expect, it } from 'vitest'
import { incarnationOfTx, signControl } from '../../src/tx/protocol.js'
import { tempDir } from '../../harness/temp.js'
import { until } from '../../harness/ports.js'
import { CLI } from '../../harness/sidecar.js'
import { MESH_KEY, sidecarYaml, spawnSidecar } from '../helpers/servers.js'
import { stopAfterTests } from '../helpers/tx-app.js'
import { mesh } from '../helpers/mesh.js'

const t = stopAfterTests()

/** A signed outcome query, as a participant sidecar sends it. */
async function outcomeAt(control: number, id: string): Promise<unknown> {
  const path = `/v1/tx/${id}/outcome`
  const r = await request(`http://127.0.0.1:${control}${path}`, {
    headers: { 'txmesh-auth': signControl(Buffer.from(MESH_KEY), Date.now(), 'GET', path, '') },
  })
  expect(r.statusCode).toBe(200)
  return ((await r.body.json()) as { outcome: unknown }).outcome
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms))

describe('atomicity under crashes and strangers', () => {
  it('a branch whose coordinator address now runs another log stays prepared and in doubt, never aborted', async () => {
    const m = await mesh(t, ['orders', 'payments'])
    const payments = m.svc.payments!.app
    // Payments cannot commit yet: its branch stays prepared while orders commits.
    payments.answer.commit = 503
    const tx = await m.begin(60_000)
    expect((await m.call(tx.context, 'orders', 'o1')).status).toBe(200)
    expect((await m.call(tx.context, 'payments', 'p1')).status).toBe(200)
    expect((await m.commit(tx.id)).outcome).toBe('committed')
    await until('orders committed', () => m.svc.orders!.app.committed.length === 1)
    await until('payments asked to commit', () => payments.hooks.includes(`commit:${tx.id}`))
    // Both sidecars die; a new pod with a new (empty) log takes the coordinator's address.
    m.coord.child.kill('SIGKILL')
    m.svc.payments!.sc.child.kill('SIGKILL')
    await Promise.all([m.coord.exited, m.svc.payments!.sc.exited])
    await m.restartCoord({ store: tempDir() })
    payments.answer.commit = 200
    await m.restart('payments')
    // The recovered branch asks the address, which cannot vouch for the id: in doubt at once.
    const inDoubt = async (): Promise<boolean> =>
      (await m.branches('payments')).some((b) => b.tx === tx.id && b.inDoubt === true && b.coordinatorUnknown === true)
    await until(
      'payments aborted or in doubt',
      async () => payments.hooks.includes(`abort:${tx.id}`) || (await inDoubt()),
    )
    await sleep(1_500)
    expect(payments.hooks).not.toContain(`abort:${tx.id}`)
    expect((await m.branches('payments')).find((b) => b.tx === tx.id)).toMatchObject({
      status: 'prepared',
      inDoubt: true,
    })
    // The new log answers 'unknown-coordinator' for the old id, and still presumes abort for an
    // id of its own incarnation that it never saw.
    const own = await m.begin()
    const incarnation = incarnationOfTx(own.id)
    expect(incarnation).toBeDefined()
    expect(incarnationOfTx(tx.id)).not.toBe(incarnation)
    const unseen = `AAAAAAAAAAAAAAAA_${incarnation}`
    expect(await outcomeAt(m.coord.ports.control, tx.id)).toBe('unknown-coordinator')
    expect(await outcomeAt(m.coord.ports.control, unseen)).toBe('aborted')
  })

  it('a committed branch with a durable END is never re-asked or aborted after a crash', async () => {
    const m = await mesh(t, ['orders', 'payments'], { payments: { TXMESH_FAILPOINTS: 'participant-after-end' } })
    const payments = m.svc.payments!.app
    const tx = await m.begin()
    await m.call(tx.context, 'orders', 'o6')
    await m.call(tx.context, 'payments', 'p6')
    const result = await m.commit(tx.id, 'acks')
    expect(result.outcome).toBe('committed')
    expect(result.participants).toMatchObject([{ acknowledged: true }, { acknowledged: true }])
    // Payments died just after its acknowledgement left (its END marker is lazy: not on disk).
    expect(await m.svc.payments!.sc.exited).toMatchObject({ signal: 'SIGKILL' })
    expect(payments.committed).toEqual(['payments:p6'])
    // The coordinator forgets the transaction (drained, restarted on its log).
    m.coord.child.kill('SIGTERM')
    await m.coord.exited
    await m.restartCoord()
    await m.restart('payments')
    await sleep(2_000)
    expect(payments.hooks).not.toContain(`abort:${tx.id}`)
    expect(await m.branches('payments')).toEqual([])
  })

  it('an app that prepared just before its sidecar died is rolled back by the sidecar, whoever forgot it', async () => {
    const m = await mesh(t, ['orders', 'payments'], {
      payments: { TXMESH_FAILPOINTS: 'participant-after-app-prepared' },
    })
    const payments = m.svc.payments!.app
    const tx = await m.begin()
    await m.call(tx.context, 'orders', 'o3')
    await m.call(tx.context, 'payments', 'p3')
    const result = await m.commit(tx.id)
    expect(result.outcome).toBe('aborted')
    expect(await m.svc.payments!.sc.exited).toMatchObject({ signal: 'SIGKILL' })
    expect(payments.hooks).toContain(`prepare:${tx.id}`)
    // The coordinator dies during its abort sends: nobody else will tell payments.
    m.coord.child.kill('SIGKILL')
    await m.coord.exited
    await m.restartCoord()
    await m.restart('payments')
    await until('payments app rolled back', () => payments.hooks.includes(`abort:${tx.id}`))
    expect(payments.committed).toEqual([])
    await until('payments holds nothing', async () => (await m.branches('payments')).length === 0)
  })

  it('a participant whose prepare timed out is sent abort as soon as its app answers', async () => {
    const m = await mesh(t, ['orders', 'payments'])
    const payments = m.svc.payments!.app
    // Longer than the coordinator's control call timeout (5 s): the prepare times out there.
    payments.hookDelayMs.prepare = 7_000
    const tx = await m.begin(120_000)
    await m.call(tx.context, 'orders', 'o4')
    await m.call(tx.context, 'payments', 'p4')
    const started = Date.now()
    expect((await m.commit(tx.id)).outcome).toBe('aborted')
    // Not at the deadline (two minutes): right after the late prepare returned.
    await until('payments app rolled back', () => payments.hooks.includes(`abort:${tx.id}`), 20_000)
    expect(Date.now() - started).toBeLessThan(20_000)
    expect(payments.committed).toEqual([])
    await until('payments holds nothing', async () => (await m.branches('payments')).length === 0)
  })

  it('an operator cannot resolve a branch its coordinator can still decide; a forced one is reported heuristic-mixed', async () => {
    const m = await mesh(t, ['orders', 'payments'], {}, { TXMESH_FAILPOINTS: 'coordinator-after-decision' })
    const tx = await m.begin(60_000)
    await m.call(tx.context, 'orders', 'o5')
    await m.call(tx.context, 'payments', 'p5')
    const commit = m.commit(tx.id).catch((e: Error) => e)
    expect(await m.coord.exited).toMatchObject({ signal: 'SIGKILL' })
    await commit
    const resolve = async (force: boolean): Promise<{ status: number; body: Record<string, unknown> }> => {
      const r = await request(`http://127.0.0.1:${m.svc.payments!.sc.ports.admin}/v1/branches/${tx.id}/resolve`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ outcome: 'aborted', by: 'test', ...(force ? { force: true } : {}) }),
      })
      return { status: r.statusCode, body: (await r.body.json()) as Record<string, unknown> }
    }
    // Prepared seconds ago, coordinator not gone: not in doubt.
    const refused = await resolve(false)
    expect(refused.status).toBe(409)
    expect(refused.body).toMatchObject({ error: { code: 'TXM_BRANCH_NOT_IN_DOUBT' } })
    expect(m.svc.payments!.app.hooks).not.toContain(`abort:${tx.id}`)
    // Forced: carried out, and audited as forced.
    const forced = await resolve(true)
    expect(forced.status).toBe(200)
    expect(forced.body).toMatchObject({ resolved: 'aborted', forced: true })
    await until('payments app aborted', () => m.svc.payments!.app.hooks.includes(`abort:${tx.id}`))
    // The coordinator comes back with its COMMIT decision: orders commits, payments disagrees.
    await m.restartCoord()
    await until('orders committed', () => m.svc.orders!.app.committed.length === 1)
    await until('heuristic-mixed', async () => (await m.view(tx.id)).status === 'heuristic-mixed')
    const view = await m.view(tx.id)
    expect(view.participants).toEqual(
      expect.arrayContaining([
        expect.objectContaining({ service: 'orders', acknowledged: true }),
        expect.objectContaining({ service: 'payments', acknowledged: false, heuristic: 'aborted' }),
      ]),
    )
    const metrics = await (await request(`http://127.0.0.1:${m.coord.ports.admin}/metrics`)).body.text()
    expect(metrics).toMatch(/txmesh_heuristic_outcomes_total\{decision="committed",branch="aborted"\} 1/)
    const list = spawnSync(
      process.execPath,
      [CLI, 'tx', 'list', '--admin', `http://127.0.0.1:${m.coord.ports.admin}`],
      { encoding: 'utf8' },
    )
    expect(list.stdout).toContain('HEURISTIC-MIXED')
    expect(list.stdout).toContain('heuristic-mixed! (payments aborted)')
  })

  it('holds a deadline abort until the branch request running in the app has answered', async () => {
    const m = await mesh(t, ['orders'])
    const orders = m.svc.orders!.app
    const tx = await m.begin(600)
    // The request runs 2 s in the app (blocked on a lock, say); the deadline passes meanwhile.
    const call = m.call(tx.context, 'orders', 'slow', 'hold=2000')
    await until('abort hook', () => orders.hooks.includes(`abort:${tx.id}`), 15_000)
    await call
    const end = orders.timeline.find((e) => e.what === `end:${tx.id}`)
    const abort = orders.timeline.find((e) => e.what === `hook:abort:${tx.id}`)
    expect(end).toBeDefined()
    expect(abort!.at).toBeGreaterThanOrEqual(end!.at)
  })

  it('a sibling asking about a one-phase branch it does not hold, after the coordinator restarted, hears in doubt, not aborted', async () => {
    const m = await mesh(t, ['payments'])
    const payments = m.svc.payments!.app
    // The only participant: it decides commit itself once PREPARED(onePhase) is durable, and
    // keeps retrying its app's commit.
    payments.answer.commit = 503
    const tx = await m.begin(60_000)
    const call = await m.call(tx.context, 'payments', 'p7')
    const branch = (JSON.parse(call.body) as { branch: string }).branch
    void m.commit(tx.id).catch(() => undefined)
    await until('payments asked to commit', () => payments.hooks.includes(`commit:${tx.id}`))
    // The coordinator restarts on its log: it logged nothing for the one-phase commit.
    m.coord.child.kill('SIGKILL')
    await m.coord.exited
    await m.restartCoord()
    // A sibling instance of payments (another sidecar, another log) finds the prepared row.
    const sibling = await spawnSidecar(sidecarYaml('payments', payments.port, '', tempDir()))
    t.procs.push(sibling)
    const asked = await request(`http://127.0.0.1:${sibling.ports.admin}/v1/branches/${tx.id}/${branch}/outcome`)
    expect(((await asked.body.json()) as { outcome: string }).outcome).toBe('in-doubt')
    // The holder still asks as the holder and finishes the commit.
    payments.answer.commit = 200
    await until('payments committed', () => payments.committed.length === 1, 20_000)
    expect(payments.hooks).not.toContain(`abort:${tx.id}`)
  })

  it('a branch whose sidecar died while its first request ran in the app is aborted after the restart', async () => {
    const m = await mesh(t, ['orders', 'payments'])
    const payments = m.svc.payments!.app
    const tx = await m.begin(60_000)
    await m.call(tx.context, 'orders', 'o9')
    // The request runs 2 s in the app; its sidecar dies meanwhile, before the answer (and its
    // enlistment) went back: the coordinator never hears of the branch.
    const call = m.call(tx.context, 'payments', 'p9', 'hold=2000')
    await until('payments request started', () => payments.timeline.some((e) => e.what === `start:${tx.id}`))
    m.svc.payments!.sc.child.kill('SIGKILL')
    await m.svc.payments!.sc.exited
    expect((await call).status).toBeGreaterThanOrEqual(500)
    await m.restart('payments')
    // JOINED was durable before the request reached the app: the restarted sidecar aborts the
    // branch alone, once a request that may still run in the app would have finished.
    await until('payments app rolled back', () => payments.hooks.includes(`abort:${tx.id}`), 20_000)
    const end = payments.timeline.find((e) => e.what === `end:${tx.id}`)
    const abort = payments.timeline.find((e) => e.what === `hook:abort:${tx.id}`)
    expect(abort!.at).toBeGreaterThanOrEqual(end!.at)
    expect(payments.committed).toEqual([])
    await until('payments holds nothing', async () => (await m.branches('payments')).length === 0)
  })
})
