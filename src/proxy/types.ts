// The types the data plane's listeners and forwarder share with the transaction side that
// plugs into them (src/proxy/tx-hook.ts): the proxy knows transactions only through TxHook and the
// ResponseHook it returns for one exchange.
import type { RoutePolicy } from '../config/types.js'
import type { TxmeshError } from '../errors.js'
import type { Span, Tracing } from '../telemetry/tracing.js'

export interface Target {
  /** http://host:port of the upstream connection. */
  readonly origin: string
  readonly connectHost: string
  readonly connectPort: number
  /** Host header sent upstream. */
  readonly host: string
  /** origin-form request target sent upstream. */
  readonly path: string
  /**
   * Ingress: the request is the app's TCC hook, let through only with a signed context of that
   * op (src/tx/protocol.ts STEP_CANCEL_PATH).
   */
  readonly stepHook?: 'cancel'
}

export type TargetResolver = (url: string, hostHeader: string | undefined) => Target | TxmeshError

/** The SERVER span of one proxied request, shared with the Exchange for its CLIENT spans. */
export interface ProxyTrace {
  readonly tracing: Tracing
  readonly span: Span
  /** The failure's code (TXM_...) when the sidecar answered with an error of its own. */
  errorType: string | undefined
}

export interface ResponseHook {
  /**
   * Runs before the request is forwarded (once its small body is read, if it is read): an error
   * is answered instead and nothing is sent upstream (saga/tcc: the step's intent is recorded).
   */
  beforeSend?(): Promise<TxmeshError | undefined>
  /**
   * May edit the filtered response headers; an error replaces the response. With
   * `responseBodyLimit` it runs once the body is in (`body`: undefined when over the limit).
   */
  onResponseHead(
    status: number,
    headers: string[],
    body?: Buffer,
  ): TxmeshError | undefined | Promise<TxmeshError | undefined>
  /** The exchange ended, whichever way. Called once. */
  onEnd(): void
  /** Hold the response until this many body bytes are in (saga templates on the response). */
  readonly responseBodyLimit?: number | undefined
  /** Read a small request body first, up to this many bytes, into `requestBody`. */
  readonly requestBodyLimit?: number | undefined
  requestBody?: Buffer | undefined
}

/** An outgoing call, as the egress forwards it (saga steps record where to send their undo). */
export interface EgressCall {
  readonly origin: string
  readonly host: string
  readonly method: string
  readonly path: string
  /** Outgoing headers (flat); the context header is replaced for saga/tcc steps. */
  readonly headers: string[]
}

/**
 * What the listeners ask of transactions: the tx side plugs in here (src/proxy/tx-hook.ts; without a
 * mesh key every context is refused).
 */
export interface TxHook {
  egress(token: string, route: RoutePolicy, call: EgressCall): ResponseHook | TxmeshError | undefined
  ingress(token: string, route: RoutePolicy, headers: string[]): ResponseHook | TxmeshError | undefined
  /** `trace`: the request's SERVER span (tracing on), parent of the transaction's span. */
  implicit(route: RoutePolicy, headers: string[], trace?: Span): ResponseHook | TxmeshError | undefined
  /** Ingress: may a request with this context reach the app's TCC `op` hook (STEP_CANCEL_PATH)? */
  stepHook(token: string, op: 'cancel'): TxmeshError | undefined
}
