// Replay protection of the control listener, on real sockets: a recording TCP proxy sits between
// a coordinator sidecar and a participant sidecar's control listener (the participant advertises
// the proxy's address), captures the control requests the coordinator really sent, and the test
// sends them again byte for byte.
import {
  createServer as createTcpServer,
  connect,
  type AddressInfo,
  type Server as TcpServer,
  type Socket,
} from 'node:net'
import { request } from 'undici'
import { describe, expect, it } from 'vitest'
import { createControlServer, type ControlDeps } from '../../src/control/server.js'
import { ReplayCache } from '../../src/control/replay.js'
import { LIMITS } from '../../src/limits.js'
import { silentLogger } from '../../src/telemetry/logger.js'
import { closeServer, listen } from '../../src/net.js'
import { staticKeys } from '../../src/tx/keys.js'
import { signControl } from '../../src/tx/protocol.js'
import { freePort } from '../../harness/ports.js'
import { MESH_KEY, rawRequest, sidecarYaml, spawnSidecar } from '../helpers/servers.js'
import { startTxApp, stopAfterTests } from '../helpers/tx-app.js'

const { procs, apps, closers } = stopAfterTests()

/** A TCP proxy to 127.0.0.1:`target` that keeps every byte clients sent, per connection. */
async function recordingProxy(target: number): Promise<{ port: number; sent: Buffer[][] }> {
  const sent: Buffer[][] = []
  const sockets = new Set<Socket>()
  const server: TcpServer = createTcpServer((client) => {
    const chunks: Buffer[] = []
    sent.push(chunks)
    const upstream = connect(target, '127.0.0.1')
    for (const s of [client, upstream]) {
      sockets.add(s)
      s.on('close', () => sockets.delete(s))
      s.on('error', () => undefined)
    }
    client.on('data', (c: Buffer) => chunks.push(c))
    client.pipe(upstream)
    upstream.pipe(client)
  })
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r))
  closers.push(async () => {
    for (const s of sockets) s.destroy()
    await new Promise<void>((r) => server.close(() => r()))
  })
  return { port: (server.address() as AddressInfo).port, sent }
}

/** Splits a captured byte stream into the HTTP/1.1 requests it holds (Content-Length framing). */
function requestsIn(stream: Buffer): Buffer[] {
  const out: Buffer[] = []
  let at = 0
  while (at < stream.length) {
    const end = stream.indexOf('\r\n\r\n', at)
    if (end < 0) break
    const head = stream.subarray(at, end).toString('latin1')
    const length = Number(/\r\ncontent-length:\s*(\d+)/i.exec(head)?.[1] ?? 0)
    out.push(stream.subarray(at, end + 4 + length))
    at = end + 4 + length
  }
  return out
}

/** Sends raw bytes on a new connection and returns the status line's code and the error code. */
function sendRaw(port: number, bytes: Buffer): Promise<{ status: number; code: string | undefined; text: string }> {
  return new Promise((resolve, reject) => {
    const socket = connect(port, '127.0.0.1')
    let text = ''
    socket.on('data', (c: Buffer) => {
      text += c.toString()
      const head = text.indexOf('\r\n\r\n')
      const length = Number(/\r\ncontent-length:\s*(\d+)/i.exec(text)?.[1] ?? -1)
      if (head >= 0 && length >= 0 && text.length >= head + 4 + length) {
        socket.destroy()
        resolve({ status: Number(text.slice(9, 12)), code: /\r\nx-txmesh-error:\s*(\S+)/i.exec(text)?.[1], text })
      }
    })
    socket.on('error', reject)
    socket.write(bytes)
  })
}

describe('control replay protection', () => {
  it('refuses a captured control request sent again verbatim, a tampered one and stale timestamps, while fresh calls keep working', async () => {
    const orders = await startTxApp('orders')
    apps.push(orders)
    const [ingress, control] = [await freePort(), await freePort()]
    const proxy = await recordingProxy(control)
    const ord = await spawnSidecar(sidecarYaml('orders', orders.port), [
      '--ingress-port',
      String(ingress),
      '--control-port',
      String(control),
      '--advertise',
      `127.0.0.1:${proxy.port}`,
    ])
    procs.push(ord)
    const coord = await spawnSidecar(
      sidecarYaml('initiator', 1, `services:\n  orders: {address: "127.0.0.1:${ingress}"}\n`),
    )
    procs.push(coord)
    const admin = `http://127.0.0.1:${coord.ports.admin}`
    const run = async (value: string): Promise<{ id: string; outcome: string }> => {
      const tx = (await (
        await request(`${admin}/v1/transactions`, {
          method: 'POST',
          headers: { 'content-type': 'application/json' },
          body: '{"timeoutMs":10000}',
        })
      ).body.json()) as { id: string; context: string }
      expect(
        (
          await rawRequest(coord.ports.egress, {
            method: 'POST',
            path: `http://orders/write/${value}`,
            headers: { 'txmesh-context': tx.context },
          })
        ).status,
      ).toBe(200)
      const r = (await (
        await request(`${admin}/v1/transactions/${tx.id}/commit?wait=acks`, { method: 'POST' })
      ).body.json()) as { outcome: string }
      return { id: tx.id, outcome: r.outcome }
    }

    const first = await run('r1')
    expect(first.outcome).toBe('committed')
    expect(orders.committed).toEqual(['orders:r1'])
    // What the coordinator sent through the proxy: one participant, so one commit-one-phase (in
    // a batch: src/control/batcher.ts).
    const captured = proxy.sent.flatMap((chunks) => requestsIn(Buffer.concat(chunks)))
    const commit = captured.find((r) => {
      const t = r.toString('latin1')
      return t.startsWith('POST /v1/batch ') && t.includes(`"tx":"${first.id}","op":"commit-one-phase"`)
    })
    expect(commit, captured.map((r) => r.toString('latin1').split('\r\n')[0]).join('\n')).toBeDefined()
    expect(commit!.toString('latin1')).toMatch(/\r\ntxmesh-auth: \d+\.[A-Za-z0-9_-]{22}\.[A-Za-z0-9_-]{43}\r\n/)

    // The same bytes again, straight to the control listener: refused as a replay.
    const replayed = await sendRaw(control, commit!)
    expect(replayed.status).toBe(401)
    expect(replayed.code).toBe('TXM_CONTROL_REPLAY')
    expect(replayed.text).not.toContain(MESH_KEY)
    // Through the proxy too (the path a peer would take), and again: refused every time.
    expect((await sendRaw(proxy.port, commit!)).code).toBe('TXM_CONTROL_REPLAY')

    // A tampered copy (another branch id, same signature and nonce) fails the signature check.
    const text = commit!.toString('latin1')
    const tampered = Buffer.from(
      text.replace(/"branch":"([A-Za-z0-9_-])/, (_m, c: string) => `"branch":"${c === 'x' ? 'y' : 'x'}`),
      'latin1',
    )
    expect(tampered.equals(commit!)).toBe(false)
    expect((await sendRaw(control, tampered)).code).toBe('TXM_CONTROL_UNAUTHORIZED')

    // Stale and future timestamps, freshly signed with the mesh key and a new nonce: refused.
    const path = `/v1/tx/${first.id}/outcome`
    const at = async (ts: number): Promise<{ status: number; code: unknown }> => {
      const r = await request(`http://127.0.0.1:${control}${path}`, {
        headers: { 'txmesh-auth': signControl(Buffer.from(MESH_KEY), ts, 'GET', path, '') },
      })
      await r.body.dump()
      return { status: r.statusCode, code: r.headers['x-txmesh-error'] }
    }
    expect(await at(Date.now() - LIMITS.controlClockSkewMs - 2_000)).toEqual({
      status: 401,
      code: 'TXM_CONTROL_UNAUTHORIZED',
    })
    expect(await at(Date.now() + LIMITS.controlClockSkewMs + 2_000)).toEqual({
      status: 401,
      code: 'TXM_CONTROL_UNAUTHORIZED',
    })
    expect(await at(Date.now())).toEqual({ status: 200, code: undefined })
    // The old header format (<ts>.<mac>, no nonce) is refused.
    const old = signControl(Buffer.from(MESH_KEY), Date.now(), 'GET', path, '').split('.')
    const r = await request(`http://127.0.0.1:${control}${path}`, { headers: { 'txmesh-auth': `${old[0]}.${old[2]}` } })
    expect(r.statusCode).toBe(401)
    await r.body.dump()

    // Nothing was applied twice, and the mesh goes on: new calls carry new nonces.
    const second = await run('r2')
    expect(second.outcome).toBe('committed')
    expect(orders.committed).toEqual(['orders:r1', 'orders:r2'])
    expect(orders.hooks.filter((h) => h === `commit:${first.id}`)).toHaveLength(1)
  })

  it('answers 503 TXM_CONTROL_OVERLOADED when the replay cache is full of unexpired nonces, and accepts again once they expire', async () => {
    let now = Date.now()
    const key = Buffer.from(MESH_KEY)
    const deps = {
      keys: staticKeys([key]),
      coordinator: { outcomeFor: () => 'aborted' },
      steps: { has: () => false },
      participant: {},
      logger: silentLogger,
      clock: () => now,
    } as unknown as ControlDeps
    const server = createControlServer(() => deps, undefined, new ReplayCache(now, 3))
    const port = await listen(server, '127.0.0.1', 0)
    closers.push(() => closeServer(server))
    const path = '/v1/tx/abc/outcome'
    const call = async (auth = signControl(key, now, 'GET', path, '')): Promise<{ status: number; code: unknown }> => {
      const r = await request(`http://127.0.0.1:${port}${path}`, { headers: { 'txmesh-auth': auth } })
      await r.body.dump()
      return { status: r.statusCode, code: r.headers['x-txmesh-error'] }
    }
    const kept = signControl(key, now, 'GET', path, '')
    expect(await call(kept)).toEqual({ status: 200, code: undefined })
    expect(await call()).toEqual({ status: 200, code: undefined })
    expect(await call()).toEqual({ status: 200, code: undefined })
    // Full: a valid new request cannot be checked, so it is refused, not accepted.
    expect(await call()).toEqual({ status: 503, code: 'TXM_CONTROL_OVERLOADED' })
    expect(await call(kept)).toEqual({ status: 401, code: 'TXM_CONTROL_REPLAY' })
    // Past the window the old nonces expire (their timestamps are stale now) and room is made.
    now += LIMITS.controlClockSkewMs + 1
    expect(await call()).toEqual({ status: 200, code: undefined })
    expect(await call(kept)).toEqual({ status: 401, code: 'TXM_CONTROL_UNAUTHORIZED' })
  })
})
