// Schedules that once split a transaction's outcome or left a prepared branch behind its
// transaction (issue "Atomicity first"), each run on real sidecar processes and apps: the
// coordinator's address taken over by another log, END ignored at recovery, an app prepared
// before its sidecar wrote anything, a prepare that timed out, an operator racing the
// coordinator, and hooks racing the branch's own requests.
import { request } from 'undici'
import { describe, expect, it } from 'vitest'
import { incarnationOfTx, signControl } from '../../src/tx/protocol.js'
import { MESH_KEY, tempDir, until } from '../helpers/servers.js'
import { stopAfterTests } from '../helpers/tx-app.js'
import { mesh } from '../helpers/mesh.js'

const t = stopAfterTests()

/** A signed outcome query, as a participant sidecar sends it. */
async function outcomeAt(control: number, id: string): Promise<unknown> {
  const path = `/v1/tx/${id}/outcome`
  const r = await request(`http://127.0.0.1:${control}${path}`, { headers: { 'txmesh-auth': signControl(Buffer.from(MESH_KEY), Date.now(), 'GET', path, '') } })
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
    const inDoubt = async (): Promise<boolean> => (await m.branches('payments')).some((b) => b.tx === tx.id && b.inDoubt === true && b.coordinatorUnknown === true)
    await until('payments aborted or in doubt', async () => payments.hooks.includes(`abort:${tx.id}`) || (await inDoubt()))
    await sleep(1_500)
    expect(payments.hooks).not.toContain(`abort:${tx.id}`)
    expect((await m.branches('payments')).find((b) => b.tx === tx.id)).toMatchObject({ status: 'prepared', inDoubt: true })
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
})
