// Every bound of txmesh in one place (STYLE.md: limits are named). Each number says why it is
// that number. Config may lower or raise the per-route ones; these are the defaults and caps.

export const LIMITS = Object.freeze({
  // Request head size accepted by every listener. Node's own default is 16 KiB; Envoy's is
  // 60 KiB. 32 KiB leaves room for large cookies and tracing headers while bounding memory per
  // connection. A request over it gets 431 TXM_HEADERS_TOO_LARGE.
  maxHeaderBytes: 32 * 1024,
  // Hard cap a route may set for its header limit (it cannot exceed what the parser accepts).
  maxHeaderBytesCap: 32 * 1024,
  // Default request body cap per route. Bodies stream, so this bounds work, not memory.
  maxBodyBytes: 1024 * 1024 * 1024,
  // Default upstream timeout per attempt chain (Gateway API `timeouts.request`; Istio: off by
  // default, Envoy's route default is 15 s). 30 s suits slow business calls.
  requestTimeoutMs: 30_000,
  // Upper bound of any configured route timeout: a day-long request is a stuck one.
  requestTimeoutCapMs: 3_600_000,
  // Time to establish a TCP connection to an upstream before counting it a connect failure.
  connectTimeoutMs: 5_000,
  // Retries (Istio: 2 attempts by default; Linkerd: budget of 20% + 10/s).
  retryAttempts: 2,
  retryAttemptsCap: 10,
  retryBudgetRatio: 0.2,
  retryBudgetMinPerSecond: 10,
  // The budget window: deposits older than this no longer pay for retries.
  retryBudgetWindowMs: 10_000,
  retryBackoffBaseMs: 25,
  retryBackoffCapMs: 1_000,
  // A request with a body is retried only when its body is small enough to keep in memory for
  // the replay; larger or chunked bodies stream once and are never retried.
  retryBodyBytes: 64 * 1024,
  // Upstream connection pools: connections per origin and distinct origins kept open.
  poolConnectionsPerOrigin: 128,
  maxUpstreamPools: 256,
  // Keep-alive of idle upstream sockets: below the typical 5 s Node server keep-alive so the
  // proxy closes first and never writes on a socket the app is closing.
  upstreamKeepAliveMs: 4_000,
  // Downstream keep-alive and head timeouts (slowloris bound).
  downstreamKeepAliveMs: 65_000,
  downstreamHeadersTimeoutMs: 20_000,
  // Bound on a request's whole lifetime at the server (Node's requestTimeout). Above the
  // route timeout cap so long uploads can finish.
  downstreamRequestTimeoutMs: 3_600_000,
  // Open client connections per listener: excess connections are refused at accept.
  maxConnectionsPerListener: 10_000,
  // WebSocket / Upgrade tunnels: idle time before both sides are closed.
  tunnelIdleTimeoutMs: 600_000,
  // SIGTERM drain: how long in-flight requests may take before the sidecar exits anyway.
  drainTimeoutMs: 15_000,
  drainTimeoutCapMs: 300_000,
  // Admin API bodies are small JSON documents.
  adminBodyBytes: 64 * 1024,
  // Config file size: a sidecar policy is a few KiB; refuse to parse megabytes of YAML.
  configFileBytes: 1024 * 1024,
  maxRoutes: 1_000,
  maxServices: 10_000,
})

export type Limits = typeof LIMITS
