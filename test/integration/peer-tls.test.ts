// Peer TLS (config `tls`): sidecar processes whose ingress and control listeners serve HTTPS and
// whose calls to peers (egress to services, control calls, saga compensations) use HTTPS with
// the mesh CA; mutual TLS with requireClientCert; certificate files reloaded on change. The PKI
// is made with openssl for each run.
import { copyFileSync, readFileSync } from 'node:fs'
import type { IncomingMessage, ServerResponse } from 'node:http'
import { join } from 'node:path'
import { createServer as createHttpsServer } from 'node:https'
import type { AddressInfo } from 'node:net'
import { connect as tlsConnect, type TLSSocket } from 'node:tls'
import { Agent, request } from 'undici'
import { WebSocket, WebSocketServer } from 'ws'
import { beforeAll, describe, expect, it } from 'vitest'
import { signControl } from '../../src/tx/protocol.js'
import { makePki, replaceFile, type Leaf, type TestPki } from '../helpers/certs.js'
import { tempDir } from '../../harness/temp.js'
import { until } from '../../harness/ports.js'
import {
  MESH_KEY,
  rawRequest,
  sidecarYaml,
  spawnSidecar,
  startServer,
  type SidecarProcess,
} from '../helpers/servers.js'
import { startTxApp, stopAfterTests } from '../helpers/tx-app.js'

const { procs, apps, closers } = stopAfterTests()

let pki: TestPki
let leaf1: Leaf
let leaf2: Leaf
beforeAll(() => {
  pki = makePki()
  leaf1 = pki.issue('sidecar-1', '7a01')
  leaf2 = pki.issue('sidecar-2', '7a02')
})

/** A copy of leaf1's files for one sidecar (so rotating one sidecar's files leaves the others). */
function ownFiles(name: string): { certFile: string; keyFile: string } {
  const dir = tempDir(`txmesh-tls-${name}-`)
  const f = { certFile: join(dir, 'tls.crt'), keyFile: join(dir, 'tls.key') }
  copyFileSync(leaf1.certFile, f.certFile)
  copyFileSync(leaf1.keyFile, f.keyFile)
  return f
}

function tlsYaml(f: { certFile: string; keyFile: string }, requireClientCert = true): string {
  return `tls: {certFile: ${JSON.stringify(f.certFile)}, keyFile: ${JSON.stringify(f.keyFile)}, caFile: ${JSON.stringify(pki.caFile)}, requireClientCert: ${requireClientCert}}`
}

/** An undici agent that trusts the test CA, with or without a client certificate. */
function httpsAgent(withCert: boolean): Agent {
  const agent = new Agent({
    connect: {
      ca: readFileSync(pki.caFile),
      ...(withCert ? { cert: readFileSync(leaf1.certFile), key: readFileSync(leaf1.keyFile) } : {}),
    },
  })
  closers.push(() => agent.close())
  return agent
}

/** Serial of the certificate a new TLS connection to `port` is served. */
function servedSerial(port: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = tlsConnect(
      {
        host: '127.0.0.1',
        port,
        ca: readFileSync(pki.caFile),
        cert: readFileSync(leaf1.certFile),
        key: readFileSync(leaf1.keyFile),
      },
      () => {
        const serial = socket.getPeerCertificate().serialNumber
        socket.end()
        resolve(serial)
      },
    )
    socket.once('error', reject)
  })
}

async function begin(coord: SidecarProcess, mode = '2pc'): Promise<{ id: string; context: string }> {
  const r = await request(`http://127.0.0.1:${coord.ports.admin}/v1/transactions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ mode, timeoutMs: 10_000 }),
  })
  expect(r.statusCode).toBe(201)
  return (await r.body.json()) as { id: string; context: string }
}

async function commit(coord: SidecarProcess, id: string, op = 'commit'): Promise<Record<string, unknown>> {
  const r = await request(`http://127.0.0.1:${coord.ports.admin}/v1/transactions/${id}/${op}?wait=acks`, {
    method: 'POST',
  })
  return (await r.body.json()) as Record<string, unknown>
}

describe('peer TLS', () => {
  it('commits a transaction across sidecars over mutual TLS, and refuses plain HTTP and clients without a certificate', async () => {
    const inventory = await startTxApp('inventory')
    const orders = await startTxApp('orders')
    apps.push(inventory, orders)
    const inv = await spawnSidecar(sidecarYaml('inventory', inventory.port, tlsYaml(ownFiles('inventory'))))
    procs.push(inv)
    inventory.egress = inv.ports.egress
    const ord = await spawnSidecar(
      sidecarYaml(
        'orders',
        orders.port,
        `services:\n  inventory: {address: "127.0.0.1:${inv.ports.ingress}"}\n${tlsYaml(ownFiles('orders'))}`,
      ),
    )
    procs.push(ord)
    orders.egress = ord.ports.egress
    const services = `services:\n  orders: {address: "127.0.0.1:${ord.ports.ingress}"}\n  inventory: {address: "127.0.0.1:${inv.ports.ingress}"}\n`
    const coord = await spawnSidecar(sidecarYaml('initiator', 1, `${services}${tlsYaml(ownFiles('initiator'))}`))
    procs.push(coord)

    // Egress over HTTPS to orders, which calls inventory over HTTPS; prepare and commit are
    // control calls over HTTPS with client certificates.
    const tx = await begin(coord)
    const call = await rawRequest(coord.ports.egress, {
      method: 'POST',
      path: 'http://orders/write/t1?then=inventory',
      headers: { 'txmesh-context': tx.context },
    })
    expect(call.status, call.body).toBe(200)
    const result = await commit(coord, tx.id)
    expect(result.outcome).toBe('committed')
    expect(
      (result.participants as { service: string; acknowledged: boolean }[])
        .map((p) => `${p.service}:${p.acknowledged}`)
        .sort(),
    ).toEqual(['inventory:true', 'orders:true'])
    expect(orders.committed).toEqual(['orders:t1'])
    expect(inventory.committed).toEqual(['inventory:t1'])

    // Plain HTTP to the TLS listeners gets no HTTP answer at all.
    await expect(
      rawRequest(ord.ports.control, { method: 'POST', path: `/v1/tx/${tx.id}/commit`, body: '{}' }),
    ).rejects.toThrow()
    await expect(rawRequest(ord.ports.ingress, { path: '/write/plain', headers: { host: 'orders' } })).rejects.toThrow()
    expect(orders.committed).toEqual(['orders:t1'])

    // Mutual TLS: a client without a certificate from the CA is refused during the handshake...
    const path = `/v1/tx/${tx.id}/outcome`
    const signed = { 'txmesh-auth': signControl(Buffer.from(MESH_KEY), Date.now(), 'GET', path, '') }
    await expect(
      request(`https://127.0.0.1:${ord.ports.control}${path}`, { dispatcher: httpsAgent(false), headers: signed }),
    ).rejects.toThrow()
    // ...and one with a certificate gets through TLS to the control API's own checks.
    const ok = await request(`https://127.0.0.1:${ord.ports.control}${path}`, {
      dispatcher: httpsAgent(true),
      headers: signed,
    })
    expect(ok.statusCode).toBe(200)
    await ok.body.dump()
    const unsigned = await request(`https://127.0.0.1:${ord.ports.control}${path}`, { dispatcher: httpsAgent(true) })
    expect(unsigned.statusCode).toBe(401)
    expect(unsigned.headers['x-txmesh-error']).toBe('TXM_CONTROL_UNAUTHORIZED')
    await unsigned.body.dump()
  })

  it('serves a rotated certificate on new connections without a restart, and keeps the old one when the new files do not match', async () => {
    const orders = await startTxApp('orders')
    apps.push(orders)
    const files = ownFiles('orders')
    const ord = await spawnSidecar(sidecarYaml('orders', orders.port, tlsYaml(files)), [], { TXMESH_LOG_LEVEL: 'info' })
    procs.push(ord)
    // A TLS peer of our own that records the client certificate each new connection presents.
    const presented: string[] = []
    const probe = createHttpsServer(
      {
        cert: readFileSync(leaf1.certFile),
        key: readFileSync(leaf1.keyFile),
        ca: readFileSync(pki.caFile),
        requestCert: true,
        rejectUnauthorized: true,
      },
      (req, res) => {
        presented.push((req.socket as TLSSocket).getPeerCertificate().serialNumber)
        req.resume()
        // A new connection for every call, so each one shows the files current at that moment.
        res.writeHead(200, { connection: 'close' }).end('{}')
      },
    )
    await new Promise<void>((r) => probe.listen(0, '127.0.0.1', r))
    closers.push(() => new Promise<void>((r) => probe.close(() => r())))
    const coordFiles = ownFiles('initiator')
    const probePort = (probe.address() as AddressInfo).port
    const coord = await spawnSidecar(
      sidecarYaml(
        'initiator',
        1,
        `services:\n  orders: {address: "127.0.0.1:${ord.ports.ingress}"}\n  probe: {address: "127.0.0.1:${probePort}"}\n${tlsYaml(coordFiles)}`,
      ),
    )
    procs.push(coord)
    expect((await rawRequest(coord.ports.egress, { path: 'http://probe/who' })).status).toBe(200)
    expect(presented).toEqual([leaf1.serial])
    expect(await servedSerial(ord.ports.control)).toBe(leaf1.serial)
    expect(await servedSerial(ord.ports.ingress)).toBe(leaf1.serial)
    const tx1 = await begin(coord)
    expect(
      (
        await rawRequest(coord.ports.egress, {
          method: 'POST',
          path: 'http://orders/write/r1',
          headers: { 'txmesh-context': tx1.context },
        })
      ).status,
    ).toBe(200)
    expect((await commit(coord, tx1.id)).outcome).toBe('committed')

    // The Secret is swapped: certificate and key files replaced.
    replaceFile(leaf2.certFile, files.certFile)
    replaceFile(leaf2.keyFile, files.keyFile)
    await until(
      'the control listener serves the new certificate',
      async () => (await servedSerial(ord.ports.control)) === leaf2.serial,
    )
    expect(await servedSerial(ord.ports.ingress)).toBe(leaf2.serial)
    expect(ord.stderr()).toContain('"event":"tls_reloaded"')
    // Peers keep working: new connections verify the new certificate against the same CA.
    const tx2 = await begin(coord)
    expect(
      (
        await rawRequest(coord.ports.egress, {
          method: 'POST',
          path: 'http://orders/write/r2',
          headers: { 'txmesh-context': tx2.context },
        })
      ).status,
    ).toBe(200)
    expect((await commit(coord, tx2.id)).outcome).toBe('committed')
    expect(orders.committed).toEqual(['orders:r1', 'orders:r2'])

    // The client side follows its files too: the coordinator's next new connection presents its
    // new certificate.
    replaceFile(leaf2.certFile, coordFiles.certFile)
    replaceFile(leaf2.keyFile, coordFiles.keyFile)
    await until('the coordinator presents the new certificate', async () => {
      expect((await rawRequest(coord.ports.egress, { path: 'http://probe/who' })).status).toBe(200)
      return presented.at(-1) === leaf2.serial
    })

    // A half-swapped pair (leaf1's certificate with leaf2's key) is refused: the sidecar keeps
    // serving leaf2 and warns once.
    replaceFile(leaf1.certFile, files.certFile)
    await until('one warning about the files', () => ord.stderr().includes('"event":"tls_files_invalid"'))
    await new Promise((r) => setTimeout(r, 1_500))
    expect(await servedSerial(ord.ports.control)).toBe(leaf2.serial)
    expect(
      ord
        .stderr()
        .split('\n')
        .filter((l) => l.includes('"event":"tls_files_invalid"')),
    ).toHaveLength(1)
  })

  it('sends saga compensations over TLS to a sidecar, and over plain HTTP to a service marked tls: false', async () => {
    const seen: string[] = []
    const ops: string[] = []
    const record = (name: string) => (req: IncomingMessage, res: ServerResponse) => {
      req.resume()
      req.on('end', () => {
        seen.push(`${name} ${req.method} ${req.url}`)
        ops.push(String(req.headers['txmesh-op']))
        if (name === 'orders' && req.method === 'POST')
          return void res.writeHead(201, { 'content-type': 'application/json' }).end('{"id":42}')
        if (name === 'payments' && req.url === '/charge')
          return void res.writeHead(200, { 'txmesh-compensate': 'POST /refund/c-7' }).end('{}')
        res.writeHead(200).end('{}')
      })
    }
    const ordersApp = await startServer(record('orders'))
    const paymentsApp = await startServer(record('payments'))
    closers.push(ordersApp.close, paymentsApp.close)
    const ord = await spawnSidecar(sidecarYaml('orders', ordersApp.port, tlsYaml(ownFiles('orders'))))
    procs.push(ord)
    const yaml = sidecarYaml(
      'shop',
      1,
      [
        'services:',
        `  orders: {address: "127.0.0.1:${ord.ports.ingress}"}`,
        `  payments: {address: "127.0.0.1:${paymentsApp.port}", tls: false}`,
        'routes:',
        '  - name: create-order',
        '    match: {direction: egress, host: orders, pathPrefix: /orders, methods: [POST]}',
        '    compensation: {method: DELETE, path: "/orders/{response.json.id}"}',
        '  - name: payments',
        '    match: {direction: egress, host: payments}',
        '    nonTransactionalTarget: proceed',
        'steps: {attempts: 3, backoffBaseMs: 20, backoffCapMs: 50}',
        tlsYaml(ownFiles('shop')),
      ].join('\n'),
    )
    const coord = await spawnSidecar(yaml)
    procs.push(coord)
    const tx = await begin(coord, 'saga')
    expect(
      (
        await rawRequest(coord.ports.egress, {
          method: 'POST',
          path: 'http://orders/orders',
          headers: { 'txmesh-context': tx.context },
        })
      ).status,
    ).toBe(201)
    expect(
      (
        await rawRequest(coord.ports.egress, {
          method: 'POST',
          path: 'http://payments/charge',
          headers: { 'txmesh-context': tx.context },
        })
      ).status,
    ).toBe(200)
    const aborted = await commit(coord, tx.id, 'abort')
    expect(aborted.outcome).toBe('aborted')
    await until('both compensations', () => seen.length === 4)
    // Reverse order: the refund (plain HTTP), then the order's undo through the orders sidecar (TLS).
    expect(seen).toEqual([
      'orders POST /orders',
      'payments POST /charge',
      'payments POST /refund/c-7',
      'orders DELETE /orders/42',
    ])
    expect(ops[0]).toBe('action')
    expect(ops[3]).toBe('compensate')
  })
  it('tunnels a WebSocket from the egress to a peer ingress over TLS', async () => {
    const app = await startServer((_req, res) => res.end('plain'))
    closers.push(app.close)
    const wss = new WebSocketServer({ server: app.server })
    closers.push(() => new Promise<void>((r) => wss.close(() => r())))
    wss.on('connection', (ws) => ws.on('message', (data) => ws.send(`echo:${String(data)}`)))
    const chat = await spawnSidecar(sidecarYaml('chat', app.port, tlsYaml(ownFiles('chat'))))
    procs.push(chat)
    const web = await spawnSidecar(
      sidecarYaml(
        'web',
        1,
        `services:\n  chat: {address: "127.0.0.1:${chat.ports.ingress}"}\n${tlsYaml(ownFiles('web'))}`,
      ),
    )
    procs.push(web)
    const ws = new WebSocket(`ws://127.0.0.1:${web.ports.egress}/socket`, { headers: { host: 'chat' } })
    const got = await new Promise<string>((resolve, reject) => {
      ws.on('open', () => ws.send('over tls'))
      ws.on('message', (data: Buffer) => resolve(data.toString()))
      ws.on('error', reject)
    })
    ws.close()
    expect(got).toBe('echo:over tls')
  })
})
