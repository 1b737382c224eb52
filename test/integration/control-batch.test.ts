// The control listener's batch endpoint (POST /v1/batch) and the control client's batching, on
// real sockets: per-item answers equal to what each op's own endpoint answers, malformed items
// answered in their place, malformed batches refused whole, and a peer without the endpoint (an
// older txmesh) reached one message at a time. Every answer is signed for its request and the
// client refuses those that are not (test/integration/control-answers.test.ts: forged on the wire).
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http'
import { request } from 'undici'
import { afterEach, describe, expect, it } from 'vitest'
import { createControlServer, type ControlDeps } from '../../src/control/server.js'
import { ReplayCache } from '../../src/control/replay.js'
import { LIMITS } from '../../src/limits.js'
import { silentLogger } from '../../src/telemetry/logger.js'
import { closeServer, listen } from '../../src/net.js'
import { ControlClient } from '../../src/control/client.js'
import { staticKeys } from '../../src/tx/keys.js'
import { signAnswer, signControl } from '../../src/tx/protocol.js'
import { MESH_KEY } from '../helpers/servers.js'

const closers: (() => Promise<void>)[] = []
afterEach(async () => {
  await Promise.all(closers.splice(0).map((c) => c()))
})

const key = Buffer.from(MESH_KEY)

/** A control listener whose participant answers from a table (the batching is what is tested). */
async function controlListener(): Promise<{ port: number; seen: string[] }> {
  const seen: string[] = []
  const deps = {
    keys: staticKeys([key]),
    // Set once listening: the address its answers are signed for.
    self: '',
    coordinator: { outcomeFor: () => 'aborted' },
    steps: {
      has: () => false,
      addPeerStep: async (tx: string, step: { id: string; compensate?: { method: string } }) =>
        void seen.push(`step ${tx}/${step.id} ${step.compensate?.method ?? ''}`),
    },
    tcc: {
      stepHook: async (tx: string, branch: string, op: string, extra: { method: string }) => {
        seen.push(`${op} ${tx}/${branch} ${extra.method}`)
        return 'done'
      },
    },
    participant: {
      prepare: async (tx: string, branch: string) => {
        seen.push(`prepare ${tx}/${branch}`)
        if (branch === 'throws') throw new Error('a bug')
        // Never answers (an app whose prepare hangs): the batch answers this item 503 on its own.
        if (branch === 'hangs') return new Promise(() => undefined)
        return branch === 'no' ? { kind: 'refused', reason: 'app answered prepare with 409' } : { kind: 'prepared' }
      },
      decide: async (tx: string, branch: string, outcome: string) => {
        seen.push(`${outcome} ${tx}/${branch}`)
        return branch === 'busy' ? 'failed' : outcome
      },
      commitOnePhase: async (tx: string, branch: string) => {
        seen.push(`one-phase ${tx}/${branch}`)
        return 'committed'
      },
    },
    logger: silentLogger,
  } as unknown as ControlDeps
  const server = createControlServer(() => deps, undefined, new ReplayCache(Date.now()))
  const port = await listen(server, '127.0.0.1', 0)
  ;(deps as { self: string }).self = `127.0.0.1:${port}`
  closers.push(() => closeServer(server))
  return { port, seen }
}

/**
 * A peer that is not a txmesh control listener but holds the mesh key: answers `answer(req)`,
 * signed for the request as a control listener signs (what the client's checks are tested on).
 */
async function signingPeer(answer: (req: IncomingMessage) => [number, string]): Promise<number> {
  let self = ''
  const server = createServer((req: IncomingMessage, res: ServerResponse) => {
    req.resume()
    const [status, text] = answer(req)
    const auth = signAnswer(key, self, String(req.headers['txmesh-auth']), status, text)
    res.writeHead(status, { 'content-type': 'application/json', 'txmesh-auth': auth }).end(text)
  })
  const port = await listen(server, '127.0.0.1', 0)
  self = `127.0.0.1:${port}`
  closers.push(() => closeServer(server))
  return port
}

async function post(
  port: number,
  path: string,
  body: string,
): Promise<{ status: number; code: unknown; body: Record<string, unknown> }> {
  const r = await request(`http://127.0.0.1:${port}${path}`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', 'txmesh-auth': signControl(key, Date.now(), 'POST', path, body) },
    body,
  })
  const text = await r.body.text()
  return {
    status: r.statusCode,
    code: r.headers['x-txmesh-error'],
    body: text === '' ? {} : (JSON.parse(text) as Record<string, unknown>),
  }
}

describe('control listener: step methods', () => {
  // CONNECT asks for a tunnel and the HTTP client refuses to send it as a request: a step or a
  // confirm/cancel naming it would fail every attempt until it went stuck, so it is refused here.
  it('refuses a step record or a confirm/cancel whose method is CONNECT or not an upper-case method', async () => {
    const { port, seen } = await controlListener()
    const step = (method: string): string =>
      JSON.stringify({
        step: { id: 's1', service: 'pay', target: 'http://127.0.0.1:1', compensate: { method, path: '/undo' } },
      })
    expect(await post(port, '/v1/tx/t1/steps', step('DELETE'))).toMatchObject({
      status: 200,
      body: { id: 't1', step: 's1' },
    })
    for (const m of ['CONNECT', 'delete', 'X'.repeat(LIMITS.stepMethodChars + 1)]) {
      expect(await post(port, '/v1/tx/t1/steps', step(m)), m).toMatchObject({ status: 400, code: 'TXM_BAD_REQUEST' })
      const hook = await post(port, '/v1/tx/t1/confirm', JSON.stringify({ branch: 'b1', method: m, path: '/confirm' }))
      expect(hook, m).toMatchObject({ status: 400, code: 'TXM_BAD_REQUEST' })
      expect(JSON.stringify(hook.body)).toContain('body.method')
    }
    // Other malformed fields are refused too, never replaced by the defaults.
    for (const bad of [
      { path: 'confirm' },
      { path: 7 },
      { body: {} },
      { headers: { 'bad name': 'v' } },
      { headers: ['x'] },
      { headers: { a: 1 } },
      { headers: { a: 'x\r\ny: 1' } },
      { headers: { upgrade: 'websocket' } },
    ]) {
      const hook = await post(port, '/v1/tx/t1/confirm', JSON.stringify({ branch: 'b1', method: 'PUT', ...bad }))
      expect(hook, JSON.stringify(bad)).toMatchObject({ status: 400, code: 'TXM_BAD_REQUEST' })
      const recorded = JSON.stringify({
        step: {
          id: 's2',
          service: 'pay',
          target: 'http://127.0.0.1:1',
          confirm: { method: 'PUT', path: '/c', ...bad },
        },
      })
      expect(await post(port, '/v1/tx/t1/steps', recorded), JSON.stringify(bad)).toMatchObject({
        status: 400,
        code: 'TXM_BAD_REQUEST',
      })
    }
    // No method: the hook is a POST, as before.
    expect(await post(port, '/v1/tx/t1/cancel', JSON.stringify({ branch: 'b1', path: '/cancel' }))).toMatchObject({
      status: 200,
      body: { done: 'cancel' },
    })
    expect(
      await post(port, '/v1/tx/t1/confirm', JSON.stringify({ branch: 'b1', method: 'PUT', path: '/confirm' })),
    ).toMatchObject({ status: 200, body: { done: 'confirm' } })
    expect(seen).toEqual(['step t1/s1 DELETE', 'cancel t1/b1 POST', 'confirm t1/b1 PUT'])
  })
})

describe('control batch endpoint', () => {
  it('answers every item as its own endpoint would, in order, and malformed items in their place', async () => {
    const { port, seen } = await controlListener()
    const items = [
      { tx: 't1', op: 'prepare', branch: 'b1' },
      { tx: 't2', op: 'prepare', branch: 'no' },
      { tx: 't3', op: 'commit', branch: 'b3' },
      { tx: 't4', op: 'abort', branch: 'b4' },
      { tx: 't5', op: 'commit', branch: 'busy' },
      { tx: 't6', op: 'commit-one-phase', branch: 'b6' },
      { tx: 't7', op: 'register', branch: 'b7' },
      { tx: 'bad id!', op: 'prepare', branch: 'b8' },
      { tx: 't9', op: 'prepare', branch: '' },
      'not an object',
    ]
    const r = await post(port, '/v1/batch', JSON.stringify({ items }))
    expect(r.status).toBe(200)
    const results = r.body.results as { status: number; body: Record<string, unknown> }[]
    expect(results.map((x) => x.status)).toEqual([200, 200, 200, 200, 503, 200, 400, 400, 400, 400])
    expect(results[0]?.body).toEqual({ id: 't1', branch: 'b1', vote: 'prepared' })
    expect(results[1]?.body).toEqual({
      id: 't2',
      branch: 'no',
      vote: 'refused',
      reason: 'app answered prepare with 409',
    })
    expect(results[2]?.body).toEqual({ id: 't3', branch: 'b3', outcome: 'committed' })
    expect(results[3]?.body).toEqual({ id: 't4', branch: 'b4', outcome: 'aborted' })
    expect((results[4]?.body.error as { code: string }).code).toBe('TXM_NOT_READY')
    expect(results[5]?.body).toEqual({ id: 't6', branch: 'b6', outcome: 'committed' })
    for (const i of [6, 7, 8, 9]) expect((results[i]?.body.error as { code: string }).code).toBe('TXM_BAD_REQUEST')
    // The single endpoint answers the same for the same op.
    const single = await post(port, '/v1/tx/t1/prepare', JSON.stringify({ branch: 'b1' }))
    expect(single).toMatchObject({ status: 200, body: results[0]?.body })
    expect(seen).toEqual([
      'prepare t1/b1',
      'prepare t2/no',
      'committed t3/b3',
      'aborted t4/b4',
      'committed t5/busy',
      'one-phase t6/b6',
      'prepare t1/b1',
    ])
  })

  it('answers an item that throws with 500 and one still working after batchItemWaitMs with 503, and the others as usual', async () => {
    const { port } = await controlListener()
    const started = Date.now()
    const r = await post(
      port,
      '/v1/batch',
      JSON.stringify({
        items: [
          { tx: 't1', op: 'prepare', branch: 'throws' },
          { tx: 't2', op: 'prepare', branch: 'hangs' },
          { tx: 't3', op: 'commit', branch: 'b3' },
        ],
      }),
    )
    expect(r.status).toBe(200)
    const results = r.body.results as { status: number; body: { error?: { code: string } } }[]
    expect(results.map((x) => [x.status, x.body.error?.code])).toEqual([
      [500, 'TXM_INTERNAL'],
      [503, 'TXM_NOT_READY'],
      [200, undefined],
    ])
    // Within the caller's timeout, so the items that finished are not lost with the slow one.
    expect(Date.now() - started).toBeGreaterThanOrEqual(LIMITS.batchItemWaitMs - 100)
    expect(Date.now() - started).toBeLessThan(LIMITS.controlCallTimeoutMs)
  }, 15_000)

  it('refuses a batch that is not a list of at most batchMaxItems items, and an unsigned one', async () => {
    const { port, seen } = await controlListener()
    const item = { tx: 't1', op: 'prepare', branch: 'b1' }
    for (const body of [
      '{}',
      '{"items": []}',
      '{"items": {}}',
      JSON.stringify({ items: Array.from({ length: LIMITS.batchMaxItems + 1 }, () => item) }),
    ]) {
      const r = await post(port, '/v1/batch', body)
      expect([r.status, r.code], body.slice(0, 30)).toEqual([400, 'TXM_BAD_REQUEST'])
    }
    const unsigned = await request(`http://127.0.0.1:${port}/v1/batch`, {
      method: 'POST',
      body: JSON.stringify({ items: [item] }),
    })
    expect([unsigned.statusCode, unsigned.headers['x-txmesh-error']]).toEqual([401, 'TXM_CONTROL_UNAUTHORIZED'])
    await unsigned.body.dump()
    const get = await request(`http://127.0.0.1:${port}/v1/batch`, {
      headers: { 'txmesh-auth': signControl(key, Date.now(), 'GET', '/v1/batch', '') },
    })
    expect([get.statusCode, get.headers['x-txmesh-error']]).toEqual([405, 'TXM_METHOD_NOT_ALLOWED'])
    await get.body.dump()
    expect(seen).toEqual([])
  })

  it('the control client batches what meets, and talks one message at a time to a peer without the batch endpoint', async () => {
    const { port, seen } = await controlListener()
    const client = new ControlClient(staticKeys([key]))
    closers.push(() => client.close())
    const answers = await Promise.all(
      [1, 2, 3].map((i) => client.send(`127.0.0.1:${port}`, { tx: `t${i}`, op: 'commit', branch: `b${i}` })),
    )
    expect(answers.map((a) => a.ok && a.body.outcome)).toEqual(['committed', 'committed', 'committed'])
    expect(seen).toEqual(['committed t1/b1', 'committed t2/b2', 'committed t3/b3'])
    expect(client.batchCounters).toEqual({ items: 3, batches: 1 })

    // A peer without the batch endpoint: 404 TXM_NOT_FOUND for /v1/batch, the single endpoints
    // for the rest (signed: a peer that does not sign its answers is not heard at all).
    const paths: string[] = []
    const oldPort = await signingPeer((req) => {
      paths.push(`${req.method ?? ''} ${req.url ?? ''}`)
      const m = /^\/v1\/tx\/([^/]+)\/commit$/.exec(req.url ?? '')
      const [status, body] =
        m === null
          ? [404, { error: { code: 'TXM_NOT_FOUND', message: 'no control endpoint' } }]
          : [200, { id: m[1], outcome: 'committed' }]
      return [status, JSON.stringify(body)]
    })
    const first = await Promise.all(
      [1, 2].map((i) => client.send(`127.0.0.1:${oldPort}`, { tx: `o${i}`, op: 'commit', branch: 'b' })),
    )
    expect(first.map((a) => a.ok && a.body.outcome)).toEqual(['committed', 'committed'])
    const second = await client.send(`127.0.0.1:${oldPort}`, { tx: 'o3', op: 'commit', branch: 'b' })
    expect(second.ok).toBe(true)
    // Asked once, then remembered.
    expect(paths).toEqual(['POST /v1/batch', 'POST /v1/tx/o1/commit', 'POST /v1/tx/o2/commit', 'POST /v1/tx/o3/commit'])

    // A peer answering nonsense: every item fails with a reason, nothing hangs or throws.
    for (const [answer, error] of [
      ['null', 'control response is not a JSON object'],
      ['[1, 2]', 'control response is not a JSON object'],
      ['{"results": [{"status": 200, "body": {}}]}', 'control batch answer does not match the batch'],
      ['{"results": "x"}', 'control batch answer does not match the batch'],
      ['not json', 'control response is not JSON'],
    ] as const) {
      const oddPort = await signingPeer(() => [200, answer])
      const got = await Promise.all(
        [1, 2].map((i) => client.send(`127.0.0.1:${oddPort}`, { tx: `n${i}`, op: 'commit', branch: 'b' })),
      )
      expect(
        got.map((a) => !a.ok && a.error),
        answer,
      ).toEqual([error, error])
    }

    // An unreachable peer: every item fails, nothing hangs.
    const dead = await Promise.all(
      [1, 2].map((i) => client.send('127.0.0.1:1', { tx: `d${i}`, op: 'prepare', branch: 'b' })),
    )
    expect(dead.every((a) => !a.ok && a.error === 'ECONNREFUSED')).toBe(true)
  })
})
