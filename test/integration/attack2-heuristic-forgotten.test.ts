// Attack 2: heuristic-mixed reporting after an operator's (not forced) resolution of a branch in
// doubt, when the participant forgets the branch before the coordinator's phase 2 reaches it.
// Real processes.
import { request } from 'undici'
import { describe, expect, it } from 'vitest'
import { tempDir } from '../../harness/temp.js'
import { until } from '../../harness/ports.js'
import { stopAfterTests } from '../helpers/tx-app.js'
import { JSON_HEADERS, mesh } from '../helpers/mesh.js'

const t = stopAfterTests()

describe('a resolution in doubt that the coordinator later contradicts', () => {
  it('is reported heuristic-mixed even if the participant restarted in between', async () => {
    const m = await mesh(t, ['orders', 'payments'], {}, { TXMESH_FAILPOINTS: 'coordinator-after-decision' })
    const payments = m.svc.payments!.app
    const orders = m.svc.orders!.app
    const tx = await m.begin(2_000)
    await m.call(tx.context, 'orders', 'o1')
    await m.call(tx.context, 'payments', 'p1')
    // COMMIT is durable, then the coordinator dies before phase 2.
    void m.commit(tx.id).catch(() => undefined)
    await m.coord.exited
    const own = m.coordStore
    // Another log at the coordinator's address (a new pod at its IP): the branches ask it past
    // their deadline, hear unknown-coordinator and are in doubt at once.
    await m.restartCoord({ store: tempDir() })
    await until('payments in doubt', async () => (await m.branches('payments')).some((b) => b.inDoubt === true), 15_000)
    // The operator resolves it (not forced: it is in doubt) the wrong way.
    const r = await request(`http://127.0.0.1:${m.svc.payments!.sc.ports.admin}/v1/branches/${tx.id}/resolve`, {
      method: 'POST',
      headers: JSON_HEADERS,
      body: JSON.stringify({ outcome: 'aborted', by: 'attack2' }),
    })
    expect(r.statusCode).toBe(200)
    await r.body.dump()
    await until('payments aborted', () => payments.hooks.includes(`abort:${tx.id}`))
    // The payments sidecar restarts (a rollout) before the coordinator is back.
    m.svc.payments!.sc.child.kill('SIGTERM')
    await m.svc.payments!.sc.exited
    await m.restart('payments')
    // The coordinator's own log comes back at its address and re-drives phase 2.
    m.coord.child.kill('SIGKILL')
    await m.coord.exited
    await m.restartCoord({ store: own })
    await until('orders committed', () => orders.committed.includes('orders:o1'), 20_000)
    await until('coordinator done', async () => (await m.view(tx.id)).status !== 'committing', 20_000)
    const view = await m.view(tx.id)
    // Orders committed, payments was aborted by hand: that is heuristic mixed, not "committed, all acknowledged".
    expect({ payments: payments.committed, status: view.status }).toEqual({ payments: [], status: 'heuristic-mixed' })
  }, 90_000)
})
