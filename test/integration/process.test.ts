import { request } from 'undici'
import { afterEach, describe, expect, it } from 'vitest'
import {
  rawRequest,
  sidecarYaml,
  spawnSidecar,
  startEcho,
  startServer,
  type SidecarProcess,
} from '../helpers/servers.js'

const running: SidecarProcess[] = []
afterEach(() => {
  for (const p of running.splice(0)) if (p.child.exitCode === null) p.child.kill('SIGKILL')
})

describe('txmesh sidecar process', () => {
  it('prints the ports it bound in one JSON line, flags overriding the file', async () => {
    const app = await startEcho()
    try {
      // The file names ports that are taken (the app's); every flag overrides one to 0.
      const yaml = sidecarYaml('orders', 1).replace(/port: 0/g, `port: ${app.port}`)
      const p = await spawnSidecar(yaml, [
        '--app-port',
        String(app.port),
        '--egress-port',
        '0',
        '--ingress-port',
        '0',
        '--control-port',
        '0',
        '--admin-port',
        '0',
      ])
      running.push(p)
      for (const port of Object.values(p.ports)) expect(port).toBeGreaterThan(0)
      expect(new Set(Object.values(p.ports)).size).toBe(4)
      const health = await request(`http://127.0.0.1:${p.ports.admin}/healthz`)
      expect(health.statusCode).toBe(200)
      expect(await health.body.json()).toEqual({ status: 'ok' })
      const ready = await request(`http://127.0.0.1:${p.ports.admin}/readyz`)
      expect(ready.statusCode).toBe(200)
      // --app-port took effect: ingress reaches the echo app.
      const viaIngress = await rawRequest(p.ports.ingress, { path: '/hi', headers: { host: 'orders' } })
      expect(viaIngress.status).toBe(200)
      expect(app.seen.at(-1)?.url).toBe('/hi')
    } finally {
      await app.close()
    }
  })

  it('exits 1 with file:line:col when the config is invalid', async () => {
    await expect(spawnSidecar('service: orders\nroutes: 3\n')).rejects.toThrow(
      /txmesh\.yaml:2:9: routes: must be array/,
    )
  })

  it('drains on SIGTERM: refuses new connections, finishes the in-flight request, exits 0', async () => {
    let release: (() => void) | undefined
    const app = await startServer((req, res) => {
      if (req.url === '/slow') release = () => res.end('finished')
      else res.end('fast')
    })
    try {
      const p = await spawnSidecar(sidecarYaml('orders', app.port) + '\ndrainTimeoutMs: 5000\n')
      running.push(p)
      const inflight = rawRequest(p.ports.ingress, { path: '/slow', headers: { host: 'orders' } })
      for (let i = 0; i < 100 && release === undefined; i++) await new Promise((r) => setTimeout(r, 20))
      expect(release).toBeDefined()
      p.child.kill('SIGTERM')
      // Readiness turns to draining, then the listener stops accepting.
      let refused = false
      for (let i = 0; i < 50 && !refused; i++) {
        try {
          await rawRequest(p.ports.ingress, { path: '/fast', headers: { host: 'orders' } })
          await new Promise((r) => setTimeout(r, 20))
        } catch (err) {
          refused = (err as { code?: string }).code === 'ECONNREFUSED'
        }
      }
      expect(refused).toBe(true)
      expect(p.child.exitCode).toBeNull()
      release?.()
      const r = await inflight
      expect(r.status).toBe(200)
      expect(r.body).toBe('finished')
      expect(await p.exited).toEqual({ code: 0, signal: null })
    } finally {
      await app.close()
    }
  })

  it('exits 0 after the drain timeout even when a request never finishes', async () => {
    const app = await startServer(() => undefined)
    try {
      const p = await spawnSidecar(sidecarYaml('orders', app.port) + '\ndrainTimeoutMs: 300\n')
      running.push(p)
      const stuck = rawRequest(p.ports.ingress, { path: '/never', headers: { host: 'orders' } }).catch((e: Error) => e)
      await new Promise((r) => setTimeout(r, 200))
      const t0 = Date.now()
      p.child.kill('SIGTERM')
      expect(await p.exited).toEqual({ code: 0, signal: null })
      expect(Date.now() - t0).toBeLessThan(5_000)
      expect(await stuck).toBeInstanceOf(Error)
    } finally {
      await app.close()
    }
  })
})
