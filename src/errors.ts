// The one registry of txmesh errors (STYLE.md). Every failure a client can see is a subclass
// with a stable code; src/proxy/respond.ts is the only code that turns them into responses.
// The docs/errors.md lists every code (a test checks it).

/** Response header naming the code of an error a txmesh sidecar made (the body says it too). */
export const ERROR_HEADER = 'x-txmesh-error'

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

export class HookForbiddenError extends TxmeshError {
  readonly code = 'TXM_HOOK_FORBIDDEN'
  readonly status = 403
}

// Ingress: a path whose meaning depends on how it is decoded or normalized (dot-segments, or a
// participant hook spelled with escapes, backslashes, doubled slashes or path parameters): an
// app server that normalizes paths must not be reachable at a hook (issue 15, hole 11).
export class PathAmbiguousError extends TxmeshError {
  readonly code = 'TXM_PATH_AMBIGUOUS'
  readonly status = 400
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

export class NotReadyError extends TxmeshError {
  readonly code = 'TXM_NOT_READY'
  readonly status = 503
}

export class InternalError extends TxmeshError {
  readonly code = 'TXM_INTERNAL'
  readonly status = 500
}

export class ContextInvalidError extends TxmeshError {
  readonly code = 'TXM_CONTEXT_INVALID'
  readonly status = 400
}

export class ContextForgedError extends TxmeshError {
  readonly code = 'TXM_CONTEXT_FORGED'
  readonly status = 401
}

export class ContextExpiredError extends TxmeshError {
  readonly code = 'TXM_CONTEXT_EXPIRED'
  readonly status = 410
}

export class ContextTooLargeError extends TxmeshError {
  readonly code = 'TXM_CONTEXT_TOO_LARGE'
  readonly status = 431
}

export class CoordinatorNotAllowedError extends TxmeshError {
  readonly code = 'TXM_COORDINATOR_NOT_ALLOWED'
  readonly status = 403
}

export class MeshKeyMissingError extends TxmeshError {
  readonly code = 'TXM_MESH_KEY_MISSING'
  readonly status = 503
}

export class TxUnknownError extends TxmeshError {
  readonly code = 'TXM_TX_UNKNOWN'
  readonly status = 404
}

export class TxNotActiveError extends TxmeshError {
  readonly code = 'TXM_TX_NOT_ACTIVE'
  readonly status = 409
}

/** A decision for a 2PC branch another sidecar's log holds, sent to this sidecar's (reused) address. */
export class BranchNotHereError extends TxmeshError {
  readonly code = 'TXM_BRANCH_NOT_HERE'
  readonly status = 409
}

/** An operator resolution of a branch its coordinator can still decide (unless forced). */
export class BranchNotInDoubtError extends TxmeshError {
  readonly code = 'TXM_BRANCH_NOT_IN_DOUBT'
  readonly status = 409
}

/** A subscription replay that could not be carried out (the server refused the new consumer, or one runs). */
export class ReplayFailedError extends TxmeshError {
  readonly code = 'TXM_REPLAY_FAILED'
  readonly status = 409
}

export class TxAbortedError extends TxmeshError {
  readonly code = 'TXM_TX_ABORTED'
  readonly status = 409
}

// A transactional message that would take its transaction's messages, as the decision record
// stores them, past LIMITS.maxMessageBytes (one) or LIMITS.maxMessageTotalBytes (all).
export class MessageTooLargeError extends TxmeshError {
  readonly code = 'TXM_MESSAGE_TOO_LARGE'
  readonly status = 413
}

// A saga/TCC call whose compensation, confirm or cancel, filled from the call's request, would
// be a request no HTTP client sends (a header value with CR, LF, NUL or a character beyond
// latin1): refused before it is sent, so there is nothing to undo.
export class StepTemplateInvalidError extends TxmeshError {
  readonly code = 'TXM_STEP_TEMPLATE_INVALID'
  readonly status = 400
}

// A peer's step record naming a target the coordinator may not send to: an origin that is not
// one of its `services` addresses, or a control address outside `mesh.coordinators`.
export class StepTargetRefusedError extends TxmeshError {
  readonly code = 'TXM_STEP_TARGET_REFUSED'
  readonly status = 403
}

export class TxLimitError extends TxmeshError {
  readonly code = 'TXM_TX_LIMIT'
  readonly status = 503
}

export class NoSidecarError extends TxmeshError {
  readonly code = 'TXM_PARTICIPANT_NO_SIDECAR'
  readonly status = 502
}

export class ControlAuthError extends TxmeshError {
  readonly code = 'TXM_CONTROL_UNAUTHORIZED'
  readonly status = 401
}

// A control request whose nonce was already used within the clock-skew window: a captured
// request sent again (src/control/replay.ts). Honest callers sign every call with a new nonce.
export class ControlReplayError extends TxmeshError {
  readonly code = 'TXM_CONTROL_REPLAY'
  readonly status = 401
}

// The replay cache holds LIMITS.controlReplayCacheEntries unexpired nonces: the request cannot
// be checked, so it is refused rather than accepted unchecked; the caller retries.
export class ControlOverloadedError extends TxmeshError {
  readonly code = 'TXM_CONTROL_OVERLOADED'
  readonly status = 503
}

// A control answer (vote, outcome, acknowledgement) whose `txmesh-auth` is missing or does not
// verify for the request it answers: the caller treats it as a failed call (no vote, outcome
// unknown, retried), never as the answer it claims to be. Never an HTTP answer of txmesh; the
// code is the caller's reason (logs, span errors, "refused: ..." messages).
export class ControlAnswerUnsignedError extends TxmeshError {
  readonly code = 'TXM_CONTROL_ANSWER_UNSIGNED'
  readonly status = 502
}

// An admin request without the configured bearer token (admin.tokenEnv / admin.tokenFile).
export class AdminUnauthorizedError extends TxmeshError {
  readonly code = 'TXM_ADMIN_UNAUTHORIZED'
  readonly status = 401
}

// Browser defences of the admin API (issue 15, hole 10). A Host that is neither loopback, the
// listener's own address nor in admin.allowedHosts: a page whose name was rebound to this address
// (DNS rebinding) would otherwise read and drive the API.
export class AdminHostRefusedError extends TxmeshError {
  readonly code = 'TXM_ADMIN_HOST_REFUSED'
  readonly status = 403
}

// An Origin other than the Host's own (http or https) or one of admin.allowedOrigins: a request
// another site's page made the operator's browser send.
export class AdminOriginRefusedError extends TxmeshError {
  readonly code = 'TXM_ADMIN_ORIGIN_REFUSED'
  readonly status = 403
}

// A request body that is not declared application/json: the only type a page of another site
// cannot send without a CORS preflight (text/plain, forms), so none is read as JSON.
export class UnsupportedMediaTypeError extends TxmeshError {
  readonly code = 'TXM_UNSUPPORTED_MEDIA_TYPE'
  readonly status = 415
}

// Durable log (src/wal/). Replay refuses to guess past damage it cannot explain by a crash: a bad
// record in a segment that is not the last one, or a format this build does not know.
export class LogCorruptError extends TxmeshError {
  readonly code = 'TXM_LOG_CORRUPT'
  readonly status = 500
  readonly file: string | undefined
  readonly offset: number | undefined
  constructor(message: string, options?: { cause?: unknown; file?: string; offset?: number }) {
    super(message, options)
    this.file = options?.file
    this.offset = options?.offset
  }
}

// The log's bounded append queue is full (LIMITS.logMaxQueuedAppends / logMaxQueuedBytes): the
// disk is slower than the decisions arriving. Nothing was written; retry later.
export class LogOverloadedError extends TxmeshError {
  readonly code = 'TXM_LOG_OVERLOADED'
  readonly status = 503
}

// A record over the log's record limit (LIMITS.logMaxRecordBytes), refused before anything was
// written: the commit it was for fails alone (its transaction aborts), the log carries on.
export class LogRecordTooLargeError extends TxmeshError {
  readonly code = 'TXM_LOG_RECORD_TOO_LARGE'
  readonly status = 413
}

// A write or fsync of the log failed. After a failed fsync the page cache state is unknown, so
// the log refuses every later append until the sidecar restarts and replays.
export class LogFailedError extends TxmeshError {
  readonly code: string = 'TXM_LOG_FAILED'
  readonly status = 503
}

// A failed write of a special kind: the store's log was taken over by a sibling instance (its
// fencing token moved on), so this instance must stop coordinating; the drivers stop as on any
// failed write.
export class LogFencedError extends LogFailedError {
  override readonly code: string = 'TXM_LOG_FENCED'
}

// Kubernetes injection (src/k8s/). The CLI prints these (exit 1); the webhook answers a review
// it cannot inject with allowed: false and status {code: status, reason: code} rather than let
// the pod start without its sidecar. `path` is the JSON pointer (inside the object) of what
// is wrong, which `txmesh inject` turns into file:line:col.
export abstract class InjectError extends TxmeshError {
  readonly path: string | undefined
  constructor(message: string, options?: { cause?: unknown; path?: string }) {
    super(message, options)
    this.path = options?.path
  }
}

// The input is not YAML/JSON, or an object is not shaped like its kind (no containers list).
export class ManifestInvalidError extends InjectError {
  readonly code = 'TXM_MANIFEST_INVALID'
  readonly status = 400
}

// A txmesh.io/* annotation has a value the injector does not accept.
export class InjectInvalidError extends InjectError {
  readonly code = 'TXM_INJECT_INVALID'
  readonly status = 400
}

// No txmesh.io/app-port and the first container declares no containerPort.
export class InjectNoAppPortError extends InjectError {
  readonly code = 'TXM_INJECT_NO_APP_PORT'
  readonly status = 400
}

// The pod already uses a name or port the sidecar needs (txmesh-proxy, txmesh-log, 15006...).
export class InjectConflictError extends InjectError {
  readonly code = 'TXM_INJECT_CONFLICT'
  readonly status = 409
}

// A request to the webhook that is not an AdmissionReview v1 with a request.uid and object.
export class AdmissionInvalidError extends TxmeshError {
  readonly code = 'TXM_ADMISSION_INVALID'
  readonly status = 400
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

// Every code, for the docs/errors.md check and for `txmesh errors`. Built from instances so a new
// class cannot be forgotten here without the docs/errors.md test noticing a missing row.
export const ERROR_CLASSES = [
  ReplayFailedError,
  BadRequestError,
  NotFoundError,
  MethodNotAllowedError,
  HookForbiddenError,
  PathAmbiguousError,
  BodyTooLargeError,
  HeadersTooLargeError,
  ProxyLoopError,
  UpstreamUnreachableError,
  UpstreamProtocolError,
  UpstreamTimeoutError,
  RequestAbortedError,
  ShuttingDownError,
  NotReadyError,
  InternalError,
  ContextInvalidError,
  ContextForgedError,
  ContextExpiredError,
  ContextTooLargeError,
  CoordinatorNotAllowedError,
  MeshKeyMissingError,
  TxUnknownError,
  TxNotActiveError,
  BranchNotInDoubtError,
  BranchNotHereError,
  TxAbortedError,
  TxLimitError,
  MessageTooLargeError,
  StepTemplateInvalidError,
  StepTargetRefusedError,
  NoSidecarError,
  ControlAuthError,
  ControlReplayError,
  ControlOverloadedError,
  ControlAnswerUnsignedError,
  AdminUnauthorizedError,
  AdminHostRefusedError,
  AdminOriginRefusedError,
  UnsupportedMediaTypeError,
  LogCorruptError,
  LogOverloadedError,
  LogRecordTooLargeError,
  LogFailedError,
  LogFencedError,
  ManifestInvalidError,
  InjectInvalidError,
  InjectNoAppPortError,
  InjectConflictError,
  AdmissionInvalidError,
] as const

export function allErrorCodes(): { code: string; status: number; name: string }[] {
  const out = ERROR_CLASSES.map((C) => {
    const e = new C('')
    return { code: e.code, status: e.status, name: C.name }
  })
  out.push({ code: 'TXM_CONFIG_INVALID', status: 500, name: 'ConfigInvalidError' })
  return out
}
