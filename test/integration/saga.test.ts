// Sagas and TCC through real sidecar processes: the test acts as the initiating app of a
// coordinator sidecar; services are plain HTTP apps, some behind their own sidecar.
import { execFile } from 'node:child_process'
import type { IncomingMessage, ServerResponse } from 'node:http'
import { request } from 'undici'
import { describe, expect, it } from 'vitest'
import { freePort, until } from '../../harness/ports.js'
import { tempDir } from '../../harness/temp.js'
import { CLI } from '../../harness/sidecar.js'
import { rawRequest, sidecarYaml, spawnSidecar, startServer, type SidecarProcess } from '../helpers/servers.js'
import { stopAfterTests } from '../helpers/tx-app.js'

const { procs, closers } = stopAfterTests()

interface Seen {
  method: string
  path: string
  tx: string | undefined
  branch: string | undefined
  op: string | undefined
}

/** An app that records every request (with the txmesh headers it got) and answers as told. */
async function app(name: string, answer: (req: IncomingMessage, res: ServerResponse, seen: Seen[]) => void) {
  const seen: Seen[] = []
  const s = await startServer((req, res) => {
    req.resume()
    req.on('end', () => {
      const h = (k: string): string | undefined => req.headers[k] as string | undefined
      seen.push({
        method: req.method ?? '',
        path: req.url ?? '',
        tx: h('txmesh-tx-id'),
        branch: h('txmesh-branch-id'),
        op: h('txmesh-op'),
      })
      answer(req, res, seen)
    })
  })
  closers.push(s.close)
  return { name, port: s.port, seen }
}

function json(res: ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}): void {
  const text = JSON.stringify(body)
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text), ...headers })
  res.end(text)
}

/** Runs the `txmesh` CLI from dist/. */
function cli(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [CLI, ...args], (err, stdout, stderr) =>
      resolve({ code: err === null ? 0 : Number(err.code ?? 1), stdout, stderr }),
    )
  })
}

const STEPS = 'steps: {attempts: 3, backoffBaseMs: 20, backoffCapMs: 50}'

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

/**
 * TCC targets wallet and stock, each behind its own sidecar (stock names its own hooks), and a
 * coordinator sidecar whose wallet route gives the confirm/cancel templates.
 */
async function tccSidecars(walletPort: number, stockPort: number) {
  const walletSc = await spawnSidecar(sidecarYaml('wallet', walletPort))
  const stockSc = await spawnSidecar(
    sidecarYaml('stock', stockPort, 'hooks: {confirm: /tcc/confirm, cancel: /tcc/cancel}'),
  )
  procs.push(walletSc, stockSc)
  const coord = await spawnSidecar(
    sidecarYaml(
      'shop',
      1,
      [
        'services:',
        `  wallet: {address: "127.0.0.1:${walletSc.ports.ingress}"}`,
        `  stock: {address: "127.0.0.1:${stockSc.ports.ingress}"}`,
        'routes:',
        '  - name: wallet-try',
        '    match: {direction: egress, host: wallet}',
        '    tcc: {confirm: {path: "/wallet/confirm/{step.id}"}, cancel: {method: DELETE, path: "/wallet/hold/{step.id}"}}',
        STEPS,
      ].join('\n'),
    ),
  )
  procs.push(coord)
  return { walletSc, stockSc, coord }
}

describe('saga through sidecars', () => {
  /**
   * orders (behind a sidecar): POST /orders -> 201 {id}; undo by route template DELETE /orders/{id}.
   * payments (no sidecar): POST /charge names its own undo in txmesh-compensate.
   * inventory (no sidecar): POST /reserve -> 409 (a failed step: nothing to undo).
   */
  async function sagaMesh(opts: { refundFailures?: number; store?: string; coordControl?: number } = {}) {
    let nextOrder = 41
    const orders = await app('orders', (req, res) => {
      if (req.method === 'POST') return json(res, 201, { id: ++nextOrder })
      res.writeHead(204).end()
    })
    let refundFailures = opts.refundFailures ?? 0
    const payments = await app('payments', (req, res) => {
      if (req.url === '/charge') return json(res, 200, { charged: true }, { 'txmesh-compensate': 'POST /refund/c-7' })
      if (refundFailures > 0) {
        refundFailures--
        return json(res, 503, { error: 'refunds are down' })
      }
      json(res, 200, { refunded: true })
    })
    const inventory = await app('inventory', (_req, res) => json(res, 409, { error: 'out of stock' }))
    const ordersSc = await spawnSidecar(sidecarYaml('orders', orders.port))
    procs.push(ordersSc)
    const store = opts.store ?? tempDir()
    const control = opts.coordControl ?? (await freePort())
    const yaml = sidecarYaml(
      'shop',
      1,
      [
        'services:',
        `  orders: {address: "127.0.0.1:${ordersSc.ports.ingress}"}`,
        `  payments: {address: "127.0.0.1:${payments.port}"}`,
        `  inventory: {address: "127.0.0.1:${inventory.port}"}`,
        'routes:',
        '  - name: create-order',
        '    match: {direction: egress, host: orders, pathPrefix: /orders, methods: [POST]}',
        '    compensation: {method: DELETE, path: "/orders/{response.json.id}"}',
        '  - name: payments',
        '    match: {direction: egress, host: payments}',
        '    nonTransactionalTarget: proceed',
        '  - name: inventory',
        '    match: {direction: egress, host: inventory}',
        '    nonTransactionalTarget: proceed',
        STEPS,
      ].join('\n'),
      store,
    )
    const start = async (): Promise<SidecarProcess> => {
      const sc = await spawnSidecar(yaml, ['--control-port', String(control)])
      procs.push(sc)
      return sc
    }
    const coord = await start()
    return {
      orders,
      payments,
      inventory,
      coord,
      start,
      setRefundFailures: (n: number) => (refundFailures = n),
      async begin(): Promise<{ id: string; context: string }> {
        const r = await admin(this.coord.ports.admin, 'POST', '/v1/transactions', { mode: 'saga', timeoutMs: 30_000 })
        expect(r.status).toBe(201)
        return r.body as { id: string; context: string }
      },
      call(ctx: string, url: string) {
        return rawRequest(this.coord.ports.egress, {
          method: 'POST',
          path: url,
          headers: { 'txmesh-context': ctx, 'content-length': '0' },
        })
      },
    }
  }

  it('aborts by compensating the steps in reverse order, each named by route template or by the service', async () => {
    const m = await sagaMesh()
    const tx = await m.begin()
    const order = await m.call(tx.context, 'http://orders/orders')
    expect(order.status).toBe(201)
    const charge = await m.call(tx.context, 'http://payments/charge')
    expect(charge.status).toBe(200)
    expect(charge.headers['txmesh-compensate']).toBeUndefined() // addressed to the sidecar only
    const reserve = await m.call(tx.context, 'http://inventory/reserve')
    expect(reserve.status).toBe(409)

    const r = await admin(m.coord.ports.admin, 'POST', `/v1/transactions/${tx.id}/abort?wait=acks`)
    expect(r.body.outcome).toBe('aborted')
    const steps = r.body.steps as { service: string; status: string }[]
    // The refused reservation did nothing, so it is not a step.
    expect(steps.map((s) => s.service)).toEqual(['orders', 'payments'])
    expect(steps.every((s) => s.status === 'finished')).toBe(true)

    // Reverse order: the refund (step 2) before the order's delete (step 1).
    await until('both compensations', () => m.orders.seen.length === 2 && m.payments.seen.length === 2)
    const refund = m.payments.seen[1]!
    const del = m.orders.seen[1]!
    expect(refund).toMatchObject({ method: 'POST', path: '/refund/c-7', tx: tx.id, op: 'compensate' })
    expect(del).toMatchObject({ method: 'DELETE', path: '/orders/42', tx: tx.id, op: 'compensate' })
    // The compensation carries the step's own branch id, as the action did (barrier key).
    const action = m.orders.seen[0]!
    expect(action.op).toBe('action')
    expect(del.branch).toBe(action.branch)
    expect(m.payments.seen[0]!.branch).toBe(refund.branch)
    expect(m.inventory.seen).toHaveLength(1)
    const view = await admin(m.coord.ports.admin, 'GET', `/v1/transactions/${tx.id}`)
    expect(view.body).toMatchObject({ mode: 'saga', status: 'aborted', stuck: 0 })
  })

  it('commits without running any compensation', async () => {
    const m = await sagaMesh()
    const tx = await m.begin()
    expect((await m.call(tx.context, 'http://orders/orders')).status).toBe(201)
    expect((await m.call(tx.context, 'http://payments/charge')).status).toBe(200)
    const r = await admin(m.coord.ports.admin, 'POST', `/v1/transactions/${tx.id}/commit?wait=acks`)
    expect(r.body.outcome).toBe('committed')
    await new Promise((resolve) => setTimeout(resolve, 200))
    expect(m.orders.seen.map((s) => s.op)).toEqual(['action'])
    expect(m.payments.seen).toHaveLength(1)
    // A call after the end whose undo is recorded before it (a route template): refused before
    // it is sent, so there is nothing to undo.
    const refused = await m.call(tx.context, 'http://orders/orders')
    expect(refused.status).toBe(409)
    expect(refused.headers['x-txmesh-error']).toBe('TXM_TX_NOT_ACTIVE')
    // One whose service names its undo in its answer is sent; the step is refused to the app and undone.
    const late = await m.call(tx.context, 'http://payments/charge')
    expect(late.status).toBe(409)
    await until('late step undone', () => m.payments.seen.some((s) => s.op === 'compensate'))
    expect(m.payments.seen.at(-1)).toMatchObject({
      path: '/refund/c-7',
      op: 'compensate',
      branch: m.payments.seen.at(-2)!.branch,
    })
    expect(m.orders.seen.map((s) => s.op)).toEqual(['action'])
  })

  it('reports a compensation failing past its budget as stuck, then finishes it when an operator retries', async () => {
    const m = await sagaMesh({ refundFailures: 1_000 })
    const tx = await m.begin()
    await m.call(tx.context, 'http://orders/orders')
    await m.call(tx.context, 'http://payments/charge')
    expect((await admin(m.coord.ports.admin, 'POST', `/v1/transactions/${tx.id}/abort`)).body.outcome).toBe('aborted')
    await until(
      'stuck',
      async () => (await admin(m.coord.ports.admin, 'GET', `/v1/transactions/${tx.id}`)).body.stuck === 1,
    )
    const view = (await admin(m.coord.ports.admin, 'GET', `/v1/transactions/${tx.id}`)).body
    const steps = view.steps as { service: string; status: string; lastError?: string; attempts: number }[]
    expect(steps[1]).toMatchObject({ service: 'payments', status: 'stuck', attempts: 3 })
    expect(steps[1]!.lastError).toContain('503')
    // Reverse order: the earlier step waits behind the stuck one.
    expect(steps[0]!.status).toBe('recorded')
    expect(m.orders.seen.some((s) => s.op === 'compensate')).toBe(false)
    const metrics = await (await request(`http://127.0.0.1:${m.coord.ports.admin}/metrics`)).body.text()
    expect(metrics).toMatch(/^txmesh_steps_stuck 1$/m)
    expect(metrics).toMatch(/^txmesh_step_ops_total\{op="compensate",result="stuck"\} 1$/m)

    // The operator's view: `txmesh tx show` names the stuck step and its error.
    const adminUrl = `http://127.0.0.1:${m.coord.ports.admin}`
    const shown = await cli(['tx', 'show', tx.id, '--admin', adminUrl])
    expect(shown.code).toBe(0)
    expect(shown.stdout).toMatch(/payments\s+stuck\s+3\s+.*503/)
    expect(shown.stdout).toContain(`txmesh tx retry ${tx.id}`)
    expect((await cli(['tx', 'list', '--admin', adminUrl])).stdout).toMatch(/2 steps, 1 stuck/)

    m.setRefundFailures(0)
    const retried = await cli(['tx', 'retry', tx.id, '--admin', adminUrl, '--json'])
    expect(retried.code).toBe(0)
    expect(JSON.parse(retried.stdout)).toMatchObject({ retried: 1 })
    await until(
      'finished',
      async () => (await admin(m.coord.ports.admin, 'GET', `/v1/transactions/${tx.id}`)).body.status === 'aborted',
    )
    expect(m.orders.seen.filter((s) => s.op === 'compensate')).toHaveLength(1)
    // Nothing left to retry: a clear refusal with the code, exit 1.
    const again = await cli(['tx', 'retry', tx.id, '--admin', adminUrl])
    expect(again.code).toBe(1)
    expect(again.stderr).toContain('TXM_TX_UNKNOWN')
  })

  it('keeps pending compensations across a SIGKILL of the coordinator sidecar and finishes them after restart', async () => {
    const store = tempDir()
    const m = await sagaMesh({ refundFailures: 1_000, store })
    const tx = await m.begin()
    await m.call(tx.context, 'http://orders/orders')
    await m.call(tx.context, 'http://payments/charge')
    // Killed while active: no decision in the log, so recovery undoes every step (presumed abort).
    m.coord.child.kill('SIGKILL')
    await m.coord.exited
    m.setRefundFailures(0)
    m.coord = await m.start()
    await until(
      'both compensated after restart',
      () => m.payments.seen.some((s) => s.path === '/refund/c-7') && m.orders.seen.some((s) => s.op === 'compensate'),
      15_000,
    )
    const refundAt = m.payments.seen.findIndex((s) => s.path === '/refund/c-7')
    expect(refundAt).toBeGreaterThan(0)
    await until(
      'finished',
      async () => (await admin(m.coord.ports.admin, 'GET', `/v1/transactions/${tx.id}`)).body.status === 'aborted',
    )
  })
  it('begins a saga per request on a `mode: saga` ingress route and compensates when the app answers non-2xx', async () => {
    const payments = await app('payments', (req, res) => {
      if (req.url === '/charge') return json(res, 201, { id: 9 }, { 'txmesh-compensate': 'POST /refund/9' })
      json(res, 200, { refunded: true })
    })
    // The orchestrating app: one step through its own sidecar's egress, then a refusal.
    let egressPort = 0
    let appSaw: Record<string, string | undefined> = {}
    const shop = await startServer((req, res) => {
      req.resume()
      appSaw = {
        context: req.headers['txmesh-context'] as string | undefined,
        tx: req.headers['txmesh-tx-id'] as string | undefined,
        branch: req.headers['txmesh-branch-id'] as string | undefined,
      }
      void rawRequest(egressPort, {
        method: 'POST',
        path: 'http://payments/charge',
        headers: { 'txmesh-context': appSaw.context ?? '', 'content-length': '0' },
      }).then((r) => json(res, r.status === 201 ? 409 : 500, { step: r.status }))
    })
    closers.push(shop.close)
    const yaml = sidecarYaml(
      'shop',
      shop.port,
      [
        `services: {payments: {address: "127.0.0.1:${payments.port}"}}`,
        'routes:',
        '  - {name: checkout, match: {direction: ingress, pathPrefix: /checkout}, transaction: required, mode: saga}',
        '  - {name: payments, match: {direction: egress, host: payments}, nonTransactionalTarget: proceed}',
        STEPS,
      ].join('\n'),
    )
    const sc = await spawnSidecar(yaml)
    procs.push(sc)
    egressPort = sc.ports.egress
    const r = await rawRequest(sc.ports.ingress, {
      method: 'POST',
      path: '/checkout',
      headers: { host: 'shop', 'content-length': '0' },
    })
    expect(r.status).toBe(409)
    expect(r.headers['txmesh-outcome']).toBe('aborted')
    const id = r.headers['txmesh-tx-id'] as string
    expect(id).toMatch(/.+/)
    // The app got the context to pass on, and no branch ids: it orchestrates, it is not a step.
    expect(appSaw.context).toMatch(/.+/)
    expect(appSaw.tx).toBeUndefined()
    expect(appSaw.branch).toBeUndefined()
    await until('refund', () => payments.seen.some((s) => s.path === '/refund/9'))
    expect(payments.seen[1]).toMatchObject({
      method: 'POST',
      path: '/refund/9',
      tx: id,
      op: 'compensate',
      branch: payments.seen[0]!.branch,
    })
    await until(
      'finished',
      async () => (await admin(sc.ports.admin, 'GET', `/v1/transactions/${id}`)).body.status === 'aborted',
    )
  })
})

describe('TCC through sidecars', () => {
  async function tccMesh() {
    const hooks = (name: string) =>
      app(name, (req, res) => {
        if (req.url === '/reserve') return json(res, 200, { reserved: true })
        if (req.url === '/reserve-fail') return json(res, 500, { error: 'no' })
        res.writeHead(200, { 'content-length': '0' }).end()
      })
    const wallet = await hooks('wallet')
    const stock = await hooks('stock')
    const { coord } = await tccSidecars(wallet.port, stock.port)
    const begin = async (): Promise<{ id: string; context: string }> =>
      (await admin(coord.ports.admin, 'POST', '/v1/transactions', { mode: 'tcc', timeoutMs: 30_000 })).body as {
        id: string
        context: string
      }
    const call = (ctx: string, url: string) =>
      rawRequest(coord.ports.egress, {
        method: 'POST',
        path: url,
        headers: { 'txmesh-context': ctx, 'content-length': '0' },
      })
    return { wallet, stock, coord, begin, call }
  }

  it('confirms every try through its sidecar on commit, with the hooks the route or the target names', async () => {
    const m = await tccMesh()
    const tx = await m.begin()
    expect((await m.call(tx.context, 'http://wallet/reserve')).status).toBe(200)
    expect((await m.call(tx.context, 'http://stock/reserve')).status).toBe(200)
    const r = await admin(m.coord.ports.admin, 'POST', `/v1/transactions/${tx.id}/commit?wait=acks`)
    expect(r.body.outcome).toBe('committed')
    expect((r.body.steps as { status: string }[]).every((s) => s.status === 'finished')).toBe(true)
    const walletTry = m.wallet.seen[0]!
    expect(walletTry.op).toBe('try')
    expect(m.wallet.seen[1]).toMatchObject({
      method: 'POST',
      path: `/wallet/confirm/${walletTry.branch}`,
      op: 'confirm',
      tx: tx.id,
      branch: walletTry.branch,
    })
    expect(m.stock.seen[1]).toMatchObject({
      method: 'POST',
      path: '/tcc/confirm',
      op: 'confirm',
      branch: m.stock.seen[0]!.branch,
    })
  })

  it('cancels every try on abort, a failed one included', async () => {
    const m = await tccMesh()
    const tx = await m.begin()
    await m.call(tx.context, 'http://wallet/reserve')
    expect((await m.call(tx.context, 'http://stock/reserve-fail')).status).toBe(500)
    const r = await admin(m.coord.ports.admin, 'POST', `/v1/transactions/${tx.id}/abort?wait=acks`)
    expect(r.body.outcome).toBe('aborted')
    await until('cancels', () => m.wallet.seen.length === 2 && m.stock.seen.length === 2)
    expect(m.wallet.seen[1]).toMatchObject({
      method: 'DELETE',
      path: `/wallet/hold/${m.wallet.seen[0]!.branch}`,
      op: 'cancel',
    })
    expect(m.stock.seen[1]).toMatchObject({ path: '/tcc/cancel', op: 'cancel' })
  })
})

// A call whose answer never reaches the coordinator's egress (the service did the work, then the
// connection was cut) is still undone: its step was recorded, as an intent with an undo worked out
// from the request alone, before the call was sent.
describe('calls that get no answer', () => {
  /** A service that does its work, then cuts the connection without answering, when told to. */
  async function cutting(
    name: string,
    cut: (req: IncomingMessage) => boolean,
    answer: (req: IncomingMessage, res: ServerResponse) => void = (_req, res) => json(res, 200, {}),
  ) {
    return app(name, (req, res) => {
      if (cut(req)) {
        req.socket.destroy()
        return
      }
      answer(req, res)
    })
  }

  it('saga: compensates a call whose connection was cut after the work, with the request-only template, on abort and on commit', async () => {
    // ledger: no sidecar, so the cut reaches the coordinator's egress itself.
    const ledger = await cutting(
      'ledger',
      (req) => req.url?.startsWith('/debit') === true && req.url.includes('cut=1'),
      (req, res) =>
        req.url?.startsWith('/debit') === true && req.url.includes('refuse=1')
          ? json(res, 409, { error: 'insufficient funds' })
          : json(res, 200, { ok: true }),
    )
    const coord = await spawnSidecar(
      sidecarYaml(
        'shop',
        1,
        [
          `services: {ledger: {address: "127.0.0.1:${ledger.port}"}}`,
          'routes:',
          '  - name: debit',
          '    match: {direction: egress, host: ledger, pathPrefix: /debit}',
          '    compensation: {method: POST, path: "/credit/{request.query.account}/{request.query.amount}"}',
          '    nonTransactionalTarget: proceed',
          STEPS,
        ].join('\n'),
      ),
    )
    procs.push(coord)
    const begin = async (): Promise<{ id: string; context: string }> =>
      (await admin(coord.ports.admin, 'POST', '/v1/transactions', { mode: 'saga', timeoutMs: 30_000 })).body as {
        id: string
        context: string
      }
    const call = (ctx: string, query: string) =>
      rawRequest(coord.ports.egress, {
        method: 'POST',
        path: `http://ledger/debit?${query}`,
        headers: { 'txmesh-context': ctx, 'content-length': '0' },
      })

    const tx = await begin()
    const done = await call(tx.context, 'account=3&amount=5')
    expect(done.status).toBe(200)
    const cut = await call(tx.context, 'account=7&amount=10&cut=1')
    expect(cut.status).toBe(502)
    // A refusal: the service did nothing, so its intent is voided and never compensated.
    const refused = await call(tx.context, 'account=9&amount=1&refuse=1')
    expect(refused.status).toBe(409)
    const [action, cutAction, refusedAction] = ledger.seen
    expect(cutAction).toMatchObject({ path: '/debit?account=7&amount=10&cut=1', op: 'action', tx: tx.id })

    const r = await admin(coord.ports.admin, 'POST', `/v1/transactions/${tx.id}/abort?wait=acks`)
    expect(r.body.outcome).toBe('aborted')
    await until('both compensations', () => ledger.seen.filter((s) => s.op === 'compensate').length === 2)
    const undos = ledger.seen.filter((s) => s.op === 'compensate')
    // Reverse order: the cut call (step 2) first, then step 1; each with its step's branch id.
    expect(undos[0]).toMatchObject({ method: 'POST', path: '/credit/7/10', tx: tx.id, branch: cutAction!.branch })
    expect(undos[1]).toMatchObject({ method: 'POST', path: '/credit/3/5', tx: tx.id, branch: action!.branch })
    expect(ledger.seen.some((s) => s.op === 'compensate' && s.branch === refusedAction!.branch)).toBe(false)
    await until(
      'finished',
      async () => (await admin(coord.ports.admin, 'GET', `/v1/transactions/${tx.id}`)).body.status === 'aborted',
    )
    const steps = (await admin(coord.ports.admin, 'GET', `/v1/transactions/${tx.id}`)).body.steps as {
      id: string
      status: string
      intent?: boolean
    }[]
    expect(steps.map((s) => [s.id, s.status, s.intent === true])).toEqual([
      [action!.branch, 'finished', false],
      [cutAction!.branch, 'finished', true],
      [refusedAction!.branch, 'finished', true],
    ])

    // Committed anyway: the call that got no answer is still compensated (the app never saw it
    // succeed); the answered one is kept.
    const tx2 = await begin()
    expect((await call(tx2.context, 'account=4&amount=2')).status).toBe(200)
    expect((await call(tx2.context, 'account=5&amount=3&cut=1')).status).toBe(502)
    const kept = ledger.seen.at(-2)!
    const cut2 = ledger.seen.at(-1)!
    expect((await admin(coord.ports.admin, 'POST', `/v1/transactions/${tx2.id}/commit?wait=acks`)).body.outcome).toBe(
      'committed',
    )
    await until('the cut call compensated', () => ledger.seen.some((s) => s.op === 'compensate' && s.tx === tx2.id))
    await new Promise((resolve) => setTimeout(resolve, 200))
    expect(ledger.seen.filter((s) => s.tx === tx2.id && s.op === 'compensate')).toEqual([
      { method: 'POST', path: '/credit/5/3', tx: tx2.id, branch: cut2.branch, op: 'compensate' },
    ])
    expect(kept.branch).not.toBe(cut2.branch)
  })

  it('tcc: cancels a try whose connection was cut after the work, through the target sidecar, on the route template or the target’s own cancel hook', async () => {
    const wallet = await cutting('wallet', (req) => req.url === '/reserve')
    const stock = await cutting('stock', (req) => req.url === '/reserve')
    const { stockSc, coord } = await tccSidecars(wallet.port, stock.port)
    const tx = (await admin(coord.ports.admin, 'POST', '/v1/transactions', { mode: 'tcc', timeoutMs: 30_000 }))
      .body as { id: string; context: string }
    const call = (url: string) =>
      rawRequest(coord.ports.egress, {
        method: 'POST',
        path: url,
        headers: { 'txmesh-context': tx.context, 'content-length': '0' },
      })
    expect((await call('http://wallet/reserve')).status).toBe(502)
    expect((await call('http://stock/reserve')).status).toBe(502)
    expect(wallet.seen[0]).toMatchObject({ op: 'try', tx: tx.id })
    expect(stock.seen[0]).toMatchObject({ op: 'try', tx: tx.id })

    expect((await admin(coord.ports.admin, 'POST', `/v1/transactions/${tx.id}/abort?wait=acks`)).body.outcome).toBe(
      'aborted',
    )
    await until('both cancels', () => wallet.seen.length === 2 && stock.seen.length === 2)
    expect(wallet.seen[1]).toMatchObject({
      method: 'DELETE',
      path: `/wallet/hold/${wallet.seen[0]!.branch}`,
      op: 'cancel',
      tx: tx.id,
      branch: wallet.seen[0]!.branch,
    })
    // The default hook path, which the target's sidecar maps to its own hooks.cancel.
    expect(stock.seen[1]).toMatchObject({
      method: 'POST',
      path: '/tcc/cancel',
      op: 'cancel',
      tx: tx.id,
      branch: stock.seen[0]!.branch,
    })
    await until(
      'finished',
      async () => (await admin(coord.ports.admin, 'GET', `/v1/transactions/${tx.id}`)).body.status === 'aborted',
    )
    // That path is no way in for anyone else: without a coordinator's signed cancel it is refused.
    const forged = await rawRequest(stockSc.ports.ingress, {
      method: 'POST',
      path: '/.well-known/txmesh/cancel',
      headers: { host: 'stock', 'content-length': '0' },
    })
    expect(forged.status).toBe(403)
    const asTry = await rawRequest(stockSc.ports.ingress, {
      method: 'POST',
      path: '/.well-known/txmesh/cancel',
      headers: { host: 'stock', 'content-length': '0', 'txmesh-context': tx.context },
    })
    expect(asTry.status).toBe(403)
    expect(stock.seen).toHaveLength(2)
  })

  it('saga, nested: a call a service makes while serving a step records its intent at the coordinator over the control listener', async () => {
    const ledger = await cutting(
      'ledger',
      (req) => req.url?.includes('cut=1') === true,
      (req, res) => (req.url?.includes('refuse=1') === true ? json(res, 409, {}) : json(res, 200, {})),
    )
    // orders (behind a sidecar) debits the ledger twice while it serves its step: a cut call and a refused one.
    let ordersEgress = 0
    const orders = await app('orders', (req, res) => {
      if (req.method !== 'POST') return json(res, 200, {})
      const ctx = req.headers['txmesh-context'] as string
      const debit = (q: string) =>
        rawRequest(ordersEgress, {
          method: 'POST',
          path: `http://ledger/debit?${q}`,
          headers: { 'txmesh-context': ctx, 'content-length': '0' },
        })
      void (async () => {
        const a = await debit('account=1&amount=4&cut=1')
        const b = await debit('account=2&amount=1&refuse=1')
        json(res, 201, { debits: [a.status, b.status] })
      })()
    })
    const route = [
      '  - name: debit',
      '    match: {direction: egress, host: ledger}',
      '    compensation: {method: POST, path: "/credit/{request.query.account}/{request.query.amount}"}',
      '    nonTransactionalTarget: proceed',
    ]
    const ordersSc = await spawnSidecar(
      sidecarYaml(
        'orders',
        orders.port,
        [`services: {ledger: {address: "127.0.0.1:${ledger.port}"}}`, 'routes:', ...route].join('\n'),
      ),
    )
    procs.push(ordersSc)
    ordersEgress = ordersSc.ports.egress
    const coord = await spawnSidecar(
      // The coordinator sends the nested steps' compensations too: ledger is one of its services.
      sidecarYaml(
        'shop',
        1,
        [
          `services: {orders: {address: "127.0.0.1:${ordersSc.ports.ingress}"}, ledger: {address: "127.0.0.1:${ledger.port}"}}`,
          'routes:',
          '  - {name: orders, match: {direction: egress, host: orders}, compensation: {method: DELETE, path: "/orders/{step.id}"}}',
          STEPS,
        ].join('\n'),
      ),
      ['--control-port', String(await freePort())],
    )
    procs.push(coord)
    const tx = (await admin(coord.ports.admin, 'POST', '/v1/transactions', { mode: 'saga', timeoutMs: 30_000 }))
      .body as { id: string; context: string }
    const r = await rawRequest(coord.ports.egress, {
      method: 'POST',
      path: 'http://orders/orders',
      headers: { 'txmesh-context': tx.context, 'content-length': '0' },
    })
    expect(r.status).toBe(201)
    expect(JSON.parse(r.body)).toEqual({ debits: [502, 409] })
    const [cutCall, refusedCall] = ledger.seen
    expect((await admin(coord.ports.admin, 'POST', `/v1/transactions/${tx.id}/abort?wait=acks`)).body.outcome).toBe(
      'aborted',
    )
    await until('the cut call compensated', () => ledger.seen.some((s) => s.op === 'compensate'))
    await until('orders compensated', () => orders.seen.some((s) => s.op === 'compensate'))
    expect(ledger.seen.filter((s) => s.op === 'compensate')).toEqual([
      { method: 'POST', path: '/credit/1/4', tx: tx.id, branch: cutCall!.branch, op: 'compensate' },
    ])
    expect(ledger.seen.some((s) => s.branch === refusedCall!.branch && s.op === 'compensate')).toBe(false)
    await until(
      'finished',
      async () => (await admin(coord.ports.admin, 'GET', `/v1/transactions/${tx.id}`)).body.status === 'aborted',
    )
  })

  it('saga: a cut call whose compensation needs the response becomes a stuck step with a clear error, not a lost one', async () => {
    const orders = await cutting('orders', (req) => req.method === 'POST')
    const coord = await spawnSidecar(
      sidecarYaml(
        'shop',
        1,
        [
          `services: {orders: {address: "127.0.0.1:${orders.port}"}}`,
          'routes:',
          '  - name: create-order',
          '    match: {direction: egress, host: orders}',
          '    compensation: {method: DELETE, path: "/orders/{response.json.id}"}',
          '    nonTransactionalTarget: proceed',
          STEPS,
        ].join('\n'),
      ),
    )
    procs.push(coord)
    const tx = (await admin(coord.ports.admin, 'POST', '/v1/transactions', { mode: 'saga', timeoutMs: 30_000 }))
      .body as { id: string; context: string }
    const r = await rawRequest(coord.ports.egress, {
      method: 'POST',
      path: 'http://orders/orders',
      headers: { 'txmesh-context': tx.context, 'content-length': '0' },
    })
    expect(r.status).toBe(502)
    expect((await admin(coord.ports.admin, 'POST', `/v1/transactions/${tx.id}/abort`)).body.outcome).toBe('aborted')
    await until(
      'stuck',
      async () => (await admin(coord.ports.admin, 'GET', `/v1/transactions/${tx.id}`)).body.stuck === 1,
    )
    const view = (await admin(coord.ports.admin, 'GET', `/v1/transactions/${tx.id}`)).body
    const steps = view.steps as { id: string; status: string; lastError?: string; attempts: number; intent?: boolean }[]
    expect(steps).toHaveLength(1)
    expect(steps[0]).toMatchObject({
      id: orders.seen[0]!.branch,
      status: 'stuck',
      attempts: 0,
      intent: true,
      lastError: 'the call got no answer and its compensation needs the response',
    })
    // Nothing was sent for it: the operator decides.
    expect(orders.seen).toHaveLength(1)
  })
})
