// Sidecar injection of one Kubernetes object: pure (no I/O, no clock). It reads the pod
// template's txmesh.io/* annotations, decides, and returns the change as JSON Patch operations
// plus the object they produce. The webhook sends the operations; `txmesh inject` applies them to
// the YAML document. Shape and names follow the contract in src/k8s/constants.ts.
import { InjectConflictError, InjectInvalidError, InjectNoAppPortError, ManifestInvalidError } from '../errors.js'
import { MESH_KEY_FILE_ENV } from '../tx/keys.js'
import { SERVICEACCOUNT_DIR_ENV } from '../store/kube-lease.js'
import {
  ANNOTATIONS,
  ADMIN_TOKEN_KEY,
  STORE_URL_KEY,
  CONFIG_DIR,
  CONFIG_FILE,
  ENV_CONFIGMAP,
  CONFIG_KEY,
  CONFIG_VOLUME,
  DEFAULTS,
  INIT_CONTAINER,
  LOG_VOLUME,
  MESH_KEY_DIR,
  MESH_KEY_FILE,
  MESH_KEY_KEY,
  MESH_KEY_VOLUME,
  PORT_NAMES,
  PORTS,
  PROBES,
  PROXY_CONTAINER,
  PROXY_ENV,
  STATUS_INJECTED,
  STORE_DIR,
  TLS_DIR,
  TLS_VOLUME,
  KUBE_API_DIR,
  KUBE_API_TOKEN_SECONDS,
  KUBE_API_VOLUME,
  TXMESH_GID,
  TXMESH_UID,
  defaultImage,
} from './constants.js'
import { applyPatch, isObject, pointer, type Json, type JsonObject, type PatchOp } from './json-patch.js'
import type {
  Container,
  EnvVar,
  Probe,
  ResourceList,
  ResourceRequirements,
  SecurityContext,
  Volume,
  VolumeMount,
} from './types.js'

export type Capture = 'env' | 'iptables'

/** Where each supported kind keeps its pod template ([] for a Pod: the object is the template). */
export const TEMPLATE_PATHS: Readonly<Record<string, readonly string[]>> = Object.freeze({
  Pod: [],
  Deployment: ['spec', 'template'],
  StatefulSet: ['spec', 'template'],
  DaemonSet: ['spec', 'template'],
  ReplicaSet: ['spec', 'template'],
  Job: ['spec', 'template'],
  CronJob: ['spec', 'jobTemplate', 'spec', 'template'],
})

/** Everything the annotations decided, after validation. */
export interface ProxySettings {
  readonly appPort: number
  readonly capture: Capture
  readonly native: boolean
  readonly configMap: string
  readonly image: string
  readonly service: string
  readonly meshKeySecret: string
  /** Secret mounted for peer TLS (txmesh.io/tls-secret), if any. */
  readonly tlsSecret: string | undefined
  /** Secret whose `token` is the admin token of the sidecar and of the app's CLI/helper, if any. */
  readonly adminTokenSecret: string | undefined
  readonly resources: ResourceRequirements
  readonly logPvc: string | undefined
  /**
   * Secret whose `url` is the Postgres store's connection string (txmesh.io/store-secret): the
   * sidecar keeps its records there, shared with the service's other replicas, instead of the log volume.
   */
  readonly storeSecret: string | undefined
  /** store.group (txmesh.io/store-group): host:port of a Service in front of the replicas' control ports. */
  readonly storeGroup: string | undefined
  /**
   * store.lease (txmesh.io/store-lease): `kubernetes` keeps each replica's lease as a Lease object
   * of the pod's namespace (the pod's service account needs get/create/update on leases).
   */
  readonly storeLease: 'row' | 'kubernetes' | undefined
}

export interface InjectOptions {
  /** Image when the template has no txmesh.io/image (default: this build's image). */
  readonly image?: string
  /** The namespace is labelled txmesh.io/inject=enabled: inject unless the pod says "false". */
  readonly namespaceEnabled?: boolean
}

export type SkipReason = 'not-annotated' | 'opted-out' | 'already-injected'

/** What a Service in the same input needs to know to point at an injected template's ingress. */
export interface InjectedTemplate {
  readonly namespace: string | undefined
  readonly labels: Readonly<Record<string, string>>
  readonly capture: Capture
  readonly appPort: number
  /** Names of the app containers' ports whose number is the app port (a targetPort may use them). */
  readonly appPortNames: readonly string[]
}

export type TemplateOutcome =
  | { readonly kind: 'skipped'; readonly reason: SkipReason; readonly injected?: InjectedTemplate }
  | { readonly kind: 'injected'; readonly settings: ProxySettings; readonly injected: InjectedTemplate }

export interface ObjectOutcome {
  readonly kind: string
  readonly name: string
  /** One per pod template of the object (a List has one per supported item). */
  readonly templates: readonly TemplateOutcome[]
  readonly patch: readonly PatchOp[]
  /** The object after the patch (the input itself when the patch is empty). */
  readonly object: Json
  readonly warnings: readonly InjectWarning[]
}

/** Something the operator should know that does not stop injection; `path` points into the object. */
export interface InjectWarning {
  readonly message: string
  readonly path: string
}

// config/txmesh.schema.json's pattern for `service`: a name the sidecar will accept.
export const SERVICE_NAME = /^[a-z0-9]([-a-z0-9.]{0,61}[a-z0-9])?$/
// RFC 1123 subdomain: names of ConfigMaps, Secrets and PersistentVolumeClaims.
const DNS_SUBDOMAIN = /^(?=.{1,253}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/
// Kubernetes resource quantity without a sign (resource.Quantity's grammar).
const QUANTITY = /^(\d+(?:\.\d*)?|\.\d+)(Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E|[eE][+-]?\d+)?$/
const QUANTITY_SCALE: Readonly<Record<string, number>> = {
  '': 1,
  n: 1e-9,
  u: 1e-6,
  m: 1e-3,
  k: 1e3,
  M: 1e6,
  G: 1e9,
  T: 1e12,
  P: 1e15,
  E: 1e18,
  Ki: 2 ** 10,
  Mi: 2 ** 20,
  Gi: 2 ** 30,
  Ti: 2 ** 40,
  Pi: 2 ** 50,
  Ei: 2 ** 60,
}
// An image reference: no whitespace, not empty. The registry decides the rest at pull time.
const IMAGE = /^[^\s]{1,512}$/

// The sidecar owns these ports in the pod's network namespace (contract: ports).
const TXMESH_PORTS = new Set<number>(Object.values(PORTS))

// The iptables init container's own resources: it runs a dozen iptables commands and exits.
const INIT_RESOURCES: ResourceRequirements = {
  requests: { cpu: '10m', memory: '16Mi' },
  limits: { cpu: '100m', memory: '64Mi' },
}

const PROBE_PORT = PORT_NAMES.health

/**
 * Injects every pod template of `obj` (a supported kind, or a List of them). Returns undefined
 * for a kind without a pod template, which callers pass through untouched. Throws InjectError
 * subclasses whose `path` points into `obj`.
 */
export function injectObject(obj: unknown, options: InjectOptions = {}): ObjectOutcome | undefined {
  if (!isObject(obj)) return undefined
  const kind = typeof obj.kind === 'string' ? obj.kind : ''
  const name = objectName(obj)
  if (kind.endsWith('List') && Array.isArray(obj.items)) {
    const templates: TemplateOutcome[] = []
    const patch: PatchOp[] = []
    const warnings: InjectWarning[] = []
    obj.items.forEach((item, i) => {
      const one = injectOne(item, `/items/${i}`, options)
      if (one === undefined) return
      templates.push(one.outcome)
      patch.push(...one.patch)
      warnings.push(...one.warnings)
    })
    return { kind, name, templates, patch, warnings, object: patch.length > 0 ? applyPatch(obj, patch) : obj }
  }
  const one = injectOne(obj, '', options)
  if (one === undefined) return undefined
  const object = one.patch.length > 0 ? applyPatch(obj, one.patch) : obj
  return { kind, name, templates: [one.outcome], patch: one.patch, warnings: one.warnings, object }
}

export function objectName(obj: JsonObject): string {
  const meta = isObject(obj.metadata) ? obj.metadata : {}
  if (typeof meta.name === 'string') return meta.name
  if (typeof meta.generateName === 'string') return meta.generateName
  return ''
}

function injectOne(
  obj: Json | undefined,
  base: string,
  options: InjectOptions,
): { outcome: TemplateOutcome; patch: PatchOp[]; warnings: InjectWarning[] } | undefined {
  if (!isObject(obj) || typeof obj.kind !== 'string') return undefined
  const kind = obj.kind
  const segments = TEMPLATE_PATHS[kind]
  if (segments === undefined) return undefined
  const at = base + pointer(...segments)
  let template: Json | undefined = obj
  for (const s of segments) template = isObject(template) ? template[s] : undefined
  if (!isObject(template)) throw new ManifestInvalidError(`${kind} has no pod template at ${at}`, { path: at || '/' })
  const meta = isObject(obj.metadata) ? obj.metadata : {}
  const namespace = typeof meta.namespace === 'string' ? meta.namespace : undefined
  const warnings: InjectWarning[] = []
  // Istio reads the pod template too: annotations on a workload's own metadata do not reach its
  // pods, so they would be invisible to the webhook. Say so rather than silently ignore them.
  if (segments.length > 0 && isObject(meta.annotations)) {
    const misplaced = Object.keys(meta.annotations).filter((k) => k.startsWith('txmesh.io/'))
    if (misplaced.length > 0) {
      warnings.push({
        message:
          `${kind}/${objectName(obj)}: ${misplaced.join(', ')} on the ${kind}'s own metadata ${misplaced.length > 1 ? 'are' : 'is'} ignored; ` +
          `txmesh reads annotations from the pod template (${segments.join('.')}.metadata.annotations)`,
        path: `${base}/metadata/annotations`,
      })
    }
  }
  const workloadName = kind === 'Pod' ? podWorkloadName(meta) : typeof meta.name === 'string' ? meta.name : undefined
  const result = injectTemplate(template, { at, workloadName, namespace, kind, ...options })
  return { ...result, warnings }
}

/**
 * The name a Pod's workload most likely has, for TXMESH_SERVICE when no label names the service:
 * a ReplicaSet's pod is `<deployment>-<pod-template-hash>-<random>` (generateName
 * `<deployment>-<hash>-`), a StatefulSet's is `<statefulset>-<ordinal>`.
 */
export function podWorkloadName(meta: JsonObject): string | undefined {
  const labels = isObject(meta.labels) ? meta.labels : {}
  let name: string | undefined
  if (typeof meta.name === 'string' && meta.name !== '') {
    name = meta.name
    if (typeof labels['statefulset.kubernetes.io/pod-name'] === 'string') name = name.replace(/-\d+$/, '')
  } else if (typeof meta.generateName === 'string' && meta.generateName !== '') {
    name = meta.generateName.replace(/-$/, '')
  }
  const hash = labels['pod-template-hash']
  if (name !== undefined && typeof hash === 'string' && name.endsWith(`-${hash}`))
    name = name.slice(0, -hash.length - 1)
  return name
}

interface TemplateContext extends InjectOptions {
  /** JSON pointer of the template inside the object. */
  readonly at: string
  readonly kind: string
  readonly namespace: string | undefined
  readonly workloadName: string | undefined
}

/** Decides and builds the injection of one pod template (a Pod's metadata+spec is one too). */
export function injectTemplate(
  template: JsonObject,
  ctx: TemplateContext,
): { outcome: TemplateOutcome; patch: PatchOp[] } {
  const { at } = ctx
  if (template.metadata !== undefined && !isObject(template.metadata))
    throw new ManifestInvalidError('metadata is not a mapping', { path: `${at}/metadata` })
  const meta = template.metadata ?? {}
  if (meta.annotations !== undefined && meta.annotations !== null && !isObject(meta.annotations)) {
    throw new ManifestInvalidError('metadata.annotations is not a mapping', {
      path: at + pointer('metadata', 'annotations'),
    })
  }
  const annotations = isObject(meta.annotations) ? meta.annotations : {}
  const annotation = (key: string): string | undefined => {
    const v = annotations[key]
    if (v === undefined || v === null) return undefined
    if (typeof v !== 'string') {
      throw new InjectInvalidError(`${key}: annotation values must be strings; quote it: "${String(v)}"`, {
        path: annotationPath(at, key),
      })
    }
    return v
  }

  if (annotation(ANNOTATIONS.status) === STATUS_INJECTED) {
    return {
      outcome: { kind: 'skipped', reason: 'already-injected', ...alreadyInjected(template, ctx, annotation) },
      patch: [],
    }
  }
  const inject = annotation(ANNOTATIONS.inject)
  if (inject !== undefined && inject !== 'true' && inject !== 'false') {
    throw new InjectInvalidError(`${ANNOTATIONS.inject} must be "true" or "false", not "${inject}"`, {
      path: annotationPath(at, ANNOTATIONS.inject),
    })
  }
  if (inject === 'false') return { outcome: { kind: 'skipped', reason: 'opted-out' }, patch: [] }
  if (inject === undefined && ctx.namespaceEnabled !== true)
    return { outcome: { kind: 'skipped', reason: 'not-annotated' }, patch: [] }

  const spec = podSpec(template, at)
  const settings = resolveSettings(template, spec, ctx, annotation)
  checkConflicts(spec, settings, at)
  const patch = buildPatch(template, spec, settings, at)
  return { outcome: { kind: 'injected', settings, injected: facts(template, spec, ctx, settings) }, patch }
}

function annotationPath(at: string, key: string): string {
  return at + pointer('metadata', 'annotations', key)
}

interface PodSpecView {
  readonly spec: JsonObject
  readonly containers: JsonObject[]
  readonly initContainers: JsonObject[] | undefined
  readonly volumes: JsonObject[] | undefined
}

function podSpec(template: JsonObject, at: string): PodSpecView {
  const spec = template.spec
  if (!isObject(spec)) throw new ManifestInvalidError('the pod template has no spec', { path: `${at}/spec` })
  const list = (key: string, required: boolean): JsonObject[] | undefined => {
    const v = spec[key]
    if (v === undefined || v === null) {
      if (required) throw new ManifestInvalidError(`spec.${key} is missing`, { path: `${at}/spec` })
      return undefined
    }
    if (!Array.isArray(v) || !v.every(isObject))
      throw new ManifestInvalidError(`spec.${key} is not a list of mappings`, { path: `${at}/spec/${key}` })
    return v as JsonObject[]
  }
  const containers = list('containers', true) ?? []
  if (containers.length === 0)
    throw new ManifestInvalidError('spec.containers is empty', { path: `${at}/spec/containers` })
  return { spec, containers, initContainers: list('initContainers', false), volumes: list('volumes', false) }
}

function containerPorts(c: JsonObject): { name: string | undefined; port: unknown }[] {
  return Array.isArray(c.ports)
    ? c.ports
        .filter(isObject)
        .map((p) => ({ name: typeof p.name === 'string' ? p.name : undefined, port: p.containerPort }))
    : []
}

function validPort(n: unknown): n is number {
  return typeof n === 'number' && Number.isInteger(n) && n >= 1 && n <= 65535
}

type AnnotationReader = (key: string) => string | undefined

function resolveSettings(
  template: JsonObject,
  view: PodSpecView,
  ctx: TemplateContext,
  annotation: AnnotationReader,
): ProxySettings {
  const { at } = ctx
  const invalid = (key: string, message: string): InjectInvalidError =>
    new InjectInvalidError(`${key}: ${message}`, { path: annotationPath(at, key) })

  const capture = annotation(ANNOTATIONS.capture) ?? DEFAULTS.capture
  if (capture !== 'env' && capture !== 'iptables')
    throw invalid(ANNOTATIONS.capture, `must be "env" or "iptables", not "${capture}"`)

  const nativeText = annotation(ANNOTATIONS.nativeSidecar)
  if (nativeText !== undefined && nativeText !== 'true' && nativeText !== 'false') {
    throw invalid(ANNOTATIONS.nativeSidecar, `must be "true" or "false", not "${nativeText}"`)
  }

  const name = (key: string, fallback: string, what: string): string => {
    const v = annotation(key) ?? fallback
    if (!DNS_SUBDOMAIN.test(v)) throw invalid(key, `"${v}" is not a valid ${what} name (lower-case RFC 1123 subdomain)`)
    return v
  }
  const configMap = name(ANNOTATIONS.config, DEFAULTS.configMap, 'ConfigMap')
  const meshKeySecret = name(ANNOTATIONS.meshKeySecret, DEFAULTS.meshKeySecret, 'Secret')
  const optionalName = (key: string, what: string): string | undefined =>
    annotation(key) === undefined ? undefined : name(key, '', what)
  const tlsSecret = optionalName(ANNOTATIONS.tlsSecret, 'Secret')
  const adminTokenSecret = optionalName(ANNOTATIONS.adminTokenSecret, 'Secret')
  const logPvcText = annotation(ANNOTATIONS.logPvc)
  const logPvc = logPvcText === undefined ? undefined : name(ANNOTATIONS.logPvc, logPvcText, 'PersistentVolumeClaim')

  const image = annotation(ANNOTATIONS.image) ?? ctx.image ?? defaultImage()
  if (!IMAGE.test(image)) throw invalid(ANNOTATIONS.image, `"${image}" is not an image reference`)
  const storeSecret = optionalName(ANNOTATIONS.storeSecret, 'Secret')
  const storeGroup = annotation(ANNOTATIONS.storeGroup)
  if (storeGroup !== undefined && !STORE_GROUP.test(storeGroup))
    throw invalid(ANNOTATIONS.storeGroup, `"${storeGroup.slice(0, 80)}" is not a host:port address`)
  if (storeSecret !== undefined && logPvc !== undefined)
    throw invalid(ANNOTATIONS.storeSecret, `the Postgres store keeps no log files: drop ${ANNOTATIONS.logPvc} or this`)
  if (storeGroup !== undefined && storeSecret === undefined)
    throw invalid(ANNOTATIONS.storeGroup, `needs ${ANNOTATIONS.storeSecret} (the group answers from the shared store)`)
  const storeLease = annotation(ANNOTATIONS.storeLease)
  if (storeLease !== undefined && storeLease !== 'row' && storeLease !== 'kubernetes')
    throw invalid(ANNOTATIONS.storeLease, `"${storeLease.slice(0, 40)}" is neither row nor kubernetes`)
  if (storeLease !== undefined && storeSecret === undefined)
    throw invalid(ANNOTATIONS.storeLease, `needs ${ANNOTATIONS.storeSecret} (leases are on the shared store's logs)`)

  return {
    appPort: appPort(view, at, annotation),
    capture,
    native: nativeText !== 'false',
    configMap,
    image,
    service: serviceName(template, ctx, annotation),
    meshKeySecret,
    tlsSecret,
    adminTokenSecret,
    resources: resources(at, annotation),
    logPvc,
    storeSecret,
    storeGroup,
    storeLease,
  }
}

const STORE_GROUP = /^[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?:[0-9]{1,5}$/

function appPort(view: PodSpecView, at: string, annotation: AnnotationReader): number {
  const text = annotation(ANNOTATIONS.appPort)
  if (text !== undefined) {
    if (/^\d+$/.test(text)) {
      const n = Number(text)
      if (!validPort(n))
        throw new InjectInvalidError(`${ANNOTATIONS.appPort}: ${text} is not a port (1-65535)`, {
          path: annotationPath(at, ANNOTATIONS.appPort),
        })
      return n
    }
    // A named port of an app container, as a Service's targetPort may name one.
    for (const c of view.containers) {
      for (const p of containerPorts(c)) if (p.name === text && validPort(p.port)) return p.port
    }
    throw new InjectInvalidError(
      `${ANNOTATIONS.appPort}: "${text}" is neither a port number nor the name of a container port`,
      {
        path: annotationPath(at, ANNOTATIONS.appPort),
      },
    )
  }
  const first = view.containers[0] as JsonObject
  const port = containerPorts(first)[0]
  if (port === undefined) {
    const who = typeof first.name === 'string' ? `"${first.name}"` : ''
    throw new InjectNoAppPortError(
      `no ${ANNOTATIONS.appPort} annotation and the first container ${who} declares no containerPort: ` +
        `set ${ANNOTATIONS.appPort}: "<port>" on the pod template`,
      { path: `${at}/spec/containers/0` },
    )
  }
  if (!validPort(port.port))
    throw new ManifestInvalidError('containerPort is not a port number (1-65535)', {
      path: `${at}/spec/containers/0/ports/0/containerPort`,
    })
  return port.port
}

function serviceName(template: JsonObject, ctx: TemplateContext, annotation: AnnotationReader): string {
  const meta = isObject(template.metadata) ? template.metadata : {}
  const labels = isObject(meta.labels) ? meta.labels : {}
  const candidates: [string | undefined, string, string][] = [
    [annotation(ANNOTATIONS.service), `annotation ${ANNOTATIONS.service}`, annotationPath(ctx.at, ANNOTATIONS.service)],
    [
      stringOr(labels['app.kubernetes.io/name']),
      'label app.kubernetes.io/name',
      ctx.at + pointer('metadata', 'labels', 'app.kubernetes.io/name'),
    ],
    [stringOr(labels.app), 'label app', ctx.at + pointer('metadata', 'labels', 'app')],
    [ctx.workloadName, `the ${ctx.kind}'s name`, ctx.at === '' ? '/metadata' : pointer('metadata', 'name')],
  ]
  for (const [value, from, path] of candidates) {
    if (value === undefined || value === '') continue
    if (!SERVICE_NAME.test(value)) {
      throw new InjectInvalidError(
        `service name "${value}" (from ${from}) is not a valid txmesh service name; set ${ANNOTATIONS.service}`,
        { path },
      )
    }
    return value
  }
  throw new InjectInvalidError(
    `cannot tell the service name: set ${ANNOTATIONS.service} or the label app.kubernetes.io/name`,
    { path: `${ctx.at}/metadata` },
  )
}

function stringOr(v: Json | undefined): string | undefined {
  return typeof v === 'string' ? v : undefined
}

function quantity(text: string): number | undefined {
  const m = QUANTITY.exec(text)
  if (m === null) return undefined
  const suffix = m[2] ?? ''
  const scale = QUANTITY_SCALE[suffix] ?? 10 ** Number(suffix.slice(1))
  return Number(m[1]) * scale
}

function resources(at: string, annotation: AnnotationReader): ResourceRequirements {
  const read = (key: string, fallback: string): string | undefined => {
    const v = annotation(key) ?? fallback
    // "none" leaves the field out: many clusters run without CPU limits to avoid throttling.
    if (v === 'none') return undefined
    if (quantity(v) === undefined)
      throw new InjectInvalidError(`${key}: "${v}" is not a Kubernetes quantity (e.g. 100m, 128Mi) or "none"`, {
        path: annotationPath(at, key),
      })
    return v
  }
  const list = (cpu: string | undefined, memory: string | undefined): ResourceList | undefined => {
    const l: ResourceList = {}
    if (cpu !== undefined) l.cpu = cpu
    if (memory !== undefined) l.memory = memory
    return cpu === undefined && memory === undefined ? undefined : l
  }
  const cpuReq = read(ANNOTATIONS.cpuRequest, DEFAULTS.cpuRequest)
  const memReq = read(ANNOTATIONS.memoryRequest, DEFAULTS.memoryRequest)
  const cpuLim = read(ANNOTATIONS.cpuLimit, DEFAULTS.cpuLimit)
  const memLim = read(ANNOTATIONS.memoryLimit, DEFAULTS.memoryLimit)
  // The API server refuses a request above its limit; say which annotation at injection time.
  const over = (req: string | undefined, lim: string | undefined, key: string): void => {
    if (req !== undefined && lim !== undefined && (quantity(req) ?? 0) > (quantity(lim) ?? 0)) {
      throw new InjectInvalidError(`${key}: request ${req} is above the limit ${lim}`, {
        path: annotationPath(at, key),
      })
    }
  }
  over(cpuReq, cpuLim, ANNOTATIONS.cpuRequest)
  over(memReq, memLim, ANNOTATIONS.memoryRequest)
  const out: ResourceRequirements = {}
  const requests = list(cpuReq, memReq)
  const limits = list(cpuLim, memLim)
  if (requests !== undefined) out.requests = requests
  if (limits !== undefined) out.limits = limits
  return out
}

function checkConflicts(view: PodSpecView, s: ProxySettings, at: string): void {
  // Istio skips such pods; a pod that asked for a sidecar is told why instead.
  if (view.spec.hostNetwork === true) {
    throw new InjectConflictError(
      `a hostNetwork pod shares the node's ports: the sidecar's ports (${[...TXMESH_PORTS].join(', ')}) would collide between pods of the node`,
      {
        path: `${at}/spec/hostNetwork`,
      },
    )
  }
  const ours = new Set([PROXY_CONTAINER, INIT_CONTAINER])
  const lists: [string, JsonObject[] | undefined][] = [
    ['containers', view.containers],
    ['initContainers', view.initContainers],
  ]
  const ourPortNames = new Set<string>(Object.values(PORT_NAMES))
  for (const [key, list] of lists) {
    list?.forEach((c, i) => {
      if (typeof c.name === 'string' && ours.has(c.name)) {
        throw new InjectConflictError(
          `a container is already named "${c.name}" but the pod is not marked ${ANNOTATIONS.status}: ${STATUS_INJECTED}`,
          {
            path: `${at}/spec/${key}/${i}/name`,
          },
        )
      }
      containerPorts(c).forEach((p, j) => {
        if (typeof p.port === 'number' && TXMESH_PORTS.has(p.port)) {
          throw new InjectConflictError(
            `port ${p.port} is used by the txmesh sidecar (${[...TXMESH_PORTS].join(', ')})`,
            {
              path: `${at}/spec/${key}/${i}/ports/${j}`,
            },
          )
        }
        if (p.name !== undefined && ourPortNames.has(p.name)) {
          throw new InjectConflictError(`port name "${p.name}" is reserved for the txmesh sidecar`, {
            path: `${at}/spec/${key}/${i}/ports/${j}`,
          })
        }
      })
    })
  }
  view.volumes?.forEach((v, i) => {
    if ([LOG_VOLUME, CONFIG_VOLUME, MESH_KEY_VOLUME, TLS_VOLUME, KUBE_API_VOLUME].includes(String(v.name))) {
      throw new InjectConflictError(`a volume is already named "${String(v.name)}"`, {
        path: `${at}/spec/volumes/${i}/name`,
      })
    }
  })
  if (TXMESH_PORTS.has(s.appPort)) {
    throw new InjectConflictError(`app port ${s.appPort} is one of the sidecar's own ports`, {
      path: annotationPath(at, ANNOTATIONS.appPort),
    })
  }
}

const SECURITY: SecurityContext = {
  runAsNonRoot: true,
  runAsUser: TXMESH_UID,
  runAsGroup: TXMESH_GID,
  readOnlyRootFilesystem: true,
  allowPrivilegeEscalation: false,
  capabilities: { drop: ['ALL'] },
  seccompProfile: { type: 'RuntimeDefault' },
}

export function proxyContainer(s: ProxySettings): Container {
  const env: EnvVar[] = [
    { name: 'TXMESH_SERVICE', value: s.service },
    { name: 'POD_IP', valueFrom: { fieldRef: { fieldPath: 'status.podIP' } } },
    // $(POD_IP) expands because POD_IP is defined above it.
    { name: 'TXMESH_ADVERTISE', value: `$(POD_IP):${PORTS.control}` },
    { name: 'TXMESH_STORE_DIR', value: STORE_DIR },
    { name: MESH_KEY_FILE_ENV, value: MESH_KEY_FILE },
    ...adminTokenEnv(s),
    ...storeEnv(s),
  ]
  const logMount: VolumeMount[] = [{ name: LOG_VOLUME, mountPath: STORE_DIR }]
  if (s.logPvc !== undefined) {
    // Replicas share the claim: each pod writes its own directory, because two sidecars appending
    // to one log would corrupt it. A StatefulSet's pod keeps its name, so it finds its log again.
    env.push({ name: 'POD_NAME', valueFrom: { fieldRef: { fieldPath: 'metadata.name' } } })
    logMount[0] = { name: LOG_VOLUME, mountPath: STORE_DIR, subPathExpr: '$(POD_NAME)' }
  }
  const probe = (path: string, p: { periodSeconds: number; failureThreshold: number }): Probe => ({
    httpGet: { path, port: PROBE_PORT },
    periodSeconds: p.periodSeconds,
    timeoutSeconds: PROBES.timeoutSeconds,
    failureThreshold: p.failureThreshold,
  })
  return {
    name: PROXY_CONTAINER,
    image: s.image,
    args: ['sidecar', '--config', CONFIG_FILE, '--app-port', String(s.appPort), '--health-port', String(PORTS.health)],
    ...(s.native ? { restartPolicy: 'Always' as const } : {}),
    env,
    envFrom: [{ configMapRef: { name: ENV_CONFIGMAP, optional: true } }],
    ports: [
      { name: PORT_NAMES.ingress, containerPort: PORTS.ingress, protocol: 'TCP' },
      { name: PORT_NAMES.control, containerPort: PORTS.control, protocol: 'TCP' },
      { name: PORT_NAMES.health, containerPort: PORTS.health, protocol: 'TCP' },
    ],
    // A native sidecar's app starts only once the startup probe passed, so the app never talks
    // to a proxy that is not listening yet.
    startupProbe: probe('/healthz', PROBES.startup),
    readinessProbe: probe('/readyz', PROBES.readiness),
    livenessProbe: probe('/healthz', PROBES.liveness),
    resources: s.resources,
    securityContext: SECURITY,
    volumeMounts: [
      ...logMount,
      { name: CONFIG_VOLUME, mountPath: CONFIG_DIR, readOnly: true },
      { name: MESH_KEY_VOLUME, mountPath: MESH_KEY_DIR, readOnly: true },
      ...(s.tlsSecret === undefined ? [] : [{ name: TLS_VOLUME, mountPath: TLS_DIR, readOnly: true }]),
      ...(s.storeLease === 'kubernetes' ? [{ name: KUBE_API_VOLUME, mountPath: KUBE_API_DIR, readOnly: true }] : []),
    ],
  }
}

/**
 * The Postgres store (txmesh.io/store-secret): its URL from the Secret, the pod's name as the
 * instance (each replica its own log in the shared tables), and the group address if annotated.
 */
function storeEnv(s: Pick<ProxySettings, 'storeSecret' | 'storeGroup' | 'storeLease'>): EnvVar[] {
  if (s.storeSecret === undefined) return []
  return [
    { name: 'TXMESH_STORE_URL', valueFrom: { secretKeyRef: { name: s.storeSecret, key: STORE_URL_KEY } } },
    { name: 'TXMESH_INSTANCE', valueFrom: { fieldRef: { fieldPath: 'metadata.name' } } },
    ...(s.storeGroup === undefined ? [] : [{ name: 'TXMESH_STORE_GROUP', value: s.storeGroup }]),
    ...(s.storeLease === undefined ? [] : [{ name: 'TXMESH_STORE_LEASE', value: s.storeLease }]),
    ...(s.storeLease === 'kubernetes'
      ? [
          { name: 'POD_NAMESPACE', valueFrom: { fieldRef: { fieldPath: 'metadata.namespace' } } },
          { name: SERVICEACCOUNT_DIR_ENV, value: KUBE_API_DIR },
        ]
      : []),
  ]
}

/** TXMESH_ADMIN_TOKEN from the admin token Secret (sidecar and app containers), when annotated. */
function adminTokenEnv(s: Pick<ProxySettings, 'adminTokenSecret'>): EnvVar[] {
  return s.adminTokenSecret === undefined
    ? []
    : [{ name: 'TXMESH_ADMIN_TOKEN', valueFrom: { secretKeyRef: { name: s.adminTokenSecret, key: ADMIN_TOKEN_KEY } } }]
}

/**
 * The istio-init pattern: nat rules in the pod's network namespace, written so that a rerun in the
 * same namespace (a restarted init container) leaves one copy of each rule. IPv4 only.
 */
export function iptablesScript(appPort: number): string {
  return [
    'set -eu',
    'iptables -t nat -N TXMESH_OUTPUT 2>/dev/null || iptables -t nat -F TXMESH_OUTPUT',
    // The sidecar's own calls leave as they are, or they would loop back into its egress.
    `iptables -t nat -A TXMESH_OUTPUT -m owner --uid-owner ${TXMESH_UID} -j RETURN`,
    'iptables -t nat -A TXMESH_OUTPUT -o lo -j RETURN',
    `iptables -t nat -A TXMESH_OUTPUT -p tcp --dport 80 -j REDIRECT --to-ports ${PORTS.egress}`,
    'iptables -t nat -C OUTPUT -p tcp -j TXMESH_OUTPUT 2>/dev/null || iptables -t nat -A OUTPUT -p tcp -j TXMESH_OUTPUT',
    'iptables -t nat -N TXMESH_INBOUND 2>/dev/null || iptables -t nat -F TXMESH_INBOUND',
    `iptables -t nat -A TXMESH_INBOUND -p tcp --dport ${appPort} -j REDIRECT --to-ports ${PORTS.ingress}`,
    'iptables -t nat -C PREROUTING -p tcp -j TXMESH_INBOUND 2>/dev/null || iptables -t nat -A PREROUTING -p tcp -j TXMESH_INBOUND',
  ].join('\n')
}

export function initContainer(s: ProxySettings): Container {
  return {
    name: INIT_CONTAINER,
    image: s.image,
    command: ['/bin/sh', '-c', iptablesScript(s.appPort)],
    resources: INIT_RESOURCES,
    securityContext: {
      // iptables needs root with NET_ADMIN/NET_RAW in the pod's network namespace, nothing more.
      runAsNonRoot: false,
      runAsUser: 0,
      runAsGroup: 0,
      // iptables-legacy takes its lock under /run; the container exits within a second anyway.
      readOnlyRootFilesystem: false,
      allowPrivilegeEscalation: false,
      privileged: false,
      capabilities: { add: ['NET_ADMIN', 'NET_RAW'], drop: ['ALL'] },
      seccompProfile: { type: 'RuntimeDefault' },
    },
  }
}

export function volumes(s: ProxySettings): Volume[] {
  // emptyDir dies with the pod: its in-doubt branches then rely on the coordinator's presumed
  // abort and peers' retries (docs/kubernetes.md). A claim keeps the log across rescheduling.
  const log: Volume =
    s.logPvc === undefined
      ? { name: LOG_VOLUME, emptyDir: {} }
      : { name: LOG_VOLUME, persistentVolumeClaim: { claimName: s.logPvc } }
  const tls: Volume[] = s.tlsSecret === undefined ? [] : [{ name: TLS_VOLUME, secret: { secretName: s.tlsSecret } }]
  const kubeApi: Volume[] =
    s.storeLease !== 'kubernetes'
      ? []
      : [
          {
            name: KUBE_API_VOLUME,
            projected: {
              sources: [
                { serviceAccountToken: { path: 'token', expirationSeconds: KUBE_API_TOKEN_SECONDS } },
                { configMap: { name: 'kube-root-ca.crt', items: [{ key: 'ca.crt', path: 'ca.crt' }] } },
                { downwardAPI: { items: [{ path: 'namespace', fieldRef: { fieldPath: 'metadata.namespace' } }] } },
              ],
            },
          },
        ]
  return [
    log,
    { name: CONFIG_VOLUME, configMap: { name: s.configMap, items: [{ key: CONFIG_KEY, path: CONFIG_KEY }] } },
    {
      name: MESH_KEY_VOLUME,
      secret: { secretName: s.meshKeySecret, items: [{ key: MESH_KEY_KEY, path: MESH_KEY_KEY }] },
    },
    ...tls,
    ...kubeApi,
  ]
}

function proxyEnv(): EnvVar[] {
  return [
    { name: 'HTTP_PROXY', value: PROXY_ENV.proxyUrl },
    { name: 'http_proxy', value: PROXY_ENV.proxyUrl },
    { name: 'NO_PROXY', value: PROXY_ENV.noProxy },
    { name: 'no_proxy', value: PROXY_ENV.noProxy },
    // Node 24+ honours HTTP_PROXY in fetch/http only when told (DESIGN.md, Kubernetes).
    { name: 'NODE_USE_ENV_PROXY', value: '1' },
  ]
}

const json = (v: unknown): Json => v as Json

function buildPatch(template: JsonObject, view: PodSpecView, s: ProxySettings, at: string): PatchOp[] {
  const ops: PatchOp[] = []
  const add = (path: string, value: unknown): void => void ops.push({ op: 'add', path: at + path, value: json(value) })

  // The marker first: whatever else a reader looks at, an injected template says so.
  const meta = isObject(template.metadata) ? template.metadata : undefined
  if (meta === undefined) add('/metadata', { annotations: { [ANNOTATIONS.status]: STATUS_INJECTED } })
  else if (!isObject(meta.annotations)) add('/metadata/annotations', { [ANNOTATIONS.status]: STATUS_INJECTED })
  else add(pointer('metadata', 'annotations', ANNOTATIONS.status), STATUS_INJECTED)

  const proxy = proxyContainer(s)
  const iptables = s.capture === 'iptables' ? initContainer(s) : undefined
  if (s.native) {
    // Native sidecar (Kubernetes 1.29+): an init container with restartPolicy Always, first, so it
    // runs (and passes its startup probe) before the other init containers and the app.
    const front = iptables === undefined ? [proxy] : [iptables, proxy]
    if (view.initContainers === undefined) add('/spec/initContainers', front)
    else front.forEach((c, i) => add(`/spec/initContainers/${i}`, c))
  } else {
    // Classic: the app's own init containers run before the proxy exists, so the iptables rules
    // go last among them (as istio-init does) and do not redirect their traffic to nowhere.
    if (iptables !== undefined) {
      if (view.initContainers === undefined) add('/spec/initContainers', [iptables])
      else add('/spec/initContainers/-', iptables)
    }
    add('/spec/containers/-', proxy)
  }

  // The app's containers: the proxy variables (env capture) and the admin token (txmesh/pg's
  // recovery and the CLI call the sidecar's admin API with it).
  const appEnv = [...(s.capture === 'env' ? proxyEnv() : []), ...adminTokenEnv(s)]
  if (appEnv.length > 0) {
    view.containers.forEach((c, i) => {
      const have = new Set(Array.isArray(c.env) ? c.env.filter(isObject).map((e) => e.name) : [])
      // A variable the container already sets is its owner's choice; it is left alone.
      const missing = appEnv.filter((e) => !have.has(e.name))
      if (missing.length === 0) return
      if (!Array.isArray(c.env)) add(`/spec/containers/${i}/env`, missing)
      else for (const e of missing) add(`/spec/containers/${i}/env/-`, e)
    })
  }

  const vols = volumes(s)
  if (view.volumes === undefined) add('/spec/volumes', vols)
  else for (const v of vols) add('/spec/volumes/-', v)
  return ops
}

function facts(
  template: JsonObject,
  view: PodSpecView,
  ctx: TemplateContext,
  s: Pick<ProxySettings, 'capture' | 'appPort'>,
): InjectedTemplate {
  const meta = isObject(template.metadata) ? template.metadata : {}
  const labels: Record<string, string> = {}
  if (isObject(meta.labels)) for (const [k, v] of Object.entries(meta.labels)) if (typeof v === 'string') labels[k] = v
  const appPortNames = view.containers
    .filter((c) => c.name !== PROXY_CONTAINER)
    .flatMap(containerPorts)
    .filter((p) => p.port === s.appPort && p.name !== undefined)
    .map((p) => p.name as string)
  return { namespace: ctx.namespace, labels, capture: s.capture, appPort: s.appPort, appPortNames }
}

/** An injected template's facts, read back from its proxy container (for Service retargeting). */
function alreadyInjected(
  template: JsonObject,
  ctx: TemplateContext,
  annotation: AnnotationReader,
): { injected?: InjectedTemplate } {
  let view: PodSpecView
  try {
    view = podSpec(template, ctx.at)
  } catch {
    return {}
  }
  const proxy = [...view.containers, ...(view.initContainers ?? [])].find((c) => c.name === PROXY_CONTAINER)
  const args = proxy !== undefined && Array.isArray(proxy.args) ? proxy.args : []
  const port = Number(args[args.indexOf('--app-port') + 1])
  const capture = annotation(ANNOTATIONS.capture) === 'iptables' ? 'iptables' : 'env'
  if (!validPort(port)) return {}
  return { injected: facts(template, view, ctx, { capture, appPort: port }) }
}
