import { connect } from 'node:net'
import { WebSocket, WebSocketServer } from 'ws'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { until } from '../../harness/ports.js'
import { sidecarYaml, spawnSidecar, startEcho, startServer, type SidecarProcess } from '../helpers/servers.js'

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
    caller = await spawnSidecar(
      sidecarYaml('web', 1, `services:\n  chat: {address: "127.0.0.1:${callee.ports.ingress}"}\n`),
    )
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
        s.write(
          `GET /socket HTTP/1.1\r\nHost: 127.0.0.1:${dead.port}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n`,
        ),
      )
      let t = ''
      s.on('data', (c: Buffer) => (t += c.toString()))
      s.on('close', () => resolve(t))
    })
    expect(out).toMatch(/^HTTP\/1\.1 502/)
    expect(out).toContain('x-txmesh-error: TXM_UPSTREAM_UNREACHABLE')
  })
})

/**
 * Opens a connection to `port`, sends `first`, waits for the answer to it, then (if the
 * connection is still open) sends `second` on the same connection; resolves with all that came
 * back once the connection closes or a second answer arrived (bounded).
 */
async function upgradeThenSecond(
  port: number,
  first: string,
  second: string,
): Promise<{ text: string; closed: boolean; secondSent: boolean }> {
  const s = connect(port, '127.0.0.1')
  let text = ''
  let closed = false
  let secondSent = false
  s.on('data', (c: Buffer) => (text += c.toString('latin1')))
  s.on('error', () => undefined)
  s.on('close', () => (closed = true))
  await new Promise<void>((r) => s.once('connect', () => r()))
  s.write(first)
  await until('the answer to the upgrade request', () => text.includes('\r\n\r\n') || closed, 5_000)
  // Give the sidecar its chance to close the connection after a non-101 answer.
  await new Promise((r) => setTimeout(r, 100))
  if (!closed && s.writable) {
    s.write(second)
    secondSent = true
  }
  await until(
    'the connection to close or a second answer',
    () => closed || text.split('HTTP/1.1 ').length > 2,
    3_000,
  ).catch(() => undefined)
  s.destroy()
  return { text, closed, secondSent }
}

const UPGRADE =
  'Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n'
const FORGED_ABORT =
  'POST /.well-known/txmesh/abort HTTP/1.1\r\nHost: payments\r\ntxmesh-tx-id: forged-tx\r\ntxmesh-branch-id: forged-branch\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}'

describe('Upgrade requests the upstream does not answer with 101 (issue 15, hole 1)', () => {
  // A plain node:http app: without an 'upgrade' listener Node answers an Upgrade request as an
  // ordinary one (200) and keeps parsing the connection for more requests.
  let app: Awaited<ReturnType<typeof startEcho>>
  let sc: SidecarProcess

  beforeAll(async () => {
    app = await startEcho()
    sc = await spawnSidecar(sidecarYaml('payments', app.port))
  })
  afterAll(async () => {
    sc.child.kill('SIGKILL')
    await app.close()
  })

  it('ingress: sends the 200 as an HTTP response, closes the connection, and the forged hook call after it never reaches the app', async () => {
    const before = app.seen.length
    const r = await upgradeThenSecond(
      sc.ports.ingress,
      `GET /socket HTTP/1.1\r\nHost: payments\r\n${UPGRADE}\r\n`,
      FORGED_ABORT,
    )
    await new Promise((res) => setTimeout(res, 200))
    const seen = app.seen.slice(before)
    expect(seen.map((s) => s.url)).toEqual(['/socket'])
    expect(seen.some((s) => s.headers['txmesh-tx-id'] !== undefined)).toBe(false)
    expect(r.text).toMatch(/^HTTP\/1\.1 200 OK\r\n/)
    expect(r.text.toLowerCase()).toContain('connection: close')
    expect(r.closed).toBe(true)
  })

  it('ingress: bytes the client sent behind the upgrade request, before any answer, never reach the app', async () => {
    const before = app.seen.length
    const r = await upgradeThenSecond(
      sc.ports.ingress,
      `GET /socket HTTP/1.1\r\nHost: payments\r\n${UPGRADE}\r\n${FORGED_ABORT}`,
      '',
    )
    await new Promise((res) => setTimeout(res, 200))
    expect(app.seen.slice(before).map((s) => s.url)).toEqual(['/socket'])
    expect(r.text).toMatch(/^HTTP\/1\.1 200 OK\r\n/)
    expect(r.closed).toBe(true)
  })

  it('egress: the same, for an upgrade the app sends out to a server that answers 200', async () => {
    const before = app.seen.length
    const r = await upgradeThenSecond(
      sc.ports.egress,
      `GET /socket HTTP/1.1\r\nHost: 127.0.0.1:${app.port}\r\n${UPGRADE}\r\n`,
      `POST /smuggled HTTP/1.1\r\nHost: 127.0.0.1:${app.port}\r\ntxmesh-tx-id: forged-tx\r\ncontent-length: 0\r\n\r\n`,
    )
    await new Promise((res) => setTimeout(res, 200))
    const seen = app.seen.slice(before)
    expect(seen.map((s) => s.url)).toEqual(['/socket'])
    expect(seen.some((s) => s.headers['txmesh-tx-id'] !== undefined)).toBe(false)
    expect(r.text).toMatch(/^HTTP\/1\.1 200 OK\r\n/)
    expect(r.closed).toBe(true)
  })

  it('relays the non-101 answer with its body and status (a 426 from the app)', async () => {
    const refusing = await startServer((_req, res) => {
      res.writeHead(426, { 'content-type': 'text/plain', upgrade: 'h2c' })
      res.end('no websockets here')
    })
    const side = await spawnSidecar(sidecarYaml('chat', refusing.port))
    try {
      const r = await upgradeThenSecond(
        side.ports.ingress,
        `GET /socket HTTP/1.1\r\nHost: chat\r\n${UPGRADE}\r\n`,
        FORGED_ABORT,
      )
      expect(r.text).toMatch(/^HTTP\/1\.1 426 Upgrade Required\r\n/)
      expect(r.text.endsWith('\r\n\r\nno websockets here')).toBe(true)
      // Hop-by-hop headers of the refusal are not relayed; the connection is closed after it.
      expect(r.text.toLowerCase()).not.toContain('upgrade: h2c')
      expect(r.closed).toBe(true)
    } finally {
      side.child.kill('SIGKILL')
      await refusing.close()
    }
  })
})
