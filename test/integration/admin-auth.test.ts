// Admin API authentication on real sidecar processes: an admin listener off loopback needs a
// token; with one, everything but the probes needs `Authorization: Bearer`, the dashboard page
// and its event stream take ?access_token= (headless Chromium), the CLI takes --token /
// --token-file / TXMESH_ADMIN_TOKEN, and the txmesh/pg helper's recovery sends the token.
import { execFile } from 'node:child_process'
import { mkdtempSync, writeFileSync } from 'node:fs'
import { request as httpRequest } from 'node:http'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type { Pool } from 'pg'
import { launchTestChromium } from '../helpers/browser.js'
import { request } from 'undici'
import { describe, expect, it } from 'vitest'
import { createTxmeshPg } from '../../src/helpers/pg/index.js'
import { until } from '../../harness/ports.js'
import { CLI } from '../../harness/sidecar.js'
import { rawRequest, sidecarYaml, spawnSidecar } from '../helpers/servers.js'
import { startTxApp, stopAfterTests } from '../helpers/tx-app.js'

const TOKEN = 'admin-token-for-tests-0123456789'
const { procs, apps } = stopAfterTests()

/** sidecarYaml with the admin listener on every interface. */
function exposedYaml(service: string, appPort: number, extra = ''): string {
  const yaml = sidecarYaml(service, appPort, extra)
  return yaml.replace('admin: {host: 127.0.0.1, port: 0}', 'admin: {host: 0.0.0.0, port: 0}')
}

function cli(
  args: string[],
  env: Record<string, string> = {},
): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const e = { ...process.env, ...env }
    if (env.TXMESH_ADMIN_TOKEN === undefined) delete e.TXMESH_ADMIN_TOKEN
    execFile(process.execPath, [CLI, ...args], { env: e }, (err, stdout, stderr) =>
      resolve({ code: err === null ? 0 : Number(err.code ?? 1), stdout, stderr }),
    )
  })
}

async function get(
  port: number,
  path: string,
  headers: Record<string, string> = {},
): Promise<{ status: number; code: unknown; type: unknown; body: string; headers: Record<string, unknown> }> {
  const r = await request(`http://127.0.0.1:${port}${path}`, { headers })
  const body = await r.body.text()
  return {
    status: r.statusCode,
    code: r.headers['x-txmesh-error'],
    type: r.headers['content-type'],
    body,
    headers: r.headers,
  }
}

/** The head of an SSE response (then the stream is closed). */
function eventStreamHead(
  port: number,
  path: string,
): Promise<{ status: number; type: string; code: string | undefined }> {
  return new Promise((resolve, reject) => {
    const req = httpRequest({ host: '127.0.0.1', port, path, agent: false }, (res) => {
      resolve({
        status: res.statusCode ?? 0,
        type: String(res.headers['content-type']),
        code: res.headers['x-txmesh-error'] as string | undefined,
      })
      res.destroy()
    })
    req.on('error', reject)
    req.end()
  })
}

describe('admin API authentication', () => {
  it('refuses to start an admin listener off loopback without a token', async () => {
    await expect(spawnSidecar(exposedYaml('orders', 1), [], { TXMESH_ADMIN_TOKEN: '' })).rejects.toThrow(
      /listeners\.admin\.host: 0\.0\.0\.0 is not a loopback address, so the admin API needs a token/,
    )
    await expect(spawnSidecar(exposedYaml('orders', 1), [], { TXMESH_ADMIN_TOKEN: 'too-short' })).rejects.toThrow(
      /TXMESH_ADMIN_TOKEN: the token is shorter than 16 bytes/,
    )
  })

  it('needs the bearer token on every endpoint but the probes; the page and event stream take ?access_token=', async () => {
    const orders = await startTxApp('orders')
    apps.push(orders)
    const ord = await spawnSidecar(sidecarYaml('orders', orders.port), [], { TXMESH_ADMIN_TOKEN: TOKEN })
    procs.push(ord)
    const sc = await spawnSidecar(
      exposedYaml('initiator', 1, `services:\n  orders: {address: "127.0.0.1:${ord.ports.ingress}"}\n`),
      [],
      { TXMESH_ADMIN_TOKEN: TOKEN },
    )
    procs.push(sc)
    const port = sc.ports.admin
    const bearer = { authorization: `Bearer ${TOKEN}` }

    expect((await get(port, '/healthz')).status).toBe(200)
    expect((await get(port, '/readyz')).status).toBe(200)
    const refusals = [
      await get(port, '/v1/transactions'),
      await get(port, '/v1/transactions', { authorization: `Bearer ${TOKEN}x` }),
      await get(port, '/v1/transactions', { authorization: `Bearer ${TOKEN.slice(0, -1)}` }),
      await get(port, '/v1/transactions', { authorization: `Basic ${Buffer.from(`x:${TOKEN}`).toString('base64')}` }),
      await get(port, `/v1/transactions?access_token=${TOKEN}`),
      await get(port, '/metrics'),
      await get(port, '/v1/stats'),
      await get(port, '/v1/branches'),
      await get(port, '/ui'),
      await get(port, '/ui?access_token=wrong-token-0123456789'),
      await get(port, '/v1/ui-config'),
      await get(port, '/no/such/path'),
    ]
    for (const r of refusals) {
      expect(r.status).toBe(401)
      expect(r.code).toBe('TXM_ADMIN_UNAUTHORIZED')
      expect(r.body).not.toContain(TOKEN)
    }
    // A POST without the token does nothing.
    const post = await request(`http://127.0.0.1:${port}/v1/transactions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: '{}',
    })
    expect(post.statusCode).toBe(401)
    await post.body.dump()
    expect(JSON.parse((await get(port, '/v1/transactions', bearer)).body)).toEqual({ transactions: [] })

    // With the token: the API works end to end.
    const begun = await request(`http://127.0.0.1:${port}/v1/transactions`, {
      method: 'POST',
      headers: { ...bearer, 'content-type': 'application/json' },
      body: '{"timeoutMs":10000}',
    })
    expect(begun.statusCode).toBe(201)
    const tx = (await begun.body.json()) as { id: string; context: string }
    const call = await rawRequest(sc.ports.egress, {
      method: 'POST',
      path: 'http://orders/write/a1',
      headers: { 'txmesh-context': tx.context },
    })
    expect(call.status).toBe(200)
    const done = await request(`http://127.0.0.1:${port}/v1/transactions/${tx.id}/commit?wait=acks`, {
      method: 'POST',
      headers: bearer,
    })
    expect(((await done.body.json()) as { outcome: string }).outcome).toBe('committed')
    expect((await get(port, '/metrics', bearer)).body).toContain('txmesh_transactions_total')

    // The dashboard: page and event stream by query parameter; only there.
    const page = await get(port, `/ui?access_token=${encodeURIComponent(TOKEN)}`)
    expect(page.status).toBe(200)
    expect(page.type).toMatch(/^text\/html/)
    expect(page.headers['referrer-policy']).toBe('no-referrer')
    expect(await eventStreamHead(port, '/v1/events')).toMatchObject({ status: 401, code: 'TXM_ADMIN_UNAUTHORIZED' })
    expect(
      await eventStreamHead(port, `/v1/events?access_token=${encodeURIComponent(TOKEN)}&lastEventId=0`),
    ).toMatchObject({ status: 200, type: 'text/event-stream; charset=utf-8' })

    // The CLI: refused without a token, working with --token, TXMESH_ADMIN_TOKEN or --token-file.
    const admin = `http://127.0.0.1:${port}`
    const without = await cli(['tx', 'list', '--admin', admin])
    expect(without.code).toBe(1)
    expect(without.stderr).toContain('TXM_ADMIN_UNAUTHORIZED')
    const tokenFile = join(mkdtempSync(join(tmpdir(), 'txmesh-token-')), 'token')
    writeFileSync(tokenFile, `${TOKEN}\n`)
    for (const [args, env] of [
      [['--token', TOKEN], {}],
      [[], { TXMESH_ADMIN_TOKEN: TOKEN }],
      [['--token-file', tokenFile], {}],
    ] as [string[], Record<string, string>][]) {
      const r = await cli(['tx', 'show', tx.id, '--admin', admin, ...args], env)
      expect(r.stderr).toBe('')
      expect(r.code).toBe(0)
      expect(r.stdout).toContain('committed')
    }

    // txmesh/pg recovery asks the participant's sidecar (orders) for the outcome of a prepared
    // row, with TXMESH_ADMIN_TOKEN (or adminToken) as its bearer token.
    const branch = (JSON.parse(call.body) as { branch: string }).branch
    const gid = `txm:orders:${tx.id}:${branch}`
    const finished: string[] = []
    const client = {
      query: async (sql: string) => {
        if (sql.startsWith('SELECT gid FROM pg_prepared_xacts')) return { rows: finished.length === 0 ? [{ gid }] : [] }
        finished.push(sql)
        return { rows: [] }
      },
      on: () => client,
      off: () => client,
      removeListener: () => client,
      release: () => undefined,
    }
    const pool = { connect: async () => client } as unknown as Pool
    const sidecarAdmin = `http://127.0.0.1:${ord.ports.admin}`
    const saved = process.env.TXMESH_ADMIN_TOKEN
    try {
      delete process.env.TXMESH_ADMIN_TOKEN
      const events: string[] = []
      const noToken = await createTxmeshPg({
        pool,
        service: 'orders',
        sidecarAdmin,
        onEvent: (e) => events.push(`${e.event} ${'message' in e ? String(e.message) : ''}`),
      }).recover()
      expect(noToken).toEqual({ committed: 0, aborted: 0, inDoubt: 1 })
      expect(events.join('\n')).toContain('401')
      expect(events.join('\n')).not.toContain(TOKEN)
      expect(finished).toEqual([])
      process.env.TXMESH_ADMIN_TOKEN = TOKEN
      expect(await createTxmeshPg({ pool, service: 'orders', sidecarAdmin }).recover()).toEqual({
        committed: 1,
        aborted: 0,
        inDoubt: 0,
      })
      expect(finished).toEqual([`COMMIT PREPARED '${gid}'`])
    } finally {
      if (saved === undefined) delete process.env.TXMESH_ADMIN_TOKEN
      else process.env.TXMESH_ADMIN_TOKEN = saved
    }
  })

  it('re-reads admin.tokenFile when it changes: the new token works and the old one is refused; a bad file keeps the current token', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'txmesh-token-'))
    const file = join(dir, 'token')
    writeFileSync(file, `${TOKEN}\n`)
    const sc = await spawnSidecar(
      exposedYaml('orders', 1, `admin: {tokenFile: ${JSON.stringify(file)}}`).replace(
        'log: {level: silent}',
        'log: {level: info}',
      ),
    )
    procs.push(sc)
    const status = async (token: string): Promise<number> =>
      (await get(sc.ports.admin, '/v1/transactions', { authorization: `Bearer ${token}` })).status
    expect(await status(TOKEN)).toBe(200)
    const next = 'rotated-admin-token-0123456789abcdef'
    writeFileSync(file, next)
    await until('the new token is taken', async () => (await status(next)) === 200, 10_000, 100)
    expect((await get(sc.ports.admin, '/v1/transactions', { authorization: `Bearer ${TOKEN}` })).code).toBe(
      'TXM_ADMIN_UNAUTHORIZED',
    )
    // Too short: refused with a warning, the current token stays.
    writeFileSync(file, 'short')
    await until('the bad file was seen', () => sc.stderr().includes('admin_token_file_invalid'), 10_000, 100)
    expect(await status(next)).toBe(200)
    expect(await status('short')).toBe(401)
    expect(sc.stderr()).not.toContain(next)
  })

  it('serves the dashboard with a token: its API calls carry the bearer token and its event stream the query parameter', async () => {
    const orders = await startTxApp('orders')
    apps.push(orders)
    const ord = await spawnSidecar(sidecarYaml('orders', orders.port))
    procs.push(ord)
    const sc = await spawnSidecar(
      sidecarYaml('initiator', 1, `services:\n  orders: {address: "127.0.0.1:${ord.ports.ingress}"}\n`),
      [],
      { TXMESH_ADMIN_TOKEN: TOKEN },
    )
    procs.push(sc)
    const admin = `http://127.0.0.1:${sc.ports.admin}`
    const bearer = { authorization: `Bearer ${TOKEN}` }
    const commitOne = async (value: string): Promise<string> => {
      const tx = (await (
        await request(`${admin}/v1/transactions`, {
          method: 'POST',
          headers: { ...bearer, 'content-type': 'application/json' },
          body: '{"timeoutMs":10000}',
        })
      ).body.json()) as { id: string; context: string }
      expect(
        (
          await rawRequest(sc.ports.egress, {
            method: 'POST',
            path: `http://orders/write/${value}`,
            headers: { 'txmesh-context': tx.context },
          })
        ).status,
      ).toBe(200)
      await (
        await request(`${admin}/v1/transactions/${tx.id}/commit?wait=acks`, { method: 'POST', headers: bearer })
      ).body.dump()
      return tx.id
    }
    const before = await commitOne('d1')

    const browser = await launchTestChromium()
    try {
      const page = await browser.newPage()
      const errors: string[] = []
      page.on('pageerror', (e) => errors.push(String(e)))
      const unauthorized: string[] = []
      page.on('response', (r) => {
        if (r.status() === 401) unauthorized.push(r.url())
      })
      await page.goto(`${admin}/ui?access_token=${encodeURIComponent(TOKEN)}`)
      await page.getByText('connected', { exact: true }).waitFor({ timeout: 10_000 })
      // Loaded over the API with the bearer token...
      await expect.poll(() => page.locator(`#tx-body tr[data-tx="${before}"]`).textContent()).toContain('committed')
      await expect.poll(() => page.locator('#route-body').textContent()).toContain('api')
      // ...and live over the event stream.
      const live = await commitOne('d2')
      await expect
        .poll(() => page.locator(`#tx-body tr[data-tx="${live}"]`).textContent(), { timeout: 10_000 })
        .toMatch(/committed.*committed/)
      expect(unauthorized).toEqual([])
      expect(errors).toEqual([])
      // Without the token the page is not served at all.
      const bare = await browser.newPage()
      const res = await bare.goto(`${admin}/ui`)
      expect(res?.status()).toBe(401)
    } finally {
      await browser.close()
    }
  })
})
