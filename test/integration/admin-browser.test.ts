// The admin API against the operator's own browser (issue 15, hole 10), on real sidecar
// processes: with the admin port on loopback (or port-forwarded there), a page of another site
// must not begin or drive transactions. A cross-site `text/plain` or form POST is refused (415,
// and its Origin 403), a page whose name was rebound to 127.0.0.1 is refused by its Host (403),
// and loopback clients, the dashboard and configured names keep working. Headless Chromium plays
// the browser: a page served from another loopback port, and a rebound name (host resolver rules).
import type { IncomingMessage, ServerResponse } from 'node:http'
import { launchTestChromium } from '../helpers/browser.js'
import { describe, expect, it } from 'vitest'
import { rawRequest, sidecarYaml, spawnSidecar, startServer, type SidecarProcess } from '../helpers/servers.js'
import { stopAfterTests } from '../helpers/tx-app.js'

const { procs, closers } = stopAfterTests()
const JSON_TYPE = { 'content-type': 'application/json' }

async function sidecar(extra = ''): Promise<SidecarProcess> {
  const sc = await spawnSidecar(sidecarYaml('orders', 1, extra))
  procs.push(sc)
  return sc
}

/** The transactions the sidecar coordinates, asked as a loopback client. */
async function transactions(sc: SidecarProcess): Promise<unknown[]> {
  const r = await rawRequest(sc.ports.admin, { path: '/v1/transactions' })
  expect(r.status).toBe(200)
  return (JSON.parse(r.body) as { transactions: unknown[] }).transactions
}

function begin(sc: SidecarProcess, headers: Record<string, string>, body = '{"timeoutMs":60000}') {
  return rawRequest(sc.ports.admin, {
    method: 'POST',
    path: '/v1/transactions',
    headers: { 'content-length': String(Buffer.byteLength(body)), ...headers },
    body,
  })
}

const refusal = (r: { status: number; headers: Record<string, unknown> }): [number, unknown] => [
  r.status,
  r.headers['x-txmesh-error'],
]

describe('admin API from a browser page', () => {
  it('refuses a body not declared application/json with 415 and begins nothing; JSON (with parameters) begins', async () => {
    const sc = await sidecar()
    for (const type of [
      'text/plain',
      'text/plain;charset=UTF-8',
      'application/x-www-form-urlencoded',
      'multipart/form-data; boundary=x',
      'application/jsonx',
      undefined,
    ]) {
      const r = await begin(sc, type === undefined ? {} : { 'content-type': type })
      expect(refusal(r), String(type)).toEqual([415, 'TXM_UNSUPPORTED_MEDIA_TYPE'])
    }
    // The other bodies the API reads: a resolution and a message.
    const resolve = await rawRequest(sc.ports.admin, {
      method: 'POST',
      path: '/v1/branches/t1/resolve',
      headers: { 'content-type': 'text/plain' },
      body: '{"outcome":"aborted"}',
    })
    expect(refusal(resolve)).toEqual([415, 'TXM_UNSUPPORTED_MEDIA_TYPE'])
    expect(await transactions(sc)).toEqual([])
    const ok = await begin(sc, { 'content-type': 'application/json; charset=utf-8' })
    expect(ok.status).toBe(201)
    const { id } = JSON.parse(ok.body) as { id: string }
    // A POST without a body needs no type; one that declares a type must declare JSON.
    expect(
      refusal(
        await rawRequest(sc.ports.admin, {
          method: 'POST',
          path: `/v1/transactions/${id}/abort`,
          headers: { 'content-type': 'text/plain' },
        }),
      ),
    ).toEqual([415, 'TXM_UNSUPPORTED_MEDIA_TYPE'])
    expect((await rawRequest(sc.ports.admin, { method: 'POST', path: `/v1/transactions/${id}/abort` })).status).toBe(
      200,
    )
  })

  it('refuses a Host that is not loopback with 403 on every endpoint but the probes; loopback names and addresses pass', async () => {
    const sc = await sidecar()
    const port = sc.ports.admin
    for (const host of [
      `evil.example:${port}`,
      'evil.example',
      `localhost.evil.example:${port}`,
      `127.0.0.1.evil.example:${port}`,
      `10.9.8.7:${port}`,
      '[::2]',
      '127.0.0.256',
      'a b',
    ]) {
      for (const path of ['/v1/transactions', '/v1/stats', '/ui', '/metrics', '/v1/events', '/nope']) {
        const r = await rawRequest(port, { path, headers: { host } })
        expect(refusal(r), `${host} ${path}`).toEqual([403, 'TXM_ADMIN_HOST_REFUSED'])
        // Never echoes what was sent.
        if (host.includes('evil')) expect(r.body).not.toContain('evil')
      }
      expect(refusal(await begin(sc, { host, ...JSON_TYPE })), host).toEqual([403, 'TXM_ADMIN_HOST_REFUSED'])
      // The kubelet probes whatever Host it sends.
      expect((await rawRequest(port, { path: '/healthz', headers: { host } })).status).toBe(200)
      expect((await rawRequest(port, { path: '/readyz', headers: { host } })).status).toBe(200)
    }
    expect(await transactions(sc)).toEqual([])
    for (const host of [
      `localhost:${port}`,
      'localhost',
      `LOCALHOST:${port}`,
      `127.0.0.1:${port}`,
      `127.1.2.3:${port}`,
      `[::1]:${port}`,
      '[::1]',
      `[::ffff:127.0.0.1]:${port}`,
    ]) {
      expect((await rawRequest(port, { path: '/v1/transactions', headers: { host } })).status, host).toBe(200)
    }
    expect((await begin(sc, { host: `localhost:${port}`, ...JSON_TYPE })).status).toBe(201)
  })

  it("refuses an Origin other than the Host's own with 403; the same origin passes", async () => {
    const sc = await sidecar()
    const port = sc.ports.admin
    for (const origin of [
      'https://evil.example',
      `http://evil.example:${port}`,
      'null',
      `http://localhost:${port}`,
      `http://127.0.0.1:${port + 1}`,
      `http://127.0.0.1:${port}/`,
      'file://',
    ]) {
      expect(refusal(await begin(sc, { origin, ...JSON_TYPE })), origin).toEqual([403, 'TXM_ADMIN_ORIGIN_REFUSED'])
      expect(refusal(await rawRequest(port, { path: '/v1/transactions', headers: { origin } })), origin).toEqual([
        403,
        'TXM_ADMIN_ORIGIN_REFUSED',
      ])
    }
    expect(await transactions(sc)).toEqual([])
    expect((await begin(sc, { origin: `http://127.0.0.1:${port}`, ...JSON_TYPE })).status).toBe(201)
    expect(
      (await begin(sc, { host: `localhost:${port}`, origin: `http://localhost:${port}`, ...JSON_TYPE })).status,
    ).toBe(201)
    // Default ports: Host without a port is the origin's default one.
    expect((await begin(sc, { host: 'localhost', origin: 'http://localhost', ...JSON_TYPE })).status).toBe(201)
    expect((await begin(sc, { host: 'localhost', origin: 'https://localhost:443', ...JSON_TYPE })).status).toBe(201)
    expect(refusal(await begin(sc, { host: 'localhost', origin: 'http://localhost:8080', ...JSON_TYPE }))).toEqual([
      403,
      'TXM_ADMIN_ORIGIN_REFUSED',
    ])
  })

  it('accepts the names and origins of admin.allowedHosts and admin.allowedOrigins, and still refuses others', async () => {
    const sc = await sidecar(
      'admin: {allowedHosts: [txmesh-admin.internal, "ops.example.com:8443"], allowedOrigins: ["https://ops.example.com:8443", "https://portal.example.com"]}',
    )
    const port = sc.ports.admin
    expect(
      (await rawRequest(port, { path: '/v1/transactions', headers: { host: 'txmesh-admin.internal' } })).status,
    ).toBe(200)
    expect(
      (await rawRequest(port, { path: '/v1/transactions', headers: { host: `TXMESH-ADMIN.internal:${port}` } })).status,
    ).toBe(200)
    expect(
      (await rawRequest(port, { path: '/v1/transactions', headers: { host: 'ops.example.com:8443' } })).status,
    ).toBe(200)
    expect(refusal(await rawRequest(port, { path: '/v1/transactions', headers: { host: 'ops.example.com' } }))).toEqual(
      [403, 'TXM_ADMIN_HOST_REFUSED'],
    )
    expect(refusal(await rawRequest(port, { path: '/v1/transactions', headers: { host: 'other.internal' } }))).toEqual([
      403,
      'TXM_ADMIN_HOST_REFUSED',
    ])
    // A reverse proxy that rewrites Host to loopback and passes the page's Origin on.
    expect((await begin(sc, { origin: 'https://portal.example.com', ...JSON_TYPE })).status).toBe(201)
    expect(
      (await begin(sc, { host: 'ops.example.com:8443', origin: 'https://ops.example.com:8443', ...JSON_TYPE })).status,
    ).toBe(201)
    expect(refusal(await begin(sc, { origin: 'https://evil.example', ...JSON_TYPE }))).toEqual([
      403,
      'TXM_ADMIN_ORIGIN_REFUSED',
    ])
    expect(await transactions(sc)).toHaveLength(2)
    // Malformed entries are config errors with their position.
    await expect(sidecar('admin: {allowedHosts: ["http://x"]}')).rejects.toThrow(/admin\.allowedHosts|allowedHosts/)
    await expect(sidecar('admin: {allowedOrigins: ["ops.example.com"]}')).rejects.toThrow(/allowedOrigins/)
  })

  it('in Chromium: a page of another origin cannot begin a transaction, a rebound name cannot read the API, the dashboard works', async () => {
    const sc = await sidecar()
    const admin = sc.ports.admin
    // The attacker's page: a form POST and a no-cors fetch to the admin port, as any site could.
    const evil = await startServer((req: IncomingMessage, res: ServerResponse) => {
      req.resume()
      res.writeHead(200, { 'content-type': 'text/html' }).end(`<!doctype html><body>
<form id="f" method="POST" action="http://127.0.0.1:${admin}/v1/transactions" enctype="text/plain" target="sink"><input name='{"timeoutMs":60000,"x":"' value='"}'></form>
<iframe name="sink"></iframe>
<script>
  window.sent = Promise.all([
    fetch("http://127.0.0.1:${admin}/v1/transactions", { method: "POST", mode: "no-cors", headers: { "content-type": "text/plain" }, body: '{"timeoutMs":60000}' }).then(() => "sent", (e) => String(e)),
    fetch("http://127.0.0.1:${admin}/v1/transactions", { method: "POST", mode: "no-cors", body: new Blob(['{"timeoutMs":60000}']) }).then(() => "sent", (e) => String(e)),
  ]);
  document.getElementById("f").submit();
</script></body>`)
    })
    closers.push(() => evil.close())
    const browser = await launchTestChromium([
      // evil.example resolves to 127.0.0.1, as a rebinding DNS server would make it do.
      '--host-resolver-rules=MAP evil.example 127.0.0.1',
    ])
    try {
      const page = await browser.newPage()
      const formAnswer = page.waitForResponse(
        (r) =>
          r.url().endsWith('/v1/transactions') &&
          r.request().method() === 'POST' &&
          r.request().resourceType() === 'document',
      )
      await page.goto(`http://127.0.0.1:${evil.port}/`)
      expect(await page.evaluate(() => (globalThis as unknown as { sent: Promise<string[]> }).sent)).toEqual([
        'sent',
        'sent',
      ])
      expect((await formAnswer).status()).toBe(403)
      // Let anything in flight land, then look: nothing was begun.
      await new Promise((r) => setTimeout(r, 300))
      expect(await transactions(sc)).toEqual([])

      // DNS rebinding: the page's own origin is http://evil.example:<admin port>, so its fetches
      // are same-origin and could read the answers, but their Host names evil.example.
      const rebound = await browser.newPage()
      const ui = await rebound.goto(`http://evil.example:${admin}/ui`)
      expect(ui?.status()).toBe(403)
      const read = await rebound.evaluate(async () => {
        const r = await fetch('/v1/transactions', {
          method: 'POST',
          headers: { 'content-type': 'application/json' },
          body: '{"timeoutMs":60000}',
        })
        return [r.status, r.headers.get('x-txmesh-error')]
      })
      expect(read).toEqual([403, 'TXM_ADMIN_HOST_REFUSED'])
      expect(await transactions(sc)).toEqual([])

      // The dashboard itself, on the port-forward address: loads, connects, and its POSTs work.
      const dash = await browser.newPage()
      const errors: string[] = []
      dash.on('pageerror', (e) => errors.push(String(e)))
      const refused: string[] = []
      dash.on('response', (r) => {
        if (r.status() === 403 || r.status() === 415) refused.push(`${r.status()} ${r.url()}`)
      })
      await dash.goto(`http://localhost:${admin}/ui`)
      await dash.getByText('connected', { exact: true }).waitFor({ timeout: 10_000 })
      const begun = await dash.evaluate(async () => {
        const r = await fetch('/v1/transactions', {
          method: 'POST',
          headers: { 'content-type': 'application/json' },
          body: '{"timeoutMs":60000}',
        })
        return r.status
      })
      expect(begun).toBe(201)
      const [tx] = (await transactions(sc)) as { id: string }[]
      await dash.locator(`#tx-body tr[data-tx="${tx!.id}"]`).waitFor({ timeout: 10_000 })
      expect(refused).toEqual([])
      expect(errors).toEqual([])
    } finally {
      await browser.close()
    }
  })
})
