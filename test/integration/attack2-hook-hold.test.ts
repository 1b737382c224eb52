// Attack 2 (issue 15 "an attack before resolving"): the hook hold (hookHoldMs) of a branch whose
// request is still running in the app. Real processes.
import { request as httpRequest } from 'node:http'
import { describe, expect, it } from 'vitest'
import { until } from '../../harness/ports.js'
import { stopAfterTests } from '../helpers/tx-app.js'
import { mesh } from '../helpers/mesh.js'

const t = stopAfterTests()
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms))

describe('hooks held while a request of the branch runs in the app', () => {
  it('a caller that gives up on a running request does not release the hold while the app still runs it', async () => {
    const m = await mesh(t, ['payments'])
    const payments = m.svc.payments!.app
    // The transaction's deadline passes while the request still runs in the app (blocked on a
    // lock, say): the deadline abort must wait for it (the contract), as it does when the caller waits.
    const tx = await m.begin(1_500)
    const req = httpRequest({
      host: '127.0.0.1',
      port: m.coord.ports.egress,
      method: 'POST',
      path: 'http://payments/write/p1?hold=4000',
      headers: { 'txmesh-context': tx.context },
      agent: false,
    })
    req.on('error', () => undefined)
    req.end()
    await until('request running in the app', () => payments.timeline.some((e) => e.what === `start:${tx.id}`))
    // The caller gives up (its own timeout, a closed browser tab): the exchange ends at the
    // sidecars, but a Node app's handler runs on.
    await sleep(200)
    req.destroy()
    await until('abort reached the app', () => payments.hooks.includes(`abort:${tx.id}`), 15_000)
    await until('request finished in the app', () => payments.timeline.some((e) => e.what === `end:${tx.id}`), 15_000)
    const at = (what: string): number => payments.timeline.find((e) => e.what === what)?.at ?? 0
    // The abort hook must not overtake the branch's own running request.
    expect({ abortBeforeRequestEnded: at(`hook:abort:${tx.id}`) < at(`end:${tx.id}`) }).toEqual({
      abortBeforeRequestEnded: false,
    })
  }, 30_000)
})
