import { connect } from 'node:net'
import { ProxyAgent, request } from 'undici'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import type { Sidecar } from '../../src/sidecar.js'
import { inProcessSidecar, rawRequest, sidecarYaml, startEcho, startServer } from '../helpers/servers.js'

describe('egress proxy', () => {
  let app: Awaited<ReturnType<typeof startEcho>>
  let sc: Sidecar

  beforeAll(async () => {
    app = await startEcho()
    sc = await inProcessSidecar(sidecarYaml('orders', 1, `services:\n  payments: {address: "127.0.0.1:${app.port}"}\n`))
  })
  afterAll(async () => {
    await sc.drain(1000)
    await app.close()
  })

  it('forwards an absolute-form request to the host:port given in the URL', async () => {
    const r = await rawRequest(sc.ports.egress, { path: `http://127.0.0.1:${app.port}/direct?q=1` })
    expect(r.status).toBe(200)
    const seen = JSON.parse(r.body) as { url: string; headers: Record<string, string> }
    expect(seen.url).toBe('/direct?q=1')
    expect(seen.headers.host).toBe(`127.0.0.1:${app.port}`)
  })

  it('resolves a service-map name from the absolute URL and keeps its Host', async () => {
    const r = await rawRequest(sc.ports.egress, { path: 'http://payments/pay' })
    expect(r.status).toBe(200)
    const seen = JSON.parse(r.body) as { url: string; headers: Record<string, string> }
    expect(seen.url).toBe('/pay')
    expect(seen.headers.host).toBe('payments')
  })

  it('forwards origin-form requests by their Host header (iptables redirect)', async () => {
    const r = await rawRequest(sc.ports.egress, { path: '/by-host', headers: { host: 'payments:80' } })
    expect(r.status).toBe(200)
    expect((JSON.parse(r.body) as { url: string }).url).toBe('/by-host')
  })

  it('parses HTTP inside a CONNECT tunnel (undici ProxyAgent default) and routes it by the authority', async () => {
    const agent = new ProxyAgent(`http://127.0.0.1:${sc.ports.egress}`)
    try {
      for (const path of ['/tunneled-1', '/tunneled-2']) {
        const r = await request(`http://payments${path}`, { dispatcher: agent, method: 'POST', body: 'in-tunnel' })
        expect(r.statusCode).toBe(200)
        const seen = (await r.body.json()) as { url: string; body: string; headers: Record<string, string> }
        expect(seen).toMatchObject({ url: path, body: 'in-tunnel' })
        expect(seen.headers['x-forwarded-for']).toBe('127.0.0.1')
      }
    } finally {
      await agent.close()
    }
  })

  it('strips hop-by-hop request headers and those named in Connection, adds X-Forwarded-*', async () => {
    const r = await rawRequest(sc.ports.egress, {
      path: 'http://payments/hop',
      headers: {
        connection: 'keep-alive, x-private',
        'x-private': 'secret',
        'keep-alive': 'timeout=5',
        te: 'trailers',
        'proxy-authorization': 'Basic Zm9v',
        'proxy-foo': 'bar',
        'x-kept': 'yes',
        'x-forwarded-for': '10.0.0.1',
      },
    })
    expect(r.status).toBe(200)
    const h = (JSON.parse(r.body) as { headers: Record<string, string> }).headers
    for (const name of [
      'x-private',
      'keep-alive',
      'te',
      'proxy-authorization',
      'proxy-foo',
      'upgrade',
      'transfer-encoding',
    ]) {
      expect(h[name], name).toBeUndefined()
    }
    expect(h['x-kept']).toBe('yes')
    expect(h['x-forwarded-for']).toBe('10.0.0.1, 127.0.0.1')
    expect(h['x-forwarded-proto']).toBe('http')
  })

  it('strips hop-by-hop response headers and those named in Connection', async () => {
    const up = await startServer((_req, res) => {
      res.setHeader('connection', 'keep-alive, x-resp-private')
      res.setHeader('x-resp-private', '1')
      res.setHeader('keep-alive', 'timeout=5')
      res.setHeader('proxy-authenticate', 'Basic')
      res.setHeader('x-resp-kept', '1')
      res.end('ok')
    })
    try {
      const r = await rawRequest(sc.ports.egress, { path: `http://127.0.0.1:${up.port}/` })
      expect(r.status).toBe(200)
      expect(r.headers['x-resp-private']).toBeUndefined()
      expect(r.headers['proxy-authenticate']).toBeUndefined()
      expect(r.headers['x-resp-kept']).toBe('1')
      expect(r.headers['keep-alive']).not.toBe('timeout=5')
    } finally {
      await up.close()
    }
  })

  it('forwards a chunked request body', async () => {
    const before = app.seen.length
    const body = await new Promise<string>((resolve, reject) => {
      const s = connect(sc.ports.egress, '127.0.0.1', () => {
        s.write(
          'POST http://payments/chunked HTTP/1.1\r\nHost: payments\r\nTransfer-Encoding: chunked\r\nTrailer: x-t\r\nConnection: close\r\n\r\n',
        )
        s.write('5\r\nhello\r\n')
        setTimeout(() => s.write('6\r\n world\r\n0\r\n\r\n'), 20)
      })
      let out = ''
      s.on('data', (c: Buffer) => (out += c.toString()))
      s.on('end', () => resolve(out))
      s.on('error', reject)
    })
    expect(body).toMatch(/^HTTP\/1\.1 200/)
    const seen = app.seen[before]
    expect(seen?.body).toBe('hello world')
    expect(seen?.headers['transfer-encoding']).toBe('chunked')
    expect(seen?.headers.trailer).toBeUndefined()
  })

  it('answers Expect: 100-continue before the body is sent, then forwards the body', async () => {
    const out = await new Promise<string>((resolve, reject) => {
      const s = connect(sc.ports.egress, '127.0.0.1', () => {
        s.write(
          'PUT http://payments/continue HTTP/1.1\r\nHost: payments\r\nContent-Length: 4\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n',
        )
      })
      let text = ''
      let sent = false
      s.on('data', (c: Buffer) => {
        text += c.toString()
        if (!sent && text.startsWith('HTTP/1.1 100 Continue\r\n\r\n')) {
          sent = true
          s.write('body')
        }
      })
      s.on('end', () => resolve(text))
      s.on('error', reject)
    })
    expect(out.startsWith('HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200')).toBe(true)
    expect(out).toContain('"body":"body"')
    expect(app.seen.at(-1)?.headers.expect).toBeUndefined()
  })

  it('answers 502 TXM_UPSTREAM_UNREACHABLE when the upstream refuses connections', async () => {
    const dead = await startServer(() => undefined)
    const port = dead.port
    await dead.close()
    const r = await rawRequest(sc.ports.egress, { method: 'POST', path: `http://127.0.0.1:${port}/x`, body: 'a' })
    expect(r.status).toBe(502)
    expect(r.headers['x-txmesh-error']).toBe('TXM_UPSTREAM_UNREACHABLE')
    expect(JSON.parse(r.body)).toMatchObject({ error: { code: 'TXM_UPSTREAM_UNREACHABLE' } })
  })

  it('refuses a request that would loop back into the egress', async () => {
    const r = await rawRequest(sc.ports.egress, { path: `http://127.0.0.1:${sc.ports.egress}/` })
    expect(r.status).toBe(508)
    expect(r.headers['x-txmesh-error']).toBe('TXM_PROXY_LOOP')
  })

  it('answers 400 TXM_BAD_REQUEST for an origin-form request without Host', async () => {
    const out = await new Promise<string>((resolve) => {
      const s = connect(sc.ports.egress, '127.0.0.1', () => s.write('GET /x HTTP/1.0\r\n\r\n'))
      let t = ''
      s.on('data', (c: Buffer) => (t += c.toString()))
      s.on('close', () => resolve(t))
    })
    expect(out).toMatch(/^HTTP\/1\.1 400/)
    expect(out).toContain('x-txmesh-error: TXM_BAD_REQUEST')
  })

  it('rejects ambiguous framing (Content-Length with Transfer-Encoding)', async () => {
    const before = app.seen.length
    const out = await new Promise<string>((resolve) => {
      const s = connect(sc.ports.egress, '127.0.0.1', () =>
        s.write(
          'POST http://payments/smuggle HTTP/1.1\r\nHost: payments\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n',
        ),
      )
      let t = ''
      s.on('data', (c: Buffer) => (t += c.toString()))
      s.on('close', () => resolve(t))
    })
    expect(out).toMatch(/^HTTP\/1\.1 400/)
    expect(out).toContain('x-txmesh-error: TXM_BAD_REQUEST')
    expect(app.seen.length).toBe(before)
  })
})
