// Library entry: what other code (tests, tools) may import from the txmesh package.
export { startSidecar, type Sidecar, type Ports } from './sidecar.js'
export { parseConfig, loadConfigFile, withOverrides } from './config/load.js'
export type { SidecarConfig, RoutePolicy } from './config/types.js'
export {
  AdminHostRefusedError, AdminOriginRefusedError, AdminUnauthorizedError, AdmissionInvalidError, BadRequestError, BodyTooLargeError, BranchNotHereError, BranchNotInDoubtError, ConfigInvalidError, ContextExpiredError, ContextForgedError, ContextInvalidError, ContextTooLargeError, ControlAnswerUnsignedError, ControlAuthError, ControlOverloadedError, ControlReplayError, CoordinatorNotAllowedError, ERROR_CLASSES, HeadersTooLargeError, HookForbiddenError, InjectConflictError, InjectError, InjectInvalidError, InjectNoAppPortError, InternalError, LogCorruptError, LogFailedError, LogOverloadedError, LogRecordTooLargeError, ManifestInvalidError, MeshKeyMissingError, MessageTooLargeError, MethodNotAllowedError, NoSidecarError, NotFoundError, NotReadyError, PathAmbiguousError, ProxyLoopError, RequestAbortedError, ShuttingDownError, StepTargetRefusedError, StepTemplateInvalidError, TxAbortedError, TxLimitError, TxNotActiveError, TxUnknownError, TxmeshError, UnsupportedMediaTypeError, UpstreamProtocolError, UpstreamTimeoutError, UpstreamUnreachableError, allErrorCodes, formatProblem,
  type ConfigProblem,
} from './errors.js'
export { LIMITS } from './limits.js'
export { createLogger, silentLogger, type Logger } from './telemetry/logger.js'
