// Hook paths in disguise at ingress (issue 15, hole 11), on a real sidecar process in front of a
// real app that records what it receives: an app server that decodes or normalizes paths must not
// be reachable at a participant hook by an outside caller. Dot-segments anywhere, and any spelling
// of a hook path other than the plain one, are refused 400 TXM_PATH_AMBIGUOUS before the hook
// check; the app sees none of them.
import { connect } from 'node:net'
import { describe, expect, it } from 'vitest'
import { rawRequest, sidecarYaml, spawnSidecar, startEcho } from '../helpers/servers.js'
import { stopAfterTests } from '../helpers/tx-app.js'

const { procs, closers } = stopAfterTests()

async function start() {
  const app = await startEcho()
  closers.push(() => app.close())
  // Custom hooks beside the default directory: both must stay out of reach.
  const sc = await spawnSidecar(
    sidecarYaml('payments', app.port, 'hooks: {prepare: /tx/prepare, commit: /tx/commit, abort: /tx/abort}'),
  )
  procs.push(sc)
  return { app, sc }
}

const DISGUISED = [
  // Encoded characters of the hook directory or of a separator.
  '/.well-known/%74xmesh/abort',
  '/.well-known/%2574xmesh/abort',
  '/%2Ewell-known/txmesh/abort',
  '/.well-known/txmesh%2Fabort',
  '/.well-known/txmesh%2fabort',
  '/.well-known%2Ftxmesh%2Fabort',
  '/.well-known%5Ctxmesh%5Cabort',
  '/.well-known/txmesh%252Fabort',
  '/.well-known/txmesh/%61bort',
  // Dot-segments, raw and encoded, with either separator.
  '/x/../.well-known/txmesh/abort',
  '/../.well-known/txmesh/abort',
  '/.well-known/./txmesh/abort',
  '/.well-known/txmesh/x/../abort',
  '/x/%2e%2e/.well-known/txmesh/abort',
  '/x/%2E%2E/.well-known/txmesh/abort',
  '/x/.%2e/.well-known/txmesh/abort',
  '/x/%252e%252e/.well-known/txmesh/abort',
  '/x%2F..%2F.well-known/txmesh/abort',
  '/x/..;/.well-known/txmesh/abort',
  // Backslashes, repeated and trailing slashes, path parameters.
  '/x\\..\\.well-known\\txmesh\\abort',
  '/.well-known\\txmesh\\abort',
  '//.well-known//txmesh/commit',
  '/.well-known/txmesh/abort/',
  '/.well-known;x/txmesh/abort',
  '/.well-known/txmesh;/abort',
  // The TCC cancel and the custom hooks, in disguise.
  '/.well-known/txmesh%2Fcancel',
  '/x/../.well-known/txmesh/cancel',
  '/tx%2Fprepare',
  '/tx/./prepare',
  '/x/../tx/commit',
  '/TX/Abort/',
  '/tx/prepare;jsessionid=1',
  '/tx//prepare',
  '/tx%5Cbatch',
  // Dot-segments anywhere are refused, whatever they lead to.
  '/a/../b',
  '/a/./b',
  '/a/%2e%2e/b',
]

describe('ingress paths that reach a hook only after decoding or normalizing', () => {
  it('refuses each with 400 TXM_PATH_AMBIGUOUS and the app sees none of them', async () => {
    const { app, sc } = await start()
    const got: Record<string, string> = {}
    for (const path of DISGUISED) {
      const r = await rawRequest(sc.ports.ingress, {
        method: 'POST',
        path,
        headers: {
          host: 'payments',
          'content-type': 'application/json',
          'txmesh-tx-id': 'forged',
          'txmesh-branch-id': 'forged',
        },
        body: '{}',
      })
      got[path] = `${r.status} ${String(r.headers['x-txmesh-error'])}`
    }
    expect(app.seen.map((s) => s.url)).toEqual([])
    expect(got).toEqual(Object.fromEntries(DISGUISED.map((p) => [p, '400 TXM_PATH_AMBIGUOUS'])))
  })

  it('refuses them in an Upgrade request too', async () => {
    const { app, sc } = await start()
    const out = await new Promise<string>((resolve) => {
      const s = connect(sc.ports.ingress, '127.0.0.1', () =>
        s.write(
          'GET /x/%2e%2e/.well-known/txmesh/abort HTTP/1.1\r\nHost: payments\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n',
        ),
      )
      let t = ''
      s.on('data', (c: Buffer) => (t += c.toString()))
      s.on('close', () => resolve(t))
    })
    expect(out).toMatch(/^HTTP\/1\.1 400 /)
    expect(out).toContain('x-txmesh-error: TXM_PATH_AMBIGUOUS')
    expect(app.seen).toEqual([])
  })

  it('refuses an Upgrade request to the TCC cancel path: only a signed cancel reaches that hook', async () => {
    const { app, sc } = await start()
    const out = await new Promise<string>((resolve) => {
      const s = connect(sc.ports.ingress, '127.0.0.1', () =>
        s.write(
          'GET /.well-known/txmesh/cancel HTTP/1.1\r\nHost: payments\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n',
        ),
      )
      let t = ''
      s.on('data', (c: Buffer) => (t += c.toString()))
      s.on('close', () => resolve(t))
    })
    expect(app.seen).toEqual([])
    expect(out).toMatch(/^HTTP\/1\.1 403 /)
    expect(out).toContain('x-txmesh-error: TXM_HOOK_FORBIDDEN')
  })

  it('keeps the plain spellings at 403 TXM_HOOK_FORBIDDEN and lets the app have its other paths, encoded ones too', async () => {
    const { app, sc } = await start()
    for (const path of [
      '/.well-known/txmesh/abort',
      '/.WELL-KNOWN/TXMESH/COMMIT',
      '/.well-known/txmesh/anything',
      '/tx/prepare',
      '/TX/Commit?x=1',
      '/.well-known/txmesh/',
    ]) {
      const r = await rawRequest(sc.ports.ingress, { method: 'POST', path, headers: { host: 'payments' }, body: '' })
      expect([r.status, r.headers['x-txmesh-error']], path).toEqual([403, 'TXM_HOOK_FORBIDDEN'])
    }
    expect(app.seen).toEqual([])
    // Encoded slashes and escapes outside the hooks are the app's business (APIs that name
    // "group/project" as one segment), as are names that merely contain dots.
    const mine = [
      '/projects/group%2Fproject',
      '/files/a%20b',
      '/q?next=/../.well-known/txmesh/abort',
      '/a..b/c.d',
      '/.well-known/other',
      '/tx/other',
      '/tx/prepared',
    ]
    for (const path of mine) {
      const r = await rawRequest(sc.ports.ingress, { method: 'POST', path, headers: { host: 'payments' }, body: '' })
      expect(r.status, path).toBe(200)
    }
    expect(app.seen.map((s) => s.url)).toEqual(mine)
  })
})
