// The typed, frozen sidecar configuration. Produced once by src/config/load.ts from validated
// YAML; nothing downstream reads raw YAML (STYLE.md: config is validated once and frozen).

export type RetryOn = 'connect-failure' | '502' | '503'
export type Direction = 'egress' | 'ingress'

export interface RetryPolicy {
  readonly attempts: number
  readonly on: ReadonlySet<RetryOn>
  readonly nonIdempotent: boolean
  readonly budgetRatio: number
  readonly budgetMinPerSecond: number
}

export interface RoutePolicy {
  readonly name: string
  readonly directions: ReadonlySet<Direction>
  readonly host: string | undefined
  readonly pathPrefix: string
  readonly methods: ReadonlySet<string> | undefined
  readonly timeoutMs: number
  readonly retries: RetryPolicy
  readonly maxHeaderBytes: number
  readonly maxBodyBytes: number
  readonly transaction: 'required' | 'supports' | 'never'
  readonly nonTransactionalTarget: 'fail' | 'proceed'
}

export interface HostPort {
  readonly host: string
  readonly port: number
}

export interface SidecarConfig {
  readonly source: string
  readonly service: string
  readonly app: HostPort
  readonly listeners: {
    readonly egress: HostPort
    readonly ingress: HostPort
    readonly control: HostPort
    readonly admin: HostPort
  }
  readonly services: ReadonlyMap<string, HostPort>
  /** The policy of requests no route matches. */
  readonly defaultRoute: RoutePolicy
  readonly routes: readonly RoutePolicy[]
  readonly drainTimeoutMs: number
  readonly mesh: {
    /** Signing keys; the first signs, all verify (rotation). Empty: transactions are off. */
    readonly keys: readonly Buffer[]
    readonly coordinators: readonly string[]
    /** host:port peers use to reach this sidecar's control listener. */
    readonly advertise: string | undefined
  }
  readonly storeDir: string
  readonly hooks: { readonly prepare: string; readonly commit: string; readonly abort: string }
  /** Dashboard: link template to a transaction's trace ({traceId}), when tracing is exported. */
  readonly traceUrl: string | undefined
  readonly logLevel: 'debug' | 'info' | 'warn' | 'error' | 'silent'
}

export type ListenerName = keyof SidecarConfig['listeners']
