// One HTTP listener of the data plane (egress or ingress): parses requests, applies the
// matching route policy's limits, forwards through the Forwarder, tunnels Upgrade requests the
// upstream accepted with 101, and drains on shutdown. What differs between egress and ingress
// is only how the upstream is chosen (a TargetResolver).
import { createServer, request as httpRequest, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
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
  ProxyLoopError,
  ShuttingDownError,
  TxmeshError,
  UpstreamProtocolError,
  UpstreamTimeoutError,
  UpstreamUnreachableError,
} from '../errors.js'
import { LIMITS } from '../limits.js'
import { listen } from '../net.js'
import type { Logger } from '../telemetry/logger.js'
import type { PeerTls } from '../peer-tls.js'
import type { ForwardRequest, Forwarder } from './forward.js'
import type { ProxyTrace, ResponseHook, Target, TargetResolver, TxHook } from './types.js'
import type { Span } from '@opentelemetry/api'
import {
  forwardRequestHeaders,
  forwardResponseHeaders,
  newFacts,
  upgradeRequestHeaders,
  type RequestHeadFacts,
} from './headers.js'
import { HOPS_HEADER, connectedToSelf } from './loop.js'
import { answerRefusedRequests, respondError, respondErrorRaw, upstreamError } from './respond.js'
import { hostName, matchRoute } from './routes.js'
import { methodRetryable } from './retry.js'
import { SpanKind, SpanStatusCode, childSpan, extractFromHeaders, type Tracing } from '../telemetry/tracing.js'

export interface ProxyServerOptions {
  readonly direction: Direction
  readonly config: SidecarConfig
  readonly forwarder: Forwarder
  readonly resolve: TargetResolver
  readonly log: Logger
  readonly tx?: TxHook | undefined
  /** Set only when tracing is on; undefined keeps the request path free of tracing work. */
  readonly tracing?: Tracing | undefined
  /**
   * Peer TLS (config `tls`): the ingress serves HTTPS with it; the egress opens its raw tunnels
   * (Upgrade) to https:// peers with it.
   */
  readonly peerTls?: PeerTls | undefined
  /** Ports of this sidecar's own listeners a tunnel must never reach (src/proxy/loop.ts). */
  readonly selfPorts?: ReadonlySet<number> | undefined
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
    this.server =
      tls === undefined
        ? createServer(options)
        : (createHttpsServer({ ...options, ...tls.serverOptions() }) as unknown as Server)
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
    const looped = this.hopsRefusal(facts)
    if (looped !== undefined) return respondError(res, looped, hasBody)
    const target = this.o.resolve(req.url ?? '/', facts.host ?? this.tunnelAuthority.get(req.socket))
    if (target instanceof TxmeshError) return respondError(res, target, hasBody)
    const method = req.method ?? 'GET'
    const route = matchRoute(this.o.config, this.o.direction, hostName(target.host), target.path, method)
    const refusal = checkLimits(route, facts, target.path.length + method.length)
    // The body of a refused request is never read: close the connection after the answer so
    // its unread bytes are not parsed as the next request.
    const trace =
      this.o.tracing === undefined
        ? undefined
        : serverSpan(
            this.o.tracing,
            req,
            res,
            route,
            this.o.config.defaultRoute,
            method,
            target,
            facts.host,
            this.scheme,
          )
    if (refusal !== undefined) {
      if (trace !== undefined) trace.errorType = refusal.code
      return respondError(res, refusal, true)
    }
    const hook = this.txHook(facts, route, target, method, headers, trace)
    if (hook instanceof TxmeshError) {
      if (trace !== undefined) trace.errorType = hook.code
      return respondError(res, hook, hasBody)
    }
    if (facts.expectContinue) res.writeContinue()
    headers.push('host', target.host)
    if (this.o.direction === 'egress') headers.push(HOPS_HEADER, String(facts.hops + 1))
    const request = (body: ForwardBody): ForwardRequest => ({
      direction: this.o.direction,
      req,
      res,
      origin: target.origin,
      path: target.path,
      method,
      headers,
      body,
      route,
      hook,
      trace,
    })
    if (facts.chunked) return this.send(request(pipeline(req, new BodyLimit(route.maxBodyBytes), noop)), hasBody)
    if (facts.contentLength === undefined || facts.contentLength === 0) return this.send(request(null), hasBody)
    const wanted = hook?.requestBodyLimit !== undefined && facts.contentLength <= hook.requestBodyLimit
    if (!wanted && !(facts.contentLength <= LIMITS.retryBodyBytes && methodRetryable(method, route.retries)))
      return this.send(request(req), hasBody)
    // Small body of a retryable request (or one a saga template reads): read it first so a
    // retry can send it again.
    readSmallBody(req, facts.contentLength, (buf) => {
      if (buf === undefined) {
        hook?.onEnd()
        return respondError(res, new BadRequestError('request body ended early'), true)
      }
      if (hook !== undefined && wanted) hook.requestBody = buf
      this.send(request(buf), false)
    })
  }

  /**
   * The transaction work of a request (src/proxy/tx-hook.ts): enlistment at the egress, joining
   * or an implicit transaction at the ingress, and the check that only a coordinator's signed
   * op reaches a participant hook; an error refuses the request.
   */
  private txHook(
    facts: RequestHeadFacts,
    route: RoutePolicy,
    target: Target,
    method: string,
    headers: string[],
    trace: ProxyTrace | undefined,
  ): ResponseHook | TxmeshError | undefined {
    let hook: ResponseHook | undefined
    const tx = this.o.tx
    if (tx !== undefined && (facts.context !== undefined || route.transaction === 'required')) {
      const h =
        facts.context === undefined
          ? this.o.direction === 'ingress'
            ? tx.implicit(route, headers, trace?.span)
            : undefined
          : this.o.direction === 'egress'
            ? tx.egress(facts.context, route, {
                origin: target.origin,
                host: target.host,
                method,
                path: target.path,
                headers,
              })
            : tx.ingress(facts.context, route, headers)
      if (h instanceof TxmeshError) return h
      hook = h
    }
    if (target.stepHook !== undefined) {
      const refused =
        tx === undefined || facts.context === undefined
          ? new HookForbiddenError(
              `${target.path} is a participant hook; only a coordinator's signed ${target.stepHook} reaches it`,
            )
          : tx.stepHook(facts.context, target.stepHook)
      if (refused !== undefined) {
        hook?.onEnd()
        return refused
      }
    }
    return hook
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
      (err: unknown) =>
        refuse(
          err instanceof TxmeshError ? err : new InternalError(`the request could not be prepared: ${String(err)}`),
        ),
    )
  }

  /**
   * Egress: a request that already passed LIMITS.maxProxyHops sidecar listeners is in a loop no
   * address shows (src/proxy/loop.ts). The ingress only drops the count: it is the last hop
   * before an app.
   */
  private hopsRefusal(facts: RequestHeadFacts): ProxyLoopError | undefined {
    if (this.o.direction !== 'egress' || facts.hops < LIMITS.maxProxyHops) return undefined
    return new ProxyLoopError(
      Number.isFinite(facts.hops)
        ? `request passed ${facts.hops} sidecar listeners (${HOPS_HEADER}): a proxy loop`
        : `invalid ${HOPS_HEADER} header`,
    )
  }

  private onUpgrade(req: IncomingMessage, socket: Duplex, head: Buffer): void {
    if (this.draining) return respondErrorRaw(socket, new ShuttingDownError('sidecar is shutting down'))
    const facts = newFacts(false)
    forwardRequestHeaders(req.rawHeaders, undefined, facts)
    const looped = this.hopsRefusal(facts)
    if (looped !== undefined) return respondErrorRaw(socket, looped)
    const target = this.o.resolve(req.url ?? '/', facts.host ?? this.tunnelAuthority.get(req.socket))
    if (target instanceof TxmeshError) return respondErrorRaw(socket, target)
    // A hook reached only with a signed context of its op is never a tunnel's end.
    if (target.stepHook !== undefined)
      return respondErrorRaw(
        socket,
        new HookForbiddenError(`${target.path} is a participant hook; it takes no Upgrade`),
      )
    const method = req.method ?? 'GET'
    const route = matchRoute(this.o.config, this.o.direction, hostName(target.host), target.path, method)
    const refusal = checkLimits(route, facts, target.path.length + method.length)
    if (refusal !== undefined) return respondErrorRaw(socket, refusal)
    // A tunnel is never part of a transaction: nothing would enlist, join or end it, and an app
    // that serves the handshake as an ordinary request (a node:http server without an 'upgrade'
    // listener answers `Upgrade: h2c` with 200) would do the work outside the transaction.
    if (
      (facts.context !== undefined && route.transaction !== 'never') ||
      (this.o.direction === 'ingress' && route.transaction === 'required')
    )
      return respondErrorRaw(
        socket,
        new BadRequestError(
          'an Upgrade request cannot be part of a transaction: send it without a txmesh context, on a route that requires none',
        ),
      )
    // What follows the handshake's head belongs to the tunnel and goes upstream only after a
    // 101; a body of the handshake itself would have to be framed and sent before it.
    if (facts.chunked || (facts.contentLength !== undefined && facts.contentLength > 0)) {
      return respondErrorRaw(socket, new BadRequestError('an Upgrade request with a body is not supported'))
    }
    const headers = upgradeRequestHeaders(req.rawHeaders, req.socket.remoteAddress)
    // Host always goes upstream, as for other requests: a Host-less HTTP/1.1 upgrade (the
    // egress resolves absolute-form targets, the ingress ignores Host) would get the app's
    // bare 400 (test/fuzz/ingress.test.ts).
    if (headers[0] === 'host') headers[1] = target.host
    else headers.unshift('host', target.host)
    if (this.o.direction === 'egress') headers.push(HOPS_HEADER, String(facts.hops + 1))
    this.upgrade(socket, head, target, method, headers, route.timeoutMs)
  }

  /**
   * Upgrade (WebSocket): the handshake goes upstream as an HTTP request and its answer is
   * parsed. Only a 101 turns the connection into a byte tunnel. Any other answer is relayed as
   * an ordinary response and the client's connection is closed after it (issue 15, hole 1: an
   * app that answered 200 and kept its socket got the client's next request, a forged hook
   * call, unfiltered). The client's bytes behind the handshake wait, unread, for the 101.
   * Longer than the other functions here on purpose: it is one small state machine whose socket
   * handlers all share `state`, `over`, `cleanup` and `fail`, and reads best in one place.
   */
  private upgrade(
    client: Duplex,
    early: Buffer,
    target: Target,
    method: string,
    headers: string[],
    headTimeoutMs: number,
  ): void {
    client.pause()
    const { upstream, connectEvent } = this.openUpstream(target)
    // connecting → waiting (for the answer's head) → relaying (not 101) or tunnel (101).
    let state: 'connecting' | 'waiting' | 'relaying' | 'tunnel' = 'connecting'
    let over = false
    this.tunnels.add(client)
    this.tunnels.add(upstream)
    const cleanup = (): void => {
      if (over) return
      over = true
      this.tunnels.delete(client)
      this.tunnels.delete(upstream)
      client.destroy()
      upstream.destroy()
    }
    // A failure before the answer gets the sidecar's own coded response; the client's
    // connection closes once it is written. Later, both sides are just closed.
    const fail = (err: TxmeshError): void => {
      if (over) return
      if (state === 'relaying' || state === 'tunnel') return cleanup()
      over = true
      this.tunnels.delete(client)
      this.tunnels.delete(upstream)
      upstream.destroy()
      respondErrorRaw(client, err)
      closeOnceWritten(client)
    }
    upstream.setTimeout(LIMITS.connectTimeoutMs)
    upstream.once(connectEvent, () => {
      if (this.o.selfPorts !== undefined && connectedToSelf(upstream, this.o.selfPorts)) {
        return fail(
          new ProxyLoopError(
            `${target.connectHost}:${target.connectPort} is this sidecar's own listener: the request would loop back into it`,
          ),
        )
      }
      state = 'waiting'
      upstream.setTimeout(headTimeoutMs)
    })
    upstream.on('timeout', () => {
      if (state === 'connecting') fail(new UpstreamUnreachableError(`connect to ${target.origin} timed out`))
      else fail(new UpstreamTimeoutError(`${target.origin} did not answer the upgrade within ${headTimeoutMs} ms`))
    })
    upstream.on('error', (err: Error) => fail(upstreamError(err, target.origin)))
    // While relaying, the end of the upstream is the end of a close-delimited body: the piped
    // response ends the client's side itself.
    upstream.on('close', () =>
      state === 'relaying'
        ? undefined
        : fail(new UpstreamProtocolError(`${target.origin} closed the connection before answering the upgrade`)),
    )
    client.on('error', cleanup)
    client.on('close', cleanup)
    let up: ReturnType<typeof httpRequest>
    try {
      up = httpRequest({ method, path: target.path, headers, setHost: false, createConnection: () => upstream })
    } catch (err) {
      // node:http's client refuses some header values its server accepted.
      return fail(new BadRequestError(`the upgrade request cannot be forwarded: ${(err as Error).message}`))
    }
    up.on('error', (err: Error) => fail(upstreamError(err, target.origin)))
    up.once('upgrade', (res: IncomingMessage, socket: Duplex, upstreamHead: Buffer) => {
      if (over) return
      state = 'tunnel'
      upstream.setTimeout(LIMITS.tunnelIdleTimeoutMs)
      // The 101 goes back as it came: its Upgrade/Connection pair is what the tunnel is for.
      let text = `HTTP/1.1 101 ${res.statusMessage ?? 'Switching Protocols'}\r\n`
      for (let i = 0; i < res.rawHeaders.length; i += 2) text += `${res.rawHeaders[i]}: ${res.rawHeaders[i + 1]}\r\n`
      client.write(`${text}\r\n`)
      if (upstreamHead.length > 0) client.write(upstreamHead)
      if (early.length > 0) socket.write(early)
      socket.pipe(client)
      client.pipe(socket)
    })
    up.once('response', (res: IncomingMessage) => {
      if (over) return
      state = 'relaying'
      // Not switched: an ordinary response, its body delimited by its length or by the close.
      const filtered = forwardResponseHeaders(res.rawHeaders)
      let text = `HTTP/1.1 ${res.statusCode ?? 502} ${res.statusMessage ?? ''}\r\n`
      for (let i = 0; i < filtered.length; i += 2) text += `${filtered[i]}: ${filtered[i + 1]}\r\n`
      client.write(`${text}connection: close\r\n\r\n`)
      res.on('error', cleanup)
      res.on('aborted', cleanup)
      res.pipe(client)
      closeOnceWritten(client)
    })
    up.end()
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

  /** The connection to the target of a tunnel: TLS to a peer reached over TLS, else TCP. */
  private openUpstream(target: Target): { upstream: Socket; connectEvent: 'connect' | 'secureConnect' } {
    // A peer reached over TLS (https:// origin from the services map) gets a TLS tunnel.
    const secure = target.origin.startsWith('https:') && this.o.peerTls !== undefined
    const upstream = secure
      ? (this.o.peerTls as PeerTls).connectSocket(target.connectHost, target.connectPort)
      : connect({ host: target.connectHost, port: target.connectPort })
    return { upstream, connectEvent: secure ? 'secureConnect' : 'connect' }
  }

  /** A raw byte tunnel to the target (CONNECT to TLS ports), bounded by idle time. */
  private tunnel(socket: Duplex, target: Target, onConnected: (upstream: Socket) => void): void {
    const { upstream, connectEvent } = this.openUpstream(target)
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
    upstream.once(connectEvent, () => {
      if (this.o.selfPorts !== undefined && connectedToSelf(upstream, this.o.selfPorts)) {
        respondErrorRaw(
          socket,
          new ProxyLoopError(
            `${target.connectHost}:${target.connectPort} is this sidecar's own listener: the tunnel would loop back into it`,
          ),
        )
        return cleanup()
      }
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
      if (!connected)
        respondErrorRaw(
          socket,
          new UpstreamUnreachableError(`cannot connect to ${target.origin}: ${err.code ?? err.message}`),
        )
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
  const span = childSpan(
    tracing.tracer,
    matched ? `${method} ${route.name}` : method,
    SpanKind.SERVER,
    extractFromHeaders(req.rawHeaders),
    {
      'http.request.method': method,
      'url.path': q < 0 ? target.path : target.path.slice(0, q),
      'url.scheme': scheme,
      'server.address': hostName(host ?? target.host),
      ...(matched ? { 'http.route': route.name } : {}),
    },
  )
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

/** Closes a socket once what was written to it has gone out (a client keeps its side open). */
function closeOnceWritten(socket: Duplex): void {
  if (socket.writableFinished) socket.destroy()
  else socket.once('finish', () => socket.destroy())
}

function checkLimits(route: RoutePolicy, facts: RequestHeadFacts, requestLineBytes: number): TxmeshError | undefined {
  if (facts.headerBytes + requestLineBytes > route.maxHeaderBytes) {
    return new HeadersTooLargeError(`request headers exceed ${route.maxHeaderBytes} bytes (route ${route.name})`)
  }
  if (facts.contentLength !== undefined && facts.contentLength > route.maxBodyBytes) {
    return new BodyTooLargeError(
      `request body of ${facts.contentLength} bytes exceeds ${route.maxBodyBytes} (route ${route.name})`,
    )
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
