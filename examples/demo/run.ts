// txmesh demo: two services, each with its own sidecar process.
//
//   client -> [web sidecar ingress] -> web app -> [web sidecar egress]
//          -> [payments sidecar ingress] -> payments app
//
// The web app calls `http://payments/charge` through its sidecar, which it uses as HTTP proxy
// (HTTP_PROXY), exactly as an app in a pod with env capture does. Exits 0 when every step
// behaved as expected.
import { spawn, type ChildProcess } from 'node:child_process'
import { mkdtempSync, writeFileSync } from 'node:fs'
import { createServer, type Server } from 'node:http'
import type { AddressInfo } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { createInterface } from 'node:readline'
import { EnvHttpProxyAgent, request } from 'undici'
import { SIDECAR_NODE_FLAGS } from '../../src/runtime.js'

const CLI = join(import.meta.dirname, '../../dist/cli/index.js')
type Ports = { egress: number; ingress: number; control: number; admin: number }

function listen(server: Server): Promise<number> {
  return new Promise((r) => server.listen(0, '127.0.0.1', () => r((server.address() as AddressInfo).port)))
}

async function sidecar(name: string, yaml: string): Promise<{ child: ChildProcess; ports: Ports }> {
  const dir = mkdtempSync(join(tmpdir(), `txmesh-demo-${name}-`))
  writeFileSync(join(dir, 'txmesh.yaml'), yaml)
  const child = spawn(process.execPath, [...SIDECAR_NODE_FLAGS, CLI, 'sidecar', '--config', join(dir, 'txmesh.yaml')], { stdio: ['ignore', 'pipe', 'inherit'] })
  const line = await new Promise<string>((resolve, reject) => {
    createInterface({ input: child.stdout! }).once('line', resolve)
    child.once('exit', (code) => reject(new Error(`${name} sidecar exited with ${code}`)))
  })
  const ports = (JSON.parse(line) as { ports: Ports }).ports
  console.log(`  ${name.padEnd(9)} sidecar pid ${child.pid}: egress ${ports.egress}, ingress ${ports.ingress}, admin ${ports.admin}`)
  return { child, ports }
}

function listeners(): string {
  return 'listeners: {egress: {port: 0}, ingress: {host: 127.0.0.1, port: 0}, control: {host: 127.0.0.1, port: 0}, admin: {port: 0}}'
}

async function main(): Promise<void> {
  console.log('txmesh demo: request path client -> web sidecar -> web app -> web sidecar -> payments sidecar -> payments app\n')
  // payments app: answers with what it received.
  const payments = createServer((req, res) => {
    let body = ''
    req.on('data', (c: Buffer) => (body += c.toString()))
    req.on('end', () => {
      res.setHeader('content-type', 'application/json')
      res.end(JSON.stringify({ charged: JSON.parse(body || '{}') as unknown, host: req.headers.host, forwardedFor: req.headers['x-forwarded-for'] }))
    })
  })
  const paymentsPort = await listen(payments)
  const pay = await sidecar('payments', `service: payments\napp: {port: ${paymentsPort}}\n${listeners()}\nlog: {level: warn}\n`)

  // web app: calls payments through its own sidecar's egress, as its HTTP_PROXY.
  let webProxy: EnvHttpProxyAgent | undefined
  const web = createServer((req, res) => {
    void (async () => {
      const r = await request('http://payments/charge', {
        method: 'POST',
        ...(webProxy ? { dispatcher: webProxy } : {}),
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ order: 42, amount: 1999 }),
      })
      const text = await r.body.text()
      res.writeHead(r.statusCode, { 'content-type': 'application/json' })
      res.end(JSON.stringify({ checkout: 'ok', payments: JSON.parse(text) as unknown, via: req.headers['x-forwarded-for'] }))
    })().catch((err: unknown) => {
      res.writeHead(500).end(String(err))
    })
  })
  const webPort = await listen(web)
  const webSc = await sidecar(
    'web',
    `service: web\napp: {port: ${webPort}}\n${listeners()}\nservices:\n  payments: {address: "127.0.0.1:${pay.ports.ingress}"}\nlog: {level: warn}\n`,
  )
  // What injection does for the app container: HTTP_PROXY points at the sidecar's egress.
  // Node's own http ignores it; undici's EnvHttpProxyAgent (or NODE_USE_ENV_PROXY=1 on Node 24)
  // honours it.
  process.env.HTTP_PROXY = `http://127.0.0.1:${webSc.ports.egress}`
  webProxy = new EnvHttpProxyAgent()

  console.log('\n1. client -> web (through the web sidecar ingress)')
  const r = await request(`http://127.0.0.1:${webSc.ports.ingress}/checkout`, { headers: { host: 'web' } })
  const body = (await r.body.json()) as { payments: { host: string; charged: unknown } }
  console.log(`   status ${r.statusCode}`)
  console.log(`   ${JSON.stringify(body)}`)
  const ok = r.statusCode === 200 && body.payments.host === 'payments'
  console.log(`   payments app saw Host "${body.payments.host}" and the order: ${JSON.stringify(body.payments.charged)}`)

  console.log('\n2. a call to a service that is down gets a clear error from the sidecar')
  const down = await request(`http://127.0.0.1:1/nothing-here`, { dispatcher: webProxy, method: 'POST', body: 'x' })
  const downBody = await down.body.text()
  console.log(`   status ${down.statusCode}, x-txmesh-error: ${String(down.headers['x-txmesh-error'])}`)
  console.log(`   ${downBody}`)

  console.log('\n3. SIGTERM: both sidecars drain and exit 0')
  const exits = [webSc, pay].map((s) => new Promise<number | null>((r) => s.child.once('exit', (code) => r(code))))
  webSc.child.kill('SIGTERM')
  pay.child.kill('SIGTERM')
  const codes = await Promise.all(exits)
  console.log(`   exit codes: ${codes.join(', ')}`)
  await webProxy.close()
  web.close()
  payments.close()
  const passed = ok && down.statusCode === 502 && codes.every((c) => c === 0)
  console.log(passed ? '\ndemo passed' : '\ndemo FAILED')
  process.exitCode = passed ? 0 : 1
}

main().catch((err: unknown) => {
  console.error(err)
  process.exitCode = 1
})
