// Two-phase commit with real Postgres, real app processes using txmesh/pg, and real sidecars.
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process'
import { join } from 'node:path'
import { createInterface } from 'node:readline'
import pg from 'pg'
import { request } from 'undici'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { startPostgres, type PostgresInstance } from '../../harness/pg.js'
import { freePort, until } from '../../harness/ports.js'
import { tempDir } from '../../harness/temp.js'
import { rawRequest, sidecarYaml, spawnSidecar, type SidecarProcess } from '../helpers/servers.js'

const APP = join(import.meta.dirname, '../fixtures/pg-app.ts')
let pgi: PostgresInstance
const children: { kill(sig: NodeJS.Signals): boolean }[] = []

beforeAll(async () => {
  pgi = await startPostgres()
})
afterAll(async () => {
  for (const c of children) c.kill('SIGKILL')
  await pgi.stop()
})

interface AppProc {
  child: ChildProcessWithoutNullStreams
  port: number
  recovered: { committed: number; aborted: number; inDoubt: number }
  exited: Promise<unknown>
}

async function startApp(
  service: string,
  db: string,
  admin: number,
  env: Record<string, string> = {},
  port = 0,
): Promise<AppProc> {
  const child = spawn(process.execPath, ['--import', 'tsx', APP], {
    env: {
      ...process.env,
      DATABASE_URL: pgi.connectionString(db),
      SERVICE: service,
      SIDECAR_ADMIN: `http://127.0.0.1:${admin}`,
      PORT: String(port),
      ...env,
    },
    stdio: 'pipe',
  })
  children.push(child)
  let err = ''
  child.stderr.on('data', (c: Buffer) => (err += c.toString()))
  const exited = new Promise((r) => child.once('exit', r))
  const line = await new Promise<string>((resolve, reject) => {
    createInterface({ input: child.stdout }).once('line', resolve)
    void exited.then(() => reject(new Error(`app exited: ${err}`)))
  })
  const info = JSON.parse(line) as { port: number; recovered: AppProc['recovered'] }
  return { child, port: info.port, recovered: info.recovered, exited }
}

async function rows(db: string): Promise<{ items: string[]; prepared: number }> {
  const c = new pg.Client({ connectionString: pgi.connectionString(db) })
  await c.connect()
  try {
    const items = (await c.query<{ v: string }>('SELECT v FROM items ORDER BY v')).rows.map((r) => r.v)
    const prepared = Number(
      (await c.query<{ n: string }>('SELECT count(*) AS n FROM pg_prepared_xacts WHERE database = current_database()'))
        .rows[0]?.n,
    )
    return { items, prepared }
  } finally {
    await c.end()
  }
}

describe('two-phase commit on Postgres through sidecars', () => {
  let coord: SidecarProcess
  const svc: Record<string, { db: string; sc: SidecarProcess; app: AppProc; store: string }> = {}

  beforeAll(async () => {
    for (const name of ['alpha', 'beta']) {
      await pgi.createDatabase(name)
      const store = tempDir()
      // The sidecar needs the app port and the app needs the sidecar's admin port: start the
      // sidecar on a fixed free app port first.
      // Fixed ports (below the ephemeral range) so the app and sidecar restart on them safely.
      const appPort = await freePort()
      // alpha takes its hook calls batched (hooks.batch, served by txmesh/pg); beta one by one.
      const hooks = name === 'alpha' ? 'hooks: {batch: /.well-known/txmesh/batch}' : ''
      const sc = await spawnSidecar(sidecarYaml(name, appPort, hooks, store), [
        '--ingress-port',
        String(await freePort()),
        '--control-port',
        String(await freePort()),
        '--admin-port',
        String(await freePort()),
      ])
      const app = await startApp(name, name, sc.ports.admin, {}, appPort)
      svc[name] = { db: name, sc, app, store }
      children.push(sc.child)
    }
    coord = await spawnSidecar(
      sidecarYaml(
        'initiator',
        1,
        `services:\n  alpha: {address: "127.0.0.1:${svc.alpha!.sc.ports.ingress}"}\n  beta: {address: "127.0.0.1:${svc.beta!.sc.ports.ingress}"}\n`,
      ),
    )
    children.push(coord.child)
  })

  async function begin(): Promise<{ id: string; context: string }> {
    const r = await request(`http://127.0.0.1:${coord.ports.admin}/v1/transactions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: '{"mode":"2pc","timeoutMs":20000}',
    })
    return (await r.body.json()) as { id: string; context: string }
  }
  async function write(ctx: string, service: string, value: string): Promise<number> {
    return (
      await rawRequest(coord.ports.egress, {
        method: 'POST',
        path: `http://${service}/write/${value}`,
        headers: { 'txmesh-context': ctx },
      })
    ).status
  }

  it('commits rows in both databases and leaves no prepared transaction', async () => {
    const tx = await begin()
    expect(await write(tx.context, 'alpha', 'a1')).toBe(200)
    expect(await write(tx.context, 'beta', 'b1')).toBe(200)
    expect((await rows('alpha')).items).toEqual([])
    const r = await request(`http://127.0.0.1:${coord.ports.admin}/v1/transactions/${tx.id}/commit?wait=acks`, {
      method: 'POST',
    })
    expect(((await r.body.json()) as { outcome: string }).outcome).toBe('committed')
    expect(await rows('alpha')).toEqual({ items: ['a1'], prepared: 0 })
    expect(await rows('beta')).toEqual({ items: ['b1'], prepared: 0 })
  })

  it('an app SIGKILLed after prepare finishes its branch from pg_prepared_xacts after restart', async () => {
    // beta dies when its commit hook is called: prepared in Postgres, not committed.
    const beta = svc.beta!
    beta.app.child.kill('SIGKILL')
    await beta.app.exited
    beta.app = await startApp('beta', 'beta', beta.sc.ports.admin, { DIE_ON_COMMIT: '1' }, beta.app.port)
    const tx = await begin()
    expect(await write(tx.context, 'alpha', 'a2')).toBe(200)
    expect(await write(tx.context, 'beta', 'b2')).toBe(200)
    const r = await request(`http://127.0.0.1:${coord.ports.admin}/v1/transactions/${tx.id}/commit?wait=acks`, {
      method: 'POST',
    })
    expect(((await r.body.json()) as { outcome: string }).outcome).toBe('committed')
    await beta.app.exited
    expect((await rows('beta')).prepared).toBe(1)
    expect((await rows('beta')).items).toEqual(['b1'])
    // Restart: the helper asks its sidecar about the prepared row and commits it.
    beta.app = await startApp('beta', 'beta', beta.sc.ports.admin, {}, beta.app.port)
    // recover() runs before the app listens, so it (not the sidecar's hook retry) finished it.
    expect(beta.app.recovered).toEqual({ committed: 1, aborted: 0, inDoubt: 0 })
    await until('beta committed', async () => (await rows('beta')).items.includes('b2'))
    expect(await rows('beta')).toEqual({ items: ['b1', 'b2'], prepared: 0 })
    expect(await rows('alpha')).toEqual({ items: ['a1', 'a2'], prepared: 0 })
  })

  it('a participant sidecar that lost its log still resolves the prepared row through the coordinator the id names', async () => {
    const beta = svc.beta!
    beta.app.child.kill('SIGKILL')
    await beta.app.exited
    beta.app = await startApp('beta', 'beta', beta.sc.ports.admin, { DIE_ON_COMMIT: '1' }, beta.app.port)
    const tx = await begin()
    expect(await write(tx.context, 'alpha', 'a3')).toBe(200)
    expect(await write(tx.context, 'beta', 'b3')).toBe(200)
    const r = await request(`http://127.0.0.1:${coord.ports.admin}/v1/transactions/${tx.id}/commit?wait=acks`, {
      method: 'POST',
    })
    expect(((await r.body.json()) as { outcome: string }).outcome).toBe('committed')
    await beta.app.exited
    // The sidecar dies too and comes back with an empty log (an emptyDir that was lost).
    beta.sc.child.kill('SIGKILL')
    await beta.sc.exited
    beta.sc = await spawnSidecar(sidecarYaml('beta', beta.app.port, '', tempDir()), [
      '--ingress-port',
      String(beta.sc.ports.ingress),
      '--control-port',
      String(beta.sc.ports.control),
      '--admin-port',
      String(beta.sc.ports.admin),
    ])
    children.push(beta.sc.child)
    expect((await rows('beta')).prepared).toBe(1)
    beta.app = await startApp('beta', 'beta', beta.sc.ports.admin, {}, beta.app.port)
    expect(beta.app.recovered).toEqual({ committed: 1, aborted: 0, inDoubt: 0 })
    expect(await rows('beta')).toEqual({ items: ['b1', 'b2', 'b3'], prepared: 0 })
    // The coordinator's phase-2 retry reaches the new sidecar, which passes the commit to its app
    // but cannot acknowledge a branch of its lost log (TXM_BRANCH_NOT_HERE): from the address alone
    // it cannot tell a wiped log from another pod at a reused IP whose real holder is prepared
    // elsewhere. The coordinator keeps its COMMIT and retries.
    await new Promise((r) => setTimeout(r, 1_500))
    const v = (await (await request(`http://127.0.0.1:${coord.ports.admin}/v1/transactions/${tx.id}`)).body.json()) as {
      status: string
      participants: { service: string; acknowledged: boolean }[]
    }
    expect(v.status).toBe('committing')
    expect(v.participants).toEqual(
      expect.arrayContaining([expect.objectContaining({ service: 'beta', acknowledged: false })]),
    )
  })

  it('sends the prepares and commits of concurrent transactions in batches, to peer sidecars and to a batching app', async () => {
    const stats = async (
      port: number,
    ): Promise<{
      batches?: { control: { items: number; batches: number }; hooks?: { items: number; batches: number } }
    }> => (await (await request(`http://127.0.0.1:${port}/v1/stats`)).body.json()) as never
    const before = { coord: await stats(coord.ports.admin), alpha: await stats(svc.alpha!.sc.ports.admin) }
    // Each open branch holds one of the app's 10 pool connections.
    const n = 8
    const txs = await Promise.all(Array.from({ length: n }, () => begin()))
    for (const [i, tx] of txs.entries()) {
      expect(await write(tx.context, 'alpha', `batch-a${i}`)).toBe(200)
      expect(await write(tx.context, 'beta', `batch-b${i}`)).toBe(200)
    }
    // One transaction is aborted among them: its abort rides in a batch as well.
    const outcomes = await Promise.all(
      txs.map(async (tx, i) => {
        const r = await request(
          `http://127.0.0.1:${coord.ports.admin}/v1/transactions/${tx.id}/${i === 5 ? 'abort' : 'commit'}?wait=acks`,
          { method: 'POST' },
        )
        return (await r.body.json()) as { outcome: string; participants: { acknowledged: boolean }[] }
      }),
    )
    expect(outcomes.map((o) => o.outcome)).toEqual(txs.map((_t, i) => (i === 5 ? 'aborted' : 'committed')))
    expect(outcomes.every((o) => o.participants.every((p) => p.acknowledged))).toBe(true)
    const want = (p: string): string[] => Array.from({ length: n }, (_x, i) => `${p}${i}`).filter((_v, i) => i !== 5)
    expect((await rows('alpha')).items.filter((v) => v.startsWith('batch-'))).toEqual(want('batch-a'))
    expect((await rows('beta')).items.filter((v) => v.startsWith('batch-'))).toEqual(want('batch-b'))
    expect((await rows('alpha')).prepared).toBe(0)
    expect((await rows('beta')).prepared).toBe(0)
    const after = {
      coord: await stats(coord.ports.admin),
      alpha: await stats(svc.alpha!.sc.ports.admin),
      beta: await stats(svc.beta!.sc.ports.admin),
    }
    // 7 prepares + 7 commits + 1 abort to each of 2 participants: 30 control messages (and a
    // retry or two of a commit an app had not finished yet), in fewer exchanges than messages.
    const control = {
      items: after.coord.batches!.control.items - before.coord.batches!.control.items,
      batches: after.coord.batches!.control.batches - before.coord.batches!.control.batches,
    }
    expect(control.items).toBeGreaterThanOrEqual(30)
    expect(control.batches).toBeLessThan(control.items)
    // alpha's app got its 15 hook calls in fewer requests; beta has no batch hook.
    const hooks = {
      items: after.alpha.batches!.hooks!.items - before.alpha.batches!.hooks!.items,
      batches: after.alpha.batches!.hooks!.batches - before.alpha.batches!.hooks!.batches,
    }
    expect(hooks.items).toBeGreaterThanOrEqual(15)
    expect(hooks.batches).toBeLessThan(hooks.items)
    expect(after.beta.batches!.hooks).toBeUndefined()
  })
})
