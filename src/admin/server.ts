// Admin listener (loopback by default): health and readiness for the kubelet, and the
// transaction API for the local app and operators. With a token configured (admin.tokenEnv /
// admin.tokenFile; required off loopback) every request but GET /healthz and /readyz needs
// `Authorization: Bearer <token>`; /ui and /v1/events also take `?access_token=` (a page
// navigation and EventSource cannot set headers). Tokens are compared in constant time and never
// logged or echoed. Every request but those probes must also pass the browser defences of
// src/admin/browser-guard.ts: a loopback (or admin.allowedHosts) Host, no foreign Origin, and any
// body as application/json (403 TXM_ADMIN_HOST_REFUSED / TXM_ADMIN_ORIGIN_REFUSED, 415).
//
//   POST /v1/transactions                 {"mode":"2pc"|"saga"|"tcc","timeoutMs":N} -> 201 {id, context, ...}
//   POST /v1/transactions/{id}/commit     -> outcome once the decision is durable
//                                            (?wait=acks: and phase 2 acknowledged, bounded)
//   POST /v1/transactions/{id}/abort      -> outcome
//   POST /v1/transactions/{id}/messages   {"topic","payload","key"?} attach a message, published
//                                         only if the transaction commits (needs events.nats)
//   POST /v1/transactions/{id}/retry      saga/tcc: try the stuck steps again (operator)
//   GET  /v1/transactions[/{id}]          -> state and participants (saga/tcc: steps)
//   GET  /v1/branches/{tx}/{branch}/outcome  for the app helper's recovery
//   GET  /v1/stats                        log and transaction counters
//   GET  /v1/branches                     branches held here (in-doubt ones flagged)
//   POST /v1/branches/{tx}/resolve        {"outcome":"committed"|"aborted","by"?,"force"?} operator decision of a
//                                         branch in doubt (force: any prepared branch, a heuristic), audited
//   GET  /metrics                         Prometheus text
//   GET  /v1/events                       server-sent events of transactions and branches (dashboard)
//   GET  /v1/routes/probability           {route: P(commit)} from the metrics
//   GET  /ui                              the dashboard (one inline HTML page)
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import {
  AdminUnauthorizedError,
  BadRequestError,
  MethodNotAllowedError,
  NotFoundError,
  ReplayFailedError,
  TxLimitError,
  TxUnknownError,
  TxmeshError,
} from '../errors.js'
import { parseJsonObject, readText, sendJson } from '../http-json.js'
import { LIMITS } from '../limits.js'
import type { Logger } from '../telemetry/logger.js'
import { answerRefusedRequests, respondError } from '../proxy/respond.js'
import { sameSecret } from '../secrets.js'
import type { CoordinatorDriver } from '../tx/coordinator/driver.js'
import type { ParticipantDriver } from '../tx/participant/driver.js'
import type { SagaDriver } from '../tx/saga/driver.js'
import type { Outbox } from '../events/outbox.js'
import type { Subscriptions } from '../events/subscriber.js'
import type { SidecarMetrics } from '../telemetry/metrics.js'
import { extractFromHeaders } from '../telemetry/tracing.js'
import { hostOrOriginRefusal, mediaTypeRefusal, type BrowserPolicy } from './browser-guard.js'
import type { EventHub } from './events.js'
import { DASHBOARD_HTML } from './ui.js'

export type Readiness = 'starting' | 'ready' | 'draining'

export interface AdminDeps {
  readonly readiness: () => Readiness
  readonly coordinator?: CoordinatorDriver | undefined
  readonly participant?: ParticipantDriver | undefined
  /** Saga and TCC transactions. */
  readonly steps?: SagaDriver | undefined
  /** Event bus (transactional messages). */
  readonly outbox?: Outbox | undefined
  /** Postgres store: this instance's log (`<service>/<instance>`), the owner of what it coordinates. */
  readonly owner?: string | undefined
  /** Postgres store: transactions this instance finishes for siblings whose lease lapsed. */
  readonly takenOver?: () => readonly { readonly deadline: number; readonly takenFrom: string }[]
  /** Why transactions are unavailable (no mesh key), when they are. */
  readonly txUnavailable?: () => TxmeshError | undefined
  readonly logger: Logger
  /** Counters for operators and the benchmark (log appends/fsyncs, transactions). */
  readonly stats?: () => Record<string, unknown>
  /** Prometheus metrics served at /metrics. */
  readonly metrics?: () => SidecarMetrics
  /** Dashboard trace link template (config ui.traceUrl). */
  readonly traceUrl?: string | undefined
  /** Transaction events for GET /v1/events (the dashboard). */
  readonly events?: EventHub | undefined
  /**
   * Bearer token every request but the probes must carry (config admin), read at each request
   * (admin.tokenFile is re-read when it changes); undefined: none.
   */
  readonly token?: (() => Buffer | undefined) | undefined
  /** Host and Origin values accepted besides loopback and the request's own origin (config admin); none when undefined. */
  readonly browser?: BrowserPolicy | undefined
  /** Subscriptions (config `subscriptions`) once they run: views and replay. */
  readonly subscriptions?: () => Subscriptions | undefined
}

const LOOPBACK_ONLY: BrowserPolicy = { allowedHosts: [], allowedOrigins: [] }

/**
 * GET /healthz (alive) and /readyz (200 once ready, 503 while starting or draining): the answers
 * the admin listener and the health listener (src/admin/health.ts) share. False for other paths.
 */
export function answerProbe(res: ServerResponse, path: string, readiness: () => Readiness): boolean {
  if (path === '/healthz') {
    sendJson(res, 200, { status: 'ok' })
    return true
  }
  if (path === '/readyz') {
    const r = readiness()
    sendJson(res, r === 'ready' ? 200 : 503, { status: r })
    return true
  }
  return false
}

const TX = /^\/v1\/transactions\/([A-Za-z0-9_-]{1,64})(?:\/(commit|abort|retry|messages))?$/
const RESOLVE = /^\/v1\/branches\/([A-Za-z0-9_-]{1,64})\/resolve$/
const BRANCH = /^\/v1\/branches\/([A-Za-z0-9_-]{1,64})\/([A-Za-z0-9_-]{1,64})\/outcome$/

export function createAdminServer(d: AdminDeps): Server {
  const server = createServer({
    maxHeaderSize: LIMITS.maxHeaderBytes,
    headersTimeout: LIMITS.downstreamHeadersTimeoutMs,
    requestTimeout: LIMITS.apiRequestTimeoutMs,
    connectionsCheckingInterval: LIMITS.connectionsCheckMs,
    // Host means nothing here; without this Node answers a Host-less HTTP/1.1 request with a bare 400.
    requireHostHeader: false,
  })
  // Loopback by default, but still one listener among the others: bounded like them.
  server.maxConnections = LIMITS.maxConnectionsPerListener
  // What the parser refuses gets a code too (Node would answer a bare 400/408/417/431).
  answerRefusedRequests(server, LIMITS.maxHeaderBytes)
  server.on('request', (req: IncomingMessage, res: ServerResponse) => {
    handle(req, res).catch((err: unknown) => {
      d.logger.error('admin_failed', { error: String(err) })
      respondError(res, new BadRequestError('admin request failed'))
    })
  })

  async function handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const path = (req.url ?? '/').split('?')[0] as string
    const method = req.method ?? 'GET'
    if (answerProbe(res, path, d.readiness)) return
    // A page another site showed in the operator's browser (DNS rebinding, cross-site POST).
    const foreign = hostOrOriginRefusal(req, d.browser ?? LOOPBACK_ONLY)
    if (foreign !== undefined) {
      req.resume()
      return respondError(res, foreign, true)
    }
    const token = d.token?.()
    if (token !== undefined) {
      const refusal = checkToken(req, path, token)
      if (refusal !== undefined) {
        // The body is not read: close after the answer so it is not parsed as a request.
        req.resume()
        return respondError(res, new AdminUnauthorizedError(refusal), true)
      }
    }
    const untyped = mediaTypeRefusal(req)
    if (untyped !== undefined) {
      req.resume()
      return respondError(res, untyped, true)
    }
    if (path === '/metrics' && d.metrics !== undefined) {
      const m = d.metrics()
      const text = await m.text()
      res.writeHead(200, { 'content-type': m.registry.contentType, 'content-length': Buffer.byteLength(text) })
      return void res.end(text)
    }
    if (path === '/v1/ui-config' && method === 'GET') return sendJson(res, 200, { traceUrl: d.traceUrl ?? null })
    if (path === '/ui' || path === '/ui/') {
      if (method !== 'GET' && method !== 'HEAD') return respondError(res, new MethodNotAllowedError('use GET'))
      res.writeHead(200, {
        'content-type': 'text/html; charset=utf-8',
        'content-length': Buffer.byteLength(DASHBOARD_HTML),
        'cache-control': 'no-store',
        // Inline script and style only; the page talks to this origin alone.
        'content-security-policy':
          "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        'x-content-type-options': 'nosniff',
        // The page's URL may carry ?access_token=: never send it on in a Referer (trace links).
        'referrer-policy': 'no-referrer',
      })
      return void res.end(method === 'HEAD' ? undefined : DASHBOARD_HTML)
    }
    if (path === '/v1/events' && d.events !== undefined) {
      if (method !== 'GET') return respondError(res, new MethodNotAllowedError('use GET'))
      return streamEvents(req, res, d.events)
    }
    if (path === '/v1/routes/probability' && d.metrics !== undefined) {
      if (method !== 'GET') return respondError(res, new MethodNotAllowedError('use GET'))
      const metric = d.metrics().registry.getSingleMetric('txmesh_route_commit_probability')
      const out: Record<string, number> = {}
      if (metric !== undefined) {
        for (const v of (await metric.get()).values) {
          const route = v.labels.route
          if (typeof route === 'string') out[route] = v.value
        }
      }
      return sendJson(res, 200, out)
    }
    if (path === '/v1/subscriptions' || path.startsWith('/v1/subscriptions/'))
      return answerSubscriptions(req, res, method, path, d.subscriptions?.())
    if (!path.startsWith('/v1/')) return respondError(res, new NotFoundError(`no admin endpoint ${method} ${path}`))
    const unavailable = d.txUnavailable?.()
    if (unavailable !== undefined) return respondError(res, unavailable)
    const coordinator = d.coordinator
    const participant = d.participant
    const steps = d.steps
    if (coordinator === undefined || participant === undefined || steps === undefined)
      return respondError(res, new NotFoundError('transactions are not enabled'))

    if (path === '/v1/stats' && method === 'GET') return sendJson(res, 200, d.stats?.() ?? {})
    if (path === '/v1/transactions') {
      if (method === 'GET') {
        const owner = d.owner === undefined ? {} : { owner: d.owner }
        const all = [...coordinator.list(), ...steps.list(), ...(d.takenOver?.() ?? [])]
        return sendJson(res, 200, {
          transactions: all.map((v) => ({ ...v, ...owner, deadline: new Date(v.deadline).toISOString() })),
        })
      }
      if (method !== 'POST') return respondError(res, new MethodNotAllowedError('use POST to begin a transaction'))
      const text = await readText(req, LIMITS.adminBodyBytes)
      // Over the limit: close after the answer rather than drain the rest of the body.
      if (text instanceof TxmeshError) return respondError(res, text, true)
      const body = parseJsonObject(text)
      if (body instanceof TxmeshError) return respondError(res, body)
      const mode = body.mode ?? '2pc'
      if (mode !== '2pc' && mode !== 'saga' && mode !== 'tcc')
        return respondError(
          res,
          new BadRequestError(`mode "${String(mode)}" is not supported; use "2pc", "saga" or "tcc"`),
        )
      const timeoutMs = body.timeoutMs ?? LIMITS.txTimeoutMs
      if (
        typeof timeoutMs !== 'number' ||
        !Number.isInteger(timeoutMs) ||
        timeoutMs < 1 ||
        timeoutMs > LIMITS.txTimeoutCapMs
      ) {
        return respondError(
          res,
          new BadRequestError(`timeoutMs must be an integer between 1 and ${LIMITS.txTimeoutCapMs}`),
        )
      }
      // The transaction's span continues the caller's trace when it sent a traceparent.
      const tx =
        mode === '2pc'
          ? coordinator.begin(mode, timeoutMs, 'api', extractFromHeaders(req.rawHeaders))
          : steps.begin(mode, timeoutMs)
      if (tx instanceof TxmeshError) return respondError(res, tx)
      return sendJson(res, 201, { id: tx.id, mode, context: tx.context, deadline: new Date(tx.deadline).toISOString() })
    }

    const t = TX.exec(path)
    if (t !== null) {
      const [, id, op] = t as unknown as [string, string, string | undefined]
      if (op === undefined) {
        if (method !== 'GET') return respondError(res, new MethodNotAllowedError('use GET'))
        const view = coordinator.view(id) ?? steps.view(id)
        if (view === undefined)
          return respondError(res, new TxUnknownError(`transaction ${id} is not coordinated here`))
        return sendJson(res, 200, { ...view, deadline: new Date(view.deadline).toISOString() })
      }
      if (method !== 'POST') return respondError(res, new MethodNotAllowedError(`use POST to ${op}`))
      if (op === 'messages') return attachMessage(req, res, id, steps.has(id) ? steps : coordinator, d.outbox)
      req.resume()
      if (op === 'retry') {
        const n = steps.retryStuck(id)
        if (n instanceof TxmeshError) return respondError(res, n)
        return sendJson(res, 200, { id, retried: n })
      }
      const waitForAcks = /[?&]wait=acks(&|$)/.test(req.url ?? '')
      const owner = steps.has(id) ? steps : coordinator
      const result =
        op === 'commit'
          ? await owner.commit(id, waitForAcks)
          : await owner.abort(id, 'aborted by the application', waitForAcks)
      if (result instanceof TxmeshError) return respondError(res, result)
      return sendJson(res, 200, result)
    }

    if (path === '/v1/branches' && method === 'GET') return sendJson(res, 200, { branches: participant.list() })
    const r = RESOLVE.exec(path)
    if (r !== null) {
      if (method !== 'POST') return respondError(res, new MethodNotAllowedError('use POST to resolve'))
      const text = await readText(req, LIMITS.adminBodyBytes)
      // Over the limit: close after the answer rather than drain the rest of the body.
      if (text instanceof TxmeshError) return respondError(res, text, true)
      const body = parseJsonObject(text)
      if (body instanceof TxmeshError) return respondError(res, body)
      if (body.outcome !== 'committed' && body.outcome !== 'aborted')
        return respondError(res, new BadRequestError('outcome must be "committed" or "aborted"'))
      const by = typeof body.by === 'string' && body.by.length <= LIMITS.auditActorChars ? body.by : 'operator'
      if (body.force !== undefined && typeof body.force !== 'boolean')
        return respondError(res, new BadRequestError('force must be true or false'))
      const force = body.force === true
      const done = await participant.resolve((r as unknown as [string, string])[1], body.outcome, by, force)
      if (done instanceof TxmeshError) return respondError(res, done)
      return sendJson(res, 200, { ...done, resolved: body.outcome, by, forced: !done.inDoubt })
    }
    const b = BRANCH.exec(path)
    if (b !== null && method === 'GET') {
      const [, tx, branch] = b as unknown as [string, string, string]
      return sendJson(res, 200, { tx, branch, outcome: await participant.outcomeFor(tx, branch) })
    }
    return respondError(res, new NotFoundError(`no admin endpoint ${method} ${path}`))
  }
  return server
}

/** Paths a browser reaches without setting headers: the page itself and its EventSource. */
const QUERY_TOKEN_PATHS = new Set(['/ui', '/ui/', '/v1/events'])

/** Why the request is refused, or undefined when it carries the token. Never quotes what was sent. */
function checkToken(req: IncomingMessage, path: string, token: Buffer): string | undefined {
  const header = req.headers.authorization
  let given: string | undefined
  if (typeof header === 'string') {
    const m = /^Bearer[ \t]+([^\s]+)[ \t]*$/i.exec(header)
    if (m === null) return 'the Authorization header is not "Bearer <token>"'
    given = m[1] as string
  } else if (QUERY_TOKEN_PATHS.has(path)) {
    const q = (req.url ?? '').indexOf('?')
    given = q < 0 ? undefined : (new URLSearchParams((req.url ?? '').slice(q + 1)).get('access_token') ?? undefined)
  }
  if (given === undefined)
    return `the admin API needs Authorization: Bearer <token>${QUERY_TOKEN_PATHS.has(path) ? ' (or ?access_token=)' : ''}`
  return sameSecret(given, token) ? undefined : 'the admin token does not match'
}

const TOPIC = /^[A-Za-z0-9_-]{1,64}(\.[A-Za-z0-9_-]{1,64}){0,15}$/

/** POST /v1/transactions/{id}/messages: checked, then held by the transaction's coordinator. */
async function attachMessage(
  req: IncomingMessage,
  res: ServerResponse,
  id: string,
  owner: CoordinatorDriver | SagaDriver,
  outbox: Outbox | undefined,
): Promise<void> {
  const text = await readText(req, LIMITS.maxMessageBytes)
  if (text instanceof TxmeshError) return respondError(res, text, true)
  if (outbox?.acceptsMessages !== true)
    return respondError(res, new BadRequestError('no event bus takes messages here: configure events.nats'))
  const body = parseJsonObject(text)
  if (body instanceof TxmeshError) return respondError(res, body)
  if (typeof body.topic !== 'string' || !TOPIC.test(body.topic))
    return respondError(
      res,
      new BadRequestError('topic must be a NATS subject of tokens [A-Za-z0-9_-] separated by dots'),
    )
  if (!outbox.coversTopic(body.topic))
    return respondError(res, new BadRequestError(`topic ${body.topic} is not in events.nats.topics`))
  if (body.key !== undefined && (typeof body.key !== 'string' || body.key.length > LIMITS.messageKeyChars))
    return respondError(
      res,
      new BadRequestError(`key must be a string of at most ${LIMITS.messageKeyChars} characters`),
    )
  if (body.payload === undefined) return respondError(res, new BadRequestError('payload is required'))
  const n = owner.attach(id, {
    topic: body.topic,
    payload: body.payload,
    ...(body.key === undefined ? {} : { key: body.key as string }),
  })
  if (n instanceof TxmeshError) return respondError(res, n)
  return sendJson(res, 201, { id, messages: n })
}

/**
 * One SSE stream: replays the ring buffer after Last-Event-ID (header, or ?lastEventId= for a
 * first connection), then every new event; a comment line every LIMITS.adminEventsHeartbeatMs.
 */
function streamEvents(req: IncomingMessage, res: ServerResponse, hub: EventHub): void {
  const write = (e: { id: number; type: string; at: number; data: Readonly<Record<string, unknown>> }): void => {
    res.write(`id: ${e.id}\nevent: ${e.type}\ndata: ${JSON.stringify({ ...e.data, at: e.at })}\n\n`)
    // A client that does not read: cut it; it reconnects and replays from its Last-Event-ID.
    if (res.writableLength > LIMITS.adminEventStreamBufferBytes) res.destroy()
  }
  // Everything below runs synchronously: no event can slip between the replay and the subscription.
  const unsubscribe = hub.subscribe(write)
  if (unsubscribe === undefined) {
    req.resume()
    return respondError(res, new TxLimitError(`this sidecar already serves ${LIMITS.adminEventStreams} event streams`))
  }
  const header = req.headers['last-event-id']
  const query = /[?&]lastEventId=(\d{1,15})(&|$)/.exec(req.url ?? '')?.[1]
  const raw = typeof header === 'string' ? header : query
  const last = raw !== undefined && /^\d{1,15}$/.test(raw) ? Number(raw) : undefined
  res.writeHead(200, {
    'content-type': 'text/event-stream; charset=utf-8',
    'cache-control': 'no-store',
    connection: 'keep-alive',
    'x-accel-buffering': 'no',
  })
  res.write(`retry: ${LIMITS.adminEventsRetryMs}\n: txmesh events, last id ${hub.lastId}\n\n`)
  // No Last-Event-ID: a new page that loads current state over the API; only new events follow.
  if (last !== undefined) for (const e of hub.since(last)) write(e)
  const heartbeat = setInterval(() => res.write(': heartbeat\n\n'), LIMITS.adminEventsHeartbeatMs)
  heartbeat.unref()
  res.once('close', () => {
    clearInterval(heartbeat)
    unsubscribe()
  })
}

const REPLAY = /^\/v1\/subscriptions\/([a-z0-9][a-z0-9-]{0,47})\/replay$/
const RFC3339 = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$/

/**
 * GET /v1/subscriptions (each with its lag, deliveries, redeliveries, dead letters) and
 * POST /v1/subscriptions/{name}/replay {fromSequence} | {fromTime} (txmesh events replay).
 */
async function answerSubscriptions(
  req: IncomingMessage,
  res: ServerResponse,
  method: string,
  path: string,
  subs: Subscriptions | undefined,
): Promise<void> {
  if (path === '/v1/subscriptions') {
    if (method !== 'GET') return respondError(res, new MethodNotAllowedError('use GET'))
    return sendJson(res, 200, { subscriptions: subs === undefined ? [] : await subs.views() })
  }
  const m = REPLAY.exec(path)
  if (m === null) return respondError(res, new NotFoundError(`no admin endpoint ${method} ${path}`))
  if (method !== 'POST') return respondError(res, new MethodNotAllowedError('use POST'))
  const text = await readText(req, LIMITS.adminBodyBytes)
  if (text instanceof TxmeshError) return respondError(res, text, true)
  const body = parseJsonObject(text)
  if (body instanceof TxmeshError) return respondError(res, body)
  const seq = body.fromSequence
  const time = body.fromTime
  if ((seq === undefined) === (time === undefined))
    return respondError(res, new BadRequestError('give exactly one of fromSequence and fromTime'))
  if (seq !== undefined && !(typeof seq === 'number' && Number.isSafeInteger(seq) && seq >= 1))
    return respondError(res, new BadRequestError('fromSequence must be an integer of at least 1'))
  if (time !== undefined && !(typeof time === 'string' && RFC3339.test(time) && !Number.isNaN(Date.parse(time))))
    return respondError(res, new BadRequestError('fromTime must be an RFC 3339 time (2026-12-01T00:00:00Z)'))
  const name = m[1] as string
  if (subs === undefined) return respondError(res, new NotFoundError(`no subscription ${name} runs here`))
  const from = seq !== undefined ? { fromSequence: seq as number } : { fromTime: time as string }
  try {
    const done = await subs.replay(name, from)
    if (done === undefined) return respondError(res, new NotFoundError(`no subscription ${name} runs here`))
  } catch (err) {
    return respondError(
      res,
      new ReplayFailedError(`replay of ${name} failed: ${err instanceof Error ? err.message : String(err)}`),
    )
  }
  return sendJson(res, 200, { subscription: name, ...from })
}
