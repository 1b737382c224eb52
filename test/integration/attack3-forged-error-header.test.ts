// Attack 3: a target without a sidecar answers a 2PC call that carries a context. The caller's
// egress must refuse that answer (TXM_PARTICIPANT_NO_SIDECAR, route nonTransactionalTarget: fail) so the
// app does not take the target's work for part of its transaction; it passes an answer on
// unchecked when it carries x-txmesh-error, "an error the peer's sidecar produced", without
// looking at its status, so a target that sets the header on a 2xx is taken as done. Real processes.
import { request } from 'undici'
import { describe, expect, it } from 'vitest'
import { rawRequest, sidecarYaml, spawnSidecar, startServer } from '../helpers/servers.js'
import { stopAfterTests } from '../helpers/tx-app.js'

const t = stopAfterTests()

describe('an answer from a target without a sidecar', () => {
  it('a 2xx that carries x-txmesh-error is still refused as TXM_PARTICIPANT_NO_SIDECAR', async () => {
    const applied: string[] = []
    const plain = await startServer((req, res) => {
      req.resume()
      req.on('end', () => {
        applied.push(req.url ?? '')
        const forged = req.url === '/forge' ? { 'x-txmesh-error': 'TXM_CONTEXT_EXPIRED' } : {}
        res.writeHead(200, { ...forged, 'content-type': 'application/json' })
        res.end('{"ok":true}')
      })
    })
    t.closers.push(plain.close)
    const sc = await spawnSidecar(
      sidecarYaml('initiator', 1, `services:\n  plain: {address: "127.0.0.1:${plain.port}"}\n`),
    )
    t.procs.push(sc)
    const begun = await request(`http://127.0.0.1:${sc.ports.admin}/v1/transactions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ mode: '2pc', timeoutMs: 10_000 }),
    })
    const tx = (await begun.body.json()) as { id: string; context: string }
    const call = (path: string) =>
      rawRequest(sc.ports.egress, {
        method: 'POST',
        path: `http://plain${path}`,
        headers: { 'txmesh-context': tx.context },
      })
    // The control: the same 2xx without the header is refused.
    const plainAnswer = await call('/pay')
    const forged = await call('/forge')
    expect(applied).toEqual(['/pay', '/forge'])
    const seen = (r: { status: number; headers: Record<string, unknown> }) => ({
      status: r.status,
      code: r.headers['x-txmesh-error'],
    })
    const refused = { status: 502, code: 'TXM_PARTICIPANT_NO_SIDECAR' }
    expect({ plain: seen(plainAnswer), forged: seen(forged) }).toEqual({ plain: refused, forged: refused })
  }, 30_000)
})
