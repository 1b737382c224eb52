// Egress loops (issue 15, hole 9) on real sidecar processes: a request the egress would send to
// its own listener, under any spelling of a local address or a name that resolves to one, is
// answered 508 TXM_PROXY_LOOP at once instead of going round ~2000 times; loops between sidecars
// that no address shows end at the hop bound (txmesh-hops), which no app ever sees.
import { lookup } from 'node:dns/promises'
import { connect } from 'node:net'
import { hostname } from 'node:os'
import { request } from 'undici'
import { describe, expect, it } from 'vitest'
import { LIMITS } from '../../src/limits.js'
import { freePort } from '../../harness/ports.js'
import { rawRequest, sidecarYaml, spawnSidecar, startEcho, type SidecarProcess } from '../helpers/servers.js'
import { stopAfterTests } from '../helpers/tx-app.js'

const { procs, closers } = stopAfterTests()

/** sidecarYaml with the egress on a port chosen beforehand, so the config can name it. */
function yamlWithEgress(service: string, appPort: number, egressPort: number, extra = ''): string {
  return sidecarYaml(service, appPort, extra).replace(
    'egress: {host: 127.0.0.1, port: 0}',
    `egress: {host: 127.0.0.1, port: ${egressPort}}`,
  )
}

/** Egress requests the sidecar forwarded so far (its /metrics), whatever their status. */
async function egressForwarded(sc: SidecarProcess): Promise<number> {
  const r = await request(`http://127.0.0.1:${sc.ports.admin}/metrics`)
  const text = await r.body.text()
  let n = 0
  for (const m of text.matchAll(/^txmesh_proxy_requests_total\{([^}]*)\} (\d+)$/gm))
    if ((m[1] as string).includes('direction="egress"')) n += Number(m[2])
  return n
}

async function start(extra: (egress: number) => string = () => '') {
  const app = await startEcho()
  closers.push(() => app.close())
  const port = await freePort()
  const sc = await spawnSidecar(yamlWithEgress('orders', app.port, port, extra(port)))
  procs.push(sc)
  return { app, sc, port }
}

/** Sends raw bytes to `port` and returns what came back until the connection closed. */
function exchangeRaw(port: number, bytes: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const s = connect(port, '127.0.0.1', () => s.write(bytes))
    let t = ''
    s.on('data', (c: Buffer) => (t += c.toString('latin1')))
    s.on('close', () => resolve(t))
    s.on('error', reject)
    s.setTimeout(10_000, () => s.destroy(new Error(`no answer; got ${JSON.stringify(t.slice(0, 200))}`)))
  })
}

describe('egress loop detection', () => {
  it(
    'answers 508 TXM_PROXY_LOOP at once to every spelling of its own address, and forwards nothing',
    { timeout: 60_000 },
    async () => {
      const { app, sc, port } = await start(
        (p) =>
          `services:\n  loopy: {address: "127.1:${p}"}\n  mapped: {address: "[::ffff:127.0.0.1]:${p}"}\n  named: {address: "localhost:${p}"}\n`,
      )
      // Literal spellings (refused before connecting) and names (refused once connected).
      const hosts = [
        '127.0.0.1',
        '0.0.0.0',
        '0',
        '127.1',
        '0x7f.1',
        '0x7f000001',
        '2130706433',
        '017700000001',
        '[::ffff:127.0.0.1]',
        '[::ffff:7f00:1]',
        '[::ffff:0.0.0.0]',
        '[::]',
        'localhost',
        'LOCALHOST',
      ]
      // This host's name, where it resolves to loopback (it does in most containers and CI VMs).
      const own = hostname()
      const ownAddress = await lookup(own).catch(() => undefined)
      if (ownAddress !== undefined && /^127\./.test(ownAddress.address)) hosts.push(own)
      const cases: { what: string; path: string; headers?: Record<string, string> }[] = [
        ...hosts.map((h) => ({ what: `absolute-form ${h}`, path: `http://${h}:${port}/x` })),
        ...hosts.map((h) => ({ what: `origin-form Host: ${h}`, path: '/x', headers: { host: `${h}:${port}` } })),
        ...['loopy', 'mapped', 'named'].map((h) => ({ what: `service ${h}`, path: `http://${h}/x` })),
      ]
      for (const c of cases) {
        const before = await egressForwarded(sc)
        const started = Date.now()
        const r = await rawRequest(sc.ports.egress, { path: c.path, headers: c.headers ?? {} })
        const took = Date.now() - started
        expect([r.status, r.headers['x-txmesh-error']], c.what).toEqual([508, 'TXM_PROXY_LOOP'])
        expect(took, c.what).toBeLessThan(2_000)
        // At most the refused request itself: it never came round again.
        expect((await egressForwarded(sc)) - before, c.what).toBeLessThanOrEqual(1)
      }
      expect(app.seen).toEqual([])
    },
  )

  it('lets the app call its own ingress (one hop to the app, not a loop), and refuses an ingress whose app address is its egress', async () => {
    const { app, sc } = await start()
    const self = await rawRequest(sc.ports.egress, { path: `http://127.1:${sc.ports.ingress}/self` })
    expect(self.status).toBe(200)
    expect(app.seen.map((x) => x.url)).toEqual(['/self'])
    // app.port set to the sidecar's own egress port by mistake.
    const port = await freePort()
    const wrong = await spawnSidecar(yamlWithEgress('orders', port, port))
    procs.push(wrong)
    const r = await rawRequest(wrong.ports.ingress, { path: '/x', headers: { host: 'orders' } })
    expect([r.status, r.headers['x-txmesh-error']]).toEqual([508, 'TXM_PROXY_LOOP'])
    expect(await egressForwarded(wrong)).toBe(0)
  })

  it('refuses an Upgrade and a CONNECT tunnel to its own address too', async () => {
    const { app, sc, port } = await start()
    const upgrade = (host: string): string =>
      `GET /socket HTTP/1.1\r\nHost: ${host}:${port}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n`
    for (const host of ['127.1', 'localhost']) {
      const out = await exchangeRaw(sc.ports.egress, upgrade(host))
      expect(out, host).toMatch(/^HTTP\/1\.1 508 /)
      expect(out, host).toContain('x-txmesh-error: TXM_PROXY_LOOP')
    }
    const tunneled = await exchangeRaw(
      sc.ports.egress,
      `CONNECT 0.0.0.0:${port} HTTP/1.1\r\nHost: 0.0.0.0:${port}\r\n\r\n`,
    )
    expect(tunneled).toMatch(/^HTTP\/1\.1 508 /)
    expect(app.seen).toEqual([])
  })

  it(
    'ends a loop between two sidecars (service maps pointing at each other) at the hop bound',
    { timeout: 30_000 },
    async () => {
      const [pa, pb] = [await freePort(), await freePort()]
      const appA = await startEcho()
      const appB = await startEcho()
      closers.push(
        () => appA.close(),
        () => appB.close(),
      )
      // Each maps "b" to the other one's egress: every hop is to another listener.
      const a = await spawnSidecar(
        yamlWithEgress('orders', appA.port, pa, `services:\n  b: {address: "127.0.0.1:${pb}"}\n`),
      )
      const b = await spawnSidecar(yamlWithEgress('b', appB.port, pb, `services:\n  b: {address: "127.0.0.1:${pa}"}\n`))
      procs.push(a, b)
      const r = await rawRequest(a.ports.egress, { path: 'http://b/x' })
      expect([r.status, r.headers['x-txmesh-error']]).toEqual([508, 'TXM_PROXY_LOOP'])
      const hops = (await egressForwarded(a)) + (await egressForwarded(b))
      expect(hops).toBeLessThanOrEqual(LIMITS.maxProxyHops)
      expect(appA.seen).toEqual([])
      expect(appB.seen).toEqual([])
    },
  )

  it('counts hops in txmesh-hops: refuses a request that passed the bound, and no app sees the header', async () => {
    const callee = await startEcho()
    closers.push(() => callee.close())
    const peer = await spawnSidecar(sidecarYaml('payments', callee.port))
    procs.push(peer)
    const { sc } = await start(() => `services:\n  payments: {address: "127.0.0.1:${peer.ports.ingress}"}\n`)
    const ok = await rawRequest(sc.ports.egress, { path: 'http://payments/pay' })
    expect(ok.status).toBe(200)
    expect(callee.seen.at(-1)?.headers['txmesh-hops']).toBeUndefined()
    // Sent by an outside caller to the ingress: dropped, the request goes on.
    const forged = await rawRequest(peer.ports.ingress, {
      path: '/pay',
      headers: { host: 'payments', 'txmesh-hops': '999' },
    })
    expect(forged.status).toBe(200)
    expect(callee.seen.at(-1)?.headers['txmesh-hops']).toBeUndefined()
    // A request that arrives at an egress having passed the bound is a loop.
    const before = callee.seen.length
    for (const hops of [String(LIMITS.maxProxyHops), 'x', '1, 99']) {
      const r = await rawRequest(sc.ports.egress, { path: 'http://payments/pay', headers: { 'txmesh-hops': hops } })
      expect([r.status, r.headers['x-txmesh-error']], hops).toEqual([508, 'TXM_PROXY_LOOP'])
    }
    const below = await rawRequest(sc.ports.egress, {
      path: 'http://payments/pay',
      headers: { 'txmesh-hops': String(LIMITS.maxProxyHops - 1) },
    })
    expect(below.status).toBe(200)
    expect(callee.seen.length).toBe(before + 1)
  })
})
