// Secrets never leave the sidecar: two sidecar processes at log level debug, with mesh keys from
// a key file, an admin token and TLS with mutual authentication, export traces to a real
// OTLP/HTTP receiver while the test drives commits, an abort, forged contexts, bad control auth,
// a replay, bad admin tokens (and the right one in the dashboard's query string), a bad key file
// reload and plain HTTP on a TLS port. Then no secret (nor its hex or base64 form) may appear
// in stdout, stderr, exported spans, /metrics or any response (bodies and headers).
import { readFileSync, renameSync, writeFileSync } from 'node:fs'
import { request as httpRequest } from 'node:http'
import { join } from 'node:path'
import { Agent, request } from 'undici'
import { afterAll, describe, expect, it } from 'vitest'
import { signContext, signControl } from '../../src/tx/protocol.js'
import { makePki, pemBodyLines } from '../helpers/certs.js'
import { tempDir } from '../../harness/temp.js'
import { until } from '../../harness/ports.js'
import { rawRequest, sidecarYaml, spawnSidecar, startServer, type SidecarProcess } from '../helpers/servers.js'
import { startTxApp, type TxApp } from '../helpers/tx-app.js'

const KEY_NEW = 'mesh-key-new-S3cr3t-0123456789'
const KEY_OLD = 'mesh-key-old-S3cr3t-9876543210'
const TOKEN = 'admin-token-S3cr3t-0123456789abcdef'
const procs: SidecarProcess[] = []
const apps: TxApp[] = []
afterAll(async () => {
  for (const p of procs) if (p.child.exitCode === null) p.child.kill('SIGKILL')
  await Promise.all(apps.map((a) => a.close()))
})

/** Everything a client saw: status line, headers and body. */
const seen: string[] = []
function remember(status: number, headers: Record<string, unknown>, body: string): void {
  seen.push(`${status}\n${JSON.stringify(headers)}\n${body}`)
}

describe('secrets', () => {
  it('never appear in logs, spans, metrics, responses or error bodies', async () => {
    // --- an OTLP/HTTP receiver keeping every export as text ---
    const exported: string[] = []
    const receiver = await startServer((req, res) => {
      const chunks: Buffer[] = []
      req.on('data', (c: Buffer) => chunks.push(c))
      req.on('end', () => {
        exported.push(Buffer.concat(chunks).toString())
        res.writeHead(200, { 'content-type': 'application/json' }).end('{}')
      })
    })

    // --- PKI, key files, config ---
    const pki = makePki()
    const leaf = pki.issue('sidecar', '5e01')
    const tlsKeyPem = readFileSync(leaf.keyFile, 'utf8')
    const caKeyPem = readFileSync(join(pki.dir, 'ca.key'), 'utf8')
    const keyFiles: Record<string, string> = {}
    const writeKeys = (name: string, content: string): void => {
      const f = keyFiles[name] as string
      writeFileSync(`${f}.tmp`, content)
      renameSync(`${f}.tmp`, f)
    }
    const env = {
      TXMESH_MESH_KEY: '',
      TXMESH_ADMIN_TOKEN: TOKEN,
      TXMESH_LOG_LEVEL: 'debug',
      OTEL_EXPORTER_OTLP_ENDPOINT: `http://127.0.0.1:${receiver.port}`,
      OTEL_BSP_SCHEDULE_DELAY: '200',
    }
    const extra = (name: string, more = ''): string => {
      keyFiles[name] = join(tempDir('txmesh-key-'), 'mesh-key')
      writeKeys(name, `${KEY_NEW},${KEY_OLD}\n`)
      return [
        `mesh: {keyFile: ${JSON.stringify(keyFiles[name])}}`,
        `tls: {certFile: ${JSON.stringify(leaf.certFile)}, keyFile: ${JSON.stringify(leaf.keyFile)}, caFile: ${JSON.stringify(pki.caFile)}, requireClientCert: true}`,
        more,
      ].join('\n')
    }
    // Everything the sidecars print on stdout after their start-up line.
    const stdout: string[] = []
    const orders = await startTxApp('orders')
    apps.push(orders)
    const ord = await spawnSidecar(sidecarYaml('orders', orders.port, extra('orders')), [], env)
    procs.push(ord)
    ord.child.stdout.on('data', (c: Buffer) => stdout.push(c.toString()))
    orders.egress = ord.ports.egress
    const coord = await spawnSidecar(
      sidecarYaml(
        'initiator',
        1,
        extra('initiator', `services:\n  orders: {address: "127.0.0.1:${ord.ports.ingress}"}\n`),
      ),
      [],
      env,
    )
    procs.push(coord)
    coord.child.stdout.on('data', (c: Buffer) => stdout.push(c.toString()))
    const admin = `http://127.0.0.1:${coord.ports.admin}`
    const bearer = { authorization: `Bearer ${TOKEN}` }
    const mtls = new Agent({
      connect: { ca: readFileSync(pki.caFile), cert: readFileSync(leaf.certFile), key: readFileSync(leaf.keyFile) },
    })

    const call = async (
      url: string,
      opts: { method?: 'GET' | 'POST'; headers?: Record<string, string>; body?: string; dispatcher?: Agent } = {},
    ): Promise<{ status: number; code: unknown; body: string }> => {
      const r = await request(url, {
        method: opts.method ?? 'GET',
        ...(opts.headers ? { headers: opts.headers } : {}),
        ...(opts.body !== undefined ? { body: opts.body } : {}),
        ...(opts.dispatcher ? { dispatcher: opts.dispatcher } : {}),
      })
      const body = await r.body.text()
      remember(r.statusCode, r.headers, body)
      return { status: r.statusCode, code: r.headers['x-txmesh-error'], body }
    }
    const egress = async (path: string, headers: Record<string, string>): Promise<{ status: number; body: string }> => {
      const r = await rawRequest(coord.ports.egress, { method: 'POST', path, headers })
      remember(r.status, r.headers, r.body)
      return r
    }
    const run = async (value: string, end: 'commit' | 'abort'): Promise<string> => {
      const begun = await call(`${admin}/v1/transactions`, {
        method: 'POST',
        headers: { ...bearer, 'content-type': 'application/json' },
        body: '{"timeoutMs":10000}',
      })
      expect(begun.status).toBe(201)
      const tx = JSON.parse(begun.body) as { id: string; context: string }
      // The app's own query string (here with a token of its own) stays out of spans.
      expect(
        (await egress(`http://orders/write/${value}?access_token=${TOKEN}`, { 'txmesh-context': tx.context })).status,
      ).toBe(200)
      const done = await call(`${admin}/v1/transactions/${tx.id}/${end}?wait=acks`, { method: 'POST', headers: bearer })
      expect(JSON.parse(done.body).outcome).toBe(end === 'commit' ? 'committed' : 'aborted')
      return tx.id
    }

    // --- commits and an abort over mutual TLS ---
    const t1 = await run('s1', 'commit')
    await run('s2', 'abort')
    expect(orders.committed).toEqual(['orders:s1'])

    // --- forged and junk contexts, some carrying the secrets themselves ---
    const good = {
      id: 'forged',
      mode: '2pc' as const,
      coordinator: `127.0.0.1:${coord.ports.control}`,
      deadline: Date.now() + 60_000,
      parent: undefined,
    }
    for (const context of [
      signContext(Buffer.from('not-the-mesh-key-0123456789'), good),
      KEY_NEW,
      `v1.${Buffer.from(KEY_OLD).toString('base64url')}.${TOKEN}`,
    ]) {
      const viaIngress = await call(`https://127.0.0.1:${ord.ports.ingress}/write/forged`, {
        headers: { 'txmesh-context': context },
        dispatcher: mtls,
      })
      expect(viaIngress.status).toBeGreaterThanOrEqual(400)
      expect((await egress('http://orders/write/forged', { 'txmesh-context': context })).status).toBeGreaterThanOrEqual(
        400,
      )
    }
    expect(orders.committed).toEqual(['orders:s1'])

    // --- bad control auth and a replay ---
    const controlUrl = (path: string): string => `https://127.0.0.1:${ord.ports.control}${path}`
    const path = `/v1/tx/${t1}/outcome`
    for (const auth of [
      undefined,
      KEY_NEW,
      `${Date.now()}.${TOKEN}`,
      signControl(Buffer.from('not-the-mesh-key-0123456789'), Date.now(), 'GET', path, ''),
      signControl(Buffer.from(KEY_NEW), Date.now() - 3_600_000, 'GET', path, ''),
    ]) {
      const r = await call(controlUrl(path), {
        headers: auth === undefined ? {} : { 'txmesh-auth': auth },
        dispatcher: mtls,
      })
      expect(r.status).toBe(401)
    }
    const signed = signControl(Buffer.from(KEY_OLD), Date.now(), 'GET', path, '')
    expect((await call(controlUrl(path), { headers: { 'txmesh-auth': signed }, dispatcher: mtls })).status).toBe(200)
    expect((await call(controlUrl(path), { headers: { 'txmesh-auth': signed }, dispatcher: mtls })).code).toBe(
      'TXM_CONTROL_REPLAY',
    )
    // Plain HTTP on a TLS port: a handshake failure, logged at debug.
    await expect(rawRequest(ord.ports.control, { path })).rejects.toThrow()

    // --- bad admin tokens, and the right one where it travels in a URL ---
    for (const headers of [
      {},
      { authorization: 'Bearer wrong-token-0123456789' },
      { authorization: `Bearer ${KEY_NEW}` },
      { authorization: `Bearer ${TOKEN}-and-more` },
      { authorization: TOKEN },
    ]) {
      expect((await call(`${admin}/v1/transactions`, { headers })).code).toBe('TXM_ADMIN_UNAUTHORIZED')
    }
    expect((await call(`${admin}/v1/branches?access_token=${TOKEN}`)).code).toBe('TXM_ADMIN_UNAUTHORIZED')
    expect((await call(`${admin}/ui?access_token=${KEY_NEW}`)).code).toBe('TXM_ADMIN_UNAUTHORIZED')
    const ui = await call(`${admin}/ui?access_token=${TOKEN}`)
    expect(ui.status).toBe(200)
    expect(ui.body).not.toContain(TOKEN)
    await new Promise<void>((resolve, reject) => {
      const req = httpRequest(
        {
          host: '127.0.0.1',
          port: coord.ports.admin,
          path: `/v1/events?access_token=${TOKEN}&lastEventId=0`,
          agent: false,
        },
        (res) => {
          let text = ''
          res.on('data', (c: Buffer) => {
            text += c.toString()
            if (text.includes('tx-finished')) {
              remember(res.statusCode ?? 0, res.headers, text)
              res.destroy()
              resolve()
            }
          })
        },
      )
      req.on('error', reject)
      req.end()
    })
    for (const p of [
      '/v1/transactions',
      '/v1/branches',
      '/v1/stats',
      `/v1/transactions/${t1}`,
      '/v1/ui-config',
      '/v1/routes/probability',
      '/no/such',
    ])
      await call(`${admin}${p}`, { headers: bearer })

    // --- a bad key file reload (empty, then a short key): kept keys, one warning each ---
    writeKeys('orders', '')
    await until('the empty key file warning', () => ord.stderr().includes('holds no key'))
    writeKeys('orders', `${KEY_NEW.slice(0, 10)},${KEY_OLD}`)
    await until('the short key warning', () => ord.stderr().includes('shorter than 16 bytes'))
    writeKeys('orders', `${KEY_NEW}\n`)
    await until('the key file reload', () => ord.stderr().includes('"event":"mesh_keys_reloaded"'))
    await run('s3', 'commit')

    // --- metrics of both ---
    const metrics = [
      (await call(`${admin}/metrics`, { headers: bearer })).body,
      (await call(`http://127.0.0.1:${ord.ports.admin}/metrics`, { headers: bearer })).body,
    ]
    expect(metrics[0]).toContain('txmesh_transactions_total')

    // --- drain: spans flushed on SIGTERM ---
    for (const p of [coord, ord]) p.child.kill('SIGTERM')
    expect((await Promise.all([coord, ord].map((p) => p.exited))).map((e) => e.code)).toEqual([0, 0])
    await mtls.close()
    await receiver.close()
    // The test saw what it meant to: debug logs, spans of the transactions, the warnings.
    const stderr = coord.stderr() + ord.stderr()
    expect(stderr).toContain('"level":"debug"')
    expect(stderr).toContain('"event":"tls_client_error"')
    expect(stderr.split('\n').filter((l) => l.includes('"event":"mesh_key_file_invalid"'))).toHaveLength(2)
    const spans = exported.join('\n')
    expect(spans).toContain('txmesh.transaction')
    expect(spans).toContain(t1)
    expect(seen.length).toBeGreaterThan(40)

    // PEM lines of 16+ characters (a short last line like "Ag==" could match anything by chance).
    const pemLines = [...pemBodyLines(tlsKeyPem), ...pemBodyLines(caKeyPem)].filter((l) => l.length >= 16)
    expect(pemLines.length).toBeGreaterThanOrEqual(4)
    const secrets = [KEY_NEW, KEY_OLD, TOKEN, ...pemLines]
    const forms = secrets.flatMap((s) => [
      s,
      Buffer.from(s).toString('hex'),
      Buffer.from(s).toString('base64'),
      encodeURIComponent(s),
    ])
    const places: Record<string, string> = {
      stderr,
      stdout: stdout.join(''),
      spans,
      metrics: metrics.join('\n'),
      responses: seen.join('\n'),
    }
    for (const [where, text] of Object.entries(places)) {
      for (const s of forms) expect(text.includes(s), `a secret (${s.slice(0, 6)}…) appears in ${where}`).toBe(false)
    }
  }, 60_000)
})
