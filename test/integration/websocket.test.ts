import { connect } from 'node:net'
import { WebSocket, WebSocketServer } from 'ws'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { sidecarYaml, spawnSidecar, startServer, type SidecarProcess } from '../helpers/servers.js'

describe('WebSocket through two sidecars (egress of the caller, ingress of the callee)', () => {
  let app: Awaited<ReturnType<typeof startServer>>
  let wss: WebSocketServer
  let callee: SidecarProcess
  let caller: SidecarProcess
  const seenHeaders: Record<string, string | string[] | undefined>[] = []

  beforeAll(async () => {
    app = await startServer((_req, res) => res.end('plain'))
    wss = new WebSocketServer({ server: app.server })
    wss.on('connection', (ws, req) => {
      seenHeaders.push(req.headers)
      ws.on('message', (data, isBinary) => ws.send(isBinary ? data : `echo:${String(data)}`, { binary: isBinary }))
    })
    callee = await spawnSidecar(sidecarYaml('chat', app.port))
    caller = await spawnSidecar(sidecarYaml('web', 1, `services:\n  chat: {address: "127.0.0.1:${callee.ports.ingress}"}\n`))
  })
  afterAll(async () => {
    caller.child.kill('SIGKILL')
    callee.child.kill('SIGKILL')
    wss.close()
    await app.close()
  })

  it('echoes text and binary messages end to end', async () => {
    // The app reaches the egress by iptables redirect: origin-form request with Host: chat.
    const ws = new WebSocket(`ws://127.0.0.1:${caller.ports.egress}/socket`, { headers: { host: 'chat' } })
    const got: string[] = []
    await new Promise<void>((resolve, reject) => {
      ws.on('open', () => {
        ws.send('hello')
        ws.send(Buffer.from([1, 2, 3]))
      })
      ws.on('message', (data: Buffer, isBinary: boolean) => {
        got.push(isBinary ? `binary:${data.length}` : data.toString())
        if (got.length === 2) resolve()
      })
      ws.on('error', reject)
    })
    ws.close()
    expect(got).toEqual(['echo:hello', 'binary:3'])
    expect(seenHeaders[0]?.host).toBe('chat')
    expect(seenHeaders[0]?.upgrade).toBe('websocket')
    expect(seenHeaders[0]?.['x-forwarded-for']).toContain('127.0.0.1')
  })

  it('answers 502 TXM_UPSTREAM_UNREACHABLE to an upgrade whose upstream is down', async () => {
    const dead = await startServer(() => undefined)
    await dead.close()
    const out = await new Promise<string>((resolve) => {
      const s = connect(caller.ports.egress, '127.0.0.1', () =>
        s.write(`GET /socket HTTP/1.1\r\nHost: 127.0.0.1:${dead.port}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n`),
      )
      let t = ''
      s.on('data', (c: Buffer) => (t += c.toString()))
      s.on('close', () => resolve(t))
    })
    expect(out).toMatch(/^HTTP\/1\.1 502/)
    expect(out).toContain('x-txmesh-error: TXM_UPSTREAM_UNREACHABLE')
  })
})
