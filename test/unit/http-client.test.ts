// src/http-client.ts loads undici's dispatchers by their file paths (footprint): an undici
// upgrade that moves them must fail here, not in production.
import { createServer } from 'node:http'
import type { AddressInfo } from 'node:net'
import * as undici from 'undici'
import { describe, expect, it } from 'vitest'
import { Agent, Pool, buildConnector, request } from '../../src/http-client.js'

describe('http-client', () => {
  it('is undici itself: the same Pool and Agent classes the package exports', () => {
    expect(Pool).toBe(undici.Pool)
    expect(Agent).toBe(undici.Agent)
    // Peer TLS builds its connectors with undici's own (src/peer-tls.ts).
    expect(buildConnector).toBe(undici.buildConnector)
  })

  it('requests through a given dispatcher and through the global one, as undici.request does', async () => {
    const seen: string[] = []
    const server = createServer((req, res) => {
      seen.push(`${req.method} ${req.url}`)
      req.resume()
      res.end('ok')
    })
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r))
    const origin = `http://127.0.0.1:${(server.address() as AddressInfo).port}`
    const pool = new Pool(origin)
    try {
      const a = await request(`${origin}/a?x=1`, { dispatcher: pool })
      expect(await a.body.text()).toBe('ok')
      const b = await request(new URL(`${origin}/b`), { method: 'POST', body: 'hi' })
      expect(b.statusCode).toBe(200)
      await b.body.dump()
      const c = await request(`${origin}/c`, { body: 'no method' })
      await c.body.dump()
      expect(seen).toEqual(['GET /a?x=1', 'POST /b', 'PUT /c'])
    } finally {
      await pool.close()
      server.close()
    }
  })
})
