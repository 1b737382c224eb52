// The one place that turns errors into HTTP responses (STYLE.md). Everything a client of the
// sidecar sees on failure is: the error's status, `x-txmesh-error: CODE`, and the JSON body
// {"error":{"code","message"}}.
import type { IncomingMessage, ServerResponse } from 'node:http'
import type { EventEmitter } from 'node:events'
import type { Duplex } from 'node:stream'
import { STATUS_CODES } from 'node:http'
import {
  BadRequestError,
  HeadersTooLargeError,
  InternalError,
  TxmeshError,
  UpstreamProtocolError,
  UpstreamTimeoutError,
  UpstreamUnreachableError,
  RequestAbortedError,
  ERROR_HEADER,
} from '../errors.js'

/** The JSON body of every error answer: `{error: {code, message}}`. */
export function errorBody(err: TxmeshError): { error: { code: string; message: string } } {
  return { error: { code: err.code, message: err.message } }
}

function body(err: TxmeshError): string {
  return JSON.stringify(errorBody(err))
}

/**
 * Writes the error response, or ends the connection when the response had already begun. `sign`
 * adds a header computed over the status and body text (a control answer's signature).
 */
export function respondError(
  res: ServerResponse,
  err: TxmeshError,
  closeConnection = false,
  sign?: (status: number, text: string) => readonly [string, string],
): void {
  if (res.headersSent) {
    // Half a response cannot be turned into an error: cut it so the client sees a failure
    // instead of a truncated body that looks complete.
    res.destroy()
    return
  }
  const text = body(err)
  const headers: Record<string, string | number> = {
    'content-type': 'application/json',
    'content-length': Buffer.byteLength(text),
    [ERROR_HEADER]: err.code,
  }
  if (closeConnection) headers.connection = 'close'
  if (sign !== undefined) {
    const [name, value] = sign(err.status, text)
    headers[name] = value
  }
  res.writeHead(err.status, headers)
  res.end(text)
}

/** For sockets without a ServerResponse (parser errors, Upgrade requests). Closes the socket. */
export function respondErrorRaw(socket: Duplex, err: TxmeshError): void {
  if (!socket.writable) {
    socket.destroy()
    return
  }
  const text = body(err)
  socket.end(
    `HTTP/1.1 ${err.status} ${STATUS_CODES[err.status] ?? 'Error'}\r\n` +
      `content-type: application/json\r\ncontent-length: ${Buffer.byteLength(text)}\r\n` +
      `${ERROR_HEADER}: ${err.code}\r\nconnection: close\r\n\r\n${text}`,
  )
}

/**
 * A listener's 'clientError': what Node's parser refused before any handler ran (a malformed
 * head, a head over `maxHeaderBytes`, a head or request not received in time). Node's own answer
 * would be a bare 400/408/431 without a code.
 */
export function respondClientError(err: Error & { code?: string }, socket: Duplex, maxHeaderBytes: number): void {
  if (err.code === 'HPE_HEADER_OVERFLOW')
    return respondErrorRaw(socket, new HeadersTooLargeError(`request headers exceed ${maxHeaderBytes} bytes`))
  // HPE_CLOSED_CONNECTION: bytes after a request answered with `Connection: close`.
  if (err.code === 'ECONNRESET' || err.code === 'HPE_CLOSED_CONNECTION' || !socket.writable)
    return void socket.destroy()
  if (err.code === 'ERR_HTTP_REQUEST_TIMEOUT')
    return respondErrorRaw(socket, new BadRequestError('request was not received in time'))
  respondErrorRaw(socket, new BadRequestError(`malformed request: ${err.code ?? err.message}`))
}

/**
 * A listener's 'checkExpectation': an `Expect` other than 100-continue, which Node would answer
 * with a bare 417. The body is not read, so the connection closes after the answer.
 */
export function refuseExpectation(_req: IncomingMessage, res: ServerResponse): void {
  respondError(res, new BadRequestError('only "Expect: 100-continue" is supported'), true)
}

/**
 * What every listener does with requests Node's parser or its Expect check refuse: answer them
 * with a code (respondClientError, refuseExpectation) instead of Node's bare 400/408/417/431.
 */
export function answerRefusedRequests(server: EventEmitter, maxHeaderBytes: number): void {
  server.on('clientError', (err: Error & { code?: string }, socket: Duplex) =>
    respondClientError(err, socket, maxHeaderBytes),
  )
  server.on('checkExpectation', refuseExpectation)
}

// undici / socket error codes that mean "no connection to the upstream was made": safe to
// retry for any method because nothing reached the app.
const CONNECT_FAILURES = new Set([
  'ECONNREFUSED',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'ENOTFOUND',
  'EAI_AGAIN',
  'EADDRNOTAVAIL',
  'UND_ERR_CONNECT_TIMEOUT',
])

// OpenSSL's certificate verification codes as Node reports them on a TLS client socket.
const TLS_FAILURES = new Set([
  'UNABLE_TO_VERIFY_LEAF_SIGNATURE',
  'UNABLE_TO_GET_ISSUER_CERT',
  'UNABLE_TO_GET_ISSUER_CERT_LOCALLY',
  'DEPTH_ZERO_SELF_SIGNED_CERT',
  'SELF_SIGNED_CERT_IN_CHAIN',
  'CERT_HAS_EXPIRED',
  'CERT_NOT_YET_VALID',
  'CERT_SIGNATURE_FAILURE',
  'CERT_UNTRUSTED',
  'CERT_REJECTED',
])

export function isConnectFailure(err: unknown): boolean {
  return CONNECT_FAILURES.has((err as { code?: string } | null)?.code ?? '')
}

/** Maps an upstream (undici) failure to the txmesh error the client sees. */
export function upstreamError(err: unknown, upstream: string): TxmeshError {
  if (err instanceof TxmeshError) return err
  const code = (err as { code?: string } | null)?.code ?? ''
  const msg = (err as Error | null)?.message ?? String(err)
  if (isConnectFailure(err))
    return new UpstreamUnreachableError(`cannot connect to ${upstream}: ${code}`, { cause: err })
  switch (code) {
    case 'UND_ERR_HEADERS_TIMEOUT':
    case 'UND_ERR_BODY_TIMEOUT':
      return new UpstreamTimeoutError(`${upstream} did not answer in time`, { cause: err })
    case 'UND_ERR_SOCKET':
    case 'ECONNRESET':
    case 'EPIPE':
    case 'HPE_INVALID_CONSTANT':
    case 'UND_ERR_RES_CONTENT_LENGTH_MISMATCH':
    case 'UND_ERR_INFO':
      return new UpstreamProtocolError(`${upstream} closed the connection or sent an invalid response: ${msg}`, {
        cause: err,
      })
    case 'UND_ERR_REQ_CONTENT_LENGTH_MISMATCH':
      return new RequestAbortedError('request body did not match its content-length', { cause: err })
    case 'UND_ERR_ABORTED':
    case 'ERR_STREAM_PREMATURE_CLOSE':
      return new RequestAbortedError('the client went away before the request finished', { cause: err })
  }
  if (code.startsWith('HPE_'))
    return new UpstreamProtocolError(`${upstream} sent an invalid response: ${msg}`, { cause: err })
  // Peer TLS: the peer's certificate did not verify (wrong CA, name, expired) or the handshake
  // failed: no connection the request could use was made.
  if (TLS_FAILURES.has(code) || code.startsWith('ERR_TLS_') || code.startsWith('ERR_SSL_')) {
    return new UpstreamUnreachableError(`TLS with ${upstream} failed: ${code}`, { cause: err })
  }
  return new InternalError(`proxying to ${upstream} failed: ${msg}`, { cause: err })
}
