// The forwarding engine shared by egress and ingress: undici pools per upstream origin and one
// Exchange per request that streams the response back with backpressure.
//
// Hot path notes (ANCHORS.md, "How fast a Node proxy can be here"): Pool.dispatch with a
// classic handler object (onConnect/onHeaders/onData/onComplete/onError), flat header arrays,
// the response head and first body bytes written while the response is corked so they leave in
// one write, and no promises per request.
import type { IncomingMessage, ServerResponse } from 'node:http'
import type { Readable } from 'node:stream'
import type { Socket } from 'node:net'
import { Pool, buildConnector, type Connector, type Dispatcher } from '../http-client.js'
import type { Direction, RetryOn, RoutePolicy } from '../config/types.js'
import type { SidecarMetrics } from '../telemetry/metrics.js'
import { ProxyLoopError, RequestAbortedError, UpstreamTimeoutError, type TxmeshError } from '../errors.js'
import { LIMITS } from '../limits.js'
import type { Logger } from '../telemetry/logger.js'
import type { PeerTls } from '../peer-tls.js'
import { forwardResponseHeaders } from './headers.js'
import { connectedToSelf } from './loop.js'
import { isConnectFailure, respondError, upstreamError } from './respond.js'
import { RetryBudget, backoffMs, methodRetryable } from './retry.js'
import type { ProxyTrace, ResponseHook } from './types.js'
import { SpanKind, SpanStatusCode, childSpan, injectTraceparent, type Span } from '../telemetry/tracing.js'
import { splitAuthority } from '../address.js'

export interface ForwardRequest {
  readonly req: IncomingMessage
  readonly res: ServerResponse
  readonly origin: string
  readonly path: string
  readonly method: string
  readonly headers: string[]
  /** null: no body; Buffer: fully read (replayable); stream: forwarded once. */
  readonly body: Buffer | Readable | null
  readonly route: RoutePolicy
  readonly direction: Direction
  /** Transaction work on the response head (enlistment); absent for plain requests. */
  readonly hook?: ResponseHook | undefined
  /** The request's SERVER span when tracing is on: each attempt gets a CLIENT span under it. */
  readonly trace?: ProxyTrace | undefined
}

/** A response held back until its body is in (ResponseHook.responseBodyLimit). */
interface HeldResponse {
  readonly status: number
  readonly text: string
  readonly headers: string[]
  readonly chunks: Buffer[]
  size: number
  /** The upstream response is complete: end ours once the head is out. */
  complete: boolean
  released: boolean
}

export class Forwarder {
  private readonly pools = new Map<string, Pool>()
  private readonly budgets = new WeakMap<RoutePolicy, RetryBudget>()

  /** Plain connections: undici's own connector, with the loop check of `connect`. */
  private readonly plain: Connector = buildConnector({ timeout: LIMITS.connectTimeoutMs })

  constructor(
    readonly log: Logger,
    private readonly metrics?: SidecarMetrics,
    /** Peer TLS: https:// origins (services reached over TLS) connect with the mesh CA. */
    private readonly tls?: PeerTls,
    /**
     * Ports of this sidecar's own proxy listeners a connection must never reach (the egress's):
     * a request sent there would come straight back (src/proxy/loop.ts).
     */
    private readonly selfPorts: ReadonlySet<number> = new Set(),
  ) {}

  /**
   * Every new upstream connection: refused with TXM_PROXY_LOOP when it reached one of this
   * sidecar's own listeners, whatever name or address spelling led there (DNS included). The
   * socket is closed before undici writes anything on it.
   */
  private connect(base: Connector): Connector {
    return (opts, callback) =>
      base(opts, (err, socket) => {
        if (err === null && connectedToSelf(socket as Socket, this.selfPorts)) {
          socket.destroy()
          return callback(
            new ProxyLoopError(
              `${opts.hostname}:${opts.port} is this sidecar's own listener: the request would loop back into it`,
            ),
            null,
          )
        }
        if (err === null) callback(null, socket)
        else callback(err, null)
      })
  }

  pool(origin: string): Pool {
    let pool = this.pools.get(origin)
    if (pool === undefined) {
      if (this.pools.size >= LIMITS.maxUpstreamPools) {
        // Bound the number of upstreams kept open: close the oldest pool (its in-flight
        // requests finish first; close() waits for them).
        const [oldest, p] = this.pools.entries().next().value as [string, Pool]
        this.pools.delete(oldest)
        p.close().catch((err: unknown) => this.log.warn('pool_close_failed', { origin: oldest, error: String(err) }))
      }
      pool = new Pool(origin, {
        connections: LIMITS.poolConnectionsPerOrigin,
        pipelining: 1,
        keepAliveTimeout: LIMITS.upstreamKeepAliveMs,
        keepAliveMaxTimeout: LIMITS.upstreamKeepAliveMs,
        // The peer TLS connector opens each new connection with the certificates current then.
        connect: this.connect(this.tls !== undefined && origin.startsWith('https:') ? this.tls.connector : this.plain),
        maxHeaderSize: LIMITS.maxHeaderBytes,
      })
      this.pools.set(origin, pool)
    }
    return pool
  }

  budget(route: RoutePolicy): RetryBudget {
    let b = this.budgets.get(route)
    if (b === undefined) {
      b = new RetryBudget(route.retries.budgetRatio, route.retries.budgetMinPerSecond)
      this.budgets.set(route, b)
    }
    return b
  }

  forward(f: ForwardRequest): void {
    const budget = this.budget(f.route)
    budget.deposit()
    const replayable = f.body === null || Buffer.isBuffer(f.body)
    const exchange = new Exchange(
      this.pool(f.origin),
      f,
      budget,
      replayable && methodRetryable(f.method, f.route.retries),
      this.metrics,
    )
    exchange.start()
  }

  async close(): Promise<void> {
    const pools = [...this.pools.values()]
    this.pools.clear()
    await Promise.allSettled(pools.map((p) => p.close()))
  }
}

function uncork(res: ServerResponse): void {
  res.uncork()
}

function onAttemptTimeout(exchange: Exchange): void {
  exchange.timeout()
}

class Exchange implements Dispatcher.DispatchHandler {
  private attempt = 0
  private discard = false
  private done = false
  private corked = false
  private timer: NodeJS.Timeout | undefined
  private hookEnded = false
  private readonly startedAt = performance.now()
  private resume: (() => void) | undefined
  private abort: ((err?: Error) => void) | undefined
  private readonly opts: Dispatcher.DispatchOptions
  /** CLIENT span of the current upstream attempt (tracing on only). */
  private attemptSpan: Span | undefined
  /** Status of the current attempt's response head, for its span. */
  private statusCode: number | undefined
  /** The response while the hook waits for its body (responseBodyLimit). */
  private held: HeldResponse | undefined

  constructor(
    private readonly pool: Pool,
    private readonly f: ForwardRequest,
    private readonly budget: RetryBudget,
    private readonly retryable: boolean,
    private readonly metrics: SidecarMetrics | undefined,
  ) {
    this.opts = {
      path: f.path,
      method: f.method as Dispatcher.HttpMethod,
      headers: f.headers,
      body: f.body,
      // undici's own parser timers tick once a second; the route timeout needs better, so
      // time-to-headers is timed here (armTimer) and undici's is only a backstop.
      headersTimeout: f.route.timeoutMs + 1_000,
      bodyTimeout: f.route.timeoutMs,
    }
    f.res.once('close', this.onResClose)
  }

  start(): void {
    if (this.done) return
    this.timer = setTimeout(onAttemptTimeout, this.f.route.timeoutMs, this)
    if (this.f.trace !== undefined) this.startAttemptSpan(this.f.trace)
    this.pool.dispatch(this.opts, this)
  }

  /** One CLIENT span per upstream attempt (HTTP semconv); the next hop continues it. */
  private startAttemptSpan(t: ProxyTrace): void {
    const f = this.f
    const a = splitAuthority(f.origin.slice(f.origin.indexOf('//') + 2))
    const q = f.path.indexOf('?')
    const span = childSpan(t.tracing.tracer, f.method, SpanKind.CLIENT, t.span, {
      'http.request.method': f.method,
      'server.address': a?.host ?? '',
      'server.port': Number(a?.port),
      // The query may carry credentials of the app's own; the path is enough to find the call.
      'url.full': f.origin + (q < 0 ? f.path : f.path.slice(0, q)),
      ...(this.attempt > 0 ? { 'http.request.resend_count': this.attempt } : {}),
    })
    injectTraceparent(f.headers, span)
    this.attemptSpan = span
    this.statusCode = undefined
  }

  /** Ends the current attempt's CLIENT span, with the status it got or the failure. */
  private endAttempt(status: number | undefined, errorType: string | undefined): void {
    const span = this.attemptSpan
    if (span === undefined) return
    this.attemptSpan = undefined
    if (status !== undefined) span.setAttribute('http.response.status_code', status)
    if (errorType !== undefined || (status !== undefined && status >= 400)) {
      span.setAttribute('error.type', errorType ?? String(status))
      span.setStatus({ code: SpanStatusCode.ERROR })
    }
    span.end()
  }

  /** The attempt got no response head within the route timeout. */
  timeout(): void {
    this.timer = undefined
    if (this.done || this.f.res.headersSent) return
    const err = new UpstreamTimeoutError(`${this.f.origin} did not answer within ${this.f.route.timeoutMs} ms`)
    if (this.f.trace !== undefined) this.f.trace.errorType = err.code
    if (this.abort !== undefined) {
      this.abort(err)
      return
    }
    // Still waiting for a connection: answer now; onConnect aborts the queued request later.
    this.done = true
    this.endAttempt(undefined, err.code)
    this.ended(err.status)
    respondError(this.f.res, err, !this.f.req.complete)
  }

  private clearTimer(): void {
    if (this.timer !== undefined) {
      clearTimeout(this.timer)
      this.timer = undefined
    }
  }

  private readonly onResClose = (): void => {
    this.clearTimer()
    // After a normal end this is a no-op; otherwise the client left first (nginx's 499).
    this.ended(499)
    this.endAttempt(undefined, 'client_closed')
    if (this.done) return
    this.done = true
    // The client went away mid-exchange: stop the upstream request instead of draining it.
    this.abort?.(new RequestAbortedError('client closed the connection'))
  }

  private readonly onDrain = (): void => {
    this.resume?.()
  }

  private canRetry(kind: RetryOn): boolean {
    const r = this.f.route.retries
    return (
      this.retryable &&
      !this.done &&
      this.attempt < r.attempts &&
      r.on.has(kind) &&
      !this.f.res.headersSent &&
      this.budget.tryWithdraw()
    )
  }

  private retry(): void {
    this.attempt++
    this.metrics?.retry(this.f.direction, this.f.route.name)
    this.abort = undefined
    const delay = backoffMs(this.attempt)
    setTimeout(() => this.start(), delay).unref()
  }

  onConnect(abort: (err?: Error) => void): void {
    this.abort = abort
    if (this.done) abort(new RequestAbortedError('client closed the connection'))
  }

  onHeaders(statusCode: number, rawHeaders: Buffer[], resume: () => void, statusText: string): boolean {
    this.clearTimer()
    this.statusCode = statusCode
    if ((statusCode === 502 || statusCode === 503) && this.canRetry(statusCode === 502 ? '502' : '503')) {
      this.discard = true
      return true
    }
    this.resume = resume
    const headers = forwardResponseHeaders(rawHeaders)
    const hook = this.f.hook
    if (hook?.responseBodyLimit !== undefined) {
      this.held = {
        status: statusCode,
        text: statusText,
        headers,
        chunks: [],
        size: 0,
        complete: false,
        released: false,
      }
      return true
    }
    if (hook !== undefined) {
      const r = hook.onResponseHead(statusCode, headers)
      if (r instanceof Promise) {
        // Hold the response (undici pauses while onHeaders returns false) until the hook is done.
        void r.then(
          (err) => this.afterHook(err, statusCode, statusText, headers),
          (err: unknown) => this.afterHook(upstreamError(err, this.f.origin), statusCode, statusText, headers),
        )
        return false
      }
      if (r !== undefined) {
        this.abort?.(r)
        return true
      }
    }
    this.writeHead(statusCode, statusText, headers)
    return true
  }

  private afterHook(err: TxmeshError | undefined, statusCode: number, statusText: string, headers: string[]): void {
    if (this.done) return
    if (err !== undefined) {
      this.abort?.(err)
      return
    }
    this.writeHead(statusCode, statusText, headers)
    this.resume?.()
  }

  private writeHead(statusCode: number, statusText: string, headers: string[]): void {
    const res = this.f.res
    res.cork()
    this.corked = true
    res.writeHead(statusCode, statusText, headers)
    process.nextTick(uncork, res)
  }

  /** The exchange is over (once): tell the transaction hook and count it. */
  private ended(status: number): void {
    if (this.hookEnded) return
    this.hookEnded = true
    this.f.hook?.onEnd()
    this.metrics?.request(this.f.direction, this.f.route.name, status, (performance.now() - this.startedAt) / 1000)
  }

  onData(chunk: Buffer): boolean {
    if (this.discard) return true
    const held = this.held
    if (held !== undefined && !held.released) {
      held.chunks.push(chunk)
      held.size += chunk.length
      if (held.size <= (this.f.hook?.responseBodyLimit ?? 0)) return true
      // Too large to hold: the head goes out without a body for the hook, then streaming resumes.
      this.release(held, undefined)
      return false
    }
    const ok = this.f.res.write(chunk)
    if (!ok) this.f.res.once('drain', this.onDrain)
    return ok
  }

  onComplete(): void {
    if (this.discard) {
      this.discard = false
      this.endAttempt(this.statusCode, undefined)
      this.retry()
      return
    }
    if (this.done) return
    const held = this.held
    if (held !== undefined && !held.released) {
      held.complete = true
      this.release(held, Buffer.concat(held.chunks, held.size))
      return
    }
    this.finish()
  }

  private finish(): void {
    if (this.done) return
    this.done = true
    this.f.res.end()
    this.endAttempt(this.statusCode, undefined)
    this.ended(this.f.res.statusCode)
  }

  /** Runs the hook on a held response, then writes what was held and goes on. */
  private release(held: HeldResponse, body: Buffer | undefined): void {
    held.released = true
    const go = (err: TxmeshError | undefined): void => {
      if (this.done) return
      if (err !== undefined) {
        if (!held.complete) return void this.abort?.(err)
        this.done = true
        this.endAttempt(held.status, err.code)
        this.ended(err.status)
        return respondError(this.f.res, err, !this.f.req.complete)
      }
      this.writeHead(held.status, held.text, held.headers)
      for (const c of held.chunks.splice(0)) this.f.res.write(c)
      if (held.complete) this.finish()
      else this.resume?.()
    }
    const r = (this.f.hook as ResponseHook).onResponseHead(held.status, held.headers, body)
    if (r instanceof Promise) r.then(go, (err: unknown) => go(upstreamError(err, this.f.origin)))
    else go(r)
  }

  onError(err: Error): void {
    this.clearTimer()
    if (this.done) return
    if (this.discard) this.discard = false
    else if (isConnectFailure(err) && this.canRetry('connect-failure')) {
      this.endAttempt(undefined, (err as Error & { code?: string }).code ?? err.name)
      this.retry()
      return
    }
    this.done = true
    const mapped: TxmeshError = upstreamError(err, this.f.origin)
    if (this.f.trace !== undefined) {
      this.f.trace.errorType ??= mapped.code
      this.endAttempt(this.statusCode, mapped.code)
    }
    this.ended(this.f.res.headersSent ? this.f.res.statusCode : mapped.status)
    if (this.corked && this.f.res.headersSent) {
      this.f.res.destroy()
      return
    }
    // An unread request body must not be parsed as the next request: close after answering.
    respondError(this.f.res, mapped, !this.f.req.complete)
  }
}
