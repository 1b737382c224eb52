// What a step's undo is sent with, and where: real sidecar processes and plain HTTP apps.
// - A compensation header filled from the request (`{request.json.*}`) with a value no HTTP client
//   may send (CR/LF) used to make the step's undo fail on every attempt: stuck, and the steps
//   before it were never undone. Such a call is refused before it is sent.
// - A peer's `/steps` record used to name any origin as the target of its compensation; the
//   coordinator sent it there, with a signed context, from its own network position.
import type { IncomingMessage, ServerResponse } from 'node:http'
import { request } from 'undici'
import { describe, expect, it } from 'vitest'
import { CONTROL_AUTH_HEADER } from '../../src/control/client.js'
import { signControl } from '../../src/tx/protocol.js'
import { until } from '../../harness/ports.js'
import { MESH_KEY, rawRequest, sidecarYaml, spawnSidecar, startServer } from '../helpers/servers.js'
import { stopAfterTests } from '../helpers/tx-app.js'

const { procs, closers } = stopAfterTests()

interface Seen {
  method: string
  path: string
  op: string | undefined
  branch: string | undefined
  headers: IncomingMessage['headers']
}

/** An app that records every request and answers as told. */
async function app(answer: (req: IncomingMessage, res: ServerResponse) => void) {
  const seen: Seen[] = []
  const s = await startServer((req, res) => {
    req.resume()
    req.on('end', () => {
      seen.push({
        method: req.method ?? '',
        path: req.url ?? '',
        op: req.headers['txmesh-op'] as string | undefined,
        branch: req.headers['txmesh-branch-id'] as string | undefined,
        headers: req.headers,
      })
      answer(req, res)
    })
  })
  closers.push(s.close)
  return { port: s.port, seen }
}

function json(res: ServerResponse, status: number, body: unknown): void {
  const text = JSON.stringify(body)
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) }).end(text)
}

async function admin(
  port: number,
  method: 'GET' | 'POST',
  path: string,
  body?: unknown,
): Promise<{ status: number; body: Record<string, unknown> }> {
  const r = await request(`http://127.0.0.1:${port}${path}`, {
    method,
    ...(body === undefined ? {} : { headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) }),
  })
  return { status: r.statusCode, body: (await r.body.json()) as Record<string, unknown> }
}

const STEPS = 'steps: {attempts: 3, backoffBaseMs: 20, backoffCapMs: 50}'

describe('saga step templates', () => {
  it('refuses before it is sent a call whose compensation header would carry request data no client may send, and still undoes the steps before it', async () => {
    let nextOrder = 41
    const orders = await app((req, res) =>
      req.method === 'POST' ? json(res, 201, { id: ++nextOrder }) : res.writeHead(204).end(),
    )
    const notes = await app((req, res) =>
      req.url === '/notes' ? json(res, 201, { ok: true }) : res.writeHead(204).end(),
    )
    const coord = await spawnSidecar(
      sidecarYaml(
        'shop',
        1,
        [
          'services:',
          `  orders: {address: "127.0.0.1:${orders.port}"}`,
          `  notes: {address: "127.0.0.1:${notes.port}"}`,
          'routes:',
          '  - name: create-order',
          '    match: {direction: egress, host: orders}',
          '    compensation: {method: DELETE, path: "/orders/{response.json.id}"}',
          '    nonTransactionalTarget: proceed',
          '  - name: notes',
          '    match: {direction: egress, host: notes}',
          '    compensation: {method: POST, path: /notes/undo, headers: {x-note: "{request.json.note}"}}',
          '    nonTransactionalTarget: proceed',
          STEPS,
        ].join('\n'),
      ),
    )
    procs.push(coord)
    const tx = (await admin(coord.ports.admin, 'POST', '/v1/transactions', { mode: 'saga', timeoutMs: 30_000 }))
      .body as { id: string; context: string }
    const call = (url: string, body?: unknown) =>
      rawRequest(coord.ports.egress, {
        method: 'POST',
        path: url,
        headers: {
          'txmesh-context': tx.context,
          'content-type': 'application/json',
          'content-length': String(body === undefined ? 0 : Buffer.byteLength(JSON.stringify(body))),
        },
        ...(body === undefined ? {} : { body: JSON.stringify(body) }),
      })

    expect((await call('http://orders/orders')).status).toBe(201)
    expect((await call('http://notes/notes', { note: 'gift' })).status).toBe(201)
    const bad = await call('http://notes/notes', { note: 'line one\r\nx-injected: yes' })
    expect(bad.status).toBe(400)
    expect(bad.headers['x-txmesh-error']).toBe('TXM_STEP_TEMPLATE_INVALID')
    // Refused before it was sent: the app never saw it, so there is nothing to undo.
    expect(notes.seen).toHaveLength(1)

    // The saga fails later: every step before the refused call is undone, newest first.
    const r = await admin(coord.ports.admin, 'POST', `/v1/transactions/${tx.id}/abort?wait=acks`)
    expect(r.body.outcome).toBe('aborted')
    await until(
      'both compensations',
      () => orders.seen.some((s) => s.op === 'compensate') && notes.seen.some((s) => s.op === 'compensate'),
      5_000,
    )
    expect(notes.seen[1]).toMatchObject({
      method: 'POST',
      path: '/notes/undo',
      op: 'compensate',
      branch: notes.seen[0]!.branch,
    })
    expect(notes.seen[1]!.headers['x-note']).toBe('gift')
    expect(orders.seen[1]).toMatchObject({
      method: 'DELETE',
      path: '/orders/42',
      op: 'compensate',
      branch: orders.seen[0]!.branch,
    })
    await until(
      'finished',
      async () => (await admin(coord.ports.admin, 'GET', `/v1/transactions/${tx.id}`)).body.status === 'aborted',
      5_000,
    )
    const view = (await admin(coord.ports.admin, 'GET', `/v1/transactions/${tx.id}`)).body
    expect(view).toMatchObject({ stuck: 0 })
    expect((view.steps as unknown[]).length).toBe(2)
    expect(notes.seen.filter((s) => s.headers['x-injected'] !== undefined)).toEqual([])
  })

  it('refuses at start a compensation template that can only produce an invalid header, naming file:line:col', async () => {
    const yaml = sidecarYaml(
      'shop',
      1,
      [
        'routes:',
        '  - name: notes',
        '    match: {direction: egress, host: notes}',
        '    compensation: {path: /undo, headers: {x-note: "caf\u20ac {request.json.note}"}}',
      ].join('\n'),
    )
    const started = await spawnSidecar(yaml).then(
      (sc) => {
        procs.push(sc)
        return 'started'
      },
      (err: unknown) => String(err),
    )
    expect(started).toMatch(
      /txmesh\.yaml:9:\d+: routes\.0\.compensation\.headers\.x-note: .*not allowed in a header value/,
    )
  })
})

describe('step targets', () => {
  it('refuses a peer /steps record naming an origin outside services, and that origin never gets a compensation', async () => {
    const recorder = await app((_req, res) => json(res, 200, {}))
    const orders = await app((req, res) =>
      req.method === 'POST' ? json(res, 201, { id: 7 }) : res.writeHead(204).end(),
    )
    const coord = await spawnSidecar(
      sidecarYaml(
        'shop',
        1,
        [
          `services: {orders: {address: "127.0.0.1:${orders.port}"}}`,
          'routes:',
          '  - {name: orders, match: {direction: egress, host: orders}, compensation: {method: DELETE, path: "/orders/{response.json.id}"}, nonTransactionalTarget: proceed}',
          STEPS,
        ].join('\n'),
      ),
    )
    procs.push(coord)
    const tx = (await admin(coord.ports.admin, 'POST', '/v1/transactions', { mode: 'saga', timeoutMs: 30_000 }))
      .body as { id: string; context: string }
    expect(
      (
        await rawRequest(coord.ports.egress, {
          method: 'POST',
          path: 'http://orders/orders',
          headers: { 'txmesh-context': tx.context, 'content-length': '0' },
        })
      ).status,
    ).toBe(201)

    /** A step record as a peer sidecar sends it: signed with the mesh key, so it passes authentication. */
    const peerStep = async (step: Record<string, unknown>): Promise<{ status: number; code: string | undefined }> => {
      const path = `/v1/tx/${tx.id}/steps`
      const body = JSON.stringify({ step })
      const r = await request(`http://127.0.0.1:${coord.ports.control}${path}`, {
        method: 'POST',
        headers: {
          'content-type': 'application/json',
          [CONTROL_AUTH_HEADER]: signControl(Buffer.from(MESH_KEY), Date.now(), 'POST', path, body),
        },
        body,
      })
      await r.body.dump()
      return { status: r.statusCode, code: r.headers['x-txmesh-error'] as string | undefined }
    }
    const foreign = `http://127.0.0.1:${recorder.port}`
    const saga = await peerStep({
      id: 'b-forged-1',
      service: 'orders',
      target: foreign,
      compensate: { method: 'POST', path: '/admin/wipe' },
    })
    expect(saga).toEqual({ status: 403, code: 'TXM_STEP_TARGET_REFUSED' })
    // A TCC cancel through the target's ingress names an origin too; a control address must be one peers may use.
    expect(
      await peerStep({
        id: 'b-forged-2',
        service: 'orders',
        target: foreign,
        viaIngress: true,
        cancel: { method: 'POST', path: '/.well-known/txmesh/cancel' },
      }),
    ).toEqual({ status: 403, code: 'TXM_STEP_TARGET_REFUSED' })
    expect(
      await peerStep({
        id: 'b-forged-3',
        service: 'orders',
        target: '10.9.9.9:15010',
        confirm: { method: 'POST', path: '' },
        cancel: { method: 'POST', path: '' },
      }),
    ).toEqual({ status: 403, code: 'TXM_STEP_TARGET_REFUSED' })
    // A services address is a target the coordinator may send to.
    expect(
      await peerStep({
        id: 'b-peer-ok',
        service: 'orders',
        target: `http://127.0.0.1:${orders.port}`,
        compensate: { method: 'DELETE', path: '/orders/peer' },
      }),
    ).toEqual({ status: 200, code: undefined })

    expect((await admin(coord.ports.admin, 'POST', `/v1/transactions/${tx.id}/abort?wait=acks`)).body.outcome).toBe(
      'aborted',
    )
    await until('both orders compensated', () => orders.seen.filter((s) => s.op === 'compensate').length === 2, 5_000)
    expect(orders.seen.filter((s) => s.op === 'compensate').map((s) => s.path)).toEqual(['/orders/peer', '/orders/7'])
    await until(
      'finished',
      async () => (await admin(coord.ports.admin, 'GET', `/v1/transactions/${tx.id}`)).body.status === 'aborted',
      5_000,
    )
    await new Promise((r) => setTimeout(r, 200))
    expect(recorder.seen).toEqual([])
  })
})
