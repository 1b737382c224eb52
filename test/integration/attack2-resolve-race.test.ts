// Attack 2: an operator's forced resolution racing the coordinator's commit. The resolution awaits
// its durable record; the commit can land meanwhile. What does the operator hear? Real processes.
import { request } from 'undici'
import { describe, expect, it } from 'vitest'
import { until } from '../../harness/ports.js'
import { stopAfterTests } from '../helpers/tx-app.js'
import { JSON_HEADERS, mesh } from '../helpers/mesh.js'

const t = stopAfterTests()
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms))

describe('forced resolution racing the coordinator', () => {
  it('a resolution whose branch the coordinator committed meanwhile is answered as what happened, never a 500 or a false "resolved"', async () => {
    const m = await mesh(t, ['orders', 'payments'])
    const orders = m.svc.orders!.app
    const payments = m.svc.payments!.app
    orders.hookDelayMs.prepare = 300
    const seen: { delta: number; status: number; body: string; committed: boolean }[] = []
    for (let i = 0; i < 24; i++) {
      const delta = (i % 12) - 2
      const tx = await m.begin(30_000)
      await m.call(tx.context, 'orders', `o${i}`)
      await m.call(tx.context, 'payments', `p${i}`)
      const commit = m.commit(tx.id)
      await until('orders asked to prepare', () => orders.timeline.some((e) => e.what === `hook:prepare:${tx.id}`))
      const asked = orders.timeline.find((e) => e.what === `hook:prepare:${tx.id}`)!.at
      await sleep(Math.max(0, asked + 300 + delta - Date.now()))
      const r = await request(`http://127.0.0.1:${m.svc.payments!.sc.ports.admin}/v1/branches/${tx.id}/resolve`, {
        method: 'POST',
        headers: JSON_HEADERS,
        body: JSON.stringify({ outcome: 'aborted', force: true, by: 'attack2' }),
      })
      const body = await r.body.text()
      await commit
      await until(
        'payments finished',
        () => payments.hooks.includes(`commit:${tx.id}`) || payments.hooks.includes(`abort:${tx.id}`),
        10_000,
      )
      await sleep(100)
      const committed = payments.committed.includes(`payments:p${i}`)
      // A resolution carried out against the commit is reported by the coordinator.
      if (r.statusCode === 200 && !committed)
        await until('heuristic reported', async () => (await m.view(tx.id)).status === 'heuristic-mixed', 10_000)
      seen.push({ delta, status: r.statusCode, body, committed })
    }
    // 200 "resolved aborted" must mean the branch aborted; a branch that committed first is 409.
    const wrong = seen.filter((s) => s.status >= 500 || (s.status === 200 && s.committed))
    expect(wrong).toEqual([])
  }, 120_000)
})
