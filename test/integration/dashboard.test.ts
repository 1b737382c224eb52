// The dashboard (/ui) and its event feed (/v1/events), with real sidecars as child processes and
// headless Chromium (test/helpers/browser.ts) driven by playwright-core.
import { mkdirSync } from 'node:fs'
import { request as httpRequest } from 'node:http'
import { join } from 'node:path'
import type { Browser, Page } from 'playwright-core'
import { launchTestChromium } from '../helpers/browser.js'
import { request } from 'undici'
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest'
import { tempDir } from '../../harness/temp.js'
import { until } from '../../harness/ports.js'
import { rawRequest, sidecarYaml, spawnSidecar, startServer, type SidecarProcess } from '../helpers/servers.js'
import { startTxApp, type TxApp } from '../helpers/tx-app.js'
import { LIMITS } from '../../src/limits.js'

const ARTIFACTS = join(import.meta.dirname, '../artifacts')

const procs: SidecarProcess[] = []
const apps: TxApp[] = []
const servers: { close: () => Promise<void> }[] = []
let browser: Browser | undefined

beforeAll(async () => {
  // Not a skip: the browser test is part of the suite (test/helpers/browser.ts says which Chromium).
  // playwright-core launches it with a fresh temporary profile.
  browser = await launchTestChromium()
})
afterEach(async () => {
  for (const p of procs.splice(0)) if (p.child.exitCode === null) p.child.kill('SIGKILL')
  await Promise.all(servers.splice(0).map((s) => s.close()))
})
afterAll(async () => {
  await browser?.close()
  await Promise.all(apps.splice(0).map((a) => a.close()))
})

interface Participant {
  app: TxApp
  sc: SidecarProcess
}

/** Participant sidecars (each in front of a tx-app) and the coordinator yaml that reaches them. */
async function participants(names: string[]): Promise<{ svc: Record<string, Participant>; coordYaml: () => string }> {
  const svc: Record<string, Participant> = {}
  for (const name of names) {
    const app = await startTxApp(name)
    apps.push(app)
    const sc = await spawnSidecar(sidecarYaml(name, app.port))
    procs.push(sc)
    app.egress = sc.ports.egress
    svc[name] = { app, sc }
  }
  const services = names.map((n) => `  ${n}: {address: "127.0.0.1:${svc[n]?.sc.ports.ingress}"}`).join('\n')
  return { svc, coordYaml: () => sidecarYaml('initiator', 1, `services:\n${services}\n`, tempDir()) }
}

async function coordinator(yaml: string, env: Record<string, string> = {}) {
  const sc = await spawnSidecar(yaml, [], env)
  procs.push(sc)
  const admin = `http://127.0.0.1:${sc.ports.admin}`
  return {
    sc,
    admin,
    async begin(): Promise<{ id: string; context: string }> {
      const r = await request(`${admin}/v1/transactions`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ mode: '2pc', timeoutMs: 30_000 }),
      })
      expect(r.statusCode).toBe(201)
      return (await r.body.json()) as { id: string; context: string }
    },
    async call(ctx: string, service: string, value: string): Promise<void> {
      const r = await rawRequest(sc.ports.egress, {
        method: 'POST',
        path: `http://${service}/write/${value}`,
        headers: { 'txmesh-context': ctx },
      })
      expect(r.status).toBe(200)
    },
    async commit(id: string): Promise<Record<string, unknown>> {
      const r = await request(`${admin}/v1/transactions/${id}/commit?wait=acks`, { method: 'POST' })
      return (await r.body.json()) as Record<string, unknown>
    },
  }
}

/** Reads an SSE stream until `done(text)` or the timeout, then closes it. */
function readEvents(
  port: number,
  headers: Record<string, string>,
  done: (text: string) => boolean,
  ms = 5_000,
): Promise<{ status: number; type: string; text: string }> {
  return new Promise((resolve, reject) => {
    const req = httpRequest({ host: '127.0.0.1', port, path: '/v1/events', headers, agent: false }, (res) => {
      let text = ''
      const finish = (): void => {
        clearTimeout(t)
        res.destroy()
        resolve({ status: res.statusCode ?? 0, type: String(res.headers['content-type']), text })
      }
      const t = setTimeout(finish, ms)
      res.on('data', (c: Buffer) => {
        text += c.toString()
        if (done(text)) finish()
      })
      res.on('end', finish)
    })
    req.on('error', reject)
    req.end()
  })
}

async function openUi(port: number): Promise<Page> {
  const page = await (browser as Browser).newPage()
  const errors: string[] = []
  page.on('pageerror', (e) => errors.push(String(e)))
  await page.goto(`http://127.0.0.1:${port}/ui`)
  await page.getByText('connected', { exact: true }).waitFor({ timeout: 10_000 })
  expect(errors).toEqual([])
  return page
}

describe('dashboard', () => {
  it('shows transactions live, and resolves an in-doubt branch through its button', async () => {
    const { svc, coordYaml } = await participants(['orders', 'payments'])
    const orders = svc.orders as Participant

    // One committed transaction on a healthy coordinator.
    const coord = await coordinator(coordYaml())
    const t1 = await coord.begin()
    await coord.call(t1.context, 'orders', 'first')
    await coord.call(t1.context, 'payments', 'first')
    expect(await coord.commit(t1.id)).toMatchObject({ outcome: 'committed' })

    // An in-doubt one: this coordinator SIGKILLs itself right after its COMMIT decision.
    const dying = await coordinator(coordYaml(), { TXMESH_FAILPOINTS: 'coordinator-after-decision' })
    const t2 = await dying.begin()
    await dying.call(t2.context, 'orders', 'doubt')
    await dying.call(t2.context, 'payments', 'doubt')
    await request(`${dying.admin}/v1/transactions/${t2.id}/commit`, { method: 'POST' }).catch(() => undefined)
    expect(await dying.sc.exited).toMatchObject({ signal: 'SIGKILL' })
    expect(orders.app.committed).toEqual(['orders:first'])

    // The coordinator's page: the committed transaction with its participants and votes.
    const cpage = await openUi(coord.sc.ports.admin)
    const row1 = cpage.locator(`#tx-body tr[data-tx="${t1.id}"]`)
    await expect.poll(() => row1.textContent()).toContain('committed')
    expect(await row1.textContent()).toMatch(/orders: prepared, acknowledged/)
    expect(await row1.textContent()).toMatch(/payments: prepared, acknowledged/)
    await expect.poll(() => cpage.locator('#route-body').textContent()).toContain('api')

    // Live: a transaction begun after the page loaded appears through the event stream.
    const t3 = await coord.begin()
    await coord.call(t3.context, 'orders', 'live')
    await coord.call(t3.context, 'payments', 'live')
    expect(await coord.commit(t3.id)).toMatchObject({ outcome: 'committed' })
    const row3 = cpage.locator(`#tx-body tr[data-tx="${t3.id}"]`)
    await expect.poll(() => row3.textContent(), { timeout: 10_000 }).toMatch(/committed.*committed/)
    expect(await row3.textContent()).toMatch(/ms/)
    mkdirSync(ARTIFACTS, { recursive: true })
    await cpage.screenshot({ path: join(ARTIFACTS, 'dashboard.png'), fullPage: true })

    // The participant's page: the prepared branch, resolved with the Commit button.
    const ppage = await openUi(orders.sc.ports.admin)
    const branchRow = ppage.locator(`#branch-body tr[data-tx="${t2.id}"]`)
    await expect.poll(() => branchRow.textContent()).toContain('prepared')
    let confirmed = ''
    ppage.once('dialog', (dialog) => {
      confirmed = dialog.message()
      void dialog.accept()
    })
    await branchRow.getByRole('button', { name: new RegExp(`^Commit branch .* of transaction ${t2.id}$`) }).click()
    const resolution = ppage.locator(`#resolutions li[data-tx="${t2.id}"]`)
    await expect.poll(() => resolution.textContent()).toContain(`Resolved transaction ${t2.id}: committed by dashboard`)
    expect(confirmed).toContain(t2.id)
    // Prepared seconds ago: not in doubt yet, so the button forces it and says so.
    expect(confirmed).toContain('not in doubt')
    expect(await ppage.locator('#status').textContent()).toContain('Resolved transaction')
    await until('orders commit hook', () => orders.app.committed.includes('orders:doubt'))
    // The branch finished: it leaves the list (the event feed reloads it).
    await expect.poll(() => ppage.locator(`#branch-body tr[data-tx="${t2.id}"]`).count()).toBe(0)
    await ppage.screenshot({ path: join(ARTIFACTS, 'dashboard-branches.png'), fullPage: true })
    await cpage.close()
    await ppage.close()
  })

  it('lists a stuck saga compensation with its error, and retries it through its button', async () => {
    // A service whose refunds fail until the test lets them through.
    let refundsDown = true
    const refunds: string[] = []
    const payments = await startServer((req, res) => {
      req.resume()
      if (req.url === '/charge')
        return void res.writeHead(200, { 'txmesh-compensate': 'POST /refund/r-1', 'content-length': '0' }).end()
      refunds.push(String(req.headers['txmesh-op']))
      res.writeHead(refundsDown ? 503 : 200, { 'content-length': '0' }).end()
    })
    servers.push(payments)
    const yaml = sidecarYaml(
      'initiator',
      1,
      [
        `services: {payments: {address: "127.0.0.1:${payments.port}"}}`,
        'routes: [{name: payments, match: {direction: egress, host: payments}, nonTransactionalTarget: proceed}]',
        'steps: {attempts: 2, backoffBaseMs: 20, backoffCapMs: 40}',
      ].join('\n'),
      tempDir(),
    )
    const coord = await coordinator(yaml)
    const page = await openUi(coord.sc.ports.admin)
    const begun = await request(`${coord.admin}/v1/transactions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ mode: 'saga', timeoutMs: 30_000 }),
    })
    const t = (await begun.body.json()) as { id: string; context: string }
    const charge = await rawRequest(coord.sc.ports.egress, {
      method: 'POST',
      path: 'http://payments/charge',
      headers: { 'txmesh-context': t.context, 'content-length': '0' },
    })
    expect(charge.status).toBe(200)
    await request(`${coord.admin}/v1/transactions/${t.id}/abort`, { method: 'POST' }).then((r) => r.body.dump())

    // The stuck step appears live (tx-stuck on the feed), with its attempts and error.
    const row = page.locator(`#stuck-body tr[data-tx="${t.id}"]`)
    await expect.poll(() => row.textContent(), { timeout: 10_000 }).toMatch(/payments2.*503/)
    expect(await page.locator('#status').textContent()).toContain('is stuck')
    expect(await page.locator(`#tx-body tr[data-tx="${t.id}"]`).textContent()).toContain('payments: step stuck')
    expect(refunds).toEqual(['compensate', 'compensate'])

    refundsDown = false
    await row.getByRole('button', { name: `Retry the stuck steps of transaction ${t.id}` }).click()
    await expect.poll(() => page.locator('#status').textContent()).toMatch(/Retrying 1 stuck step|compensated/)
    await expect.poll(() => page.locator(`#stuck-body tr[data-tx="${t.id}"]`).count(), { timeout: 10_000 }).toBe(0)
    expect(await page.locator('#stuck-empty').isVisible()).toBe(true)
    await expect
      .poll(() => page.locator(`#tx-body tr[data-tx="${t.id}"]`).textContent())
      .toContain('payments: step compensated')
    expect(refunds).toHaveLength(3)
    await page.close()
  })

  it('serves server-sent events, replays after Last-Event-ID and bounds the streams', async () => {
    const { coordYaml } = await participants(['orders', 'payments'])
    const coord = await coordinator(coordYaml())
    const port = coord.sc.ports.admin
    const t = await coord.begin()
    await coord.call(t.context, 'orders', 'sse')
    await coord.call(t.context, 'payments', 'sse')
    await coord.commit(t.id)

    const replay = await readEvents(port, { 'last-event-id': '0' }, (s) => s.includes('event: tx-finished'))
    expect(replay.status).toBe(200)
    expect(replay.type).toMatch(/^text\/event-stream/)
    for (const type of ['tx-begin', 'tx-enlist', 'tx-vote', 'tx-outcome', 'tx-ack', 'tx-finished'])
      expect(replay.text).toContain(`event: ${type}\n`)
    const ids = [...replay.text.matchAll(/^id: (\d+)$/gm)].map((m) => Number(m[1]))
    expect(ids[0]).toBe(1)
    const data = [...replay.text.matchAll(/^data: (.*)$/gm)].map((m) => JSON.parse(m[1] as string) as { tx: string })
    expect(data.every((d) => d.tx === t.id)).toBe(true)
    // Resuming after the third event replays only what followed.
    const resumed = await readEvents(port, { 'last-event-id': '3' }, (s) => s.includes('event: tx-finished'))
    expect([...resumed.text.matchAll(/^id: (\d+)$/gm)].map((m) => Number(m[1]))).toEqual(ids.filter((i) => i > 3))
    // Without Last-Event-ID only new events follow.
    const fresh = await readEvents(port, {}, () => false, 300)
    expect(fresh.text).not.toContain('event:')

    // Past the stream limit: 503 with a txmesh error code.
    const open: (() => void)[] = []
    for (let i = 0; i < LIMITS.adminEventStreams; i++) {
      await new Promise<void>((resolve, reject) => {
        const req = httpRequest({ host: '127.0.0.1', port, path: '/v1/events', agent: false }, (res) => {
          open.push(() => res.destroy())
          res.once('data', () => resolve())
        })
        req.on('error', reject)
        req.end()
      })
    }
    const over = await request(`http://127.0.0.1:${port}/v1/events`)
    expect(over.statusCode).toBe(503)
    expect(over.headers['x-txmesh-error']).toBe('TXM_TX_LIMIT')
    await over.body.dump()
    for (const close of open) close()

    const probs = await request(`http://127.0.0.1:${port}/v1/routes/probability`)
    expect(await probs.body.json()).toEqual({ api: 1 })
  })
})
