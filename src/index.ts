// Library entry: what other code (tests, tools) may import from the txmesh package.
export { startSidecar, type Sidecar, type Ports } from './sidecar.js'
export { parseConfig, loadConfigFile, withOverrides } from './config/load.js'
export type { SidecarConfig, RoutePolicy } from './config/types.js'
export * from './errors.js'
export { LIMITS } from './limits.js'
export { createLogger, silentLogger, type Logger } from './telemetry/logger.js'
