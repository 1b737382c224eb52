// The sidecar as the Kubernetes contract runs it: a shared config without `service`, the pod's
// settings from the environment (TXMESH_SERVICE, TXMESH_STORE_DIR, TXMESH_ADVERTISE), the mesh
// key from a mounted Secret (TXMESH_MESH_KEY_FILE) that the kubelet updates in place, and the
// kubelet's probes on the health listener (--health-port).
import { existsSync, mkdirSync, readdirSync, renameSync, rmSync, symlinkSync, writeFileSync } from 'node:fs'
import { connect } from 'node:net'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import type { Sidecar } from '../../src/sidecar.js'
import { CONTROL_AUTH_HEADER } from '../../src/control/client.js'
import { coordinatorOfTx, signControl } from '../../src/tx/protocol.js'
import { tempDir } from '../../harness/temp.js'
import { until } from '../../harness/ports.js'
import {
  inProcessSidecar,
  rawRequest,
  sidecarYaml,
  spawnSidecar,
  startEcho,
  type SidecarProcess,
} from '../helpers/servers.js'

// The ConfigMap of the contract: no service, no store dir, no app port (--app-port gives it).
const SHARED_YAML = [
  'listeners: {egress: {host: 127.0.0.1, port: 0}, ingress: {host: 127.0.0.1, port: 0}, control: {host: 127.0.0.1, port: 0}, admin: {host: 127.0.0.1, port: 0}}',
  'mesh: {coordinators: ["10.0.0.0/8:15010", "127.0.0.1:*"]}',
  'log: {level: silent}',
  '',
].join('\n')

function refused(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = connect(port, '127.0.0.1')
    s.once('connect', () => {
      s.destroy()
      resolve(false)
    })
    s.once('error', () => resolve(true))
  })
}

/**
 * A Secret volume as the kubelet writes it (its atomic writer): each version in its own
 * directory, `..data` a symlink to the current one, and each key a symlink through `..data`.
 * An update writes a new directory and renames a new `..data` over the old one.
 */
class SecretVolume {
  private version = 0
  constructor(readonly dir: string) {}

  write(files: Record<string, string>): void {
    const v = `..2026_11_25_v${++this.version}`
    mkdirSync(join(this.dir, v))
    for (const [k, text] of Object.entries(files)) writeFileSync(join(this.dir, v, k), text)
    symlinkSync(v, join(this.dir, '..data_tmp'))
    renameSync(join(this.dir, '..data_tmp'), join(this.dir, '..data'))
    for (const k of Object.keys(files))
      if (!existsSync(join(this.dir, k))) symlinkSync(join('..data', k), join(this.dir, k))
    if (this.version > 1) rmSync(join(this.dir, `..2026_11_25_v${this.version - 1}`), { recursive: true })
  }
}

const K1 = 'k8s-mesh-key-one-0123456789abcdef'
const K2 = 'k8s-mesh-key-two-0123456789abcdef'

describe('sidecar in a pod (env settings, health listener)', () => {
  let app: Awaited<ReturnType<typeof startEcho>>
  let sidecar: SidecarProcess
  let storeDir: string
  let meshKey: SecretVolume

  beforeAll(async () => {
    app = await startEcho()
    const root = tempDir('txmesh-k8s-')
    storeDir = join(root, 'var-lib-txmesh')
    meshKey = new SecretVolume(join(root, 'mesh-key'))
    mkdirSync(meshKey.dir)
    meshKey.write({ 'mesh-key': K1 })
    sidecar = await spawnSidecar(SHARED_YAML, ['--app-port', String(app.port), '--health-port', '0'], {
      TXMESH_SERVICE: 'k8s-orders',
      TXMESH_STORE_DIR: storeDir,
      TXMESH_ADVERTISE: '10.244.1.7:15010',
      // What the injector sets: no key variable, the mounted Secret's file.
      TXMESH_MESH_KEY: '',
      TXMESH_MESH_KEY_FILE: join(meshKey.dir, 'mesh-key'),
    })
  })
  afterAll(async () => {
    if (sidecar.child.exitCode === null) sidecar.child.kill('SIGKILL')
    await app.close()
  })

  it('prints the health port with the others and answers GET /healthz and /readyz there as the admin port does', async () => {
    const health = sidecar.ports.health
    expect(health).toBeTypeOf('number')
    expect(health).not.toBe(sidecar.ports.admin)
    for (const path of ['/healthz', '/readyz']) {
      const h = await rawRequest(health as number, { path })
      const a = await rawRequest(sidecar.ports.admin, { path })
      expect(h.status).toBe(200)
      expect([h.status, h.body]).toEqual([a.status, a.body])
    }
    expect(JSON.parse((await rawRequest(health as number, { path: '/readyz' })).body)).toEqual({ status: 'ready' })
    // The kubelet may add a query; a HEAD answers too (without a body).
    expect((await rawRequest(health as number, { path: '/healthz?probe=liveness' })).status).toBe(200)
    const head = await rawRequest(health as number, { method: 'HEAD', path: '/readyz' })
    expect([head.status, head.body]).toEqual([200, ''])
  })

  it('answers anything else on the health port with TXM_NOT_FOUND or TXM_METHOD_NOT_ALLOWED, never the admin API', async () => {
    const health = sidecar.ports.health as number
    for (const path of ['/', '/metrics', '/v1/transactions', '/ui', '/healthz/x']) {
      const r = await rawRequest(health, { path })
      expect(r.status, path).toBe(404)
      expect(r.headers['x-txmesh-error']).toBe('TXM_NOT_FOUND')
      expect((JSON.parse(r.body) as { error: { code: string } }).error.code).toBe('TXM_NOT_FOUND')
    }
    const post = await rawRequest(health, { method: 'POST', path: '/v1/transactions', body: '{}' })
    expect([post.status, post.headers['x-txmesh-error']]).toEqual([404, 'TXM_NOT_FOUND'])
    const wrongMethod = await rawRequest(health, { method: 'POST', path: '/healthz', body: 'x' })
    expect([wrongMethod.status, wrongMethod.headers['x-txmesh-error']]).toEqual([405, 'TXM_METHOD_NOT_ALLOWED'])
    // Nothing was begun through the health port.
    const list = await rawRequest(sidecar.ports.admin, { path: '/v1/transactions' })
    expect(JSON.parse(list.body)).toEqual({ transactions: [] })
  })

  it('refuses a request head over the health limit with 431 TXM_HEADERS_TOO_LARGE', async () => {
    const r = await rawRequest(sidecar.ports.health as number, {
      path: '/healthz',
      headers: { 'x-big': 'a'.repeat(9 * 1024) },
    })
    expect([r.status, r.headers['x-txmesh-error']]).toEqual([431, 'TXM_HEADERS_TOO_LARGE'])
    expect((await rawRequest(sidecar.ports.health as number, { path: '/healthz' })).status).toBe(200)
  })

  it('keeps the admin API, names itself TXMESH_SERVICE, advertises TXMESH_ADVERTISE and logs under TXMESH_STORE_DIR', async () => {
    const begun = await rawRequest(sidecar.ports.admin, {
      method: 'POST',
      path: '/v1/transactions',
      headers: { 'content-type': 'application/json' },
      body: '{"timeoutMs":5000}',
    })
    expect(begun.status).toBe(201)
    const tx = JSON.parse(begun.body) as { id: string }
    // A transaction id names its coordinator's advertised control address.
    expect(coordinatorOfTx(tx.id)).toBe('10.244.1.7:15010')
    expect(
      (await rawRequest(sidecar.ports.admin, { method: 'POST', path: `/v1/transactions/${tx.id}/abort` })).status,
    ).toBe(200)
    expect(readdirSync(storeDir).filter((f) => /^\d{16}\.log$/.test(f)).length).toBeGreaterThan(0)
    // Not the file's default (txmesh-data/<service> in the working directory).
    expect(existsSync(join(process.cwd(), 'txmesh-data', 'k8s-orders'))).toBe(false)
    // The ingress forwards to --app-port.
    const r = await rawRequest(sidecar.ports.ingress, { path: '/hello', headers: { host: 'k8s-orders' } })
    expect(r.status).toBe(200)
    expect(app.seen.at(-1)?.url).toBe('/hello')
  })

  it('takes the mesh key from TXMESH_MESH_KEY_FILE and follows the kubelet updating the mounted Secret, without a restart', async () => {
    const outcome = async (key: string): Promise<number> => {
      const path = '/v1/tx/k8s1/outcome'
      const headers = { [CONTROL_AUTH_HEADER]: signControl(Buffer.from(key), Date.now(), 'GET', path, '') }
      return (await rawRequest(sidecar.ports.control, { path, headers })).status
    }
    expect([await outcome(K1), await outcome(K2)]).toEqual([200, 401])
    // Rotation, step 1 and then step 3 (docs/security.md "Mesh keys and rotation"): the file is polled
    // every LIMITS.secretFileCheckMs, and polling follows the `..data` swap.
    meshKey.write({ 'mesh-key': `${K1},${K2}` })
    await until('K2 accepted', async () => (await outcome(K2)) === 200)
    expect(await outcome(K1)).toBe(200)
    meshKey.write({ 'mesh-key': K2 })
    await until('K1 refused', async () => (await outcome(K1)) === 401)
    expect(await outcome(K2)).toBe(200)
    // A broken update keeps the keys in use.
    meshKey.write({ 'mesh-key': 'short' })
    await new Promise((r) => setTimeout(r, 2_500))
    expect([await outcome(K1), await outcome(K2)]).toEqual([401, 200])
  })

  it('closes the health listener with the others on SIGTERM and exits 0', async () => {
    const health = sidecar.ports.health as number
    sidecar.child.kill('SIGTERM')
    expect(await sidecar.exited).toEqual({ code: 0, signal: null })
    expect(await refused(health)).toBe(true)
    expect(await refused(sidecar.ports.admin)).toBe(true)
  })
})

describe('sidecar start-up refusals', () => {
  it('exits 1 naming the file when no service is given anywhere', async () => {
    const err = await spawnSidecar(SHARED_YAML, [], { TXMESH_SERVICE: '' }).then(
      () => undefined,
      (e: unknown) => e as Error,
    )
    expect(err?.message).toMatch(
      /txmesh\.yaml:1:1: config: missing required key "service" \(or give --service NAME or TXMESH_SERVICE\)/,
    )
  })

  it('exits 1 on a TXMESH_ADVERTISE that is not host:port, and --service wins over TXMESH_SERVICE', async () => {
    const err = await spawnSidecar(SHARED_YAML, ['--service', 'flag-name'], {
      TXMESH_SERVICE: 'Not_Valid',
      TXMESH_ADVERTISE: '10.244.1.7',
    }).then(
      () => undefined,
      (e: unknown) => e as Error,
    )
    // Only the advertise problem: the invalid TXMESH_SERVICE was overridden by the flag.
    expect(err?.message).toMatch(/txmesh\.yaml:0:0: TXMESH_ADVERTISE: "10\.244\.1\.7" is not host:port/)
    expect(err?.message).not.toMatch(/TXMESH_SERVICE/)
  })
})

describe('health listener in process', () => {
  const sidecars: Sidecar[] = []
  afterAll(async () => {
    await Promise.all(sidecars.map((s) => s.drain(1000)))
  })
  // sidecarYaml binds every listener on 127.0.0.1:0; this adds the health listener.
  const withHealth = (yaml: string): string =>
    yaml.replace(
      'admin: {host: 127.0.0.1, port: 0}}',
      'admin: {host: 127.0.0.1, port: 0}, health: {host: 127.0.0.1, port: 0}}',
    )

  it('is bound only when configured, so many sidecars on port 0 do not collide', async () => {
    const plain = await inProcessSidecar(sidecarYaml('plain', 1))
    sidecars.push(plain)
    expect('health' in plain.ports).toBe(false)
    const probed = await inProcessSidecar(withHealth(sidecarYaml('probed', 1)))
    sidecars.push(probed)
    const health = probed.ports.health as number
    expect(health).toBeGreaterThan(0)
    expect(Object.values(plain.ports)).not.toContain(health)
    expect((await rawRequest(health, { path: '/readyz' })).status).toBe(200)
  })

  it('answers /readyz 503 draining while the sidecar drains, like the admin port, then closes', async () => {
    let release: () => void = () => undefined
    const slow = await startEcho((_req, res) => {
      release = () => res.end('late')
      return true
    })
    const s = await inProcessSidecar(withHealth(sidecarYaml('draining', slow.port)))
    const health = s.ports.health as number
    // One request in flight holds the drain open.
    const inflight = rawRequest(s.ports.ingress, { path: '/slow', headers: { host: 'draining' } })
    await until('the app to hold the request', () => slow.seen.length === 1)
    const drained = s.drain(5_000)
    const h = await rawRequest(health, { path: '/readyz' })
    const a = await rawRequest(s.ports.admin, { path: '/readyz' })
    expect([h.status, JSON.parse(h.body)]).toEqual([503, { status: 'draining' }])
    expect([a.status, a.body]).toEqual([h.status, h.body])
    expect((await rawRequest(health, { path: '/healthz' })).status).toBe(200)
    release()
    expect((await inflight).status).toBe(200)
    await drained
    await slow.close()
    expect(await refused(health)).toBe(true)
  })
})
