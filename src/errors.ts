// The one registry of txmesh errors (STYLE.md). Every failure a client can see is a subclass
// with a stable code; src/proxy/respond.ts is the only code that turns them into responses.
// The README's error table lists every code (a test checks it).

export abstract class TxmeshError extends Error {
  abstract readonly code: string
  abstract readonly status: number
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options)
    this.name = new.target.name
  }
}

export class BadRequestError extends TxmeshError {
  readonly code = 'TXM_BAD_REQUEST'
  readonly status = 400
}

export class NotFoundError extends TxmeshError {
  readonly code = 'TXM_NOT_FOUND'
  readonly status = 404
}

export class MethodNotAllowedError extends TxmeshError {
  readonly code = 'TXM_METHOD_NOT_ALLOWED'
  readonly status = 405
}

export class BodyTooLargeError extends TxmeshError {
  readonly code = 'TXM_BODY_TOO_LARGE'
  readonly status = 413
}

export class HeadersTooLargeError extends TxmeshError {
  readonly code = 'TXM_HEADERS_TOO_LARGE'
  readonly status = 431
}

export class ProxyLoopError extends TxmeshError {
  readonly code = 'TXM_PROXY_LOOP'
  readonly status = 508
}

export class UpstreamUnreachableError extends TxmeshError {
  readonly code = 'TXM_UPSTREAM_UNREACHABLE'
  readonly status = 502
}

export class UpstreamProtocolError extends TxmeshError {
  readonly code = 'TXM_UPSTREAM_PROTOCOL'
  readonly status = 502
}

export class UpstreamTimeoutError extends TxmeshError {
  readonly code = 'TXM_UPSTREAM_TIMEOUT'
  readonly status = 504
}

export class RequestAbortedError extends TxmeshError {
  readonly code = 'TXM_REQUEST_ABORTED'
  readonly status = 400
}

export class ShuttingDownError extends TxmeshError {
  readonly code = 'TXM_SHUTTING_DOWN'
  readonly status = 503
}

export class InternalError extends TxmeshError {
  readonly code = 'TXM_INTERNAL'
  readonly status = 500
}

// Config errors never reach HTTP; they carry file:line:col positions for the CLI.
export interface ConfigProblem {
  readonly file: string
  readonly line: number
  readonly col: number
  readonly message: string
}

export class ConfigInvalidError extends TxmeshError {
  readonly code = 'TXM_CONFIG_INVALID'
  readonly status = 500
  readonly problems: readonly ConfigProblem[]
  constructor(problems: readonly ConfigProblem[]) {
    super(problems.map(formatProblem).join('\n'))
    this.problems = problems
  }
}

export function formatProblem(p: ConfigProblem): string {
  return `${p.file}:${p.line}:${p.col}: ${p.message}`
}

// Every code, for the README check and for `txmesh errors`. Built from instances so a new
// class cannot be forgotten here without the README test noticing a missing row.
export const ERROR_CLASSES = [
  BadRequestError,
  NotFoundError,
  MethodNotAllowedError,
  BodyTooLargeError,
  HeadersTooLargeError,
  ProxyLoopError,
  UpstreamUnreachableError,
  UpstreamProtocolError,
  UpstreamTimeoutError,
  RequestAbortedError,
  ShuttingDownError,
  InternalError,
] as const

export function allErrorCodes(): { code: string; status: number; name: string }[] {
  const out = ERROR_CLASSES.map((C) => {
    const e = new C('')
    return { code: e.code, status: e.status, name: C.name }
  })
  out.push({ code: 'TXM_CONFIG_INVALID', status: 500, name: 'ConfigInvalidError' })
  return out
}
