// The three ways the transaction benchmark runs the same transfer (one UPDATE in each of the
// databases a, b and c, in that order, amounts netting to zero):
//
//   txmesh  begin at the coordinator sidecar's admin API; one HTTP call per service through its
//           egress (-> participant sidecar ingress -> app, which runs BEGIN + UPDATE through
//           txmesh/pg); commit at the admin API (prepare and commit hooks via the sidecars).
//   txmesh-pg  the same through a second coordinator sidecar whose records are in the Postgres
//           store (a database of the same Postgres) instead of the file log; same participants.
//   local   (a) the driver calls the three apps directly over HTTP, no sidecar, no context: each
//           app runs the UPDATE in autocommit. Same app code path minus txmesh; not atomic.
//   inproc  (b) the driver is the coordinator: three pg pools, BEGIN + UPDATE on each, PREPARE
//           TRANSACTION on the three in parallel, then COMMIT PREPARED on the three in parallel.
//           No sidecar, no HTTP, no app process, no coordinator log.
//   mesh    (c) the calls of (a) through the sidecars (coordinator egress -> participant ingress
//           -> app), no context: what the two proxy hops alone cost, with no transaction.
//
// The calls to a, b, c are sequential in every mode (a transfer debits before it credits); that
// also gives every transaction the same lock order, so 2PC transfers cannot deadlock across
// databases (Postgres cannot see such a cycle).
import pg from 'pg'
import { Pool as HttpPool } from 'undici'
import { SERVICES, type Cluster, type ServiceName, type SidecarProc } from './tx-cluster.js'

export type ModeName = 'local' | 'inproc' | 'mesh' | 'txmesh' | 'txmesh-pg'
export const MODE_NAMES: readonly ModeName[] = ['local', 'inproc', 'mesh', 'txmesh', 'txmesh-pg']

export type Outcome = 'committed' | 'aborted' | 'error'

export interface Attempt {
  readonly outcome: Outcome
  /** Why it aborted or failed (grouped in the report). */
  readonly detail?: string
}

export interface Transfer {
  /** Account per service, in SERVICES order. */
  readonly ids: readonly [number, number, number]
  /** Amount per service (sums to 0). */
  readonly amounts: readonly [number, number, number]
}

export interface Mode {
  readonly name: ModeName
  readonly label: string
  /** What one transfer costs in messages, statements and forced writes (read off the code path). */
  readonly work: string
  /** The coordinator sidecar the transfers go through (its stats and CPU are the run's); undefined: none. */
  readonly coordinator: SidecarProc | undefined
  transfer(t: Transfer): Promise<Attempt>
  close(): Promise<void>
}

/** A random transfer over `accounts` accounts: a pays `x`, b gets `x - 1`, c gets a fee of 1. */
export function randomTransfer(accounts: number): Transfer {
  const id = (): number => 1 + Math.floor(Math.random() * accounts)
  const x = 2 + Math.floor(Math.random() * 99)
  return { ids: [id(), id(), id()], amounts: [-x, x - 1, 1] }
}

const UPDATE = 'UPDATE accounts SET balance = balance + $1 WHERE id = $2'
const TX_TIMEOUT_MS = 10_000
const BEGIN_BODY = JSON.stringify({ mode: '2pc', timeoutMs: TX_TIMEOUT_MS })
// Bounds on the driver's own calls: a stuck call is an error of the run, not a hang.
const CALL_TIMEOUT_MS = 30_000

function transferPath(t: Transfer, i: number): string {
  return `/transfer?id=${t.ids[i] as number}&amount=${t.amounts[i] as number}`
}

export function httpPool(port: number, connections: number): HttpPool {
  return new HttpPool(`http://127.0.0.1:${port}`, {
    connections,
    pipelining: 1,
    headersTimeout: CALL_TIMEOUT_MS,
    bodyTimeout: CALL_TIMEOUT_MS,
    keepAliveTimeout: 60_000,
  })
}

export function errorCode(headers: Record<string, string | string[] | undefined>): string {
  const v = headers['x-txmesh-error']
  return typeof v === 'string' ? ` ${v}` : ''
}

function sqlstate(err: unknown): string | undefined {
  const c = (err as { code?: unknown } | null)?.code
  return typeof c === 'string' && /^[0-9A-Z]{5}$/.test(c) ? c : undefined
}

function describe(err: unknown): string {
  const e = (err ?? {}) as { code?: unknown; message?: unknown }
  const msg = typeof e.message === 'string' ? e.message : String(err)
  return (typeof e.code === 'string' ? `${e.code}: ${msg}` : msg).slice(0, 160)
}

// ---- txmesh ----

export interface BeginAnswer {
  id: string
  context: string
}
export function isBeginAnswer(v: unknown): v is BeginAnswer {
  const o = v as Record<string, unknown> | null
  return typeof o === 'object' && o !== null && typeof o.id === 'string' && typeof o.context === 'string'
}

export interface OutcomeAnswer {
  outcome: 'committed' | 'aborted'
  reason?: string
}
export function isOutcomeAnswer(v: unknown): v is OutcomeAnswer {
  const o = v as Record<string, unknown> | null
  return typeof o === 'object' && o !== null && (o.outcome === 'committed' || o.outcome === 'aborted')
}

/** Where the txmesh modes' coordinator keeps its decisions: what the mode's name and texts say. */
const TXMESH_STORES = {
  txmesh: {
    label: '',
    decision: 'coordinator decision',
    forced: '5 forced writes in sequence on the commit path',
  },
  'txmesh-pg': {
    label: '; the coordinator on the Postgres store (database txmesh_store of the same Postgres)',
    decision: 'coordinator decision, a row of the store',
    forced:
      "5 forced writes in sequence on the commit path (the first a commit of the store's Postgres transaction, which concurrent decisions share: one more WAL flush)",
  },
} as const

class TxmeshMode implements Mode {
  readonly label: string
  readonly work: string
  private readonly admin: HttpPool
  private readonly egress: HttpPool

  /** `coordinator`: the cluster's file-log coordinator (txmesh) or its Postgres-store one (txmesh-pg). */
  constructor(
    readonly name: 'txmesh' | 'txmesh-pg',
    readonly coordinator: SidecarProc,
    connections: number,
  ) {
    const store = TXMESH_STORES[name]
    this.label = `begin at the coordinator sidecar's admin API, 3 calls via its egress -> participant sidecar -> app (txmesh/pg), commit (2PC through the sidecars)${store.label}`
    this.work =
      '23 HTTP exchanges when nothing is batched (begin + commit at the admin API; 3 × driver -> coordinator egress -> participant ingress -> app; ' +
      '3 × control prepare + 3 × control commit; 3 × prepare hook + 3 × commit hook; the control and hook calls of concurrent transfers share requests, ' +
      'counted in the last columns of the table below), 12 SQL statements (per branch: BEGIN, UPDATE, ' +
      'PREPARE TRANSACTION, COMMIT PREPARED; the helper skips its read-only check after a write), 6 Postgres WAL flushes, 7 durable log appends ' +
      `(${store.decision}; PREPARED and END at each participant), ${store.forced}`
    this.admin = httpPool(coordinator.ports.admin, connections)
    this.egress = httpPool(coordinator.ports.egress, connections)
  }

  async transfer(t: Transfer): Promise<Attempt> {
    const begin = await this.admin.request({
      path: '/v1/transactions',
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: BEGIN_BODY,
    })
    const began: unknown = await begin.body.json()
    if (begin.statusCode !== 201 || !isBeginAnswer(began))
      return { outcome: 'error', detail: `begin answered ${begin.statusCode}${errorCode(begin.headers)}` }
    for (let i = 0; i < SERVICES.length; i++) {
      const svc = SERVICES[i] as ServiceName
      const r = await this.egress.request({
        path: `http://${svc}${transferPath(t, i)}`,
        method: 'POST',
        headers: { 'txmesh-context': began.context, 'content-length': '0' },
      })
      await r.body.dump()
      if (r.statusCode !== 200) {
        await this.finish(began.id, 'abort')
        return { outcome: 'aborted', detail: `${svc} answered ${r.statusCode}${errorCode(r.headers)}` }
      }
    }
    return this.finish(began.id, 'commit')
  }

  private async finish(id: string, op: 'commit' | 'abort'): Promise<Attempt> {
    const r = await this.admin.request({
      path: `/v1/transactions/${id}/${op}`,
      method: 'POST',
      headers: { 'content-length': '0' },
    })
    const body: unknown = await r.body.json()
    if (r.statusCode !== 200 || !isOutcomeAnswer(body))
      return { outcome: 'error', detail: `${op} answered ${r.statusCode}${errorCode(r.headers)}` }
    return body.outcome === 'committed'
      ? { outcome: 'committed' }
      : { outcome: 'aborted', detail: `aborted: ${body.reason ?? 'no reason given'}`.slice(0, 160) }
  }

  async close(): Promise<void> {
    await Promise.all([this.admin.close(), this.egress.close()])
  }
}

// ---- (a) local commits over HTTP ----

class LocalMode implements Mode {
  readonly name = 'local'
  readonly label =
    'local commits: 3 HTTP calls straight to the apps, each UPDATE in autocommit (no sidecar, not atomic)'
  readonly work =
    '3 HTTP exchanges, 3 SQL statements, 3 Postgres WAL flushes (one per autocommit), 3 forced writes in sequence (one per call)'
  readonly coordinator = undefined
  private readonly apps: HttpPool[]

  constructor(c: Cluster, connections: number) {
    this.apps = SERVICES.map((name) => {
      const app = c.apps.find((a) => a.name === name)
      if (app === undefined) throw new Error(`no app ${name}`)
      return httpPool(app.port, connections)
    })
  }

  transfer(t: Transfer): Promise<Attempt> {
    return autocommitCalls(t, (i) => ({ pool: this.apps[i] as HttpPool, path: transferPath(t, i) }))
  }

  async close(): Promise<void> {
    await Promise.all(this.apps.map((p) => p.close()))
  }
}

/** The three calls of (a) and (c), in order; each UPDATE commits on its own. */
async function autocommitCalls(t: Transfer, target: (i: number) => { pool: HttpPool; path: string }): Promise<Attempt> {
  for (let i = 0; i < SERVICES.length; i++) {
    const { pool, path } = target(i)
    const r = await pool.request({ path, method: 'POST', headers: { 'content-length': '0' } })
    await r.body.dump()
    // Nothing to roll back: the earlier services already committed (why (a) is no answer).
    if (r.statusCode !== 200)
      return { outcome: 'error', detail: `${SERVICES[i] as string} answered ${r.statusCode}${errorCode(r.headers)}` }
  }
  return { outcome: 'committed' }
}

// ---- (c) the same calls through the mesh, no transaction ----

class MeshMode implements Mode {
  readonly name = 'mesh'
  readonly label =
    "the calls of (a) through the sidecars: driver -> coordinator sidecar's egress -> participant sidecar's ingress -> app, no context (autocommit, not atomic)"
  readonly work =
    '9 HTTP exchanges (3 × driver -> egress -> ingress -> app), 3 SQL statements, 3 Postgres WAL flushes, 3 forced writes in sequence'
  readonly coordinator: SidecarProc
  private readonly egress: HttpPool

  constructor(c: Cluster, connections: number) {
    this.coordinator = c.coordinator
    this.egress = httpPool(c.coordinator.ports.egress, connections)
  }

  transfer(t: Transfer): Promise<Attempt> {
    return autocommitCalls(t, (i) => ({
      pool: this.egress,
      path: `http://${SERVICES[i] as string}${transferPath(t, i)}`,
    }))
  }

  async close(): Promise<void> {
    await this.egress.close()
  }
}

// ---- (b) in-process coordinator, pure SQL ----

interface Branch {
  readonly db: ServiceName
  readonly client: pg.PoolClient
  state: 'open' | 'prepared' | 'done'
}

class InProcMode implements Mode {
  readonly name = 'inproc'
  readonly label =
    'in-process coordinator: the driver runs BEGIN/UPDATE, PREPARE TRANSACTION ×3 ∥, COMMIT PREPARED ×3 ∥ on 3 pg pools (pure SQL, no HTTP, no log)'
  readonly work =
    '0 HTTP, 12 SQL statements (per database: BEGIN, UPDATE, PREPARE TRANSACTION, COMMIT PREPARED), 6 Postgres WAL flushes, ' +
    'no coordinator log (not recoverable), 2 forced writes in sequence (PREPARE ∥, COMMIT PREPARED ∥)'
  readonly coordinator = undefined
  private readonly pools: pg.Pool[]
  private readonly prefix = `bench-${process.pid}-`
  private seq = 0

  constructor(c: Cluster, connections: number) {
    this.pools = SERVICES.map((name) => {
      const pool = new pg.Pool({
        connectionString: c.pg.connectionString(name),
        max: connections,
        idleTimeoutMillis: 0,
      })
      pool.on('error', () => undefined) // idle client errors surface on the next query
      return pool
    })
  }

  async transfer(t: Transfer): Promise<Attempt> {
    // gids are unique in the whole cluster, not per database: one per branch.
    const tx = `${this.prefix}${++this.seq}`
    const branches: Branch[] = []
    // A connection that failed below the SQL level is destroyed rather than reused.
    let broken: Error | undefined
    try {
      try {
        for (let i = 0; i < this.pools.length; i++) {
          const client = await (this.pools[i] as pg.Pool).connect()
          const b: Branch = { db: SERVICES[i] as ServiceName, client, state: 'done' }
          branches.push(b)
          await client.query('BEGIN')
          b.state = 'open'
          const r = await client.query(UPDATE, [t.amounts[i], t.ids[i]])
          if (r.rowCount !== 1) throw new Error(`account ${t.ids[i] as number} not found in ${SERVICES[i] as string}`)
        }
        // Phase 1. allSettled: every branch's state is final before anything is undone. The gid
        // literal is ours (digits and dashes): no escaping needed.
        const votes = await Promise.allSettled(
          branches.map(async (b) => {
            b.state = 'done' // a failed PREPARE rolls the transaction back
            const r = await b.client.query(`PREPARE TRANSACTION '${tx}-${b.db}'`)
            if (r.command !== 'PREPARE') throw new Error('PREPARE TRANSACTION rolled back (a statement had failed)')
            b.state = 'prepared'
          }),
        )
        const no = votes.find((v): v is PromiseRejectedResult => v.status === 'rejected')
        if (no !== undefined) throw no.reason
      } catch (err) {
        if (sqlstate(err) === undefined) broken = err instanceof Error ? err : new Error(String(err))
        await Promise.all(
          branches.map(async (b) => {
            if (b.state === 'open') await b.client.query('ROLLBACK').catch(() => undefined)
            if (b.state === 'prepared') await b.client.query(`ROLLBACK PREPARED '${tx}-${b.db}'`).catch(() => undefined)
          }),
        )
        return { outcome: 'aborted', detail: describe(err) }
      }
      // Phase 2: decided. A failed COMMIT PREPARED is not undone (the others may have committed);
      // it is an error of the run and shows in the consistency check.
      const done = await Promise.allSettled(branches.map((b) => b.client.query(`COMMIT PREPARED '${tx}-${b.db}'`)))
      const failed = done.find((v): v is PromiseRejectedResult => v.status === 'rejected')
      if (failed !== undefined)
        return { outcome: 'error', detail: `COMMIT PREPARED failed: ${describe(failed.reason)}` }
      return { outcome: 'committed' }
    } finally {
      for (const b of branches) b.client.release(broken)
    }
  }

  async close(): Promise<void> {
    await Promise.all(this.pools.map((p) => p.end()))
  }
}

export function createMode(name: ModeName, c: Cluster, connections: number): Mode {
  switch (name) {
    case 'txmesh':
      return new TxmeshMode('txmesh', c.coordinator, connections)
    case 'txmesh-pg':
      if (c.pgCoordinator === undefined) throw new Error('txmesh-pg needs the cluster started with pgStoreCoordinator')
      return new TxmeshMode('txmesh-pg', c.pgCoordinator, connections)
    case 'local':
      return new LocalMode(c, connections)
    case 'inproc':
      return new InProcMode(c, connections)
    case 'mesh':
      return new MeshMode(c, connections)
  }
}

export { describe as describeError }
