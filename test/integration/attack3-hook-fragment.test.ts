// Attack 3: the participant hooks through the ingress with a fragment after the path
// (`/hooks/batch#x`). Node's parser takes `#` in a request-target, and routers that read the
// path with the URL parser (express's parseurl, `new URL(req.url, base).pathname`) drop the
// fragment and route it to the hook. The ingress refuses hooks spelled plainly (403
// TXM_HOOK_FORBIDDEN) and paths an app may normalize (MAY_NORMALIZE: %, \, ;, //, dot-segments,
// a trailing slash), but a fragment is none of these, and configured hook paths outside
// /.well-known/txmesh/ are matched exactly. A batch hook takes its transaction and branch ids
// from the body, so a client without the mesh key commits a branch of a transaction that then
// aborts. Real processes.
import { request } from 'undici'
import { describe, expect, it } from 'vitest'
import { freePort } from '../../harness/ports.js'
import { tempDir } from '../../harness/temp.js'
import { rawRequest, sidecarYaml, spawnSidecar, startServer } from '../helpers/servers.js'
import { stopAfterTests } from '../helpers/tx-app.js'

const t = stopAfterTests()

/** A participant app with hand-written hooks at /hooks/*, routed by the URL's pathname (as express does). */
async function hookApp() {
  const staged = new Map<string, string[]>()
  const committed: string[] = []
  const ids: { tx: string; branch: string }[] = []
  const hookCalls: string[] = []
  const s = await startServer((req, res) => {
    const chunks: Buffer[] = []
    req.on('data', (c: Buffer) => chunks.push(c))
    req.on('end', () => {
      const path = new URL(req.url ?? '/', 'http://app').pathname
      const apply = (hook: string, key: string): number => {
        hookCalls.push(`${hook}:${key}`)
        if (hook === 'commit') committed.push(...(staged.get(key) ?? []))
        if (hook !== 'prepare') staged.delete(key)
        return 200
      }
      if (path === '/hooks/batch') {
        const body = JSON.parse(Buffer.concat(chunks).toString()) as {
          items: { hook: string; tx: string; branch: string }[]
        }
        const results = body.items.map((i) => ({ status: apply(i.hook, `${i.tx}:${i.branch}`) }))
        return void res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ results }))
      }
      const tx = req.headers['txmesh-tx-id'] as string | undefined
      const branch = req.headers['txmesh-branch-id'] as string | undefined
      if (path.startsWith('/hooks/')) return void res.writeHead(apply(path.slice(7), `${tx}:${branch}`)).end()
      if (tx !== undefined && branch !== undefined) {
        ids.push({ tx, branch })
        staged.set(`${tx}:${branch}`, [...(staged.get(`${tx}:${branch}`) ?? []), path])
      } else committed.push(path)
      res.end('{}')
    })
  })
  return { ...s, committed, ids, hookCalls }
}

describe('participant hooks through the ingress', () => {
  it('a hook path with a fragment is refused like the plain one, and an outsider cannot commit an aborted branch', async () => {
    const app = await hookApp()
    t.closers.push(app.close)
    const ingress = await freePort()
    const hooks = 'hooks: {prepare: /hooks/prepare, commit: /hooks/commit, abort: /hooks/abort, batch: /hooks/batch}\n'
    const services = `services:\n  payments: {address: "127.0.0.1:${ingress}"}\n`
    const payments = await spawnSidecar(sidecarYaml('payments', app.port, hooks, tempDir()), [
      '--ingress-port',
      String(ingress),
    ])
    t.procs.push(payments)
    const coord = await spawnSidecar(sidecarYaml('initiator', 1, services, tempDir()))
    t.procs.push(coord)
    const begun = await request(`http://127.0.0.1:${coord.ports.admin}/v1/transactions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ mode: '2pc', timeoutMs: 10_000 }),
    })
    const tx = (await begun.body.json()) as { id: string; context: string }
    const call = await rawRequest(coord.ports.egress, {
      method: 'POST',
      path: 'http://payments/pay/42',
      headers: { 'txmesh-context': tx.context },
    })
    expect(call.status).toBe(200)
    const branch = app.ids[0]!
    // An outsider (no mesh key) that learnt the ids: the plain hook path is refused...
    const batch = JSON.stringify({ items: [{ hook: 'commit', tx: branch.tx, branch: branch.branch }] })
    const outsider = (path: string) =>
      rawRequest(payments.ports.ingress, {
        method: 'POST',
        path,
        headers: { host: 'payments', 'content-type': 'application/json' },
        body: batch,
      })
    const plain = await outsider('/hooks/batch')
    expect(plain.status).toBe(403)
    // ...and so must be the same path with a fragment: a URL with '#' is
    // refused before any route or hook check (400 TXM_PATH_AMBIGUOUS).
    const fragment = await outsider('/hooks/batch#x')
    const aborted = await request(`http://127.0.0.1:${coord.ports.admin}/v1/transactions/${tx.id}/abort`, {
      method: 'POST',
    })
    await aborted.body.dump()
    await new Promise((res) => setTimeout(res, 500))
    expect({ fragmentStatus: fragment.status, committed: app.committed }).toEqual({
      fragmentStatus: 400,
      committed: [],
    })
  }, 30_000)
})
