// What the prepare / commit / abort hooks and their batch endpoint read from a request and how
// a batch is answered; the hooks themselves are PgParticipant's methods (helper.ts).
import type { IncomingMessage } from 'node:http'
import { answerWithin } from '../../control/batcher.js'
import { PgBadBatchError, PgBranchBusyError, type TxmeshPgError } from './errors.js'
import type { BranchIds } from './gid.js'
import { PG_HELPER_LIMITS as L } from './limits.js'
import { errorBody, fail, type HookAnswer } from './respond.js'

export const HOOKS = new Set(['prepare', 'commit', 'abort'])
export const BATCH_HOOK = 'batch'

/**
 * The request body as text, or PgBadBatchError past `limit` bytes (the rest is not read), after
 * `timeoutMs` without its end, or when something before the helper already read it (a body
 * parser mounted ahead of the middleware: its parsed JSON is taken then).
 */
export function readBody(req: IncomingMessage, limit: number, timeoutMs: number): Promise<string | PgBadBatchError> {
  const parsed = (req as { body?: unknown }).body
  if (typeof parsed === 'object' && parsed !== null && !Buffer.isBuffer(parsed))
    return Promise.resolve(JSON.stringify(parsed))
  if (req.readableEnded)
    return Promise.resolve(
      new PgBadBatchError(
        'the batch body was already read before txmesh/pg saw it: mount txm.middleware before body parsers',
      ),
    )
  return new Promise((resolve) => {
    const finish = (v: string | PgBadBatchError): void => {
      clearTimeout(timer)
      req.off('data', onData)
      resolve(v)
    }
    const tooLarge = (): void => finish(new PgBadBatchError(`the batch body is over ${limit} bytes`))
    const chunks: Buffer[] = []
    let n = 0
    const onData = (c: Buffer): void => {
      n += c.length
      if (n <= limit) return void chunks.push(c)
      req.pause()
      tooLarge()
    }
    const timer = setTimeout(() => {
      req.pause()
      finish(new PgBadBatchError(`the batch body did not arrive within ${timeoutMs} ms`))
    }, timeoutMs)
    if (Number(req.headers['content-length'] ?? 0) > limit) return tooLarge()
    req.on('data', onData)
    req.once('end', () => finish(Buffer.concat(chunks).toString('utf8')))
    req.once('error', () => finish(new PgBadBatchError('the batch body could not be read')))
  })
}

/**
 * A batch item still working after batchItemWaitMs (a prepare waiting for the branch's running
 * request) is answered 503 on its own, so the batch answers before the sidecar gives up on it
 * (its hookCallTimeoutMs): a prepare answered so votes no, a commit or abort is asked again.
 */
export function withinItemWait(run: Promise<HookAnswer>, hook: string): Promise<HookAnswer> {
  return answerWithin(run, L.batchItemWaitMs, () =>
    fail(new PgBranchBusyError(`the ${hook} did not finish within ${L.batchItemWaitMs} ms; ask again`)),
  )
}

/** `{items: [{hook, tx, branch}]}`: a malformed list refuses the batch, a malformed item only itself. */
export function parseBatch(text: string): ({ hook: string; ids: BranchIds } | TxmeshPgError)[] | PgBadBatchError {
  let body: unknown
  try {
    body = JSON.parse(text)
  } catch {
    return new PgBadBatchError('the batch body is not JSON')
  }
  const items = (body as { items?: unknown } | null)?.items
  if (!Array.isArray(items) || items.length === 0)
    return new PgBadBatchError('the batch body must be {"items": [...]} with at least one item')
  if (items.length > L.maxBatchItems)
    return new PgBadBatchError(`a batch carries at most ${L.maxBatchItems} items, got ${items.length}`)
  return items.map((v: unknown) => {
    const o = v as Record<string, unknown> | null
    if (typeof o !== 'object' || o === null || typeof o.hook !== 'string' || !HOOKS.has(o.hook))
      return new PgBadBatchError('a batch item needs hook prepare, commit or abort')
    // makeGid checks the ids themselves (TXM_PG_BAD_ID), as for a single hook call.
    return {
      hook: o.hook,
      ids: { txId: typeof o.tx === 'string' ? o.tx : '', branchId: typeof o.branch === 'string' ? o.branch : '' },
    }
  })
}

/** One item of the batch answer: what the hook's own endpoint would have answered. */
export function batchResult(a: HookAnswer): { status: number; body?: Readonly<Record<string, unknown>> } {
  switch (a.kind) {
    case 'ok':
      return { status: 200, body: a.body }
    case 'read-only':
      return { status: 204 }
    case 'error':
      return { status: a.error.status, body: { error: errorBody(a.error) } }
  }
}
