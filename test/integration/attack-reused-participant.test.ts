// Attack (issue 15 "an attack before resolving"): a participant's control address taken over by
// another sidecar with another log, the mirror of the reused coordinator address. Real processes.
import { describe, expect, it } from 'vitest'
import { freePort, until } from '../../harness/ports.js'
import { tempDir } from '../../harness/temp.js'
import { sidecarYaml, spawnSidecar } from '../helpers/servers.js'
import { startTxApp, stopAfterTests } from '../helpers/tx-app.js'
import { mesh } from '../helpers/mesh.js'

const t = stopAfterTests()
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms))

/**
 * orders and payments commit; payments' app cannot commit yet (503), so its branch stays PREPARED
 * in its persistent log when its sidecar is SIGKILLed; then another pod (another service, its own
 * fresh log) gets payments' old control address.
 */
async function committedThenStranger(n: string) {
  const m = await mesh(t, ['orders', 'payments'])
  const payments = m.svc.payments!.app
  payments.answer.commit = 503
  const tx = await m.begin(60_000)
  expect((await m.call(tx.context, 'orders', `o${n}`)).status).toBe(200)
  expect((await m.call(tx.context, 'payments', `p${n}`)).status).toBe(200)
  expect((await m.commit(tx.id)).outcome).toBe('committed')
  await until('orders committed', () => m.svc.orders!.app.committed.length === 1)
  await until('payments asked to commit', () => payments.hooks.includes(`commit:${tx.id}`))
  const control = m.svc.payments!.sc.ports.control
  m.svc.payments!.sc.child.kill('SIGKILL')
  await m.svc.payments!.sc.exited
  const other = await startTxApp('inventory')
  t.apps.push(other)
  const stranger = await spawnSidecar(sidecarYaml('inventory', other.port, '', tempDir()), [
    '--control-port',
    String(control),
  ])
  t.procs.push(stranger)
  return { m, tx, stranger, other }
}

describe('a participant address reused by another sidecar', () => {
  it('a commit answered by a stranger at the address of a prepared participant is no acknowledgement', async () => {
    const { m, tx, other } = await committedThenStranger('1')
    // The coordinator's retried commit reaches the stranger. Does it count as acknowledged?
    await until('the stranger heard the commit', () => other.hooks.includes(`commit:${tx.id}`), 20_000)
    await sleep(500)
    const view = await m.view(tx.id)
    // The real payments branch is still prepared somewhere: the decision must not be forgotten.
    expect(view.participants).toEqual(
      expect.arrayContaining([expect.objectContaining({ service: 'payments', acknowledged: false })]),
    )
    expect(view.status).toBe('committing')
  }, 60_000)

  it('after such an answer the real participant, back at a new address, still commits', async () => {
    const { m, tx, stranger, other } = await committedThenStranger('2')
    const payments = m.svc.payments!.app
    // Wait until the coordinator stops retrying (or 15 s).
    await until('the stranger heard the commit', () => other.hooks.includes(`commit:${tx.id}`), 20_000)
    await sleep(500)
    const seen = await m.view(tx.id)
    // The coordinator restarts on its own log (a rollout): whatever it ended is forgotten.
    m.coord.child.kill('SIGTERM')
    await m.coord.exited
    await m.restartCoord()
    stranger.child.kill('SIGKILL')
    await stranger.exited
    // The payments pod comes back with its log at a new address.
    payments.answer.commit = 200
    const back = await spawnSidecar(sidecarYaml('payments', payments.port, '', m.svc.payments!.store), [
      '--control-port',
      String(await freePort()),
    ])
    t.procs.push(back)
    await until(
      'payments finished its branch',
      () => payments.hooks.includes(`abort:${tx.id}`) || payments.committed.length === 1,
      20_000,
    )
    // Orders committed: so must payments.
    // (The stranger's app hears the commit too, as any app at an unknown branch's address does: harmless.)
    expect({
      seen: seen.status,
      payments: payments.hooks.filter((h) => !h.startsWith('commit:')),
      committed: payments.committed,
    }).toEqual({
      seen: 'committing',
      payments: [`prepare:${tx.id}`],
      committed: ['payments:p2'],
    })
    // The holder tells the coordinator it finished (its phase 2 still went to the old address).
    await until('coordinator finished', async () => (await m.view(tx.id)).status === 'committed', 10_000)
  }, 90_000)

  it('a one-phase commit answered by a stranger at the address of the deciding participant is not reported aborted', async () => {
    const m = await mesh(t, ['payments'], { payments: { TXMESH_FAILPOINTS: 'participant-after-prepared' } })
    const payments = m.svc.payments!.app
    const tx = await m.begin(60_000)
    expect((await m.call(tx.context, 'payments', 'p3')).status).toBe(200)
    // The only participant decides: PREPARED(onePhase) is durable, then its sidecar dies.
    const commit = m.commit(tx.id)
    expect(await m.svc.payments!.sc.exited).toMatchObject({ signal: 'SIGKILL' })
    const control = m.svc.payments!.sc.ports.control
    const other = await startTxApp('inventory')
    t.apps.push(other)
    const stranger = await spawnSidecar(sidecarYaml('inventory', other.port, '', tempDir()), [
      '--control-port',
      String(control),
    ])
    t.procs.push(stranger)
    const reported = await Promise.race([commit, sleep(6_000).then(() => ({ outcome: 'no answer yet' }))])
    // The payments pod comes back with its log at a new address: it commits (it decided).
    stranger.child.kill('SIGKILL')
    const back = await spawnSidecar(sidecarYaml('payments', payments.port, '', m.svc.payments!.store), [
      '--control-port',
      String(await freePort()),
    ])
    t.procs.push(back)
    await until('payments committed', () => payments.committed.length === 1, 20_000)
    // The coordinator must never have told its caller "aborted".
    expect({ reported: reported.outcome, stranger: other.hooks }).toEqual({ reported: 'no answer yet', stranger: [] })
  }, 90_000)
})
