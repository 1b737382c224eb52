// Control listener: peer sidecars reach this sidecar's coordinator and participant here
// (DESIGN.md). Every request must carry a valid `txmesh-auth` signature (mesh key HMAC over
// timestamp, nonce, method, path and body; src/tx/protocol.ts signControl) with a timestamp
// within LIMITS.controlClockSkewMs and a nonce not seen in that window (src/control/replay.ts).
// Every answer to a request whose signature verified is signed too (`txmesh-auth` on the
// response, src/tx/protocol.ts signAnswer: this sidecar's address, the request's txmesh-auth,
// status and body), so a vote or an outcome cannot be forged on the way back; the caller
// (src/control/client.ts) refuses answers without it. With `tls` configured it serves HTTPS
// (src/peer-tls.ts).
//
//   POST /v1/tx/{id}/prepare   {branch}            participant: -> {vote}
//   POST /v1/tx/{id}/commit    {branch}            participant: -> {outcome}
//   POST /v1/tx/{id}/abort     {branch}            participant: -> {outcome}
//   POST /v1/tx/{id}/commit-one-phase {branch}     participant (the only one): prepare, decide,
//                                                  finish -> {outcome}; 503 = not known yet, retry
//   POST /v1/tx/{id}/register  {participants: []}  coordinator: late enlistment
//   POST /v1/tx/{id}/steps     {step}              coordinator: a saga/tcc step made by a nested
//                                                  call (its intent, durable before the call is
//                                                  sent; its resolution, before the answer)
//                              {void: stepId}      coordinator: that intent's call was refused
//   POST /v1/tx/{id}/confirm   {branch, method, path}  participant (tcc): call the app's hook
//   POST /v1/tx/{id}/cancel    {branch, method, path}  -> {done}; 503 = retry
//   GET  /v1/tx/{id}/outcome                       coordinator: -> {outcome} (presumed abort), asked by the branch's holder
//   GET  /v1/tx/{id}/lookup                        the same, asked about a prepared row the asker does not hold
//   POST /v1/tx/{id}/finished  {branch, outcome}   coordinator: a participant finished its branch after asking
//   POST /v1/batch  {items: [{tx, op, branch}]}    several prepare / commit / abort /
//                                                  commit-one-phase messages in one exchange
//                                                  (src/control/batcher.ts) -> {results: [{status, body}]},
//                                                  each what the op's own endpoint would answer
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import { createServer as createHttpsServer } from 'node:https'
import type { Server as TlsServer } from 'node:tls'
import {
  BadRequestError,
  BranchNotHereError,
  ControlAuthError,
  InternalError,
  ControlOverloadedError,
  ControlReplayError,
  MethodNotAllowedError,
  NotFoundError,
  NotReadyError,
  TxNotActiveError,
  TxmeshError,
} from '../errors.js'
import { parseJsonObject, readText } from '../http-json.js'
import { LIMITS } from '../limits.js'
import type { Logger } from '../telemetry/logger.js'
import { answerRefusedRequests, errorBody, respondError } from '../proxy/respond.js'
import { CONTROL_AUTH_HEADER } from './client.js'
import type { CoordinatorDriver } from '../tx/coordinator/driver.js'
import type { ParticipantRef } from '../tx/core.js'
import type { TccParticipant } from '../tx/saga/participant.js'
import type { ParticipantDriver } from '../tx/participant/driver.js'
import type { SagaDriver } from '../tx/saga/driver.js'
import type { StepOp, StepRecord } from '../tx/saga/machine.js'
import { isStepMethod, opHeadersProblem } from '../tx/saga/template.js'
import type { MeshKeys } from '../tx/keys.js'
import type { PeerTls } from '../peer-tls.js'
import { isId, isIncarnation, signAnswer, verifyControl } from '../tx/protocol.js'
import { answerWithin } from './batcher.js'
import { ReplayCache } from './replay.js'

export interface ControlDeps {
  readonly keys: MeshKeys
  /** This sidecar's control address as its peers call it (advertised): what its answers are signed for. */
  readonly self: string
  readonly coordinator: CoordinatorDriver
  readonly participant: ParticipantDriver
  /** TCC confirm / cancel of tries that went through this sidecar. */
  readonly tcc: TccParticipant
  readonly steps: SagaDriver
  readonly logger: Logger
  readonly clock?: () => number
  /**
   * The shared store's answer for an id of another instance of this service (store.group): asked
   * when this sidecar's own drivers cannot vouch for the id.
   */
  readonly group?: GroupAnswerer | undefined
  /**
   * store.group's address: an outcome question asked there (its Host) is answered, and signed,
   * as the group (the caller checks the answer is signed for the address it called).
   */
  readonly groupAddress?: string | undefined
  /**
   * Shared store: whether this process still holds its own log, asked of the store now. A
   * presumed abort for an id another run of the log made is answered only when it does (else in
   * doubt): a new process of the same instance may have taken the log and committed that id.
   */
  readonly ownLogHeld?: (() => Promise<boolean>) | undefined
}

export interface GroupAnswerer {
  /** The outcome, and the control address of the instance that holds the id's log (`owner`). */
  outcomeFor(
    id: string,
    holder: boolean,
  ): Promise<{
    readonly outcome: 'committed' | 'aborted' | 'in-doubt' | 'unknown-coordinator'
    readonly owner?: string | undefined
  }>
}

const ROUTE =
  /^\/v1\/tx\/([A-Za-z0-9_-]{1,64})\/(prepare|commit-one-phase|commit|abort|register|outcome|lookup|finished|steps|confirm|cancel)$/
const BATCH_PATH = '/v1/batch'
const STEP_HEADER_NAME = new RegExp(`^[A-Za-z0-9-]{1,${LIMITS.stepHeaderNameChars}}$`)

/**
 * `deps()` is undefined until the transaction parts exist (start-up): requests then get 503, or
 * what `unavailable()` says when they never will (no mesh key: TXM_MESH_KEY_MISSING).
 */
export function createControlServer(
  deps: () => ControlDeps | undefined,
  tls?: PeerTls,
  replay: ReplayCache = new ReplayCache(Date.now()),
  unavailable: () => TxmeshError | undefined = () => undefined,
): Server {
  const options = {
    maxHeaderSize: LIMITS.maxHeaderBytes,
    headersTimeout: LIMITS.downstreamHeadersTimeoutMs,
    requestTimeout: LIMITS.apiRequestTimeoutMs,
    connectionsCheckingInterval: LIMITS.connectionsCheckMs,
    // Host means nothing here; without this Node answers a Host-less HTTP/1.1 request with a bare 400.
    requireHostHeader: false,
  }
  // https.Server serves the same 'request' events; typed as http.Server for listen/closeServer.
  const server =
    tls === undefined
      ? createServer(options)
      : (createHttpsServer({ ...options, ...tls.serverOptions() }) as unknown as Server)
  if (tls !== undefined) tls.serve(server as unknown as TlsServer)
  server.maxConnections = LIMITS.maxControlConnections
  // What the parser refuses gets a code too (Node would answer a bare 400/408/417/431).
  answerRefusedRequests(server, LIMITS.maxHeaderBytes)
  server.on('request', (req: IncomingMessage, res: ServerResponse) => {
    handle(req, res).catch((err: unknown) => {
      deps()?.logger.error('control_failed', { error: String(err) })
      respondError(res, new BadRequestError('control request failed'))
    })
  })

  async function handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const d = deps()
    if (d === undefined) return respondError(res, unavailable() ?? new NotReadyError('control listener is starting'))
    const clock = d.clock ?? Date.now
    const path = (req.url ?? '/').split('?')[0] as string
    const m = path === BATCH_PATH ? null : ROUTE.exec(path)
    if (m === null && path !== BATCH_PATH)
      return respondError(res, new NotFoundError(`no control endpoint ${req.method ?? ''} ${path}`))
    // No match: the batch endpoint (id and op come with each item).
    const [, id, op] = (m ?? []) as unknown as [string, string | undefined, string | undefined]
    const wantMethod = op === 'outcome' || op === 'lookup' ? 'GET' : 'POST'
    if (req.method !== wantMethod)
      return respondError(res, new MethodNotAllowedError(`${op ?? 'batch'} takes ${wantMethod}`))
    const text = await readText(req, LIMITS.controlBodyBytes)
    // Over the limit: close after the answer rather than drain the rest of the body.
    if (text instanceof TxmeshError) return respondError(res, text, true)
    const now = clock()
    const header = req.headers[CONTROL_AUTH_HEADER] as string | undefined
    const auth = verifyControl(d.keys.verifying, header, now, wantMethod, path, text)
    // Unsigned: the caller cannot tell a refusal from a forgery, and signing answers to requests
    // anyone can send would sign whatever they carry.
    if (!auth.ok) return respondError(res, new ControlAuthError(AUTH_REFUSALS[auth.reason]))
    // From here on every answer is signed for this request (its txmesh-auth verified).
    const as =
      d.groupAddress !== undefined && req.headers.host === d.groupAddress && (op === 'outcome' || op === 'lookup')
        ? d.groupAddress
        : d.self
    const sign = (status: number, bodyText: string): readonly [string, string] => [
      CONTROL_AUTH_HEADER,
      signAnswer(d.keys.signing, as, header as string, status, bodyText),
    ]
    const refuse = (err: TxmeshError): void => respondError(res, err, false, sign)
    // Only after the signature verified: filling the cache takes the mesh key.
    const verdict = replay.check(auth.nonce, auth.ts, now)
    if (verdict === 'replay')
      return refuse(new ControlReplayError('control request refused: its nonce was already used (a replayed request)'))
    if (verdict === 'before-start')
      return refuse(
        new ControlReplayError(
          'control request refused: it was signed before this sidecar started, so its nonce cannot be checked; sign it again',
        ),
      )
    if (verdict === 'full')
      return refuse(
        new ControlOverloadedError(
          `control request refused: ${LIMITS.controlReplayCacheEntries} recent nonces are held and this one cannot be checked; retry`,
        ),
      )
    const body = parseJsonObject(text)
    if (body instanceof TxmeshError) return refuse(body)
    if (op === undefined) {
      const items = parseBatch(body)
      if (items instanceof TxmeshError) return refuse(items)
      const results = await Promise.all(
        items.map((it) => (it instanceof TxmeshError ? it : itemAnswer(runOp(d, it.tx, it.op, it.body), it, d.logger))),
      )
      // One signature over the whole list covers every item's vote or outcome.
      return sendSigned(
        res,
        200,
        { results: results.map((r) => (r instanceof TxmeshError ? { status: r.status, body: errorBody(r) } : r)) },
        sign,
      )
    }
    const answer = await runOp(d, id as string, op, body)
    if (answer instanceof TxmeshError) return refuse(answer)
    return sendSigned(res, answer.status, answer.body, sign)
  }
  return server
}

export interface Answer {
  readonly status: number
  readonly body: Record<string, unknown>
}

/** sendJson with the answer's signature header. */
function sendSigned(
  res: ServerResponse,
  status: number,
  body: unknown,
  sign: (status: number, text: string) => readonly [string, string],
): void {
  const text = JSON.stringify(body)
  const [name, value] = sign(status, text)
  res.writeHead(status, {
    'content-type': 'application/json',
    'content-length': Buffer.byteLength(text),
    'cache-control': 'no-store',
    [name]: value,
  })
  res.end(text)
}

/**
 * One item of a batch, answered on its own: a failure stays with its item, and an item still
 * working after LIMITS.batchItemWaitMs (a prepare waiting for the app) is answered 503 so the
 * others are not held past the caller's timeout (the caller retries a commit or abort; a
 * prepare answered so counts as a no, as a single prepare that timed out would).
 */
function itemAnswer(run: Promise<Answer | TxmeshError>, it: BatchItem, logger: Logger): Promise<Answer | TxmeshError> {
  const settled = run.then(
    (a) => a,
    (err: unknown) => {
      logger.error('control_failed', { op: it.op, tx: it.tx, error: String(err) })
      return new InternalError(`${it.op} of ${it.tx} failed`)
    },
  )
  return answerWithin<Answer | TxmeshError>(
    settled,
    LIMITS.batchItemWaitMs,
    () => new NotReadyError(`${it.op} of ${it.tx} did not finish within ${LIMITS.batchItemWaitMs} ms; ask again`),
  )
}

const ok = (body: Record<string, unknown>): Answer => ({ status: 200, body })

/**
 * One control operation as its endpoint answers it once the request is authenticated (status and
 * body): what the deterministic simulation (test/simulation) delivers its control messages to.
 */
export async function answerOp(d: ControlDeps, id: string, op: string, body: Record<string, unknown>): Promise<Answer> {
  const a = await runOp(d, id, op, body)
  return a instanceof TxmeshError ? { status: a.status, body: errorBody(a) as Record<string, unknown> } : a
}

/** One control operation on transaction `id`, as its own request or as an item of a batch. */
async function runOp(
  d: ControlDeps,
  id: string,
  op: string,
  body: Record<string, unknown>,
): Promise<Answer | TxmeshError> {
  switch (op) {
    case 'outcome':
    case 'lookup': {
      // lookup: the asker found a prepared row of `id` it does not hold (coordinator outcomeFor).
      const saga = d.steps.has(id)
      const own = saga ? d.steps.outcomeFor(id) : d.coordinator.outcomeFor(id, op === 'outcome')
      if (own === 'aborted' && !saga && d.ownLogHeld !== undefined && d.coordinator.presumesForOtherRun(id))
        return ok({ id, outcome: (await d.ownLogHeld()) ? own : 'in-doubt' })
      if (own !== 'unknown-coordinator' || d.group === undefined) return ok({ id, outcome: own })
      const g = await d.group.outcomeFor(id, op === 'outcome')
      return ok({ id, outcome: g.outcome, ...(g.owner === undefined ? {} : { owner: g.owner }) })
    }
    case 'steps': {
      if (body.void !== undefined) {
        if (!isId(body.void)) return new BadRequestError('void must be a step id')
        return d.steps.voidStep(id, body.void) ?? ok({ id, void: body.void })
      }
      const step = parseStep(body.step)
      if (step instanceof TxmeshError) return step
      return (await d.steps.addPeerStep(id, step)) ?? ok({ id, step: step.id })
    }
    case 'register': {
      const refs = parseRefs(body.participants)
      if (refs instanceof TxmeshError) return refs
      return d.coordinator.enlist(id, refs) ?? ok({ id, registered: refs.length })
    }
  }
  const branch = body.branch
  if (!isId(branch)) return new BadRequestError('body.branch must be a branch id')
  if (op === 'finished') {
    // A participant that learned the outcome by asking (its address had changed, say) finished
    // its branch: phase 2 needs nothing more from it.
    if (body.outcome !== 'committed' && body.outcome !== 'aborted')
      return new BadRequestError('body.outcome must be "committed" or "aborted"')
    return ok({ id, branch, known: d.coordinator.finishedBy(id, branch, body.outcome) })
  }
  if (op === 'confirm' || op === 'cancel') {
    // The request the participant sends its app: as the step recorded it (no method: POST; no
    // path or '': the sidecar's own hook). Malformed fields are refused, never replaced.
    const problem = opProblem(body, false)
    if (problem !== undefined) return new BadRequestError(`body.${problem}`)
    const extra = {
      method: (body.method as string | undefined) ?? 'POST',
      path: body.path === undefined || body.path === '' ? undefined : (body.path as string),
      body: body.body as string | undefined,
      headers: {} as Record<string, string>,
    }
    // The txmesh-* headers are the sidecar's to set.
    for (const [k, v] of Object.entries((body.headers ?? {}) as Record<string, string>))
      if (!k.toLowerCase().startsWith('txmesh-')) extra.headers[k.toLowerCase()] = v
    if (body.holder !== undefined && (typeof body.holder !== 'string' || !isIncarnation(body.holder)))
      return new BadRequestError('body.holder must be a log incarnation')
    const done = await d.tcc.stepHook(id, branch, op, extra, body.holder as string | undefined)
    if (done === 'failed') return new NotReadyError(`the app did not ${op} step ${branch}; retry later`)
    if (done === 'not-here')
      return new BranchNotHereError(
        `step ${branch} was tried through another sidecar's log, not this one's (this address was reused); its holder must be told`,
      )
    return ok({ id, branch, done: op })
  }
  if (op === 'prepare') {
    const vote = await d.participant.prepare(id, branch)
    return ok({ id, branch, vote: vote.kind, ...(vote.kind === 'refused' ? { reason: vote.reason } : {}) })
  }
  if (op === 'commit-one-phase') {
    const outcome = await d.participant.commitOnePhase(id, branch)
    if (outcome === 'refused')
      return new TxNotActiveError(`branch ${branch} is in a two-phase commit; it cannot commit in one phase`)
    if (outcome === 'failed') return new NotReadyError(`the outcome of branch ${branch} is not known yet; retry later`)
    return ok({ id, branch, outcome })
  }
  const outcome = await d.participant.decide(id, branch, op === 'commit' ? 'committed' : 'aborted')
  if (outcome === 'refused') return new TxNotActiveError(`branch ${branch} never prepared; it cannot commit`)
  if (outcome === 'failed') return new NotReadyError(`the app did not finish branch ${branch}; retry later`)
  if (outcome === 'not-here')
    return new BranchNotHereError(
      `branch ${branch} is held by another sidecar's log, not this one's (this address was reused); its holder must be told`,
    )
  return ok({ id, branch, outcome })
}

/** The operations a batch may carry: the 2PC messages a coordinator sends its participants. */
export const BATCH_OPS: ReadonlySet<string> = new Set(['prepare', 'commit', 'abort', 'commit-one-phase'])

interface BatchItem {
  readonly tx: string
  readonly op: string
  readonly body: Record<string, unknown>
}

/**
 * `{items: [{tx, op, branch}, ...]}`. A malformed list refuses the whole batch; a malformed item
 * is answered 400 in its place while the others run.
 */
function parseBatch(body: Record<string, unknown>): (BatchItem | TxmeshError)[] | TxmeshError {
  const items = body.items
  if (!Array.isArray(items) || items.length === 0) return new BadRequestError('a batch needs a non-empty items list')
  if (items.length > LIMITS.batchMaxItems)
    return new BadRequestError(`a batch carries at most ${LIMITS.batchMaxItems} items, got ${items.length}`)
  return items.map((v: unknown): BatchItem | TxmeshError => {
    const o = v as Record<string, unknown> | null
    if (typeof o !== 'object' || o === null || Array.isArray(o))
      return new BadRequestError('a batch item must be an object')
    if (!isId(o.tx)) return new BadRequestError('item.tx must be a transaction id')
    if (typeof o.op !== 'string' || !BATCH_OPS.has(o.op))
      return new BadRequestError(`item.op must be one of ${[...BATCH_OPS].join(', ')}`)
    return { tx: o.tx, op: o.op, body: { branch: o.branch } }
  })
}

const AUTH_REFUSALS: Readonly<Record<'missing' | 'malformed' | 'stale' | 'signature', string>> = {
  missing: 'control request has no txmesh-auth header',
  malformed: 'txmesh-auth is not <timestamp>.<nonce>.<mac>',
  stale: `txmesh-auth timestamp is more than ${LIMITS.controlClockSkewMs} ms away from this sidecar's clock`,
  signature: 'txmesh-auth does not verify with the mesh key',
}

function parseRefs(v: unknown): ParticipantRef[] | TxmeshError {
  if (!Array.isArray(v) || v.length === 0 || v.length > LIMITS.maxParticipants)
    return new BadRequestError('participants must be a non-empty list')
  const out: ParticipantRef[] = []
  for (const p of v as { service?: unknown; control?: unknown; branch?: unknown }[]) {
    // The service name is bounded as in an enlisted header: the decision record lists every
    // participant, and its size is budgeted (LIMITS.decisionRecordRestBytes).
    if (
      typeof p.service !== 'string' ||
      p.service.length > LIMITS.serviceNameChars ||
      typeof p.control !== 'string' ||
      !/^[A-Za-z0-9.[\]:-]{1,260}$/.test(p.control) ||
      !isId(p.branch)
    ) {
      return new BadRequestError('malformed participant')
    }
    out.push({ service: p.service, control: p.control, branch: p.branch })
  }
  return out
}

/**
 * What is wrong with the request fields of a step op, if anything: a /steps record's compensate,
 * confirm or cancel (method and path required), or the body of a confirm/cancel call (both
 * optional). A path '' names the service's own hook.
 */
function opProblem(o: Record<string, unknown>, recorded: boolean): string | undefined {
  if (o.method === undefined ? recorded : !isStepMethod(o.method))
    return `method must be an upper-case method other than CONNECT, at most ${LIMITS.stepMethodChars} letters`
  if (
    o.path === undefined
      ? recorded
      : typeof o.path !== 'string' || o.path.length > LIMITS.stepPathChars || (o.path !== '' && !o.path.startsWith('/'))
  ) {
    return `path must be '' or start with '/', at most ${LIMITS.stepPathChars} characters`
  }
  if (o.body !== undefined && (typeof o.body !== 'string' || o.body.length > LIMITS.stepTemplateBodyBytes))
    return `body must be a string of at most ${LIMITS.stepTemplateBodyBytes} characters`
  if (o.headers !== undefined) {
    const h = o.headers
    if (
      typeof h !== 'object' ||
      h === null ||
      Array.isArray(h) ||
      Object.entries(h).some(([k, v]) => !STEP_HEADER_NAME.test(k) || typeof v !== 'string')
    ) {
      return `headers must map header names (at most ${LIMITS.stepHeaderNameChars} letters, digits and '-') to strings`
    }
    // A request that could never be sent would fail every attempt (a step stuck for good).
    return opHeadersProblem(o as { headers?: Record<string, string>; body?: string })
  }
  return undefined
}

/** A step a peer's egress recorded (control POST /steps): checked field by field. */
function parseStep(v: unknown): StepRecord | TxmeshError {
  const o = v as Record<string, unknown> | null
  if (
    typeof o !== 'object' ||
    o === null ||
    !isId(o.id) ||
    typeof o.service !== 'string' ||
    o.service.length > LIMITS.serviceNameChars ||
    typeof o.target !== 'string' ||
    o.target.length > LIMITS.stepTargetChars
  ) {
    return new BadRequestError('step must have id, service and target')
  }
  for (const k of ['compensate', 'confirm', 'cancel'] as const) {
    const op = o[k]
    if (op === undefined) continue
    const problem =
      typeof op === 'object' && op !== null && !Array.isArray(op)
        ? opProblem(op as Record<string, unknown>, true)
        : 'must be an object'
    if (problem !== undefined) return new BadRequestError(`step.${k} is malformed: ${problem}`)
  }
  if (o.unresolved !== undefined && (typeof o.unresolved !== 'string' || o.unresolved.length > LIMITS.stepReasonChars))
    return new BadRequestError('step.unresolved is malformed')
  for (const k of ['intent', 'viaIngress'] as const)
    if (o[k] !== undefined && typeof o[k] !== 'boolean') return new BadRequestError(`step.${k} must be a boolean`)
  if (o.holder !== undefined && (typeof o.holder !== 'string' || !isIncarnation(o.holder)))
    return new BadRequestError('step.holder must be a log incarnation')
  const step: StepRecord = {
    id: o.id,
    service: o.service,
    target: o.target,
    ...(o.compensate === undefined ? {} : { compensate: o.compensate as StepOp }),
    ...(o.confirm === undefined ? {} : { confirm: o.confirm as StepOp }),
    ...(o.cancel === undefined ? {} : { cancel: o.cancel as StepOp }),
    ...(o.unresolved === undefined ? {} : { unresolved: o.unresolved as string }),
    ...(o.intent === true ? { intent: true } : {}),
    ...(o.viaIngress === true ? { viaIngress: true } : {}),
    ...(typeof o.holder === 'string' ? { holder: o.holder } : {}),
  }
  return step
}
