import { connect } from 'node:net'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import type { Sidecar } from '../../src/sidecar.js'
import { inProcessSidecar, rawRequest, sidecarYaml, startEcho } from '../helpers/servers.js'

describe('ingress proxy', () => {
  let app: Awaited<ReturnType<typeof startEcho>>
  let callee: Sidecar
  let caller: Sidecar

  beforeAll(async () => {
    app = await startEcho()
    callee = await inProcessSidecar(sidecarYaml('payments', app.port))
    caller = await inProcessSidecar(
      sidecarYaml('orders', 1, `services:\n  payments: {address: "127.0.0.1:${callee.ports.ingress}"}\n`),
    )
  })
  afterAll(async () => {
    await Promise.all([caller.drain(1000), callee.drain(1000)])
    await app.close()
  })

  it('forwards a peer request to the app port, keeping Host and path', async () => {
    const r = await rawRequest(callee.ports.ingress, { path: '/charge?id=7', headers: { host: 'payments' } })
    expect(r.status).toBe(200)
    const seen = app.seen.at(-1)
    expect(seen?.url).toBe('/charge?id=7')
    expect(seen?.headers.host).toBe('payments')
  })

  it('carries a call egress -> ingress -> app with hop-by-hop headers stripped at each hop', async () => {
    const r = await rawRequest(caller.ports.egress, {
      method: 'POST',
      path: 'http://payments/pay',
      headers: { connection: 'x-hop', 'x-hop': '1', 'x-end-to-end': '1', 'content-type': 'text/plain' },
      body: 'amount=5',
    })
    expect(r.status).toBe(200)
    const seen = app.seen.at(-1)
    expect(seen?.body).toBe('amount=5')
    expect(seen?.headers['x-hop']).toBeUndefined()
    expect(seen?.headers['x-end-to-end']).toBe('1')
    // One X-Forwarded-For entry per proxy hop: the app, then the caller's sidecar.
    expect(seen?.headers['x-forwarded-for']).toBe('127.0.0.1, 127.0.0.1')
  })

  it('streams a chunked body and answers 100-continue on ingress too', async () => {
    const out = await new Promise<string>((resolve, reject) => {
      const s = connect(callee.ports.ingress, '127.0.0.1', () =>
        s.write(
          'POST /up HTTP/1.1\r\nHost: payments\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n',
        ),
      )
      let t = ''
      let sent = false
      s.on('data', (c: Buffer) => {
        t += c.toString()
        if (!sent && t.includes('100 Continue')) {
          sent = true
          s.write('3\r\nabc\r\n0\r\n\r\n')
        }
      })
      s.on('end', () => resolve(t))
      s.on('error', reject)
    })
    expect(out).toMatch(/^HTTP\/1\.1 100 Continue\r\n\r\nHTTP\/1\.1 200/)
    expect(app.seen.at(-1)?.body).toBe('abc')
  })

  it('refuses calls to the participant hooks from outside (only the sidecar calls them)', async () => {
    const before = app.seen.length
    // The cancel hook too, however spelled: it takes only a coordinator's signed TCC cancel.
    for (const path of [
      '/.well-known/txmesh/commit',
      '/.well-known/txmesh/prepare?x=1',
      '/.well-known/txmesh/anything',
      '/.WELL-KNOWN/TXMESH/COMMIT',
      '/.well-known/txmesh/cancel',
      '/.WELL-KNOWN/txmesh/Cancel?x=1',
    ]) {
      const r = await rawRequest(callee.ports.ingress, {
        method: 'POST',
        path,
        headers: { host: 'payments' },
        body: '',
      })
      expect(r.status, path).toBe(403)
      expect(r.headers['x-txmesh-error']).toBe('TXM_HOOK_FORBIDDEN')
    }
    // Spelled otherwise (escapes, doubled slashes): refused before the hook check
    // (test/integration/ingress-paths.test.ts has the other disguises).
    for (const path of [
      '/.well-known/txmesh%2Fabort',
      '//.well-known//txmesh/commit',
      '/.well-known/txmesh%2Fcancel',
    ]) {
      const r = await rawRequest(callee.ports.ingress, {
        method: 'POST',
        path,
        headers: { host: 'payments' },
        body: '',
      })
      expect([r.status, r.headers['x-txmesh-error']], path).toEqual([400, 'TXM_PATH_AMBIGUOUS'])
    }
    expect(app.seen.length).toBe(before)
  })

  it('refuses the batch hook from outside too: hooks.batch, and the batch beside custom hooks (where txmesh/pg serves it)', async () => {
    const custom = await inProcessSidecar(
      sidecarYaml(
        'payments',
        app.port,
        'hooks: {prepare: /tx/prepare, commit: /tx/commit, abort: /tx/abort, batch: /tx-batch}',
      ),
    )
    try {
      const before = app.seen.length
      for (const path of ['/.well-known/txmesh/batch', '/tx/batch', '/TX/Batch?x=1', '/tx-batch', '/tx/commit']) {
        const r = await rawRequest(custom.ports.ingress, {
          method: 'POST',
          path,
          headers: { host: 'payments' },
          body: '{"items":[]}',
        })
        expect([r.status, r.headers['x-txmesh-error']], path).toEqual([403, 'TXM_HOOK_FORBIDDEN'])
      }
      const encoded = await rawRequest(custom.ports.ingress, {
        method: 'POST',
        path: '/tx%2Fbatch',
        headers: { host: 'payments' },
        body: '{"items":[]}',
      })
      expect([encoded.status, encoded.headers['x-txmesh-error']]).toEqual([400, 'TXM_PATH_AMBIGUOUS'])
      expect(app.seen.length).toBe(before)
      // Other paths beside them are the app's own.
      expect(
        (
          await rawRequest(custom.ports.ingress, {
            method: 'POST',
            path: '/tx/other',
            headers: { host: 'payments' },
            body: '',
          })
        ).status,
      ).toBe(200)
      expect(app.seen.at(-1)?.url).toBe('/tx/other')
    } finally {
      await custom.drain(100)
    }
  })

  it('answers 502 when the app is down', async () => {
    const down = await inProcessSidecar(sidecarYaml('payments', 1))
    try {
      const r = await rawRequest(down.ports.ingress, {
        method: 'POST',
        path: '/x',
        headers: { host: 'payments' },
        body: 'a',
      })
      expect(r.status).toBe(502)
      expect(r.headers['x-txmesh-error']).toBe('TXM_UPSTREAM_UNREACHABLE')
    } finally {
      await down.drain(100)
    }
  })
})
