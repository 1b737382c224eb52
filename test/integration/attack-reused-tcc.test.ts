// Attack (issue 15): a TCC participant's control address taken over by another sidecar with
// another log before the coordinator's confirm reaches it. Real processes.
import type { IncomingMessage, ServerResponse } from 'node:http'
import { request } from 'undici'
import { describe, expect, it } from 'vitest'
import { freePort, until } from '../../harness/ports.js'
import { tempDir } from '../../harness/temp.js'
import { rawRequest, sidecarYaml, spawnSidecar, startServer } from '../helpers/servers.js'
import { stopAfterTests } from '../helpers/tx-app.js'

const { procs, closers } = stopAfterTests()

async function app(
  answer: (req: IncomingMessage, res: ServerResponse) => void,
): Promise<{ port: number; seen: string[] }> {
  const seen: string[] = []
  const s = await startServer((req, res) => {
    req.resume()
    req.on('end', () => {
      seen.push(`${req.method} ${req.url} ${String(req.headers['txmesh-op'])}`)
      answer(req, res)
    })
  })
  closers.push(s.close)
  return { port: s.port, seen }
}

describe('TCC confirm at a reused participant address', () => {
  // TCC step refs carry the log incarnation of the sidecar that ran the try (ParticipantRef.holder):
  // a confirm or cancel reaching another sidecar at that address is refused there
  // (TXM_BRANCH_NOT_HERE), never 'done', and its app never hears it.
  it('a confirm answered by a stranger at the try target sidecar address is not the step confirmed', async () => {
    // stock: confirms answer 503 for now (its database is busy), so the coordinator retries.
    let stockUp = false
    const stock = await app((req, res) => {
      if (req.url === '/reserve')
        return void res.writeHead(200, { 'content-type': 'application/json' }).end('{"reserved":true}')
      res.writeHead(stockUp ? 200 : 503, { 'content-length': '0' }).end()
    })
    // Another service's app: knows nothing of the step (404 = nothing to do, as the contract says).
    const other = await app((_req, res) => void res.writeHead(404, { 'content-length': '0' }).end())
    const control = await freePort()
    const stockStore = tempDir()
    const stockSc = await spawnSidecar(
      sidecarYaml('stock', stock.port, 'hooks: {confirm: /tcc/confirm, cancel: /tcc/cancel}', stockStore),
      ['--control-port', String(control)],
    )
    procs.push(stockSc)
    const coord = await spawnSidecar(
      sidecarYaml('shop', 1, ['services:', `  stock: {address: "127.0.0.1:${stockSc.ports.ingress}"}`].join('\n')),
    )
    procs.push(coord)
    const begin = await request(`http://127.0.0.1:${coord.ports.admin}/v1/transactions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ mode: 'tcc', timeoutMs: 60_000 }),
    })
    const tx = (await begin.body.json()) as { id: string; context: string }
    const tried = await rawRequest(coord.ports.egress, {
      method: 'POST',
      path: 'http://stock/reserve',
      headers: { 'txmesh-context': tx.context, 'content-length': '0' },
    })
    expect(tried.status).toBe(200)
    const commit = await request(`http://127.0.0.1:${coord.ports.admin}/v1/transactions/${tx.id}/commit`, {
      method: 'POST',
    })
    expect(((await commit.body.json()) as { outcome: string }).outcome).toBe('committed')
    await until('stock asked to confirm', () => stock.seen.some((s) => s.includes('confirm')))
    // The stock pod goes; another pod with another log gets its address.
    stockSc.child.kill('SIGKILL')
    await stockSc.exited
    const stranger = await spawnSidecar(sidecarYaml('inventory', other.port, '', tempDir()), [
      '--control-port',
      String(control),
    ])
    procs.push(stranger)
    // Long enough for several confirm retries to reach the stranger's sidecar.
    await new Promise((r) => setTimeout(r, 4_000))
    const view = (await (
      await request(`http://127.0.0.1:${coord.ports.admin}/v1/transactions/${tx.id}`)
    ).body.json()) as { status: string; steps: { status: string }[] }
    stockUp = true
    // The real stock app never confirmed its reservation: the coordinator must not call the step done.
    expect({ stranger: other.seen, status: view.status }).toEqual({ stranger: [], status: 'committing' })
    // Confirming, or waiting for its next attempt: not finished.
    expect(view.steps.map((s) => s.status)).not.toContain('finished')
    // Back at its address, stock confirms and the transaction finishes.
    stranger.child.kill('SIGKILL')
    await stranger.exited
    procs.push(
      await spawnSidecar(
        sidecarYaml('stock', stock.port, 'hooks: {confirm: /tcc/confirm, cancel: /tcc/cancel}', stockStore),
        ['--control-port', String(control)],
      ),
    )
    await until(
      'committed',
      async () =>
        (
          (await (await request(`http://127.0.0.1:${coord.ports.admin}/v1/transactions/${tx.id}`)).body.json()) as {
            status: string
          }
        ).status === 'committed',
      20_000,
    )
  }, 60_000)
})
