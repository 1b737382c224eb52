// A small mesh of real sidecar processes for transaction tests: a coordinator sidecar (the test
// acts as its initiating app, through the admin API and egress) and participant services, each a
// tx-app behind its own sidecar. Every sidecar has fixed ports, so any of them can be killed and
// started again at the same address, with its log or with a fresh one.
import { request } from 'undici'
import { expect } from 'vitest'
import { freePort } from '../../harness/ports.js'
import { tempDir } from '../../harness/temp.js'
import { rawRequest, sidecarYaml, spawnSidecar, type SidecarProcess } from './servers.js'
import { startTxApp, type TxApp } from './tx-app.js'

export interface Mesh {
  coord: SidecarProcess
  coordStore: string
  svc: Record<string, { app: TxApp; sc: SidecarProcess; store: string }>
  begin(timeoutMs?: number): Promise<{ id: string; context: string }>
  call(
    ctx: string,
    service: string,
    value: string,
    query?: string,
  ): Promise<{ status: number; body: string; headers: Record<string, unknown> }>
  /** POST .../commit (`wait`: 'acks' waits for phase 2). */
  commit(id: string, wait?: 'acks'): Promise<Record<string, unknown>>
  /** GET /v1/transactions/{id} at the coordinator. */
  view(id: string): Promise<Record<string, unknown>>
  /** GET /v1/branches at a participant's sidecar. */
  branches(service: string): Promise<Record<string, unknown>[]>
  restart(name: string, env?: Record<string, string>): Promise<void>
  /** Starts the coordinator again at its control address: with its log, or a fresh one (`store`). */
  restartCoord(opts?: { store?: string; env?: Record<string, string> }): Promise<void>
}

export const JSON_HEADERS = { 'content-type': 'application/json' }

export async function mesh(
  t: { procs: SidecarProcess[]; apps: TxApp[] },
  names: string[],
  env: Record<string, Record<string, string>> = {},
  coordEnv: Record<string, string> = {},
): Promise<Mesh> {
  const svc: Mesh['svc'] = {}
  const fixed: Record<string, { ingress: number; control: number }> = {}
  for (const name of names) fixed[name] = { ingress: await freePort(), control: await freePort() }
  const coordControl = await freePort()
  const services = `services:\n${names.map((n) => `  ${n}: {address: "127.0.0.1:${fixed[n]?.ingress}"}`).join('\n')}\n`
  for (const name of names) {
    const app = await startTxApp(name)
    t.apps.push(app)
    const store = tempDir()
    const f = fixed[name]!
    const sc = await spawnSidecar(
      sidecarYaml(name, app.port, services, store),
      ['--ingress-port', String(f.ingress), '--control-port', String(f.control)],
      env[name] ?? {},
    )
    t.procs.push(sc)
    app.egress = sc.ports.egress
    svc[name] = { app, sc, store }
  }
  const startCoord = async (store: string, e: Record<string, string>): Promise<SidecarProcess> => {
    const p = await spawnSidecar(
      sidecarYaml('initiator', 1, services, store),
      ['--control-port', String(coordControl)],
      e,
    )
    t.procs.push(p)
    return p
  }
  const m: Mesh = {
    coordStore: tempDir(),
    coord: undefined as unknown as SidecarProcess,
    svc,
    async begin(timeoutMs = 10_000) {
      const r = await request(`http://127.0.0.1:${m.coord.ports.admin}/v1/transactions`, {
        method: 'POST',
        headers: JSON_HEADERS,
        body: JSON.stringify({ mode: '2pc', timeoutMs }),
      })
      expect(r.statusCode).toBe(201)
      return (await r.body.json()) as { id: string; context: string }
    },
    async call(ctx, service, value, query) {
      const r = await rawRequest(m.coord.ports.egress, {
        method: 'POST',
        path: `http://${service}/write/${value}${query === undefined ? '' : `?${query}`}`,
        headers: { 'txmesh-context': ctx },
      })
      return { status: r.status, body: r.body, headers: r.headers }
    },
    async commit(id, wait) {
      const r = await request(
        `http://127.0.0.1:${m.coord.ports.admin}/v1/transactions/${id}/commit${wait === undefined ? '' : `?wait=${wait}`}`,
        { method: 'POST' },
      )
      return (await r.body.json()) as Record<string, unknown>
    },
    async view(id) {
      return (await (
        await request(`http://127.0.0.1:${m.coord.ports.admin}/v1/transactions/${id}`)
      ).body.json()) as Record<string, unknown>
    },
    async branches(service) {
      const r = await request(`http://127.0.0.1:${svc[service]!.sc.ports.admin}/v1/branches`)
      const body = (await r.body.json()) as { branches: Record<string, unknown>[] }
      return body.branches
    },
    async restart(name, e = {}) {
      const s = svc[name]!
      s.sc = await spawnSidecar(
        sidecarYaml(name, s.app.port, services, s.store),
        ['--ingress-port', String(s.sc.ports.ingress), '--control-port', String(s.sc.ports.control)],
        e,
      )
      t.procs.push(s.sc)
      s.app.egress = s.sc.ports.egress
    },
    async restartCoord(opts = {}) {
      if (opts.store !== undefined) m.coordStore = opts.store
      m.coord = await startCoord(m.coordStore, opts.env ?? {})
    },
  }
  m.coord = await startCoord(m.coordStore, coordEnv)
  return m
}
