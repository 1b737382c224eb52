// Attack 3: the context as a W3C baggage entry written with the whitespace the baggage grammar
// allows around '=' (`list-member = key OWS "=" OWS value`). contextFromBaggage reads it (it
// trims key and value), but the header filter only hands baggage to it when the value contains
// `txmesh=` verbatim: the egress then sees no context, enlists nothing, and the target's ingress
// (same filter) joins nothing, so the target applies the call's work outside the transaction.
// Real processes.
import { request } from 'undici'
import { describe, expect, it } from 'vitest'
import { rawRequest } from '../helpers/servers.js'
import { stopAfterTests } from '../helpers/tx-app.js'
import { mesh } from '../helpers/mesh.js'

const t = stopAfterTests()

describe('the context in W3C baggage', () => {
  it('a baggage entry `txmesh = <context>` enlists its call, and an abort leaves nothing applied', async () => {
    const m = await mesh(t, ['payments'])
    const payments = m.svc.payments!.app
    const tx = await m.begin()
    const r = await rawRequest(m.coord.ports.egress, {
      method: 'POST',
      path: 'http://payments/write/p1',
      headers: { baggage: `userId=alice, txmesh = ${tx.context}` },
    })
    const abort = await request(`http://127.0.0.1:${m.coord.ports.admin}/v1/transactions/${tx.id}/abort`, {
      method: 'POST',
    })
    await abort.body.dump()
    await new Promise((res) => setTimeout(res, 500))
    expect({
      appliedOutsideTx: payments.committed,
      answeredOkUnenlisted: r.status === 200 && !payments.hooks.includes(`abort:${tx.id}`),
    }).toEqual({ appliedOutsideTx: [], answeredOkUnenlisted: false })
  }, 30_000)
})
