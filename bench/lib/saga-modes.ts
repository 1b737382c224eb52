// The ways the saga benchmark runs the same transfer (a pays x, b gets x: one UPDATE in each of
// the databases a and b, in that order):
//
//   direct      the driver calls a, then b, straight over HTTP: no sidecar, each UPDATE in
//               autocommit. The same calls without txmesh (DTM's "without DTM" figure); not atomic.
//   saga        begin at the coordinator sidecar's admin API; each call through its egress
//               (-> participant sidecar ingress -> app, UPDATE under the barrier), recorded there
//               durably as a step with its compensation before the answer reaches the driver;
//               commit at the admin API (decision forced to the log, nothing sent to a or b).
//   saga-abort  the same two steps, then abort?wait=acks: both compensations run (b's, then a's,
//               each under the barrier) before the answer. A rolled-back saga is its success.
import type { Pool as HttpPool } from 'undici'
import type { Cluster } from './tx-cluster.js'
import { errorCode, httpPool, isBeginAnswer, isOutcomeAnswer, type Attempt } from './tx-modes.js'

export const SAGA_SERVICES = ['a', 'b'] as const
export type SagaServiceName = (typeof SAGA_SERVICES)[number]

export type SagaModeName = 'direct' | 'saga' | 'saga-abort'
export const SAGA_MODE_NAMES: readonly SagaModeName[] = ['direct', 'saga', 'saga-abort']

export interface SagaTransfer {
  /** Account per service, in SAGA_SERVICES order. */
  readonly ids: readonly [number, number]
  /** Amount per service (sums to 0). */
  readonly amounts: readonly [number, number]
}

/** A random transfer over `accounts` accounts: a pays x, b gets x. */
export function randomSagaTransfer(accounts: number): SagaTransfer {
  const id = (): number => 1 + Math.floor(Math.random() * accounts)
  const x = 1 + Math.floor(Math.random() * 100)
  return { ids: [id(), id()], amounts: [-x, x] }
}

/**
 * What the saga modes did to the barrier tables over the whole run (probes, warm-ups and the
 * in-flight tails included), by service: the rows the consistency check expects.
 */
export interface BarrierExpectation {
  /** Steps answered 200: one `action` row each. */
  readonly actions: Record<SagaServiceName, number>
  /** Of those, steps of aborted sagas: one `compensate` row each once undone. */
  readonly compensations: Record<SagaServiceName, number>
}

export function newBarrierExpectation(): BarrierExpectation {
  return { actions: { a: 0, b: 0 }, compensations: { a: 0, b: 0 } }
}

export interface SagaMode {
  readonly name: SagaModeName
  readonly label: string
  /** What one transfer costs in messages, statements and forced writes (read off the code path). */
  readonly work: string
  transfer(t: SagaTransfer): Promise<Attempt>
  close(): Promise<void>
}

const SAGA_TIMEOUT_MS = 10_000
const BEGIN_BODY = JSON.stringify({ mode: 'saga', timeoutMs: SAGA_TIMEOUT_MS })

function transferPath(t: SagaTransfer, i: number): string {
  return `/transfer?id=${t.ids[i] as number}&amount=${t.amounts[i] as number}`
}

// ---- direct: the same calls without txmesh ----

class DirectMode implements SagaMode {
  readonly name = 'direct'
  readonly label =
    'the same 2 calls straight to the apps, each UPDATE in autocommit (no sidecar, no barrier, not atomic)'
  readonly work = '2 HTTP exchanges, 2 SQL statements, 2 Postgres WAL flushes in sequence (one per autocommit)'
  private readonly apps: HttpPool[]

  constructor(c: Cluster, connections: number) {
    this.apps = SAGA_SERVICES.map((name) => {
      const app = c.apps.find((a) => a.name === name)
      if (app === undefined) throw new Error(`no app ${name}`)
      return httpPool(app.port, connections)
    })
  }

  async transfer(t: SagaTransfer): Promise<Attempt> {
    for (let i = 0; i < this.apps.length; i++) {
      const r = await (this.apps[i] as HttpPool).request({
        path: transferPath(t, i),
        method: 'POST',
        headers: { 'content-length': '0' },
      })
      await r.body.dump()
      // Nothing undoes a's debit when b fails: why this mode is no answer.
      if (r.statusCode !== 200)
        return { outcome: 'error', detail: `${SAGA_SERVICES[i] as string} answered ${r.statusCode}` }
    }
    return { outcome: 'committed' }
  }

  async close(): Promise<void> {
    await Promise.all(this.apps.map((p) => p.close()))
  }
}

// ---- saga through the sidecars ----

class SagaThroughSidecars implements SagaMode {
  readonly name: SagaModeName
  readonly label: string
  readonly work: string
  private readonly admin: HttpPool
  private readonly egress: HttpPool

  constructor(
    c: Cluster,
    connections: number,
    private readonly abort: boolean,
    private readonly expect: BarrierExpectation,
  ) {
    this.name = abort ? 'saga-abort' : 'saga'
    this.admin = httpPool(c.coordinator.ports.admin, connections)
    this.egress = httpPool(c.coordinator.ports.egress, connections)
    if (!abort) {
      this.label =
        "begin at the coordinator sidecar's admin API, 2 calls via its egress -> participant sidecar -> app (barrier), commit"
      this.work =
        '8 HTTP exchanges (begin + commit at the admin API; 2 × driver -> coordinator egress -> participant ingress -> app), ' +
        '8 SQL statements (per step: BEGIN, INSERT barrier row, UPDATE, COMMIT), 2 Postgres WAL flushes, ' +
        '5 forced coordinator log appends (per step its intent before the call and its record after it; the commit decision), ' +
        '7 forced writes in sequence'
    } else {
      this.label =
        'the same 2 steps, then abort?wait=acks: compensations b then a through the participant sidecars (barrier), answered once both are done'
      this.work =
        '12 HTTP exchanges (+ 2 compensations coordinator -> participant ingress -> app), 18 SQL statements (+ per undo: BEGIN, ' +
        'INSERT action row (conflicts), INSERT compensate row, UPDATE, COMMIT), 4 Postgres WAL flushes, 4 forced coordinator log ' +
        'appends (intent and record of each step; decision and step-done records lazy), 8 forced writes in sequence'
    }
  }

  async transfer(t: SagaTransfer): Promise<Attempt> {
    const begin = await this.admin.request({
      path: '/v1/transactions',
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: BEGIN_BODY,
    })
    const began: unknown = await begin.body.json()
    if (begin.statusCode !== 201 || !isBeginAnswer(began))
      return { outcome: 'error', detail: `begin answered ${begin.statusCode}${errorCode(begin.headers)}` }
    const done: SagaServiceName[] = []
    for (let i = 0; i < SAGA_SERVICES.length; i++) {
      const svc = SAGA_SERVICES[i] as SagaServiceName
      const r = await this.egress.request({
        path: `http://${svc}${transferPath(t, i)}`,
        method: 'POST',
        headers: { 'txmesh-context': began.context, 'content-length': '0' },
      })
      await r.body.dump()
      if (r.statusCode !== 200) {
        const undone = await this.finish(began.id, 'abort', done)
        return {
          outcome: undone.outcome === 'error' ? 'error' : 'aborted',
          detail: `${svc} answered ${r.statusCode}${errorCode(r.headers)}`,
        }
      }
      this.expect.actions[svc]++
      done.push(svc)
    }
    if (!this.abort) return this.finish(began.id, 'commit', done)
    const a = await this.finish(began.id, 'abort', done)
    // The intended outcome of this mode: rolled back, every step compensated.
    return a.outcome === 'aborted' && a.detail === undefined ? { outcome: 'committed' } : a
  }

  /** Commit, or abort (waiting for the compensations when this mode measures them). */
  private async finish(id: string, op: 'commit' | 'abort', done: readonly SagaServiceName[]): Promise<Attempt> {
    const wait = op === 'abort' && this.abort ? '?wait=acks' : ''
    if (op === 'abort') for (const s of done) this.expect.compensations[s]++
    const r = await this.admin.request({
      path: `/v1/transactions/${id}/${op}${wait}`,
      method: 'POST',
      headers: { 'content-length': '0' },
    })
    const body: unknown = await r.body.json()
    if (r.statusCode !== 200 || !isOutcomeAnswer(body))
      return { outcome: 'error', detail: `${op} answered ${r.statusCode}${errorCode(r.headers)}` }
    if (body.outcome === 'committed')
      return op === 'commit' ? { outcome: 'committed' } : { outcome: 'error', detail: 'abort answered committed' }
    if (op === 'commit')
      return { outcome: 'aborted', detail: `aborted: ${body.reason ?? 'no reason given'}`.slice(0, 160) }
    if (wait !== '') {
      const steps = (body as { steps?: { status?: unknown }[] }).steps ?? []
      const open = steps.filter((s) => s.status !== 'finished').length
      if (open > 0) return { outcome: 'aborted', detail: `${open} compensation(s) not finished when abort answered` }
    }
    return { outcome: 'aborted' }
  }

  async close(): Promise<void> {
    await Promise.all([this.admin.close(), this.egress.close()])
  }
}

export function createSagaMode(
  name: SagaModeName,
  c: Cluster,
  connections: number,
  expect: BarrierExpectation,
): SagaMode {
  switch (name) {
    case 'direct':
      return new DirectMode(c, connections)
    case 'saga':
      return new SagaThroughSidecars(c, connections, false, expect)
    case 'saga-abort':
      return new SagaThroughSidecars(c, connections, true, expect)
  }
}

/**
 * The coordinator sidecar's routes: a call to a or b is a saga step whose undo is POST
 * /transfer/undo with the same id and amount (the app negates it), filled from the call itself.
 */
export function coordinatorRoutes(): string {
  const lines = ['routes:']
  for (const svc of SAGA_SERVICES) {
    lines.push(
      `  - name: ${svc}-transfer`,
      `    match: {direction: egress, host: ${svc}, pathPrefix: /transfer, methods: [POST]}`,
      '    compensation: {method: POST, path: "/transfer/undo?id={request.query.id}&amount={request.query.amount}"}',
    )
  }
  return lines.join('\n') + '\n'
}
