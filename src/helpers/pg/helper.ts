// The Postgres participant helper (DESIGN.md "Participant helper"): a business request that
// carries txmesh-tx-id / txmesh-branch-id runs inside a local transaction that stays open after
// the response; the sidecar's prepare / commit / abort hooks finish it with PREPARE TRANSACTION /
// COMMIT PREPARED / ROLLBACK PREPARED under the gid `txm:<service>:<txId>:<branchId>`.
//
// Life of a branch (one per gid, in `open` while it holds a connection):
//   opening -> open --prepare--> prepared (connection released; the row lives in Postgres)
//                   --prepare, no writes--> committed locally, vote read-only (204)
//                   --commit (never prepared)--> one-phase COMMIT
//                   --abort / failed request / idle timeout / close--> rolled back
// Finished branches leave a tombstone so late requests are refused and repeated prepares
// answer the same. Presumed abort: an unprepared branch can only ever end rolled back (Postgres
// rolls it back when its session ends), which is what lets abort, close and crashes be simple.
//
// Saga and tcc calls (the sidecar sets txmesh-op) never open a branch: their work commits locally
// at once, made safe against retries and reordering by barrier() (barrier.ts).
import type { IncomingMessage, ServerResponse } from 'node:http'
import type { Pool, PoolClient, QueryResult, QueryResultRow } from 'pg'
import type { Next, TxmeshHandler, TxmeshPg, TxmeshPgStats, TxmeshPgTx, TxmeshRequest } from './api.js'
import {
  OP_HEADER,
  badOpError,
  barrierIds,
  createBarrierTable,
  isBarrierOp,
  runBarrier,
  type BarrierIds,
  type BarrierResult,
} from './barrier.js'
import { createInboxTable, inboxIds, runInbox, type InboxIds, type InboxResult } from './inbox.js'
import {
  CLOSED_COMMITTED,
  CLOSED_PREPARED,
  CLOSED_READ_ONLY,
  WRITE_COMMANDS,
  asError,
  currentXid,
  lateRequestError,
  openClient,
  type Branch,
  type Tombstone,
} from './branch.js'
import {
  PgBadBatchError,
  PgBadIdError,
  PgBranchBusyError,
  PgBranchClosedError,
  PgBranchExpiredError,
  PgBranchFailedError,
  PgBranchUnknownError,
  PgClosedError,
  PgConfigError,
  PgError,
  PgMethodNotAllowedError,
  PgNotFoundError,
  PgOutcomeUnknownError,
  PgPrepareFailedError,
  PgTooManyOpenError,
  PgUnavailableError,
  TxmeshPgError,
  messageOf,
  sqlstateOf,
} from './errors.js'
import type { TxmeshPgEvent } from './events.js'
import { assertService, gidLiteral, makeGid, type BranchIds } from './gid.js'
import { BATCH_HOOK, HOOKS, batchResult, parseBatch, readBody, withinItemWait } from './hooks.js'
import { internal, isThenable, readIds } from './http-entry.js'
import { PG_HELPER_LIMITS as L } from './limits.js'
import {
  DEFAULT_HOOK_PREFIX,
  DEFAULT_SIDECAR_ADMIN,
  checkAdminUrl,
  checkInt,
  checkPrefix,
  type TxmeshPgOptions,
} from './options.js'
import { BranchQueue } from './queue.js'
import { recoverPrepared, type RecoverResult } from './recover.js'
import { fail, ok, sendAnswer, sendError, sendHandlerFailure, sendJson, type HookAnswer } from './respond.js'

// The public types index.ts exports beside createTxmeshPg.
export type { Next, TxmeshHandler, TxmeshPg, TxmeshPgStats, TxmeshPgTx, TxmeshRequest } from './api.js'
export type { TxmeshPgOptions } from './options.js'

export function createTxmeshPg(options: TxmeshPgOptions): TxmeshPg {
  return new PgParticipant(options)
}

class PgParticipant implements TxmeshPg {
  private readonly pool: Pool
  private readonly service: string
  private readonly sidecarAdmin: string
  private readonly adminToken: string | undefined
  private readonly maxOpen: number
  private readonly idleTimeoutMs: number
  private readonly hookPrefix: string
  private readonly onEvent: ((event: TxmeshPgEvent) => void) | undefined
  private readonly open = new Map<string, Branch>()
  private readonly tombstones = new Map<string, Tombstone>()
  private closing: Promise<void> | undefined
  private readonly recoverTimer: NodeJS.Timeout | undefined
  /** The periodic sweep under way (sweeps never overlap). */
  private sweeping: Promise<unknown> | undefined
  private barrierReady: Promise<void> | undefined
  private inboxReady: Promise<void> | undefined

  constructor(o: TxmeshPgOptions) {
    if (typeof o.pool?.connect !== 'function') throw new PgConfigError('pool must be a pg.Pool')
    assertService(o.service)
    this.pool = o.pool
    this.service = o.service
    this.sidecarAdmin = checkAdminUrl(o.sidecarAdmin ?? DEFAULT_SIDECAR_ADMIN)
    const token = o.adminToken ?? process.env.TXMESH_ADMIN_TOKEN
    if (token !== undefined && typeof token !== 'string') throw new PgConfigError('adminToken must be a string')
    this.adminToken = token === '' ? undefined : token
    this.maxOpen = checkInt('maxOpen', o.maxOpen ?? L.defaultMaxOpen, 1, L.maxOpenCap)
    this.idleTimeoutMs = checkInt('idleTimeoutMs', o.idleTimeoutMs ?? L.defaultIdleTimeoutMs, 1, L.maxIdleTimeoutMs)
    this.hookPrefix = checkPrefix(o.hookPrefix ?? DEFAULT_HOOK_PREFIX)
    this.onEvent = o.onEvent
    const every = checkInt(
      'recoverIntervalMs',
      o.recoverIntervalMs ?? L.defaultRecoverIntervalMs,
      0,
      L.maxRecoverIntervalMs,
    )
    if (every > 0) {
      this.recoverTimer = setInterval(() => this.sweep(every), every)
      // A helper nobody closed must not keep the process alive.
      this.recoverTimer.unref()
    }
  }

  // ---- HTTP entry points ----

  readonly middleware = (req: IncomingMessage, res: ServerResponse, next: Next): void => {
    const path = (req.url ?? '/').split('?', 1)[0] ?? '/'
    if (path.startsWith(`${this.hookPrefix}/`)) {
      const hook = path.slice(this.hookPrefix.length + 1)
      if (HOOKS.has(hook))
        return void this.serveHook(hook, req, res).catch((err: unknown) => sendError(res, internal(err)))
      if (hook === BATCH_HOOK)
        return void this.serveBatch(req, res).catch((err: unknown) => sendError(res, internal(err)))
      // Other names under the prefix (tcc's confirm/cancel) are the app's own hooks: passed on,
      // and never opened as a branch although they carry the txmesh headers.
      return next()
    }
    const op = req.headers[OP_HEADER]
    if (op !== undefined) {
      // A saga/tcc call: its work commits locally right away (under barrier()), so no branch is
      // held whatever tx/branch headers it carries. 2PC calls never carry txmesh-op.
      if (!isBarrierOp(op)) return sendError(res, badOpError(op))
      return next()
    }
    const ids = readIds(req)
    if (ids === undefined) return next()
    let gid: string
    try {
      gid = makeGid(this.service, ids)
    } catch (err) {
      return sendError(res, err instanceof TxmeshPgError ? err : new PgBadIdError(messageOf(err)))
    }
    void this.serveBusiness(ids, gid, res, req, next).catch((err: unknown) => sendError(res, internal(err)))
  }

  handler(fn: TxmeshHandler): (req: IncomingMessage, res: ServerResponse) => void {
    return (req, res) => {
      const failed = (err: unknown): void => {
        this.emit({ event: 'handler_error', message: messageOf(err) })
        sendHandlerFailure(res)
      }
      this.middleware(req, res, (err) => {
        if (err !== undefined) return failed(err)
        try {
          const result = fn(req, res, (req as TxmeshRequest).txmesh)
          if (isThenable(result)) void Promise.resolve(result).catch(failed)
        } catch (e) {
          failed(e)
        }
      })
    }
  }

  // ---- business requests ----

  private async serveBusiness(
    ids: BranchIds,
    gid: string,
    res: ServerResponse,
    req: IncomingMessage,
    next: Next,
  ): Promise<void> {
    // Watch the response from the start: a client that goes away while the request waits for
    // its turn must not leave the branch locked.
    let outcome: { ok: boolean } | undefined
    let onEnd: (() => void) | undefined
    const ended = (finished: boolean): void => {
      if (outcome) return
      outcome = { ok: finished && res.statusCode < 400 }
      onEnd?.()
    }
    res.once('finish', () => ended(true))
    res.once('close', () => ended(res.writableFinished))

    if (this.closing) return sendError(res, new PgClosedError('the txmesh/pg helper is closed'))

    let branch = this.open.get(gid)
    let release: () => void
    if (branch === undefined) {
      const tomb = this.tombstones.get(gid)
      if (tomb) return sendError(res, lateRequestError(tomb))
      if (this.open.size >= this.maxOpen) {
        return sendError(
          res,
          new PgTooManyOpenError(
            `${this.open.size} branches are open, the limit (maxOpen) is ${this.maxOpen}; nothing was opened`,
          ),
        )
      }
      branch = this.newBranch(ids, gid)
      const first = branch.queue.tryAcquire('request')
      if (!first) throw new Error('unreachable: a new branch is free')
      release = first
      const err = (await this.begin(branch)) ?? branch.failure // close() may have doomed it meanwhile
      if (err) {
        release()
        return sendError(res, err)
      }
    } else {
      const turn = await branch.queue.acquire('request', L.requestQueueWaitMs)
      if (!turn.ok) {
        return sendError(
          res,
          new PgBranchBusyError(
            turn.reason === 'full'
              ? `${L.maxQueuedPerBranch} requests of this branch are already waiting`
              : `waited ${L.requestQueueWaitMs} ms for the branch's previous request`,
          ),
        )
      }
      release = turn.release
      if (branch.state !== 'open' || branch.failure) {
        release()
        return sendError(res, branch.failure ?? branch.closedWith ?? new PgBranchClosedError('the branch is finished'))
      }
    }

    const b = branch
    const client = b.client
    if (client === undefined || outcome !== undefined) {
      // The caller left while we waited: nothing ran, the branch is as it was.
      release()
      return
    }
    clearTimeout(b.idleTimer)
    b.idleTimer = undefined
    let active = true
    const tx: TxmeshPgTx = {
      client,
      txId: ids.txId,
      branchId: ids.branchId,
      gid,
      query: <R extends QueryResultRow = QueryResultRow>(text: string, values?: unknown[]): Promise<QueryResult<R>> => {
        if (!active || b.state !== 'open')
          return Promise.reject(
            new PgBranchClosedError('this request has ended; the branch connection is no longer its to use'),
          )
        return client.query<R>(text, values).then((r) => {
          if (!b.wrote && (r.rowCount ?? 0) > 0 && WRITE_COMMANDS.has(r.command)) b.wrote = true
          return r
        })
      },
    }
    ;(req as TxmeshRequest).txmesh = tx
    onEnd = () => {
      active = false
      this.afterRequest(b, release, outcome?.ok === true, res)
    }
    next()
  }

  private afterRequest(b: Branch, release: () => void, succeeded: boolean, res: ServerResponse): void {
    if (!succeeded) {
      const why = res.writableFinished ? `answered ${res.statusCode}` : 'ended without a complete response'
      b.failure ??= new PgBranchFailedError(`a request of this branch ${why}; the branch was rolled back`)
    }
    if (b.failure === undefined && b.broken === undefined) return release()
    // Roll back at once rather than at prepare: a failed branch only holds locks and a slot.
    const error = b.failure ?? new PgBranchFailedError('the branch connection failed')
    void this.rollbackAndClose(b, { kind: 'failed', error }, error).finally(release)
    this.emit({ event: 'branch_failed', gid: b.gid, code: error.code, message: error.message })
  }

  private newBranch(ids: BranchIds, gid: string): Branch {
    const b: Branch = {
      ids,
      gid,
      state: 'opening',
      client: undefined,
      failure: undefined,
      wrote: false,
      broken: undefined,
      closedWith: undefined,
      queue: new BranchQueue(L.maxQueuedPerBranch, () => this.armIdle(b)),
      idleTimer: undefined,
      onClientError: (err) => this.onClientError(b, err),
    }
    this.open.set(gid, b)
    return b
  }

  /** Checks out the branch's connection and runs BEGIN. Undefined when the branch is open. */
  private async begin(b: Branch): Promise<TxmeshPgError | undefined> {
    let client: PoolClient
    try {
      client = await this.connect()
    } catch (err) {
      const error = err instanceof TxmeshPgError ? err : new PgUnavailableError(messageOf(err))
      this.closeBranch(b, undefined, error, undefined)
      return error
    }
    if (b.state === 'closed') {
      // close() gave up on it meanwhile.
      client.release()
      return b.closedWith ?? new PgClosedError('the txmesh/pg helper is closed')
    }
    client.on('error', b.onClientError)
    b.client = client
    try {
      await client.query('BEGIN')
    } catch (err) {
      const error = new PgUnavailableError(`BEGIN failed: ${messageOf(err)}`, { sqlstate: sqlstateOf(err) })
      this.closeBranch(b, undefined, error, asError(err))
      return error
    }
    b.state = 'open'
    this.emit({ event: 'branch_opened', gid: b.gid })
    return undefined
  }

  private armIdle(b: Branch): void {
    if (b.state !== 'open' || this.closing) return
    clearTimeout(b.idleTimer)
    b.idleTimer = setTimeout(() => this.expire(b), this.idleTimeoutMs)
    b.idleTimer.unref()
  }

  private expire(b: Branch): void {
    b.idleTimer = undefined
    const release = b.queue.tryAcquire('hook')
    if (!release) return // in use: the timer is armed again when it is released
    if (b.state !== 'open') return release()
    const error = new PgBranchExpiredError(
      `the branch was idle for ${this.idleTimeoutMs} ms without prepare or abort and was rolled back`,
    )
    this.emit({ event: 'branch_expired', gid: b.gid, code: error.code, message: error.message })
    void this.rollbackAndClose(b, { kind: 'failed', error }, error).finally(release)
  }

  private onClientError(b: Branch, err: Error): void {
    b.broken ??= err
    b.failure ??= new PgBranchFailedError(`the branch's Postgres connection failed: ${err.message}`)
    const release = b.queue.tryAcquire('hook')
    if (!release) return // the holder sees `broken` when it finishes
    if (b.state !== 'closed') this.closeBranch(b, { kind: 'failed', error: b.failure }, b.failure, err)
    release()
  }

  // ---- hooks ----

  private async serveHook(hook: string, req: IncomingMessage, res: ServerResponse): Promise<void> {
    if (req.method !== 'POST') {
      res.setHeader('allow', 'POST')
      return sendError(res, new PgMethodNotAllowedError(`${hook} hook takes POST, got ${req.method ?? '?'}`))
    }
    const ids = readIds(req)
    if (ids === undefined)
      return sendError(res, new PgBadIdError(`the ${hook} hook needs txmesh-tx-id and txmesh-branch-id headers`))
    sendAnswer(res, await this.runHook(hook, ids))
  }

  private async runHook(hook: string, ids: BranchIds): Promise<HookAnswer> {
    try {
      const gid = makeGid(this.service, ids)
      if (this.closing) throw new PgClosedError('the txmesh/pg helper is closed')
      return hook === 'prepare'
        ? await this.prepare(gid)
        : hook === 'commit'
          ? await this.commit(gid)
          : await this.abort(gid)
    } catch (err) {
      return fail(err instanceof TxmeshPgError ? err : new PgError(messageOf(err), { sqlstate: sqlstateOf(err) }))
    }
  }

  /**
   * `POST {hookPrefix}/batch` (the sidecar's `hooks.batch`): several prepare / commit / abort
   * calls in one request, `{items: [{hook, tx, branch}]}`, run at once; the answer lists, in
   * order, the status and body each hook's own endpoint would have answered.
   */
  private async serveBatch(req: IncomingMessage, res: ServerResponse): Promise<void> {
    if (req.method !== 'POST') {
      res.setHeader('allow', 'POST')
      return sendError(res, new PgMethodNotAllowedError(`the batch hook takes POST, got ${req.method ?? '?'}`))
    }
    const text = await readBody(req, L.maxBatchBodyBytes, L.batchReadMs)
    const items = text instanceof PgBadBatchError ? text : parseBatch(text)
    if (items instanceof PgBadBatchError) {
      // Unread bytes of an oversize body would be parsed as the next request: close instead.
      if (text instanceof PgBadBatchError) res.setHeader('connection', 'close')
      return sendError(res, items)
    }
    const answers = await Promise.all(
      items.map((it) =>
        it instanceof TxmeshPgError ? fail(it) : withinItemWait(this.runHook(it.hook, it.ids), it.hook),
      ),
    )
    sendJson(res, 200, { results: answers.map(batchResult) }, undefined)
  }

  private async prepare(gid: string): Promise<HookAnswer> {
    const b = this.open.get(gid)
    if (b) {
      const turn = await b.queue.acquire('hook', L.hookWaitMs)
      if (!turn.ok) {
        // A stuck request: vote no, and the branch rolls back when that request ends.
        b.failure ??= new PgBranchFailedError(
          `prepare found a request of this branch still running after ${L.hookWaitMs} ms and voted no`,
        )
        return fail(b.failure)
      }
      try {
        if (b.state === 'open') return await this.prepareOpen(b)
      } finally {
        turn.release()
      }
    }
    return this.prepareFinished(gid)
  }

  private async prepareOpen(b: Branch): Promise<HookAnswer> {
    const client = openClient(b)
    if (b.failure) return this.refuse(b, b.failure)
    let xid: string | null = 'assigned'
    try {
      // Statements run on tx.client directly are not seen: then the check decides.
      if (!b.wrote) xid = await currentXid(client)
    } catch (err) {
      // 25P02: a statement failed and the handler carried on; the transaction can only roll back.
      return this.refuse(
        b,
        new PgBranchFailedError(`the branch's transaction cannot be prepared: ${messageOf(err)}`, {
          sqlstate: sqlstateOf(err),
        }),
      )
    }
    if (xid === null) {
      // No xid: the branch wrote nothing (and locked no rows). Finish it here; phase 2 skips it.
      try {
        const r = await client.query('COMMIT')
        if (r.command !== 'COMMIT')
          return this.refuse(b, new PgBranchFailedError('Postgres rolled the read-only transaction back'))
      } catch (err) {
        // A read-only commit can still fail (serializable isolation); its reads are then void.
        return this.refuse(
          b,
          new PgBranchFailedError(`COMMIT of the read-only branch failed: ${messageOf(err)}`, {
            sqlstate: sqlstateOf(err),
          }),
        )
      }
      this.closeBranch(b, { kind: 'read-only' }, CLOSED_READ_ONLY, undefined)
      this.emit({ event: 'branch_read_only', gid: b.gid })
      return { kind: 'read-only' }
    }
    let command: string
    try {
      command = (await client.query(`PREPARE TRANSACTION ${gidLiteral(b.gid)}`)).command
    } catch (err) {
      const sqlstate = sqlstateOf(err)
      // A server error means Postgres rolled the transaction back: a definite no.
      if (sqlstate !== undefined)
        return this.refuse(b, new PgPrepareFailedError(`PREPARE TRANSACTION failed: ${messageOf(err)}`, { sqlstate }))
      // The connection broke: prepared or not is unknown until a retried prepare looks it up.
      this.closeBranch(
        b,
        { kind: 'prepare-unknown' },
        new PgBranchClosedError('the branch connection was lost during prepare'),
        asError(err),
      )
      return fail(
        new PgError(`connection lost during PREPARE TRANSACTION (retry prepare to learn the vote): ${messageOf(err)}`),
      )
    }
    // PREPARE on a transaction in the aborted state succeeds with the tag ROLLBACK.
    if (command !== 'PREPARE') {
      const error = new PgPrepareFailedError(
        'a statement of the branch had failed, so Postgres rolled the transaction back instead of preparing it',
      )
      this.closeBranch(b, { kind: 'failed', error }, error, undefined)
      return fail(error)
    }
    this.closeBranch(b, { kind: 'prepared' }, CLOSED_PREPARED, undefined)
    this.emit({ event: 'branch_prepared', gid: b.gid })
    return ok({ vote: 'prepared', gid: b.gid })
  }

  /** Prepare of a branch not open here: repeated, after a restart, or never seen. */
  private async prepareFinished(gid: string): Promise<HookAnswer> {
    const tomb = this.tombstones.get(gid)
    if (tomb?.kind === 'read-only') return { kind: 'read-only' }
    if (await this.isPrepared(gid)) return ok({ vote: 'prepared', gid })
    if (tomb === undefined)
      return fail(
        new PgBranchUnknownError(
          `no open or prepared branch ${gid} in this app instance (never opened here, or lost in a restart)`,
        ),
      )
    if (tomb.kind === 'failed') return fail(tomb.error)
    return fail(new PgBranchClosedError(`branch ${gid} is not prepared (it was ${tomb.kind})`))
  }

  private async commit(gid: string): Promise<HookAnswer> {
    const b = this.open.get(gid)
    if (b) {
      const turn = await b.queue.acquire('hook', L.hookWaitMs)
      if (!turn.ok) return fail(new PgBranchBusyError(`a request of branch ${gid} is still running`))
      try {
        if (b.state === 'open') return await this.commitOnePhase(b)
      } finally {
        turn.release()
      }
    }
    const tomb = this.tombstones.get(gid)
    if (tomb?.kind === 'commit-unknown') return this.resolveOnePhase(gid, tomb.xid)
    return this.finishPrepared(gid, 'commit')
  }

  /** Commit of a branch that was never prepared: one-phase commit (one participant). */
  private async commitOnePhase(b: Branch): Promise<HookAnswer> {
    const client = openClient(b)
    if (b.failure) return this.refuse(b, b.failure)
    let xid: string | null
    try {
      xid = await currentXid(client)
    } catch (err) {
      return this.refuse(
        b,
        new PgBranchFailedError(`the branch's transaction cannot commit: ${messageOf(err)}`, {
          sqlstate: sqlstateOf(err),
        }),
      )
    }
    let command: string
    try {
      command = (await client.query('COMMIT')).command
    } catch (err) {
      const sqlstate = sqlstateOf(err)
      if (sqlstate !== undefined)
        return this.refuse(b, new PgBranchFailedError(`COMMIT failed: ${messageOf(err)}`, { sqlstate }))
      if (xid === null) {
        // Nothing was written: whatever happened to the session, there is nothing to lose.
        this.closeBranch(b, { kind: 'committed' }, CLOSED_COMMITTED, asError(err))
        return ok({ outcome: 'committed' })
      }
      this.closeBranch(
        b,
        { kind: 'commit-unknown', xid },
        new PgBranchClosedError('the branch connection was lost during commit'),
        asError(err),
      )
      return this.resolveOnePhase(b.gid, xid)
    }
    if (command !== 'COMMIT') {
      const error = new PgBranchFailedError(
        'a statement of the branch had failed, so Postgres rolled it back at COMMIT',
      )
      this.closeBranch(b, { kind: 'failed', error }, error, undefined)
      return fail(error)
    }
    this.closeBranch(b, { kind: 'committed' }, CLOSED_COMMITTED, undefined)
    this.emit({ event: 'branch_committed', gid: b.gid })
    return ok({ outcome: 'committed' })
  }

  private async resolveOnePhase(gid: string, xid: string): Promise<HookAnswer> {
    const status = await this.withConnection(
      async (c) =>
        (await c.query<{ s: string | null }>('SELECT txid_status($1::bigint) AS s', [xid])).rows[0]?.s ?? null,
    )
    if (status === 'committed') {
      this.remember(gid, { kind: 'committed' })
      return ok({ outcome: 'committed' })
    }
    if (status === 'aborted') {
      const error = new PgBranchFailedError(
        'the one-phase commit was rolled back by Postgres (its connection was lost during COMMIT)',
      )
      this.remember(gid, { kind: 'failed', error })
      return fail(error)
    }
    return fail(
      new PgOutcomeUnknownError(`transaction ${xid} of branch ${gid} is ${status ?? 'too old to look up'}; retry`),
    )
  }

  private async abort(gid: string): Promise<HookAnswer> {
    const b = this.open.get(gid)
    if (b) {
      if (b.queue.holder === 'request') {
        // An unprepared branch can only end rolled back (presumed abort), so the answer is
        // already true; the rollback happens when the running request ends.
        b.failure ??= new PgBranchFailedError('the branch was aborted by its coordinator')
        this.emit({ event: 'branch_aborted', gid })
        return ok({ outcome: 'aborted' })
      }
      const turn = await b.queue.acquire('hook', L.hookWaitMs)
      if (!turn.ok) return fail(new PgBranchBusyError(`branch ${gid} is busy`))
      try {
        if (b.state === 'open') {
          await this.rollbackAndClose(
            b,
            { kind: 'aborted' },
            new PgBranchFailedError('the branch was aborted by its coordinator'),
          )
          this.emit({ event: 'branch_aborted', gid })
          return ok({ outcome: 'aborted' })
        }
      } finally {
        turn.release()
      }
    }
    return this.finishPrepared(gid, 'abort')
  }

  private async finishPrepared(gid: string, how: 'commit' | 'abort'): Promise<HookAnswer> {
    const verb = how === 'commit' ? 'COMMIT PREPARED' : 'ROLLBACK PREPARED'
    try {
      await this.withConnection((c) => c.query(`${verb} ${gidLiteral(gid)}`))
    } catch (err) {
      if (err instanceof TxmeshPgError) return fail(err)
      const sqlstate = sqlstateOf(err)
      if (sqlstate === '42704')
        return fail(new PgNotFoundError(`no open or prepared branch ${gid}: already finished, or never prepared`))
      if (sqlstate === '55000') return fail(new PgBranchBusyError(`${verb}: ${messageOf(err)}`, { sqlstate }))
      return fail(new PgError(`${verb} failed: ${messageOf(err)}`, { sqlstate }))
    }
    this.remember(gid, { kind: how === 'commit' ? 'committed' : 'aborted' })
    this.emit({ event: how === 'commit' ? 'branch_committed' : 'branch_aborted', gid })
    return ok({ outcome: how === 'commit' ? 'committed' : 'aborted' })
  }

  /** Vote no: roll back, close, answer 409 with the reason. */
  private async refuse(b: Branch, error: TxmeshPgError): Promise<HookAnswer> {
    await this.rollbackAndClose(b, { kind: 'failed', error }, error)
    this.emit({ event: 'branch_failed', gid: b.gid, code: error.code, message: error.message })
    return fail(error)
  }

  // ---- saga / tcc barrier ----

  async barrier<T>(
    req: IncomingMessage | BarrierIds,
    fn: (client: PoolClient) => Promise<T>,
  ): Promise<BarrierResult<T>> {
    const ids = barrierIds(req)
    if (this.closing) throw new PgClosedError('the txmesh/pg helper is closed')
    await this.ensureBarrier()
    return runBarrier(() => this.connect(), ids, fn)
  }

  async inbox<T>(req: IncomingMessage | InboxIds, fn: (client: PoolClient) => Promise<T>): Promise<InboxResult<T>> {
    const ids = inboxIds(req)
    if (this.closing) throw new PgClosedError('the txmesh/pg helper is closed')
    await this.ensureInbox()
    return runInbox(() => this.connect(), ids, fn)
  }

  ensureInbox(): Promise<void> {
    this.inboxReady ??= this.withConnection(createInboxTable).catch((err: unknown) => {
      this.inboxReady = undefined
      throw err
    })
    return this.inboxReady
  }

  ensureBarrier(): Promise<void> {
    // Once per instance; concurrent first calls share the attempt, and a failed one is retried by
    // the next call. Other instances racing on the same database are handled in createBarrierTable.
    this.barrierReady ??= this.withConnection(createBarrierTable).catch((err: unknown) => {
      this.barrierReady = undefined
      throw err
    })
    return this.barrierReady
  }

  // ---- recovery and shutdown ----

  recover(): Promise<RecoverResult> {
    return this.recoverOlderThan(0)
  }

  private recoverOlderThan(minAgeMs: number): Promise<RecoverResult> {
    return recoverPrepared({
      pool: this.pool,
      service: this.service,
      sidecarAdmin: this.sidecarAdmin,
      adminToken: this.adminToken,
      emit: (e) => this.emit(e),
      withConnection: (fn) => this.withConnection(fn),
      minAgeMs,
    })
  }

  /**
   * The periodic recover(), for rows older than one interval (younger ones are normally being
   * finished by the sidecar; asking about them would be harmless, only wasted). The sidecar's
   * answer decides as at start: a branch it holds answers in-doubt until decided, one it does not
   * know is asked of the coordinator the id names (presumed abort).
   */
  private sweep(minAgeMs: number): void {
    if (this.closing || this.sweeping) return
    this.sweeping = this.recoverOlderThan(minAgeMs)
      .catch((err: unknown) =>
        this.emit({ event: 'recover_error', message: `periodic recovery failed: ${messageOf(err)}` }),
      )
      .finally(() => (this.sweeping = undefined))
  }

  close(): Promise<void> {
    clearInterval(this.recoverTimer)
    this.closing ??= (async () => {
      const error = new PgBranchFailedError('the txmesh/pg helper was closed before the branch was prepared')
      await Promise.all(
        [...this.open.values()].map(async (b) => {
          clearTimeout(b.idleTimer)
          b.failure ??= error
          const turn = await b.queue.acquire('hook', L.closeWaitMs)
          if (turn.ok) {
            if (b.state !== 'closed') await this.rollbackAndClose(b, { kind: 'failed', error }, error)
            return turn.release()
          }
          // Still in use: destroying the session makes Postgres roll the transaction back.
          if (b.state !== 'closed') this.closeBranch(b, { kind: 'failed', error }, error, new Error('txmesh/pg closed'))
        }),
      )
    })()
    return this.closing
  }

  stats(): TxmeshPgStats {
    return { open: this.open.size, maxOpen: this.maxOpen, remembered: this.tombstones.size }
  }

  // ---- connections ----

  private async rollbackAndClose(b: Branch, tomb: Tombstone, closedWith: TxmeshPgError): Promise<void> {
    let destroy = b.broken
    if (b.client && destroy === undefined) {
      try {
        await b.client.query('ROLLBACK')
      } catch (err) {
        destroy = asError(err)
      }
    }
    if (b.state !== 'closed') this.closeBranch(b, tomb, closedWith, destroy)
  }

  /** Gives the connection back (or destroys it) and forgets the branch as open. */
  private closeBranch(
    b: Branch,
    tomb: Tombstone | undefined,
    closedWith: TxmeshPgError,
    destroy: Error | undefined,
  ): void {
    if (b.state === 'closed') return
    clearTimeout(b.idleTimer)
    b.idleTimer = undefined
    const c = b.client
    b.client = undefined
    if (c) {
      c.removeListener('error', b.onClientError)
      // A destroyed session takes any unfinished transaction with it (Postgres rolls it back).
      c.release(destroy ?? b.broken)
    }
    b.state = 'closed'
    b.closedWith = closedWith
    if (this.open.get(b.gid) === b) this.open.delete(b.gid)
    if (tomb) this.remember(b.gid, tomb)
  }

  private remember(gid: string, tomb: Tombstone): void {
    this.tombstones.delete(gid)
    this.tombstones.set(gid, tomb)
    if (this.tombstones.size > L.maxTombstones) {
      const oldest = this.tombstones.keys().next()
      if (!oldest.done) this.tombstones.delete(oldest.value)
    }
  }

  private async isPrepared(gid: string): Promise<boolean> {
    const r = await this.withConnection((c) =>
      c.query('SELECT 1 FROM pg_prepared_xacts WHERE gid = $1 AND database = current_database()', [gid]),
    )
    return r.rowCount !== null && r.rowCount > 0
  }

  /** pool.connect() with a bound: pg waits forever for a free connection by default. */
  private connect(): Promise<PoolClient> {
    return new Promise((resolve, reject) => {
      let late = false
      const timer = setTimeout(() => {
        late = true
        reject(
          new PgUnavailableError(
            `no Postgres connection from the pool within ${L.connectTimeoutMs} ms (is pool.max above maxOpen?)`,
          ),
        )
      }, L.connectTimeoutMs)
      this.pool.connect().then(
        (c) => {
          clearTimeout(timer)
          if (late) c.release()
          else resolve(c)
        },
        (err: unknown) => {
          clearTimeout(timer)
          if (!late)
            reject(
              new PgUnavailableError(`cannot connect to Postgres: ${messageOf(err)}`, {
                cause: err,
                sqlstate: sqlstateOf(err),
              }),
            )
        },
      )
    })
  }

  private async withConnection<T>(fn: (c: PoolClient) => Promise<T>): Promise<T> {
    const c = await this.connect()
    let broken: Error | undefined
    const onError = (err: Error): void => {
      broken = err
    }
    c.on('error', onError)
    try {
      return await fn(c)
    } catch (err) {
      if (sqlstateOf(err) === undefined) broken ??= asError(err)
      throw err
    } finally {
      c.removeListener('error', onError)
      c.release(broken)
    }
  }

  private emit(e: TxmeshPgEvent): void {
    if (!this.onEvent) return
    try {
      this.onEvent(e)
    } catch {
      // An observer must not break a transaction.
    }
  }
}
