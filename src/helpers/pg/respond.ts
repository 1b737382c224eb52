// The one place of the helper that writes its own answers (hook votes and its errors) to HTTP.
import type { ServerResponse } from 'node:http'
import type { TxmeshPgError } from './errors.js'

/** What a hook decided; the driver below turns it into a response. */
export type HookAnswer =
  | { readonly kind: 'ok'; readonly body: Readonly<Record<string, string>> } // 200
  | { readonly kind: 'read-only' } // 204: prepare found nothing to commit, the branch is finished
  | { readonly kind: 'error'; readonly error: TxmeshPgError }

export function ok(body: Readonly<Record<string, string>>): HookAnswer {
  return { kind: 'ok', body }
}

export function fail(error: TxmeshPgError): HookAnswer {
  return { kind: 'error', error }
}

export function sendAnswer(res: ServerResponse, answer: HookAnswer): void {
  switch (answer.kind) {
    case 'ok':
      return sendJson(res, 200, answer.body, undefined)
    case 'read-only':
      if (res.headersSent) return void res.destroy()
      res.writeHead(204)
      res.end()
      return
    case 'error':
      return sendError(res, answer.error)
  }
}

/** `{code, message[, sqlstate]}`: the `error` member of every answer the helper writes itself. */
export function errorBody(err: TxmeshPgError): Record<string, string> {
  const body: Record<string, string> = { code: err.code, message: err.message }
  if (err.sqlstate !== undefined) body.sqlstate = err.sqlstate
  return body
}

export function sendError(res: ServerResponse, err: TxmeshPgError): void {
  const body = errorBody(err)
  const extra: Record<string, string> = { 'x-txmesh-error': err.code }
  // Too many open branches or a busy branch clears up quickly: tell well-behaved clients so.
  if (err.status === 503) extra['retry-after'] = '1'
  sendJson(res, err.status, { error: body }, extra)
}

/** 500 for an app handler that threw (its message is not ours to expose). */
export function sendHandlerFailure(res: ServerResponse): void {
  sendJson(res, 500, { error: { message: 'the request handler failed' } }, undefined)
}

export function sendJson(
  res: ServerResponse,
  status: number,
  body: unknown,
  extra: Record<string, string> | undefined,
): void {
  // Once the head is out the status cannot change; cutting the connection is the only honest
  // signal left (and it marks the branch failed, see helper.ts).
  if (res.headersSent) return void res.destroy()
  const text = JSON.stringify(body)
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text), ...extra })
  res.end(text)
}
