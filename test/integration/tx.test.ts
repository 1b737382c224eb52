// Two-phase commit through real sidecar processes: an initiator (its sidecar coordinates) and
// participant services whose sidecars call their apps' hooks.
import { spawnSync } from 'node:child_process'
import { readFileSync, readdirSync } from 'node:fs'
import { join } from 'node:path'
import { request } from 'undici'
import { describe, expect, it } from 'vitest'
import { signContext } from '../../src/tx/protocol.js'
import { signControl } from '../../src/tx/protocol.js'
import { freePort, until } from '../../harness/ports.js'
import { tempDir } from '../../harness/temp.js'
import { CLI } from '../../harness/sidecar.js'
import { MESH_KEY, rawRequest, sidecarYaml, spawnSidecar, type SidecarProcess } from '../helpers/servers.js'
import { startTxApp, stopAfterTests, type TxApp } from '../helpers/tx-app.js'

const { procs, apps } = stopAfterTests()

interface Mesh {
  coord: SidecarProcess
  svc: Record<string, { app: TxApp; sc: SidecarProcess; store: string }>
  begin(timeoutMs?: number): Promise<{ id: string; context: string }>
  call(
    ctx: string,
    service: string,
    value: string,
    then?: string,
  ): Promise<{ status: number; body: string; headers: Record<string, unknown> }>
  commit(id: string): Promise<Record<string, unknown>>
  restart(name: string, env?: Record<string, string>): Promise<void>
}

/** Coordinator sidecar (for the test, acting as the initiating app) + participants. */
async function mesh(
  names: string[],
  env: Record<string, Record<string, string>> = {},
  coordEnv: Record<string, string> = {},
  coordStore = tempDir(),
): Promise<Mesh> {
  const svc: Mesh['svc'] = {}
  // Ports fixed up front (outside the kernel's ephemeral range, see freePort) so every sidecar
  // starts once with the full service map and can restart on the same address.
  const fixed: Record<string, { ingress: number; control: number }> = {}
  for (const name of names) fixed[name] = { ingress: await freePort(), control: await freePort() }
  const services = names.map((n) => `  ${n}: {address: "127.0.0.1:${fixed[n]?.ingress}"}`).join('\n')
  for (const name of names) {
    const app = await startTxApp(name)
    apps.push(app)
    const store = tempDir()
    const f = fixed[name]!
    const sc = await spawnSidecar(
      sidecarYaml(name, app.port, `services:\n${services}\n`, store),
      ['--ingress-port', String(f.ingress), '--control-port', String(f.control)],
      env[name] ?? {},
    )
    procs.push(sc)
    app.egress = sc.ports.egress
    svc[name] = { app, sc, store }
  }
  const coordYaml = sidecarYaml('initiator', 1, `services:\n${services}\n`, coordStore)
  const m: Mesh = {
    coord: await spawnSidecar(coordYaml, ['--control-port', String(await freePort())], coordEnv),
    svc,
    async begin(timeoutMs = 10_000) {
      const r = await request(`http://127.0.0.1:${m.coord.ports.admin}/v1/transactions`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ mode: '2pc', timeoutMs }),
      })
      expect(r.statusCode).toBe(201)
      return (await r.body.json()) as { id: string; context: string }
    },
    async call(ctx, service, value, then) {
      const r = await rawRequest(m.coord.ports.egress, {
        method: 'POST',
        path: `http://${service}/write/${value}${then ? `?then=${then}` : ''}`,
        headers: { 'txmesh-context': ctx },
      })
      return { status: r.status, body: r.body, headers: r.headers }
    },
    async commit(id) {
      const r = await request(`http://127.0.0.1:${m.coord.ports.admin}/v1/transactions/${id}/commit?wait=acks`, {
        method: 'POST',
      })
      return (await r.body.json()) as Record<string, unknown>
    },
    async restart(name, e = {}) {
      const s = svc[name]!
      s.sc = await spawnSidecar(
        sidecarYaml(name, s.app.port, `services:\n${services}\n`, s.store),
        ['--ingress-port', String(s.sc.ports.ingress), '--control-port', String(s.sc.ports.control)],
        e,
      )
      procs.push(s.sc)
      s.app.egress = s.sc.ports.egress
    },
  }
  procs.push(m.coord)
  return m
}

describe('two-phase commit through sidecars', () => {
  it('commits across three services, nested calls enlisted through the response', async () => {
    const m = await mesh(['orders', 'payments', 'inventory'])
    const tx = await m.begin()
    expect((await m.call(tx.context, 'orders', 'o1', 'inventory')).status).toBe(200)
    expect((await m.call(tx.context, 'payments', 'p1')).status).toBe(200)
    // Work is staged, not visible, until the commit.
    expect(m.svc.orders!.app.committed).toEqual([])
    const result = await m.commit(tx.id)
    expect(result.outcome).toBe('committed')
    const parts = result.participants as { service: string; vote: string; acknowledged: boolean }[]
    expect(parts.map((p) => p.service).sort()).toEqual(['inventory', 'orders', 'payments'])
    expect(parts.every((p) => p.vote === 'prepared' && p.acknowledged)).toBe(true)
    expect(m.svc.orders!.app.committed).toEqual(['orders:o1'])
    expect(m.svc.inventory!.app.committed).toEqual(['inventory:o1'])
    expect(m.svc.payments!.app.committed).toEqual(['payments:p1'])
    const view = (await (
      await request(`http://127.0.0.1:${m.coord.ports.admin}/v1/transactions/${tx.id}`)
    ).body.json()) as { status: string }
    expect(view.status).toBe('committed')
  })

  it('enlists a participant once however many calls reach it in one request', async () => {
    const m = await mesh(['orders', 'inventory'])
    const tx = await m.begin()
    const r = await rawRequest(m.coord.ports.egress, {
      method: 'POST',
      path: 'http://orders/write/many?then=inventory&times=20',
      headers: { 'txmesh-context': tx.context },
    })
    expect(r.status).toBe(200)
    const result = await m.commit(tx.id)
    expect(result.outcome).toBe('committed')
    expect((result.participants as { service: string }[]).map((p) => p.service).sort()).toEqual(['inventory', 'orders'])
    expect(m.svc.inventory!.app.committed).toHaveLength(20)
  })

  it('aborts every branch when one participant votes no', async () => {
    const m = await mesh(['orders', 'inventory'])
    m.svc.inventory!.app.vote = 409
    const tx = await m.begin()
    await m.call(tx.context, 'orders', 'o2', 'inventory')
    const result = await m.commit(tx.id)
    expect(result.outcome).toBe('aborted')
    await until('orders abort hook', () => m.svc.orders!.app.hooks.includes(`abort:${tx.id}`))
    expect(m.svc.orders!.app.committed).toEqual([])
    expect(m.svc.inventory!.app.committed).toEqual([])
    expect(m.svc.orders!.app.hooks).not.toContain(`commit:${tx.id}`)
  })

  it('aborts a branch whose transaction passed its deadline', async () => {
    const m = await mesh(['orders'])
    const tx = await m.begin(400)
    await m.call(tx.context, 'orders', 'late')
    await until('deadline abort', () => m.svc.orders!.app.hooks.includes(`abort:${tx.id}`))
    const result = await m.commit(tx.id)
    expect(result.outcome).toBe('aborted')
    expect(m.svc.orders!.app.committed).toEqual([])
  })

  it('aborts when a participant is unreachable at prepare', async () => {
    const m = await mesh(['orders', 'payments'])
    const tx = await m.begin()
    await m.call(tx.context, 'orders', 'o3')
    await m.call(tx.context, 'payments', 'p3')
    m.svc.payments!.sc.child.kill('SIGKILL')
    await m.svc.payments!.sc.exited
    const result = await m.commit(tx.id)
    expect(result.outcome).toBe('aborted')
    await until('orders abort hook', () => m.svc.orders!.app.hooks.includes(`abort:${tx.id}`))
    expect(m.svc.orders!.app.committed).toEqual([])
  })

  it('fails a call to an unreachable service and leaves the transaction abortable', async () => {
    const m = await mesh(['orders'])
    const tx = await m.begin()
    const r = await rawRequest(m.coord.ports.egress, {
      method: 'POST',
      path: 'http://127.0.0.1:1/write/x',
      headers: { 'txmesh-context': tx.context },
    })
    expect(r.status).toBe(502)
    expect(r.headers['x-txmesh-error']).toBe('TXM_UPSTREAM_UNREACHABLE')
    const a = await request(`http://127.0.0.1:${m.coord.ports.admin}/v1/transactions/${tx.id}/abort`, {
      method: 'POST',
    })
    expect(((await a.body.json()) as { outcome: string }).outcome).toBe('aborted')
  })

  it('finishes phase 2 after the coordinator is SIGKILLed between decision and phase 2', async () => {
    const coordStore = tempDir()
    const m = await mesh(['orders', 'payments'], {}, { TXMESH_FAILPOINTS: 'coordinator-after-decision' }, coordStore)
    const tx = await m.begin()
    await m.call(tx.context, 'orders', 'o4')
    await m.call(tx.context, 'payments', 'p4')
    const commit = request(`http://127.0.0.1:${m.coord.ports.admin}/v1/transactions/${tx.id}/commit`, {
      method: 'POST',
    }).catch((e: Error) => e)
    expect(await m.coord.exited).toMatchObject({ signal: 'SIGKILL' })
    expect(await commit).toBeInstanceOf(Error)
    expect(m.svc.orders!.app.committed).toEqual([])
    // Restart the coordinator on the same control port and log: it re-drives phase 2.
    const yaml = sidecarYaml('initiator', 1, '', coordStore)
    const again = await spawnSidecar(yaml, ['--control-port', String(m.coord.ports.control)])
    procs.push(again)
    await until(
      'commit everywhere',
      () => m.svc.orders!.app.committed.length === 1 && m.svc.payments!.app.committed.length === 1,
    )
    expect(m.svc.orders!.app.committed).toEqual(['orders:o4'])
    expect(m.svc.payments!.app.committed).toEqual(['payments:p4'])
  })

  it('resolves a branch whose participant sidecar was SIGKILLed after PREPARED', async () => {
    const m = await mesh(['orders', 'payments'], { payments: { TXMESH_FAILPOINTS: 'participant-after-prepared' } })
    const tx = await m.begin()
    await m.call(tx.context, 'orders', 'o5')
    await m.call(tx.context, 'payments', 'p5')
    const result = await m.commit(tx.id)
    // Its vote never arrived: presumed abort.
    expect(result.outcome).toBe('aborted')
    await m.svc.payments!.sc.exited
    await m.restart('payments')
    // After restart the participant asks the coordinator and finishes the branch.
    await until(
      'payments abort hook after restart',
      () => m.svc.payments!.app.hooks.filter((h) => h === `abort:${tx.id}`).length >= 1,
    )
    expect(m.svc.payments!.app.committed).toEqual([])
    expect(m.svc.orders!.app.committed).toEqual([])
  })

  it('treats duplicate commit and abort messages as harmless', async () => {
    const m = await mesh(['orders'])
    const tx = await m.begin()
    const call = await m.call(tx.context, 'orders', 'o6')
    const branch = (JSON.parse(call.body) as { branch: string }).branch
    expect((await m.commit(tx.id)).outcome).toBe('committed')
    const control = m.svc.orders!.sc.ports.control
    for (const op of ['commit', 'commit', 'abort']) {
      const path = `/v1/tx/${tx.id}/${op}`
      const body = JSON.stringify({ branch })
      const r = await request(`http://127.0.0.1:${control}${path}`, {
        method: 'POST',
        body,
        headers: { 'txmesh-auth': signControl(Buffer.from(MESH_KEY), Date.now(), 'POST', path, body) },
      })
      expect(r.statusCode).toBe(200)
      expect(((await r.body.json()) as { outcome: string }).outcome).toBe('committed')
    }
    expect(m.svc.orders!.app.committed).toEqual(['orders:o6'])
    // Commit again through the API: same answer, nothing re-applied.
    expect((await m.commit(tx.id)).outcome).toBe('committed')
    expect(m.svc.orders!.app.committed).toEqual(['orders:o6'])
  })

  it('a single-participant commit takes one phase: prepare then commit at the app, no decision record at the coordinator', async () => {
    const m = await mesh(['orders'])
    const stats = async (port: number): Promise<{ log: { appends: number }; branches: number }> =>
      (await (await request(`http://127.0.0.1:${port}/v1/stats`)).body.json()) as {
        log: { appends: number }
        branches: number
      }
    const tx = await m.begin()
    expect((await m.call(tx.context, 'orders', 'o9')).status).toBe(200)
    const before = await stats(m.coord.ports.admin)
    const result = await m.commit(tx.id)
    expect(result.outcome).toBe('committed')
    expect(result.participants).toMatchObject([{ service: 'orders', vote: 'prepared', acknowledged: true }])
    expect(m.svc.orders!.app.hooks.filter((h) => h.endsWith(`:${tx.id}`))).toEqual([
      `prepare:${tx.id}`,
      `commit:${tx.id}`,
    ])
    expect(m.svc.orders!.app.committed).toEqual(['orders:o9'])
    // The coordinator wrote nothing for it (the participant's PREPARED(onePhase) is the record).
    expect((await stats(m.coord.ports.admin)).log.appends).toBe(before.log.appends)
    // The participant forgets the branch once the coordinator has its answer.
    await until('orders forgets the branch', async () => (await stats(m.svc.orders!.sc.ports.admin)).branches === 0)
  })

  it('refuses forged, expired, malformed and oversize contexts with stable codes', async () => {
    const m = await mesh(['orders'])
    const ingress = m.svc.orders!.sc.ports.ingress
    const good = {
      id: 'abc',
      mode: '2pc' as const,
      coordinator: `127.0.0.1:${m.coord.ports.control}`,
      deadline: Date.now() + 60_000,
      parent: undefined,
    }
    const cases: [string, string, number][] = [
      ['forged', signContext(Buffer.from('another-key-0123456789abcdef'), good), 401],
      ['expired', signContext(Buffer.from(MESH_KEY), { ...good, deadline: Date.now() - 1 }), 410],
      ['malformed', 'v1.not-json.sig', 401],
      ['garbage', 'hello', 400],
      ['oversize', 'v1.' + 'a'.repeat(2000) + '.x', 431],
      ['foreign coordinator', signContext(Buffer.from(MESH_KEY), { ...good, coordinator: '10.9.9.9:15010' }), 403],
    ]
    const codes: Record<string, string> = {}
    for (const [name, token, status] of cases) {
      const r = await rawRequest(ingress, { path: '/write/x', headers: { host: 'orders', 'txmesh-context': token } })
      expect(r.status, name).toBe(status)
      codes[name] = r.headers['x-txmesh-error'] as string
    }
    expect(codes).toEqual({
      forged: 'TXM_CONTEXT_FORGED',
      expired: 'TXM_CONTEXT_EXPIRED',
      malformed: 'TXM_CONTEXT_FORGED',
      garbage: 'TXM_CONTEXT_INVALID',
      oversize: 'TXM_CONTEXT_TOO_LARGE',
      'foreign coordinator': 'TXM_COORDINATOR_NOT_ALLOWED',
    })
    expect(m.svc.orders!.app.committed).toEqual([])
    // Unsigned control calls are refused too.
    const r = await request(`http://127.0.0.1:${m.svc.orders!.sc.ports.control}/v1/tx/abc/commit`, {
      method: 'POST',
      body: '{"branch":"b"}',
    })
    expect(r.statusCode).toBe(401)
    expect(r.headers['x-txmesh-error']).toBe('TXM_CONTROL_UNAUTHORIZED')
  })

  it('answers transaction calls of a sidecar without a mesh key with TXM_MESH_KEY_MISSING, not "starting" forever', async () => {
    const sc = await spawnSidecar(sidecarYaml('keyless', 1), [], { TXMESH_MESH_KEY: '' })
    procs.push(sc)
    const control = await rawRequest(sc.ports.control, {
      method: 'POST',
      path: '/v1/tx/abc/prepare',
      headers: { 'content-length': '2', 'content-type': 'application/json' },
      body: '{}',
    })
    expect(control.status).toBe(503)
    expect(control.headers['x-txmesh-error']).toBe('TXM_MESH_KEY_MISSING')
    const admin = await rawRequest(sc.ports.admin, {
      method: 'POST',
      path: '/v1/transactions',
      headers: { 'content-length': '2', 'content-type': 'application/json' },
      body: '{}',
    })
    expect(admin.status).toBe(503)
    expect(admin.headers['x-txmesh-error']).toBe('TXM_MESH_KEY_MISSING')
  })

  it('reads the context from W3C baggage', async () => {
    const m = await mesh(['orders'])
    const tx = await m.begin()
    const r = await rawRequest(m.coord.ports.egress, {
      method: 'POST',
      path: 'http://orders/write/bag',
      headers: { baggage: `userId=7,txmesh=${encodeURIComponent(tx.context)};p=1` },
    })
    expect(r.status).toBe(200)
    expect((await m.commit(tx.id)).outcome).toBe('committed')
    expect(m.svc.orders!.app.committed).toEqual(['orders:bag'])
  })

  it('registers a participant enlisted after the inbound response went out', async () => {
    const m = await mesh(['orders', 'audit'])
    const tx = await m.begin()
    expect((await m.call(tx.context, 'orders', 'o7', undefined)).status).toBe(200)
    const r = await rawRequest(m.coord.ports.egress, {
      method: 'POST',
      path: 'http://orders/write/o8?later=audit',
      headers: { 'txmesh-context': tx.context },
    })
    expect(r.status).toBe(200)
    await until('the late call', () => m.svc.orders!.app.later.length === 1)
    expect(m.svc.orders!.app.later).toEqual([200])
    const result = await m.commit(tx.id)
    expect(result.outcome).toBe('committed')
    expect((result.participants as { service: string }[]).map((p) => p.service).sort()).toEqual(['audit', 'orders'])
    expect(m.svc.audit!.app.committed).toEqual(['audit:o8'])
  })
})

describe('implicit transactions (route transaction: required)', () => {
  it('begins a transaction per request, commits on 2xx, aborts and answers 409 when a participant refuses', async () => {
    const back = await startTxApp('back')
    const front = await startTxApp('front')
    apps.push(back, front)
    const backSc = await spawnSidecar(sidecarYaml('back', back.port))
    procs.push(backSc)
    const frontSc = await spawnSidecar(
      sidecarYaml(
        'front',
        front.port,
        `services:\n  back: {address: "127.0.0.1:${backSc.ports.ingress}"}\nroutes:\n  - {name: checkout, match: {direction: ingress, methods: [POST]}, transaction: required}\n`,
      ),
    )
    procs.push(frontSc)
    front.egress = frontSc.ports.egress
    const ok = await rawRequest(frontSc.ports.ingress, {
      method: 'POST',
      path: '/write/ok?then=back',
      headers: { host: 'front' },
    })
    expect(ok.status).toBe(200)
    expect(ok.headers['txmesh-outcome']).toBe('committed')
    // The answer comes once the decision is durable; phase 2 reaches the apps right after.
    await until('phase 2', () => front.committed.length === 1 && back.committed.length === 1)
    expect(front.committed).toEqual(['front:ok'])
    expect(back.committed).toEqual(['back:ok'])

    back.vote = 409
    const refused = await rawRequest(frontSc.ports.ingress, {
      method: 'POST',
      path: '/write/no?then=back',
      headers: { host: 'front' },
    })
    expect(refused.status).toBe(409)
    expect(refused.headers['x-txmesh-error']).toBe('TXM_TX_ABORTED')
    expect(front.committed).toEqual(['front:ok'])
    expect(back.committed).toEqual(['back:ok'])
    // The app failing before it answers ends the implicit transaction at once.
    const broken = await rawRequest(frontSc.ports.ingress, {
      method: 'POST',
      path: '/reset',
      headers: { host: 'front' },
    })
    expect(broken.status).toBe(502)
    await until('implicit transactions ended', async () => {
      const stats = (await (await request(`http://127.0.0.1:${frontSc.ports.admin}/v1/stats`)).body.json()) as {
        transactions: { active: number }
      }
      return stats.transactions.active === 0
    })
    // Requests outside the route stay plain.
    const plain = await rawRequest(frontSc.ports.ingress, { method: 'GET', path: '/other', headers: { host: 'front' } })
    expect(plain.headers['txmesh-outcome']).toBeUndefined()
  })
})

/** Prometheus text -> { 'name{labels}': value } (labels as printed, sorted by prom-client). */
function parseMetrics(text: string): Map<string, number> {
  const out = new Map<string, number>()
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('#')) continue
    const sp = line.lastIndexOf(' ')
    out.set(line.slice(0, sp), Number(line.slice(sp + 1)))
  }
  return out
}

describe('metrics', () => {
  it('counts transactions, phases, proxy requests, fsyncs and estimates P(commit) per route', async () => {
    const m = await mesh(['orders', 'inventory'])
    for (const vote of [200, 200, 409]) {
      m.svc.inventory!.app.vote = vote
      const tx = await m.begin()
      await m.call(tx.context, 'orders', `v${vote}`, 'inventory')
      await m.commit(tx.id)
    }
    const scrape = async (port: number): Promise<Map<string, number>> => {
      const r = await request(`http://127.0.0.1:${port}/metrics`)
      expect(r.headers['content-type']).toContain('text/plain')
      return parseMetrics(await r.body.text())
    }
    const c = await scrape(m.coord.ports.admin)
    expect(c.get('txmesh_transactions_total{mode="2pc",outcome="committed"}')).toBe(2)
    expect(c.get('txmesh_transactions_total{mode="2pc",outcome="aborted"}')).toBe(1)
    expect(c.get('txmesh_phase_duration_seconds_count{phase="prepare"}')).toBe(3)
    expect(c.get('txmesh_phase_duration_seconds_count{phase="commit"}')).toBe(2)
    expect(c.get('txmesh_proxy_requests_total{direction="egress",route="default",status="200"}')).toBe(3)
    expect(c.get('txmesh_transactions_in_flight')).toBe(0)
    // orders voted yes 3 times of 3, inventory 2 of 3: P = 1 * 2/3.
    expect(c.get('txmesh_route_commit_probability{route="api"}')).toBeCloseTo(2 / 3, 5)
    // The log's incarnation record (written when the log was created) and two decision records,
    // each its own fsync here (no concurrency to group); the two lazy END records may ride on a
    // later sync or get one of their own, depending on timing.
    expect(c.get('txmesh_log_fsyncs_total')).toBeGreaterThanOrEqual(3)
    expect(c.get('txmesh_log_fsyncs_total')).toBeLessThanOrEqual(5)
    expect(c.get('txmesh_log_fsync_batch_records_count')).toBe(c.get('txmesh_log_fsyncs_total'))
    const p = await scrape(m.svc.inventory!.sc.ports.admin)
    expect(p.get('txmesh_proxy_requests_total{direction="ingress",route="default",status="200"}')).toBe(3)
    expect(p.get('txmesh_branches_in_doubt')).toBe(0)
    expect(p.get('txmesh_log_fsyncs_total')).toBeGreaterThanOrEqual(2)
  })
})

describe('operator CLI', () => {
  const cli = (args: string[]): { status: number | null; stdout: string; stderr: string } => {
    const r = spawnSync(process.execPath, [CLI, 'tx', ...args], { encoding: 'utf8' })
    return { status: r.status, stdout: r.stdout, stderr: r.stderr }
  }

  it('lists and shows transactions as tables and JSON', async () => {
    const m = await mesh(['orders'])
    const tx = await m.begin()
    await m.call(tx.context, 'orders', 'cli')
    await m.commit(tx.id)
    const admin = `http://127.0.0.1:${m.coord.ports.admin}`
    const list = cli(['list', '--admin', admin])
    expect(list.stderr).toBe('')
    expect(list.status).toBe(0)
    expect(list.stdout).toMatch(/^transactions coordinated here \(1\)\nID\s+STATUS\s+MODE\s+PARTICIPANTS\s+DEADLINE\n/)
    expect(list.stdout).toMatch(new RegExp(`\\n${tx.id}\\s+committed\\s+2pc\\s+1\\s+\\d{4}-`))
    const show = cli(['show', tx.id, '--admin', admin])
    expect(show.status).toBe(0)
    expect(show.stdout).toContain(`transaction ${tx.id}\nstatus    committed`)
    expect(show.stdout).toMatch(/orders\s+\S+\s+prepared\s+yes/)
    const json = JSON.parse(cli(['show', tx.id, '--admin', admin, '--json']).stdout) as { status: string }
    expect(json.status).toBe('committed')
    const missing = cli(['show', 'nope', '--admin', admin])
    expect(missing.status).toBe(1)
    expect(missing.stderr).toContain('TXM_TX_UNKNOWN')
  })

  it('resolves an in-doubt branch whose coordinator is gone, audited in the log', async () => {
    const m = await mesh(['orders', 'payments'], {}, { TXMESH_FAILPOINTS: 'coordinator-after-decision' })
    const tx = await m.begin()
    await m.call(tx.context, 'orders', 'doubt')
    await m.call(tx.context, 'payments', 'doubt')
    await request(`http://127.0.0.1:${m.coord.ports.admin}/v1/transactions/${tx.id}/commit`, { method: 'POST' }).catch(
      () => undefined,
    )
    await m.coord.exited
    const admin = `http://127.0.0.1:${m.svc.orders!.sc.ports.admin}`
    const list = JSON.parse(cli(['list', '--admin', admin, '--json']).stdout) as {
      branches: { tx: string; status: string }[]
    }
    expect(list.branches).toEqual([expect.objectContaining({ tx: tx.id, status: 'prepared' })])
    expect(cli(['list', '--admin', admin]).stdout).toMatch(new RegExp(`${tx.id}\\s+\\S+\\s+prepared`))
    // Prepared a moment ago: its coordinator may come back and decide, so not in doubt yet.
    const early = cli(['resolve', tx.id, '--commit', '--by', 'test-operator', '--admin', admin])
    expect(early.status).toBe(1)
    expect(early.stderr).toContain('TXM_BRANCH_NOT_IN_DOUBT')
    const resolved = cli(['resolve', tx.id, '--commit', '--force', '--by', 'test-operator', '--admin', admin])
    expect(resolved.stderr).toBe('')
    expect(resolved.status).toBe(0)
    expect(resolved.stdout).toContain(
      `of transaction ${tx.id}: committed (audited in the log, forced: a heuristic decision, the branch was not in doubt)`,
    )
    await until('orders commit hook', () => m.svc.orders!.app.committed.includes('orders:doubt'))
    // The decision is in the durable log, with who made it.
    const logBytes = readdirSync(m.svc.orders!.store)
      .map((f) => readFileSync(join(m.svc.orders!.store, f)).toString('latin1'))
      .join('')
    expect(logBytes).toContain('"type":"resolved"')
    expect(logBytes).toContain('"by":"test-operator"')
    expect(logBytes).toContain('"forced":true')
    // Resolving it again, or a branch that is not prepared, is refused.
    const again = cli(['resolve', tx.id, '--abort', '--admin', admin])
    expect(again.status).toBe(1)
    expect(again.stderr).toContain('TXM_TX_UNKNOWN')
    expect(cli(['resolve', tx.id, '--admin', admin]).status).toBe(2)
  })
})
