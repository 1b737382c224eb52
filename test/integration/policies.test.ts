import { connect } from 'node:net'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import type { Sidecar } from '../../src/sidecar.js'
import { inProcessSidecar, rawRequest, sidecarYaml, startServer } from '../helpers/servers.js'

// An upstream whose answers the test scripts: per path, a list of statuses to return in turn.
async function scriptedUpstream() {
  const hits = new Map<string, number>()
  const s = await startServer((req, res) => {
    const path = (req.url ?? '/').split('?')[0] as string
    const n = (hits.get(path) ?? 0) + 1
    hits.set(path, n)
    req.resume()
    req.on('end', () => {
      if (path.startsWith('/slow')) {
        setTimeout(() => res.end('late'), 1_000).unref()
        return
      }
      if (path.startsWith('/flaky') && n <= 2) {
        res.writeHead(path.includes('502') ? 502 : 503).end('busy')
        return
      }
      res.end(`ok after ${n}`)
    })
  })
  return { ...s, hits }
}

describe('route policies', () => {
  let up: Awaited<ReturnType<typeof scriptedUpstream>>
  let sc: Sidecar

  beforeAll(async () => {
    up = await scriptedUpstream()
    sc = await inProcessSidecar(
      sidecarYaml(
        'orders',
        up.port,
        `services:
  api: {address: "127.0.0.1:${up.port}"}
routes:
  - name: slow
    match: {pathPrefix: /slow}
    timeoutMs: 150
  - name: post-opt-in
    match: {pathPrefix: /flaky-optin, methods: [POST]}
    retries: {attempts: 2, nonIdempotent: true}
  - name: no-budget
    match: {pathPrefix: /flaky-nobudget}
    retries: {attempts: 2, budgetRatio: 0, budgetMinPerSecond: 0}
  - name: small
    match: {host: api, pathPrefix: /small}
    maxHeaderBytes: 512
    maxBodyBytes: 16
  - name: ingress-only
    match: {direction: ingress, pathPrefix: /dir}
    maxBodyBytes: 1
`,
      ),
    )
  })
  afterAll(async () => {
    await sc.drain(1000)
    await up.close()
  })

  it('answers 504 TXM_UPSTREAM_TIMEOUT when the route timeout passes', async () => {
    const r = await rawRequest(sc.ports.egress, { path: 'http://api/slow' })
    expect(r.status).toBe(504)
    expect(r.headers['x-txmesh-error']).toBe('TXM_UPSTREAM_TIMEOUT')
  })

  it('retries a GET answered 503 and returns the successful answer', async () => {
    const r = await rawRequest(sc.ports.egress, { path: 'http://api/flaky-get' })
    expect(r.status).toBe(200)
    expect(r.body).toBe('ok after 3')
    expect(up.hits.get('/flaky-get')).toBe(3)
  })

  it('retries a PUT with a small body on 502, sending the same body again', async () => {
    const r = await rawRequest(sc.ports.egress, { method: 'PUT', path: 'http://api/flaky-put-502', body: 'same' })
    expect(r.status).toBe(200)
    expect(up.hits.get('/flaky-put-502')).toBe(3)
  })

  it('never retries a POST: the 503 goes back to the caller after one attempt', async () => {
    const r = await rawRequest(sc.ports.egress, { method: 'POST', path: 'http://api/flaky-post', body: 'x' })
    expect(r.status).toBe(503)
    expect(up.hits.get('/flaky-post')).toBe(1)
  })

  it('retries a POST when its route opts in', async () => {
    const r = await rawRequest(sc.ports.egress, { method: 'POST', path: 'http://api/flaky-optin', body: 'x' })
    expect(r.status).toBe(200)
    expect(up.hits.get('/flaky-optin')).toBe(3)
  })

  it('does not retry once the retry budget is spent', async () => {
    const r = await rawRequest(sc.ports.egress, { path: 'http://api/flaky-nobudget' })
    expect(r.status).toBe(503)
    expect(up.hits.get('/flaky-nobudget')).toBe(1)
  })

  it('retries a GET whose upstream refuses connections, then answers 502', async () => {
    const dead = await startServer(() => undefined)
    await dead.close()
    const r = await rawRequest(sc.ports.egress, { path: `http://127.0.0.1:${dead.port}/refused` })
    expect(r.status).toBe(502)
    expect(r.headers['x-txmesh-error']).toBe('TXM_UPSTREAM_UNREACHABLE')
  })

  it('answers 431 TXM_HEADERS_TOO_LARGE over the route header limit, without calling the upstream', async () => {
    const r = await rawRequest(sc.ports.egress, { path: 'http://api/small', headers: { 'x-big': 'a'.repeat(600) } })
    expect(r.status).toBe(431)
    expect(r.headers['x-txmesh-error']).toBe('TXM_HEADERS_TOO_LARGE')
    expect(up.hits.get('/small')).toBeUndefined()
  })

  it('answers 431 over the listener header limit', async () => {
    const out = await new Promise<string>((resolve) => {
      const s = connect(sc.ports.egress, '127.0.0.1', () =>
        s.write(`GET http://api/ HTTP/1.1\r\nHost: api\r\nx-huge: ${'b'.repeat(40_000)}\r\n\r\n`),
      )
      let t = ''
      s.on('data', (c: Buffer) => (t += c.toString()))
      s.on('close', () => resolve(t))
      s.on('error', () => resolve(t))
    })
    expect(out).toMatch(/^HTTP\/1\.1 431/)
    expect(out).toContain('x-txmesh-error: TXM_HEADERS_TOO_LARGE')
  })

  it('answers 413 TXM_BODY_TOO_LARGE for a declared body over the route limit', async () => {
    const r = await rawRequest(sc.ports.egress, { method: 'POST', path: 'http://api/small', body: 'x'.repeat(17) })
    expect(r.status).toBe(413)
    expect(r.headers['x-txmesh-error']).toBe('TXM_BODY_TOO_LARGE')
    expect(up.hits.get('/small')).toBeUndefined()
  })

  it('answers 413 before 100 Continue, so the client never sends the body', async () => {
    const out = await new Promise<string>((resolve) => {
      const s = connect(sc.ports.egress, '127.0.0.1', () =>
        s.write('POST http://api/small HTTP/1.1\r\nHost: api\r\nContent-Length: 1000\r\nExpect: 100-continue\r\n\r\n'),
      )
      let t = ''
      s.on('data', (c: Buffer) => (t += c.toString()))
      s.on('close', () => resolve(t))
    })
    expect(out).toMatch(/^HTTP\/1\.1 413/)
    expect(out).not.toContain('100 Continue')
  })

  it('cuts a chunked body that grows past the route limit with 413', async () => {
    const out = await new Promise<string>((resolve) => {
      const s = connect(sc.ports.egress, '127.0.0.1', () => {
        s.write('POST http://api/small HTTP/1.1\r\nHost: api\r\nTransfer-Encoding: chunked\r\n\r\n')
        s.write('a\r\n0123456789\r\n')
        s.write('a\r\n0123456789\r\n')
      })
      let t = ''
      s.on('data', (c: Buffer) => (t += c.toString()))
      s.on('close', () => resolve(t))
    })
    expect(out).toMatch(/^HTTP\/1\.1 413/)
    expect(out).toContain('TXM_BODY_TOO_LARGE')
  })

  it('applies a route only in its direction', async () => {
    const egress = await rawRequest(sc.ports.egress, { method: 'POST', path: 'http://api/dir', body: 'xx' })
    expect(egress.status).toBe(200)
    const ingress = await rawRequest(sc.ports.ingress, { method: 'POST', path: '/dir', body: 'xx' })
    expect(ingress.status).toBe(413)
  })
})
