// Names and numbers of the Kubernetes contract (issue 7): the injector, the webhook, the image
// and deploy/ must agree on every one of them, so they live here and nowhere else.
import { readFileSync } from 'node:fs'

/** The image runs as this uid/gid; iptables capture exempts its traffic by owner uid. */
export const TXMESH_UID = 10001
export const TXMESH_GID = 10001

export const IMAGE_REPOSITORY = 'ghcr.io/txmesh/txmesh'

let version: string | undefined
/** `ghcr.io/txmesh/txmesh:<package.json version>`: the injector deploys the build it is. */
export function defaultImage(): string {
  if (version === undefined) {
    // src/k8s and dist/k8s are both two levels below the package root (and /app in the image).
    const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string }
    version = pkg.version
  }
  return `${IMAGE_REPOSITORY}:${version}`
}

/** Every annotation the injector reads or writes (all on the pod template). */
export const ANNOTATIONS = Object.freeze({
  inject: 'txmesh.io/inject',
  status: 'txmesh.io/status',
  appPort: 'txmesh.io/app-port',
  config: 'txmesh.io/config',
  capture: 'txmesh.io/capture',
  nativeSidecar: 'txmesh.io/native-sidecar',
  cpuRequest: 'txmesh.io/proxy-cpu-request',
  memoryRequest: 'txmesh.io/proxy-memory-request',
  cpuLimit: 'txmesh.io/proxy-cpu-limit',
  memoryLimit: 'txmesh.io/proxy-memory-limit',
  logPvc: 'txmesh.io/log-pvc',
  image: 'txmesh.io/image',
  service: 'txmesh.io/service',
  meshKeySecret: 'txmesh.io/mesh-key-secret',
  tlsSecret: 'txmesh.io/tls-secret',
  adminTokenSecret: 'txmesh.io/admin-token-secret',
  storeSecret: 'txmesh.io/store-secret',
  storeGroup: 'txmesh.io/store-group',
  storeLease: 'txmesh.io/store-lease',
})

/** Value of `txmesh.io/status` on an injected pod template: the idempotency marker. */
export const STATUS_INJECTED = 'injected'

/** Namespace label that makes the webhook inject every pod that does not opt out. */
export const NAMESPACE_LABEL = 'txmesh.io/inject'
export const NAMESPACE_LABEL_ENABLED = 'enabled'

export const PROXY_CONTAINER = 'txmesh-proxy'
export const INIT_CONTAINER = 'txmesh-init'
export const LOG_VOLUME = 'txmesh-log'
export const CONFIG_VOLUME = 'txmesh-config'
/**
 * Optional ConfigMap of extra environment for every sidecar of a namespace (OTEL_* for traces,
 * TXMESH_LOG_LEVEL): the webhook cannot know them, and a pod needs no annotation for them. The
 * sidecar's own variables (env) take precedence over it.
 */
export const ENV_CONFIGMAP = 'txmesh-env'

export const PORTS = Object.freeze({ admin: 15000, egress: 15001, ingress: 15006, control: 15010, health: 15021 })
export const PORT_NAMES = Object.freeze({
  ingress: 'txmesh-ingress',
  control: 'txmesh-control',
  health: 'txmesh-health',
})

export const CONFIG_DIR = '/etc/txmesh'
export const CONFIG_KEY = 'txmesh.yaml'
export const CONFIG_FILE = `${CONFIG_DIR}/${CONFIG_KEY}`
export const STORE_DIR = '/var/lib/txmesh'

export const MESH_KEY_KEY = 'mesh-key'
/**
 * The mesh key Secret is mounted here rather than passed as a variable: the kubelet updates a
 * mounted Secret in place, and the sidecar watches the file, so a rotation needs no restart.
 */
export const MESH_KEY_VOLUME = 'txmesh-mesh-key'
export const MESH_KEY_DIR = '/var/run/secrets/txmesh/mesh-key'
export const MESH_KEY_FILE = `${MESH_KEY_DIR}/${MESH_KEY_KEY}`

/**
 * Peer TLS (txmesh.io/tls-secret): the Secret is mounted here, with the keys a cert-manager
 * Certificate's Secret has (tls.crt, tls.key, ca.crt); the config's `tls` names the files.
 */
/**
 * store.lease kubernetes: the pod's service account token, the cluster CA and the namespace,
 * projected into the sidecar alone (the app keeps automountServiceAccountToken as it has it), at
 * the path the sidecar reads them from (TXMESH_K8S_SERVICEACCOUNT_DIR).
 */
export const KUBE_API_VOLUME = 'txmesh-kube-api'
export const KUBE_API_DIR = '/var/run/secrets/txmesh/kube-api'
/** The projected token's lifetime; the kubelet refreshes it at 80% of it, the sidecar rereads it. */
export const KUBE_API_TOKEN_SECONDS = 3600
export const TLS_VOLUME = 'txmesh-tls'
export const TLS_DIR = '/var/run/secrets/txmesh/tls'
export const TLS_FILES = Object.freeze({
  certFile: `${TLS_DIR}/tls.crt`,
  keyFile: `${TLS_DIR}/tls.key`,
  caFile: `${TLS_DIR}/ca.crt`,
})
/** The admin token (txmesh.io/admin-token-secret): this key of the Secret, as TXMESH_ADMIN_TOKEN. */
export const ADMIN_TOKEN_KEY = 'token'
/** Key of the Postgres store Secret (txmesh.io/store-secret) that holds the connection string. */
export const STORE_URL_KEY = 'url'

export const DEFAULTS = Object.freeze({
  configMap: 'txmesh-config',
  meshKeySecret: 'txmesh-mesh-key',
  capture: 'env' as const,
  nativeSidecar: true,
  cpuRequest: '50m',
  memoryRequest: '64Mi',
  cpuLimit: '1',
  memoryLimit: '256Mi',
})

/** What env capture sets on app containers (DESIGN.md, Kubernetes). */
export const PROXY_ENV = Object.freeze({
  proxyUrl: `http://127.0.0.1:${PORTS.egress}`,
  noProxy: '127.0.0.1,localhost,::1',
})

/** The webhook's Service and paths (deploy/ points the MutatingWebhookConfiguration here). */
export const WEBHOOK = Object.freeze({
  namespace: 'txmesh-system',
  service: 'txmesh-webhook',
  port: 8443,
  // Pods reach this path when they may carry the opt-in annotation: inject only on "true".
  path: '/inject',
  // Pods of namespaces labelled txmesh.io/inject=enabled (the configuration's namespaceSelector
  // sends them here): inject unless the pod says "false". An AdmissionReview does not carry the
  // namespace's labels, so the path is how the webhook learns that the selector matched.
  namespaceEnabledPath: '/inject/namespace-enabled',
})

/**
 * The injected sidecar's probes (period and failures before the kubelet acts, in seconds and
 * counts; each probe times out after 1 s). Startup allows up to 2 minutes for log replay before
 * liveness counts (a native sidecar's app starts only once it passed); readiness drops a pod
 * from its Service after 15 s of failures, liveness restarts the sidecar after 30 s.
 */
export const PROBES = Object.freeze({
  timeoutSeconds: 1,
  startup: { periodSeconds: 1, failureThreshold: 120 },
  readiness: { periodSeconds: 5, failureThreshold: 3 },
  liveness: { periodSeconds: 10, failureThreshold: 3 },
})
