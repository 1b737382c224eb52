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

/** A request template of a saga compensation or a TCC hook (placeholders: src/tx/saga/template.ts). */
export interface StepRequestTemplate {
  readonly method: string
  readonly path: string
  readonly body: string | undefined
  readonly headers: Readonly<Record<string, string>>
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
  /** Kind of the implicit transactions a `required` route begins. */
  readonly mode: '2pc' | 'saga' | 'tcc'
  readonly nonTransactionalTarget: 'fail' | 'proceed'
  /** egress, saga: how a call of this route is undone. */
  readonly compensation: StepRequestTemplate | undefined
  /** egress, tcc: the target's confirm/cancel hooks (undefined: the target sidecar's defaults). */
  readonly tcc: { readonly confirm: StepRequestTemplate | undefined; readonly cancel: StepRequestTemplate | undefined } | undefined
}

export interface HostPort {
  readonly host: string
  readonly port: number
}

/** Config `tls`: peer traffic over TLS with certificates from files (reloaded on change). */
export interface TlsSettings {
  readonly certFile: string
  readonly keyFile: string
  readonly caFile: string
  /** Mutual TLS: the ingress and control listeners refuse peers without a certificate from caFile. */
  readonly requireClientCert: boolean
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
    /** Kubelet probes only (GET /healthz, /readyz); undefined: not bound. */
    readonly health: HostPort | undefined
  }
  readonly services: ReadonlyMap<string, HostPort>
  /** Services of the map reached over plain HTTP even with `tls` on (`services.NAME.tls: false`). */
  readonly servicesWithoutTls: ReadonlySet<string>
  /** The policy of requests no route matches. */
  readonly defaultRoute: RoutePolicy
  readonly routes: readonly RoutePolicy[]
  readonly drainTimeoutMs: number
  readonly mesh: {
    /** Signing keys; the first signs, all verify (rotation). Empty: transactions are off. */
    readonly keys: readonly Buffer[]
    /** Allow-list (host:port, host:*, *, CIDR:port, CIDR:*), compiled at load (compileCoordinators). */
    readonly coordinators: readonly string[]
    /** host:port peers use to reach this sidecar's control listener. */
    readonly advertise: string | undefined
    /** The key file when it is where the keys came from (TXMESH_MESH_KEY_FILE or mesh.keyFile; the key variable unset): watched for rotation. */
    readonly keyFile: string | undefined
  }
  /**
   * Admin listener authentication: the bearer token (admin.tokenEnv / admin.tokenFile), if any;
   * the Host and Origin values accepted besides loopback and the request's own origin (lower case).
   */
  readonly admin: {
    readonly token: Buffer | undefined
    readonly tokenFile: string | undefined
    readonly allowedHosts: readonly string[]
    readonly allowedOrigins: readonly string[]
  }
  /** TLS between sidecars (ingress and control listeners, calls to peers); undefined: plain HTTP. */
  readonly tls: TlsSettings | undefined
  readonly storeDir: string
  /** store.sync: how the log makes a batch durable (undefined: the log's default, dsync where the platform has O_DSYNC). */
  readonly storeSync: 'dsync' | 'datasync' | 'fsync' | undefined
  /** store.kind postgres: the shared store (src/store/pg-log.ts); undefined: the file log in storeDir. */
  readonly storePostgres: PgStoreSettings | undefined
  /**
   * `batch`: where the app takes several prepare/commit/abort calls in one request (txmesh/pg
   * serves /.well-known/txmesh/batch); undefined: one request per hook call.
   */
  readonly hooks: { readonly prepare: string; readonly commit: string; readonly abort: string; readonly confirm: string; readonly cancel: string; readonly batch: string | undefined }
  /** Saga compensations and TCC confirm/cancel: sends before a step is stuck, and backoff. */
  readonly steps: { readonly attempts: number; readonly backoffBaseMs: number; readonly backoffCapMs: number }
  /** Event bus sinks (none: lifecycle events only on the SSE feed; messages refused). */
  readonly events: {
    readonly nats: { readonly servers: readonly string[]; readonly stream: string; readonly topics: readonly string[] } | undefined
    readonly webhooks: readonly { readonly url: string }[]
  }
  /** Committed messages delivered to the app (src/events/subscriber.ts); none without events.nats. */
  readonly subscriptions: readonly Subscription[]
  /** Dashboard: link template to a transaction's trace ({traceId}), when tracing is exported. */
  readonly traceUrl: string | undefined
  readonly logLevel: 'debug' | 'info' | 'warn' | 'error' | 'silent'
}

/** The listeners every sidecar binds (health is optional). */
export type ListenerName = Exclude<keyof SidecarConfig['listeners'], 'health'>

export interface PgStoreSettings {
  /** The connection string (from store.url, the variable store.urlEnv names, or store.urlFile). */
  readonly url: string
  readonly schema: string
  /** This instance's name; its log is `<service>/<instance>`. */
  readonly instance: string
  /** How long the instance's lease on its log lasts unrenewed (store.leaseMs). */
  readonly leaseMs: number
  /** store.lease: the lease as the logs row's expiry, or as a Kubernetes Lease per log. */
  readonly lease: 'row' | 'kubernetes'
  /** store.group: the control address any live instance of the service answers at. */
  readonly group: string | undefined
}

/** Where a new durable consumer starts (an existing one keeps its position). */
export type DeliverFrom = 'all' | 'new' | { readonly fromSequence: number } | { readonly fromTime: string }

/** One `subscriptions` entry, with its defaults filled in. */
export interface Subscription {
  readonly name: string
  /** events.nats.stream (the only stream a sidecar knows). */
  readonly stream: string
  readonly subjects: readonly string[]
  readonly route: { readonly method: 'POST' | 'PUT' | 'PATCH'; readonly path: string }
  readonly consumer: {
    readonly durable: string
    readonly deliver: DeliverFrom
    readonly ackWaitMs: number
    readonly maxDeliver: number
    /** Waits before the 2nd, 3rd, ... delivery after a failure; the last repeats. */
    readonly backoffMs: readonly number[]
  }
  readonly ordering: { readonly by: 'key' | 'none'; readonly maxInFlight: number }
  readonly deadLetter: { readonly subject: string }
}
