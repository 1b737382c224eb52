// Attack 3: a request that carries `Connection: Upgrade` (an HTTP/1.1 `Upgrade: h2c` as curl
// --http2 and some clients send on plain http, or any token) takes the listener's tunnel path
// (ProxyServer.onUpgrade), which runs no transaction hook: the egress neither verifies nor
// enlists its context, the ingress neither joins it nor begins a route's implicit transaction.
// An app built on node:http without an 'upgrade' listener serves such a request as an ordinary
// one and answers 200, which the sidecars relay. Real processes.
import { request } from 'undici'
import { describe, expect, it } from 'vitest'
import { rawRequest, sidecarYaml, spawnSidecar } from '../helpers/servers.js'
import { startTxApp, stopAfterTests } from '../helpers/tx-app.js'
import { mesh } from '../helpers/mesh.js'

const t = stopAfterTests()
const UPGRADE = { connection: 'upgrade', upgrade: 'h2c' }

describe('a call with an Upgrade header stays inside its transaction', () => {
  it('a 2PC call through the egress with a context is enlisted or refused, and an abort leaves nothing', async () => {
    const m = await mesh(t, ['payments'])
    const payments = m.svc.payments!.app
    const tx = await m.begin()
    const r = await rawRequest(m.coord.ports.egress, {
      method: 'POST',
      path: 'http://payments/write/p1',
      headers: { 'txmesh-context': tx.context, ...UPGRADE },
    })
    const abort = await request(`http://127.0.0.1:${m.coord.ports.admin}/v1/transactions/${tx.id}/abort`, {
      method: 'POST',
    })
    await abort.body.dump()
    // Give phase 2 (an abort hook, if the branch had joined) time to reach the app.
    await new Promise((res) => setTimeout(res, 500))
    // Either the call was refused, or it joined and the abort dropped its write: never a write
    // applied outside the transaction that aborted.
    expect({
      appliedOutsideTx: payments.committed,
      answeredOkUnenlisted: r.status === 200 && !payments.hooks.includes(`abort:${tx.id}`),
    }).toEqual({ appliedOutsideTx: [], answeredOkUnenlisted: false })
  }, 30_000)

  it('an ingress route with transaction: required begins its transaction for a request with an Upgrade header', async () => {
    const back = await startTxApp('back')
    const front = await startTxApp('front')
    t.apps.push(back, front)
    const backSc = await spawnSidecar(sidecarYaml('back', back.port))
    t.procs.push(backSc)
    const frontSc = await spawnSidecar(
      sidecarYaml(
        'front',
        front.port,
        `services:\n  back: {address: "127.0.0.1:${backSc.ports.ingress}"}\nroutes:\n  - {name: checkout, match: {direction: ingress, methods: [POST]}, transaction: required}\n`,
      ),
    )
    t.procs.push(frontSc)
    front.egress = frontSc.ports.egress
    // back refuses: the checkout must abort everywhere.
    back.vote = 409
    const r = await rawRequest(frontSc.ports.ingress, {
      method: 'POST',
      path: '/write/order1?then=back',
      headers: { host: 'front', ...UPGRADE },
    })
    // Phase 2 (abort hooks) right after the answer.
    await new Promise((res) => setTimeout(res, 500))
    expect({
      front: front.committed,
      back: back.committed,
      answeredOkWithoutTx: r.status === 200 && r.headers['txmesh-outcome'] === undefined,
    }).toEqual({ front: [], back: [], answeredOkWithoutTx: false })
  }, 30_000)
})
