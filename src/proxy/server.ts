// One HTTP listener of the data plane (egress or ingress): parses requests, applies the
// matching route policy's limits, forwards through the Forwarder, tunnels Upgrade requests, and
// drains on shutdown. What differs between egress and ingress is only how the upstream is
// chosen (a TargetResolver).
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import { createServer as createHttpsServer } from 'node:https'
import type { Server as TlsServer } from 'node:tls'
import { connect, type Socket } from 'node:net'
import { Transform, pipeline, type Duplex, type Readable, type TransformCallback } from 'node:stream'
import type { Direction, RoutePolicy, SidecarConfig } from '../config/types.js'
import {
  BadRequestError,
  BodyTooLargeError,
  HeadersTooLargeError,
  HookForbiddenError,
  InternalError,
  MethodNotAllowedError,
  ShuttingDownError,
  TxmeshError,
  UpstreamUnreachableError,
} from '../errors.js'
import { LIMITS } from '../limits.js'
import { listen } from '../net.js'
import type { Logger } from '../log.js'
import type { PeerTls } from '../peer-tls.js'
import type { ForwardRequest, Forwarder, ResponseHook } from './forward.js'
import type { Span } from '@opentelemetry/api'
import type { TxPlane } from '../tx/plane.js'
import { forwardRequestHeaders, newFacts, upgradeRequestHeaders, type RequestHeadFacts } from './headers.js'
import { answerRefusedRequests, respondError, respondErrorRaw } from './respond.js'
import { hostName, matchRoute } from './routes.js'
import { methodRetryable } from './retry.js'
import { SpanKind, SpanStatusCode, childSpan, extractFromHeaders, type Tracing } from '../telemetry/tracing.js'

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

export interface ProxyServerOptions {
  readonly direction: Direction
  readonly config: SidecarConfig
  readonly forwarder: Forwarder
  readonly resolve: TargetResolver
  readonly log: Logger
  readonly tx?: TxPlane | undefined
  /** Set only when tracing is on; undefined keeps the request path free of tracing work. */
  readonly tracing?: Tracing | undefined
  /**
   * Peer TLS (config `tls`): the ingress serves HTTPS with it; the egress opens its raw tunnels
   * (Upgrade) to https:// peers with it.
   */
  readonly peerTls?: PeerTls | undefined
}

/** The SERVER span of one proxied request, shared with the Exchange for its CLIENT spans. */
export interface ProxyTrace {
  readonly tracing: Tracing
  readonly span: Span
  /** The failure's code (TXM_...) when the sidecar answered with an error of its own. */
  errorType: string | undefined
}

export class ProxyServer {
  readonly server: Server
  /** What clients speak to this listener: https for an ingress with peer TLS. */
  private readonly scheme: 'http' | 'https'
  private inflight = 0
  private draining = false
  private drained: (() => void) | undefined
  private readonly tunnels = new Set<Socket | Duplex>()
  /** Sockets that arrived through CONNECT, with the authority they were opened to. */
  private readonly tunnelAuthority = new WeakMap<object, string>()

  constructor(private readonly o: ProxyServerOptions) {
    const options = {
      maxHeaderSize: LIMITS.maxHeaderBytes,
      keepAliveTimeout: LIMITS.downstreamKeepAliveMs,
      headersTimeout: LIMITS.downstreamHeadersTimeoutMs,
      requestTimeout: LIMITS.downstreamRequestTimeoutMs,
      connectionsCheckingInterval: LIMITS.connectionsCheckMs,
      // Let the proxy see the raw Host-less HTTP/1.1 requests and answer with its own code.
      requireHostHeader: false,
    }
    const tls = o.direction === 'ingress' ? o.peerTls : undefined
    this.scheme = tls === undefined ? 'http' : 'https'
    // https.Server emits the same request/upgrade/connect/clientError events as http.Server.
    this.server = tls === undefined ? createServer(options) : (createHttpsServer({ ...options, ...tls.serverOptions() }) as unknown as Server)
    if (tls !== undefined) tls.serve(this.server as unknown as TlsServer)
    this.server.maxConnections = LIMITS.maxConnectionsPerListener
    this.server.on('request', (req: IncomingMessage, res: ServerResponse) => this.onRequest(req, res, false))
    this.server.on('checkContinue', (req: IncomingMessage, res: ServerResponse) => this.onRequest(req, res, true))
    this.server.on('upgrade', (req: IncomingMessage, socket: Duplex, head: Buffer) => this.onUpgrade(req, socket, head))
    this.server.on('connect', (req: IncomingMessage, socket: Duplex, head: Buffer) => this.onConnect(req, socket, head))
    answerRefusedRequests(this.server, LIMITS.maxHeaderBytes)
  }

  private readonly onResClose = (): void => {
    this.inflight--
    if (this.draining && this.inflight === 0) this.drained?.()
  }

  private onRequest(req: IncomingMessage, res: ServerResponse, expectContinue: boolean): void {
    this.inflight++
    res.once('close', this.onResClose)
    if (this.draining) res.shouldKeepAlive = false
    const facts = newFacts(expectContinue)
    const headers = forwardRequestHeaders(req.rawHeaders, req.socket.remoteAddress, facts)
    // A request refused with a body still to come closes its connection after the answer, so
    // the unread bytes are not parsed as the next request.
    const hasBody = facts.contentLength !== 0 || facts.chunked
    const target = this.o.resolve(req.url ?? '/', facts.host ?? this.tunnelAuthority.get(req.socket))
    if (target instanceof TxmeshError) return respondError(res, target, hasBody)
    const method = req.method ?? 'GET'
    const route = matchRoute(this.o.config, this.o.direction, hostName(target.host), target.path, method)
    const refusal = checkLimits(route, facts, target.path.length + method.length)
    // The body of a refused request is never read: close the connection after the answer so
    // its unread bytes are not parsed as the next request.
    const trace = this.o.tracing === undefined ? undefined : serverSpan(this.o.tracing, req, res, route, this.o.config.defaultRoute, method, target, facts.host, this.scheme)
    if (refusal !== undefined) {
      if (trace !== undefined) trace.errorType = refusal.code
      return respondError(res, refusal, true)
    }
    let hook: ResponseHook | undefined
    const tx = this.o.tx
    if (tx !== undefined && (facts.context !== undefined || route.transaction === 'required')) {
      const h =
        facts.context === undefined
          ? this.o.direction === 'ingress'
            ? tx.implicit(route, headers, trace?.span)
            : undefined
          : this.o.direction === 'egress'
            ? tx.egress(facts.context, route, { origin: target.origin, host: target.host, method, path: target.path, headers })
            : tx.ingress(facts.context, route, headers)
      if (h instanceof TxmeshError) {
        if (trace !== undefined) trace.errorType = h.code
        return respondError(res, h, hasBody)
      }
      hook = h
    }
    if (target.stepHook !== undefined) {
      const refused = tx === undefined || facts.context === undefined ? new HookForbiddenError(`${target.path} is a participant hook; only a coordinator's signed ${target.stepHook} reaches it`) : tx.stepHook(facts.context, target.stepHook)
      if (refused !== undefined) {
        hook?.onEnd()
        if (trace !== undefined) trace.errorType = refused.code
        return respondError(res, refused, hasBody)
      }
    }
    if (facts.expectContinue) res.writeContinue()
    headers.push('host', target.host)

    let body: ForwardBody = null
    if (facts.chunked) {
      body = pipeline(req, new BodyLimit(route.maxBodyBytes), noop)
    } else if (facts.contentLength !== undefined && facts.contentLength > 0) {
      const wanted = hook?.requestBodyLimit !== undefined && facts.contentLength <= hook.requestBodyLimit
      if (wanted || (facts.contentLength <= LIMITS.retryBodyBytes && methodRetryable(method, route.retries))) {
        // Small body of a retryable request (or one a saga template reads): read it first so a
        // retry can send it again.
        return readSmallBody(req, facts.contentLength, (buf) => {
          if (buf === undefined) {
            hook?.onEnd()
            return respondError(res, new BadRequestError('request body ended early'), true)
          }
          if (hook !== undefined && wanted) hook.requestBody = buf
          this.send({ direction: this.o.direction, req, res, origin: target.origin, path: target.path, method, headers, body: buf, route, hook, trace }, false)
        })
      }
      body = req
    }
    this.send({ direction: this.o.direction, req, res, origin: target.origin, path: target.path, method, headers, body, route, hook, trace }, hasBody)
  }

  /**
   * Forwards, after the hook's beforeSend when it has one (a saga/tcc step's intent must be
   * durable before its call leaves). Refused: answered with the error, nothing sent; a body not
   * read (`unreadBody`) closes the connection, as the other refusals do.
   */
  private send(f: ForwardRequest, unreadBody: boolean): void {
    const before = f.hook?.beforeSend
    if (before === undefined) return this.o.forwarder.forward(f)
    const hook = f.hook as ResponseHook
    const refuse = (err: TxmeshError): void => {
      hook.onEnd()
      if (f.trace !== undefined) f.trace.errorType = err.code
      respondError(f.res, err, unreadBody)
    }
    before.call(hook).then(
      (err) => {
        if (err !== undefined) return refuse(err)
        // The client left while the intent was written: send nothing (the intent is undone).
        if (f.res.destroyed || f.req.socket.destroyed) return hook.onEnd()
        this.o.forwarder.forward(f)
      },
      (err: unknown) => refuse(err instanceof TxmeshError ? err : new InternalError(`the request could not be prepared: ${String(err)}`)),
    )
  }

  private onUpgrade(req: IncomingMessage, socket: Duplex, head: Buffer): void {
    if (this.draining) return respondErrorRaw(socket, new ShuttingDownError('sidecar is shutting down'))
    const facts = newFacts(false)
    forwardRequestHeaders(req.rawHeaders, undefined, facts)
    const target = this.o.resolve(req.url ?? '/', facts.host ?? this.tunnelAuthority.get(req.socket))
    if (target instanceof TxmeshError) return respondErrorRaw(socket, target)
    const method = req.method ?? 'GET'
    const route = matchRoute(this.o.config, this.o.direction, hostName(target.host), target.path, method)
    const refusal = checkLimits(route, facts, target.path.length + method.length)
    if (refusal !== undefined) return respondErrorRaw(socket, refusal)
    const headers = upgradeRequestHeaders(req.rawHeaders, req.socket.remoteAddress)
    // Host always goes upstream, as for other requests: a Host-less HTTP/1.1 upgrade (the
    // egress resolves absolute-form targets, the ingress ignores Host) would get the app's
    // bare 400 (test/fuzz/ingress.test.ts).
    if (headers[0] === 'host') headers[1] = target.host
    else headers.unshift('host', target.host)
    let head_ = `${method} ${target.path} HTTP/1.1\r\n`
    for (let i = 0; i < headers.length; i += 2) head_ += `${headers[i]}: ${headers[i + 1]}\r\n`
    head_ += '\r\n'
    this.tunnel(socket, target, (upstream) => {
      upstream.write(head_)
      if (head.length > 0) upstream.write(head)
    })
  }

  /**
   * CONNECT at egress. Clients that tunnel even plain-HTTP calls through their proxy (undici's
   * ProxyAgent and EnvHttpProxyAgent do by default) get the same treatment as absolute-form
   * requests: the tunnel is answered by the sidecar itself and its bytes are parsed as HTTP
   * requests to the CONNECT authority, so policies (and transactions) apply. Port 443 is TLS the
   * sidecar cannot read; it is passed through as a plain TCP tunnel.
   */
  private onConnect(req: IncomingMessage, socket: Duplex, head: Buffer): void {
    if (this.o.direction !== 'egress') {
      return respondErrorRaw(socket, new MethodNotAllowedError('CONNECT is only offered by the egress listener'))
    }
    if (this.draining) return respondErrorRaw(socket, new ShuttingDownError('sidecar is shutting down'))
    const authority = req.url ?? ''
    const target = this.o.resolve('/', authority)
    if (target instanceof TxmeshError) return respondErrorRaw(socket, target)
    if (target.connectPort === 443) {
      return this.tunnel(socket, target, (upstream) => {
        socket.write('HTTP/1.1 200 Connection Established\r\n\r\n')
        if (head.length > 0) upstream.write(head)
      })
    }
    socket.write('HTTP/1.1 200 Connection Established\r\n\r\n')
    this.tunnelAuthority.set(socket, authority)
    if (head.length > 0) socket.unshift(head)
    this.server.emit('connection', socket)
  }

  /** A raw byte tunnel to the target (Upgrade, CONNECT to TLS ports), bounded by idle time. */
  private tunnel(socket: Duplex, target: Target, onConnected: (upstream: Socket) => void): void {
    // A peer reached over TLS (https:// origin from the services map) gets a TLS tunnel.
    const secure = target.origin.startsWith('https:') && this.o.peerTls !== undefined
    const upstream = secure ? (this.o.peerTls as PeerTls).connectSocket(target.connectHost, target.connectPort) : connect({ host: target.connectHost, port: target.connectPort })
    let connected = false
    upstream.setTimeout(LIMITS.connectTimeoutMs)
    this.tunnels.add(socket)
    this.tunnels.add(upstream)
    const cleanup = (): void => {
      this.tunnels.delete(socket)
      this.tunnels.delete(upstream)
      socket.destroy()
      upstream.destroy()
    }
    upstream.once(secure ? 'secureConnect' : 'connect', () => {
      connected = true
      upstream.setTimeout(LIMITS.tunnelIdleTimeoutMs)
      onConnected(upstream)
      upstream.pipe(socket)
      socket.pipe(upstream)
    })
    upstream.on('timeout', () => {
      if (!connected) respondErrorRaw(socket, new UpstreamUnreachableError(`connect to ${target.origin} timed out`))
      cleanup()
    })
    upstream.on('error', (err: Error & { code?: string }) => {
      if (!connected) respondErrorRaw(socket, new UpstreamUnreachableError(`cannot connect to ${target.origin}: ${err.code ?? err.message}`))
      cleanup()
    })
    upstream.on('close', () => (connected ? cleanup() : undefined))
    socket.on('error', cleanup)
    socket.on('close', cleanup)
  }

  listen(host: string, port: number): Promise<number> {
    return listen(this.server, host, port)
  }

  /** Stops accepting, lets in-flight requests finish up to `timeoutMs`, then closes everything. */
  async drain(timeoutMs: number): Promise<{ inflightAtDeadline: number }> {
    this.draining = true
    const closed = new Promise<void>((resolve) => this.server.close(() => resolve()))
    this.server.closeIdleConnections()
    if (this.inflight > 0) {
      let timer: NodeJS.Timeout | undefined
      await Promise.race([
        new Promise<void>((resolve) => (this.drained = resolve)),
        new Promise<void>((resolve) => (timer = setTimeout(resolve, timeoutMs))),
      ])
      clearTimeout(timer)
    }
    const left = this.inflight
    this.server.closeAllConnections()
    for (const t of this.tunnels) t.destroy()
    await closed
    return { inflightAtDeadline: left }
  }
}

type ForwardBody = Buffer | Readable | null

/**
 * Starts the SERVER span of a proxied request (HTTP semconv), continuing the caller's
 * traceparent, and ends it when the response closes. Only the method, path (no query), host,
 * route and status go in: never bodies or headers.
 */
function serverSpan(
  tracing: Tracing,
  req: IncomingMessage,
  res: ServerResponse,
  route: RoutePolicy,
  defaultRoute: RoutePolicy,
  method: string,
  target: Target,
  host: string | undefined,
  scheme: 'http' | 'https',
): ProxyTrace {
  const matched = route !== defaultRoute
  const q = target.path.indexOf('?')
  const span = childSpan(tracing.tracer, matched ? `${method} ${route.name}` : method, SpanKind.SERVER, extractFromHeaders(req.rawHeaders), {
    'http.request.method': method,
    'url.path': q < 0 ? target.path : target.path.slice(0, q),
    'url.scheme': scheme,
    'server.address': hostName(host ?? target.host),
    ...(matched ? { 'http.route': route.name } : {}),
  })
  const t: ProxyTrace = { tracing, span, errorType: undefined }
  res.once('close', () => {
    const status = res.headersSent ? res.statusCode : 499
    span.setAttribute('http.response.status_code', status)
    const errorType = t.errorType ?? (status >= 500 ? String(status) : !res.writableFinished ? 'incomplete' : undefined)
    if (errorType !== undefined) span.setAttribute('error.type', errorType)
    if (status >= 500 || !res.writableFinished) span.setStatus({ code: SpanStatusCode.ERROR })
    span.end()
  })
  return t
}

function noop(): void {}

function checkLimits(route: RoutePolicy, facts: RequestHeadFacts, requestLineBytes: number): TxmeshError | undefined {
  if (facts.headerBytes + requestLineBytes > route.maxHeaderBytes) {
    return new HeadersTooLargeError(`request headers exceed ${route.maxHeaderBytes} bytes (route ${route.name})`)
  }
  if (facts.contentLength !== undefined && facts.contentLength > route.maxBodyBytes) {
    return new BodyTooLargeError(`request body of ${facts.contentLength} bytes exceeds ${route.maxBodyBytes} (route ${route.name})`)
  }
  return undefined
}

/** Counts a chunked body as it streams and fails it once it passes the route's limit. */
class BodyLimit extends Transform {
  private seen = 0
  constructor(private readonly limit: number) {
    super()
  }
  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback): void {
    this.seen += chunk.length
    if (this.seen > this.limit) cb(new BodyTooLargeError(`request body exceeds ${this.limit} bytes`))
    else cb(null, chunk)
  }
}

function readSmallBody(req: IncomingMessage, length: number, done: (buf: Buffer | undefined) => void): void {
  const buf = Buffer.allocUnsafe(length)
  let at = 0
  let finished = false
  const finish = (b: Buffer | undefined): void => {
    if (finished) return
    finished = true
    done(b)
  }
  req.on('data', (chunk: Buffer) => {
    if (at + chunk.length > length) return finish(undefined)
    chunk.copy(buf, at)
    at += chunk.length
  })
  req.once('end', () => finish(at === length ? buf : undefined))
  req.once('error', () => finish(undefined))
}
