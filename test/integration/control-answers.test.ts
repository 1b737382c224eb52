// Signed control answers (issue 15, hole 12), on real sidecar processes with a man in the middle
// on the plain-HTTP control path (test/helpers/http-mitm.ts): a participant's "refused" vote
// rewritten to "prepared", and a coordinator's "committed" outcome rewritten to "aborted", must
// not be believed. Without answer signatures the first commits a transaction a participant
// refused, and the second makes a prepared participant roll back work its coordinator committed.
// Also: answers that are unsigned, signed with another key, for another request or by another
// sidecar are refused by the control client, batched or not.
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http'
import { request } from 'undici'
import { describe, expect, it } from 'vitest'
import { closeServer, listen } from '../../src/net.js'
import { ControlClient } from '../../src/control/client.js'
import { staticKeys } from '../../src/tx/keys.js'
import { signAnswer } from '../../src/tx/protocol.js'
import { startHttpMitm, type HttpMitm } from '../helpers/http-mitm.js'
import { freePort, until } from '../../harness/ports.js'
import { MESH_KEY, rawRequest, sidecarYaml, spawnSidecar, type SidecarProcess } from '../helpers/servers.js'
import { startTxApp, stopAfterTests, type TxApp } from '../helpers/tx-app.js'

const { procs, apps, closers } = stopAfterTests()
const JSON_TYPE = { 'content-type': 'application/json' }
const key = Buffer.from(MESH_KEY)

/** A participant sidecar whose control listener is reached only through a man in the middle. */
async function behindMitm(service: string, app: TxApp, extra = ''): Promise<{ sc: SidecarProcess; mitm: HttpMitm }> {
  const control = await freePort()
  const mitm = await startHttpMitm({ targetPort: control })
  closers.push(() => mitm.close())
  const sc = await spawnSidecar(sidecarYaml(service, app.port, extra), [
    '--control-port',
    String(control),
    '--advertise',
    `127.0.0.1:${mitm.port}`,
  ])
  procs.push(sc)
  return { sc, mitm }
}

/** The coordinator's yaml: warnings logged, the services at their ingress. */
function coordinatorYaml(services: Record<string, SidecarProcess>): string {
  const map = Object.entries(services).map(([name, sc]) => `  ${name}: {address: "127.0.0.1:${sc.ports.ingress}"}`)
  return sidecarYaml('initiator', 1, `services:\n${map.join('\n')}\n`).replace(
    'log: {level: silent}',
    'log: {level: warn}',
  )
}

async function begin(coord: SidecarProcess, timeoutMs: number): Promise<{ id: string; context: string }> {
  const r = await request(`http://127.0.0.1:${coord.ports.admin}/v1/transactions`, {
    method: 'POST',
    headers: JSON_TYPE,
    body: JSON.stringify({ timeoutMs }),
  })
  expect(r.statusCode).toBe(201)
  return (await r.body.json()) as { id: string; context: string }
}

async function write(coord: SidecarProcess, ctx: string, service: string, value: string): Promise<void> {
  const r = await rawRequest(coord.ports.egress, {
    method: 'POST',
    path: `http://${service}/write/${value}`,
    headers: { 'txmesh-context': ctx },
  })
  expect(r.status, r.body).toBe(200)
}

async function refusedAnswers(sc: SidecarProcess): Promise<number> {
  const text = (await rawRequest(sc.ports.admin, { path: '/metrics' })).body
  return [...text.matchAll(/^txmesh_control_answers_refused_total\{[^}]*\} (\d+)$/gm)].reduce(
    (n, m) => n + Number(m[1]),
    0,
  )
}

describe('control answers through a man in the middle', () => {
  it('refuses a "prepared" vote forged over a participant\'s refusal: the transaction aborts everywhere', async () => {
    const orders = await startTxApp('orders')
    const payments = await startTxApp('payments')
    apps.push(orders, payments)
    payments.vote = 409
    const ord = await spawnSidecar(sidecarYaml('orders', orders.port))
    procs.push(ord)
    const pay = await behindMitm('payments', payments)
    // The attacker turns every refusal into a yes vote, batched or not.
    pay.mitm.options = {
      ...pay.mitm.options,
      rewrite: (_req, _status, body) => body.replace(/"vote":"refused","reason":"[^"]*"/g, '"vote":"prepared"'),
    }
    const coord = await spawnSidecar(coordinatorYaml({ orders: ord, payments: pay.sc }))
    procs.push(coord)

    const tx = await begin(coord, 20_000)
    await write(coord, tx.context, 'orders', 'o1')
    await write(coord, tx.context, 'payments', 'p1')
    const r = await request(`http://127.0.0.1:${coord.ports.admin}/v1/transactions/${tx.id}/commit?wait=acks`, {
      method: 'POST',
    })
    const done = (await r.body.json()) as { outcome: string; participants: { service: string; vote?: string }[] }
    // The attack happened: payments' answer was rewritten on the wire.
    expect(pay.mitm.stats.rewritten).toBeGreaterThanOrEqual(1)
    expect(payments.hooks).toContain(`prepare:${tx.id}`)
    expect(done.outcome).toBe('aborted')
    expect(done.participants.find((p) => p.service === 'payments')?.vote).toBe('refused')
    await until('orders hears abort', () => orders.hooks.includes(`abort:${tx.id}`))
    expect(orders.committed).toEqual([])
    expect(orders.hooks).not.toContain(`commit:${tx.id}`)
    expect(payments.committed).toEqual([])
    expect(await refusedAnswers(coord)).toBeGreaterThanOrEqual(1)
    expect(coord.stderr()).toMatch(/"event":"control_answer_refused".*"code":"TXM_CONTROL_ANSWER_UNSIGNED"/)
  }, 60_000)

  it('refuses an "aborted" outcome forged over the coordinator\'s "committed": the prepared participant waits and commits', async () => {
    const orders = await startTxApp('orders')
    const payments = await startTxApp('payments')
    apps.push(orders, payments)
    // orders: prepared, then its commit is cut on the wire, so past the deadline it asks the
    // coordinator for the outcome, and that answer comes back through the attacker too.
    const ord = await behindMitm('orders', orders)
    const pay = await spawnSidecar(sidecarYaml('payments', payments.port))
    procs.push(pay)
    const coordControl = await freePort()
    const toCoord = await startHttpMitm({
      targetPort: coordControl,
      rewrite: (req, _status, body) =>
        req.path.endsWith('/outcome') ? body.replace('"outcome":"committed"', '"outcome":"aborted"') : undefined,
    })
    closers.push(() => toCoord.close())
    const coord = await spawnSidecar(coordinatorYaml({ orders: ord.sc, payments: pay }), [
      '--control-port',
      String(coordControl),
      '--advertise',
      `127.0.0.1:${toCoord.port}`,
    ])
    procs.push(coord)
    const isCommit = (body: string, path: string): boolean => path.endsWith('/commit') || body.includes('"op":"commit"')
    ord.mitm.options = { ...ord.mitm.options, cut: (req) => isCommit(req.body, req.path) }

    const tx = await begin(coord, 2_000)
    await write(coord, tx.context, 'orders', 'o1')
    await write(coord, tx.context, 'payments', 'p1')
    const r = await request(`http://127.0.0.1:${coord.ports.admin}/v1/transactions/${tx.id}/commit`, { method: 'POST' })
    expect(((await r.body.json()) as { outcome: string }).outcome).toBe('committed')
    await until('payments commits', () => payments.committed.includes('payments:p1'), 20_000)
    // Past the deadline orders asks; the attacker answers "aborted". Refused, orders asks again.
    await until('orders asked the coordinator through the attacker', () => toCoord.stats.rewritten >= 1, 30_000)
    await until(
      'orders asked again, or acted on the answer',
      () => toCoord.stats.rewritten >= 2 || orders.hooks.includes(`abort:${tx.id}`),
      30_000,
    )
    expect(ord.mitm.stats.cut).toBeGreaterThanOrEqual(1)
    expect(orders.hooks).not.toContain(`abort:${tx.id}`)
    expect(await refusedAnswers(ord.sc)).toBeGreaterThanOrEqual(2)
    // The wire heals: the coordinator's commit gets through, and orders commits what it prepared.
    ord.mitm.options = { targetPort: ord.mitm.options.targetPort }
    await until('orders commits', () => orders.committed.includes('orders:o1'), 30_000)
    expect(orders.hooks).not.toContain(`abort:${tx.id}`)
  }, 90_000)
})

describe('control client: answers it does not take', () => {
  /** A peer answering `body` with 200 and a txmesh-auth computed by `auth` (undefined: none). */
  async function peer(
    body: (req: IncomingMessage) => string,
    auth: (self: string, req: IncomingMessage, text: string) => string | undefined,
  ): Promise<string> {
    let self = ''
    const server = createServer((req: IncomingMessage, res: ServerResponse) => {
      req.resume()
      const text = body(req)
      const a = auth(self, req, text)
      res
        .writeHead(200, { 'content-type': 'application/json', ...(a === undefined ? {} : { 'txmesh-auth': a }) })
        .end(text)
    })
    const port = await listen(server, '127.0.0.1', 0)
    self = `127.0.0.1:${port}`
    closers.push(() => closeServer(server))
    return self
  }
  const vote = (req: IncomingMessage): string =>
    req.url === '/v1/batch'
      ? JSON.stringify({
          results: [
            { status: 200, body: { vote: 'prepared' } },
            { status: 200, body: { vote: 'prepared' } },
          ],
        })
      : JSON.stringify({ vote: 'prepared', outcome: 'committed' })

  it('refuses answers unsigned, signed with another key, for another request, by another address or of another body; takes the signed one', async () => {
    const client = new ControlClient(staticKeys([key]))
    closers.push(() => client.close())
    const other = Buffer.from('another-mesh-key-0123456789abcdef')
    let previous = ''
    const cases: [string, (self: string, req: IncomingMessage, text: string) => string | undefined, boolean][] = [
      ['unsigned', () => undefined, false],
      ['malformed', () => 'not-a-mac', false],
      [
        'another key',
        (self, req, text) => signAnswer(other, self, String(req.headers['txmesh-auth']), 200, text),
        false,
      ],
      [
        'another status',
        (self, req, text) => signAnswer(key, self, String(req.headers['txmesh-auth']), 201, text),
        false,
      ],
      [
        'another body',
        (self, req, text) =>
          signAnswer(key, self, String(req.headers['txmesh-auth']), 200, text.replace('prepared', 'refused')),
        false,
      ],
      [
        'another address',
        (_self, req, text) => signAnswer(key, '127.0.0.1:1', String(req.headers['txmesh-auth']), 200, text),
        false,
      ],
      [
        'another request (an answer replayed)',
        (self, req, text) => {
          const was = previous
          previous = String(req.headers['txmesh-auth'])
          return signAnswer(key, self, was, 200, text)
        },
        false,
      ],
      [
        'signed for this request',
        (self, req, text) => signAnswer(key, self, String(req.headers['txmesh-auth']), 200, text),
        true,
      ],
    ]
    for (const [what, auth, taken] of cases) {
      const address = await peer(vote, auth)
      const single = await client.call(address, 'GET', '/v1/tx/t1/outcome')
      const batched = await Promise.all(
        [1, 2].map((i) => client.send(address, { tx: `t${i}`, op: 'prepare', branch: 'b' })),
      )
      for (const r of [single, ...batched]) {
        if (taken) expect(r, what).toMatchObject({ ok: true, status: 200 })
        else expect(r, what).toEqual({ ok: false, status: 0, error: 'TXM_CONTROL_ANSWER_UNSIGNED' })
      }
    }
    // Rotation: an answer signed with any key we accept is taken.
    const rotated = new ControlClient(staticKeys([other, key]))
    closers.push(() => rotated.close())
    const address = await peer(vote, (self, req, text) =>
      signAnswer(key, self, String(req.headers['txmesh-auth']), 200, text),
    )
    expect(await rotated.call(address, 'GET', '/v1/tx/t1/outcome')).toMatchObject({
      ok: true,
      body: { outcome: 'committed' },
    })
  })
})
