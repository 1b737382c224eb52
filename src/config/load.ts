// YAML -> validated, typed, frozen SidecarConfig. Errors name file:line:col: YAML is parsed
// with positions and every JSON Schema error is mapped back to the node it is about.
import { readFileSync, statSync } from 'node:fs'
import { hostname } from 'node:os'
import { isIPv6 } from 'node:net'
import type { ErrorObject } from 'ajv'
import { LineCounter, parseDocument, isMap, isNode, isPair, isScalar, type Document } from 'yaml'
import { ConfigInvalidError, type ConfigProblem } from '../errors.js'
import { LIMITS } from '../limits.js'
import { readSecretFile, readTlsMaterial } from '../secrets.js'
import { MESH_KEY_FILE_ENV, parseMeshKeys } from '../tx/keys.js'
import { compileCoordinators } from '../tx/protocol.js'
import { configHeaderProblem } from '../tx/saga/template.js'
import validateSchema, { PATTERNS } from './schema-validator.generated.js'
import type { DeliverFrom, HostPort, PgStoreSettings, RetryOn, RetryPolicy, RoutePolicy, SidecarConfig, Direction, StepRequestTemplate, Subscription, TlsSettings } from './types.js'
import { portNumber, splitAuthority } from '../address.js'

export const SCHEMA_URL = new URL('../../config/txmesh.schema.json', import.meta.url)

/** ajv's validate function: errors of the last call on the function itself. */
type Validator = ((data: unknown) => boolean) & { errors?: ErrorObject[] | null }
/** The schema compiled ahead of time (scripts/gen-schema-validator.ts): no ajv compile at start. */
function schemaValidator(): Validator {
  return validateSchema as Validator
}

/** A setting given outside the file, and where it came from (for error messages). */
export interface Given {
  readonly value: string
  readonly from: string
}

/**
 * Settings given by command-line flags or the environment. For each: flag > environment > file >
 * default (the pod's env is more specific than a ConfigMap every replica shares).
 */
export interface ConfigOverrides {
  readonly service?: Given
  readonly storeDir?: Given
  readonly advertise?: Given
}

/** Environment variables of the settings that may come from outside the file. */
export const CONFIG_ENV = { service: 'TXMESH_SERVICE', storeDir: 'TXMESH_STORE_DIR', advertise: 'TXMESH_ADVERTISE' } as const
const CONFIG_FLAG = { service: '--service', storeDir: '--store-dir', advertise: '--advertise' } as const

/** Applies the precedence: a flag wins over its variable; an empty variable counts as unset. */
export function overridesFrom(
  flags: { readonly [K in keyof ConfigOverrides]?: string | undefined },
  env: Readonly<Record<string, string | undefined>>,
): ConfigOverrides {
  const out: { -readonly [K in keyof ConfigOverrides]: Given } = {}
  for (const k of ['service', 'storeDir', 'advertise'] as const) {
    const flag = flags[k]
    const fromEnv = env[CONFIG_ENV[k]]
    if (flag !== undefined) out[k] = { value: flag, from: CONFIG_FLAG[k] }
    else if (fromEnv !== undefined && fromEnv !== '') out[k] = { value: fromEnv, from: CONFIG_ENV[k] }
  }
  return out
}

export function loadConfigFile(file: string, overrides: ConfigOverrides = {}): SidecarConfig {
  let size: number
  try {
    const st = statSync(file)
    // A device or FIFO (`--config /dev/zero`) would read forever or block: only regular files.
    if (!st.isFile()) throw new Error('not a regular file')
    size = st.size
  } catch (err) {
    throw new ConfigInvalidError([{ file, line: 0, col: 0, message: `cannot read: ${(err as Error).message}` }])
  }
  if (size > LIMITS.configFileBytes) {
    throw new ConfigInvalidError([
      { file, line: 0, col: 0, message: `file is ${size} bytes; the limit is ${LIMITS.configFileBytes}` },
    ])
  }
  return parseConfig(readFileSync(file, 'utf8'), file, overrides)
}

/** Parses and validates YAML text; throws ConfigInvalidError listing every problem. */
export function parseConfig(text: string, file: string, overrides: ConfigOverrides = {}): SidecarConfig {
  const lines = new LineCounter()
  const doc = parseDocument(text, { lineCounter: lines, uniqueKeys: true, prettyErrors: false })
  const at = (offset: number): { line: number; col: number } => lines.linePos(offset)
  const problems: ConfigProblem[] = []
  for (const e of doc.errors) problems.push({ file, ...at(e.pos[0]), message: e.message.split('\n')[0] ?? e.message })
  if (problems.length > 0) throw new ConfigInvalidError(problems)

  let raw: unknown
  try {
    raw = doc.toJS({ maxAliasCount: LIMITS.configMaxAliases })
  } catch (err) {
    throw new ConfigInvalidError([{ file, line: 1, col: 1, message: (err as Error).message }])
  }
  if (raw === null || raw === undefined) raw = {}
  const validate = schemaValidator()
  if (!validate(raw)) {
    for (const e of validate.errors ?? []) problems.push(schemaProblem(doc, e, file, at))
    throw new ConfigInvalidError(dedupe(problems))
  }
  const typed = build(raw as RawConfig, file, doc, at, overrides)
  return deepFreeze(typed)
}

function dedupe(problems: ConfigProblem[]): ConfigProblem[] {
  const seen = new Set<string>()
  return problems
    .filter((p) => {
      const k = `${p.line}:${p.col}:${p.message}`
      if (seen.has(k)) return false
      seen.add(k)
      return true
    })
    .sort((a, b) => a.line - b.line || a.col - b.col)
}

function pointerToPath(pointer: string): (string | number)[] {
  if (pointer === '') return []
  return pointer
    .slice(1)
    .split('/')
    .map((s) => s.replace(/~1/g, '/').replace(/~0/g, '~'))
    .map((s) => (/^\d+$/.test(s) ? Number(s) : s))
}

function schemaProblem(
  doc: Document,
  e: ErrorObject,
  file: string,
  at: (offset: number) => { line: number; col: number },
): ConfigProblem {
  const path = pointerToPath(e.instancePath)
  const where = path.length === 0 ? 'config' : path.join('.')
  let node: unknown = path.length === 0 ? doc.contents : doc.getIn(path, true)
  let message = `${where}: ${e.message ?? 'is invalid'}`
  if (e.keyword === 'additionalProperties') {
    const key = String((e.params as { additionalProperty: string }).additionalProperty)
    message = `${where}: unknown key "${key}"`
    if (isMap(node)) {
      const pair = node.items.find((p) => isPair(p) && isScalar(p.key) && String(p.key.value) === key)
      if (pair !== undefined && isNode(pair.key)) node = pair.key
    }
  } else if (e.keyword === 'enum') {
    const allowed = (e.params as { allowedValues: unknown[] }).allowedValues
    message = `${where}: must be one of ${allowed.map((v) => JSON.stringify(v)).join(', ')}`
  } else if (e.keyword === 'required') {
    message = `${where}: missing required key "${(e.params as { missingProperty: string }).missingProperty}"`
  }
  const offset = isNode(node) && node.range ? node.range[0] : 0
  return { file, ...at(offset), message }
}

// ---- raw (schema-valid) shape -> typed config with defaults ----

interface RawRetries {
  attempts?: number
  on?: RetryOn[]
  nonIdempotent?: boolean
  budgetRatio?: number
  budgetMinPerSecond?: number
}
interface RawPolicy {
  timeoutMs?: number
  retries?: RawRetries
  maxHeaderBytes?: number
  maxBodyBytes?: number
}
interface RawStepRequest {
  method?: string
  path: string
  body?: string
  headers?: Record<string, string>
}
interface RawRoute extends RawPolicy {
  name?: string
  compensation?: RawStepRequest
  tcc?: { confirm?: RawStepRequest; cancel?: RawStepRequest }
  transaction?: RoutePolicy['transaction']
  mode?: RoutePolicy['mode']
  nonTransactionalTarget?: RoutePolicy['nonTransactionalTarget']
  match?: { direction?: Direction | 'both'; host?: string; pathPrefix?: string; methods?: string[] }
}
interface RawSubscription {
  name: string
  stream?: string
  subjects: string[]
  route: { method?: 'POST' | 'PUT' | 'PATCH'; path: string }
  consumer?: { durable?: string; deliver?: DeliverFrom; ackWaitMs?: number; maxDeliver?: number; backoffMs?: number[] }
  ordering?: { by?: 'key' | 'none'; maxInFlight?: number }
  deadLetter?: { subject: string }
}
interface RawListener {
  host?: string
  port?: number
}
interface RawConfig {
  service?: string
  app?: RawListener
  listeners?: { egress?: RawListener; ingress?: RawListener; control?: RawListener; admin?: RawListener; health?: RawListener }
  services?: Record<string, { address: string; tls?: boolean }>
  defaults?: RawPolicy
  routes?: RawRoute[]
  drainTimeoutMs?: number
  log?: { level?: SidecarConfig['logLevel'] }
  mesh?: { keyEnv?: string; keyFile?: string; coordinators?: string[]; advertise?: string }
  admin?: { tokenEnv?: string; tokenFile?: string; allowedHosts?: string[]; allowedOrigins?: string[] }
  tls?: { certFile: string; keyFile: string; caFile: string; requireClientCert?: boolean }
  store?: { dir?: string; sync?: 'dsync' | 'datasync' | 'fsync'; kind?: 'file' | 'postgres'; url?: string; urlEnv?: string; urlFile?: string; schema?: string; instance?: string; leaseMs?: number; lease?: 'row' | 'kubernetes'; group?: string }
  hooks?: { prepare?: string; commit?: string; abort?: string; confirm?: string; cancel?: string; batch?: string }
  steps?: { attempts?: number; backoffBaseMs?: number; backoffCapMs?: number }
  events?: { nats?: { servers: string[]; stream?: string; topics?: string[] }; webhooks?: { url: string }[] }
  subscriptions?: RawSubscription[]
  ui?: { traceUrl?: string }
}

// DESIGN.md port table.
const DEFAULT_LISTENERS = {
  egress: { host: '127.0.0.1', port: 15001 },
  ingress: { host: '0.0.0.0', port: 15006 },
  control: { host: '0.0.0.0', port: 15010 },
  admin: { host: '127.0.0.1', port: 15000 },
  // Bound only when configured (listeners.health or --health-port): kubelet probes reach it on
  // the pod IP, while admin stays on loopback.
  health: { host: '0.0.0.0', port: 15021 },
} as const

export function parseAddress(address: string): HostPort {
  const a = splitAuthority(address)
  const port = portNumber(a?.port)
  if (a === undefined || a.host === '' || port === undefined) throw new Error(`invalid address "${address}"`)
  return { host: a.host, port }
}

function listener(raw: RawListener | undefined, dflt: HostPort): HostPort {
  return { host: raw?.host ?? dflt.host, port: raw?.port ?? dflt.port }
}

function retries(raw: RawRetries | undefined, base: RetryPolicy): RetryPolicy {
  return {
    attempts: raw?.attempts ?? base.attempts,
    on: raw?.on ? new Set(raw.on) : base.on,
    nonIdempotent: raw?.nonIdempotent ?? base.nonIdempotent,
    budgetRatio: raw?.budgetRatio ?? base.budgetRatio,
    budgetMinPerSecond: raw?.budgetMinPerSecond ?? base.budgetMinPerSecond,
  }
}

function stepRequest(raw: RawStepRequest | undefined): StepRequestTemplate | undefined {
  if (raw === undefined) return undefined
  return { method: raw.method ?? 'POST', path: raw.path, body: raw.body, headers: { ...(raw.headers ?? {}) } }
}

const BUILTIN_RETRIES: RetryPolicy = {
  attempts: LIMITS.retryAttempts,
  on: new Set<RetryOn>(['connect-failure', '502', '503']),
  nonIdempotent: false,
  budgetRatio: LIMITS.retryBudgetRatio,
  budgetMinPerSecond: LIMITS.retryBudgetMinPerSecond,
}

function build(raw: RawConfig, file: string, doc: Document, at: (o: number) => { line: number; col: number }, o: ConfigOverrides): SidecarConfig {
  const d = raw.defaults ?? {}
  const defaultRoute: RoutePolicy = {
    name: 'default',
    directions: new Set<Direction>(['egress', 'ingress']),
    host: undefined,
    pathPrefix: '/',
    methods: undefined,
    timeoutMs: d.timeoutMs ?? LIMITS.requestTimeoutMs,
    retries: retries(d.retries, BUILTIN_RETRIES),
    maxHeaderBytes: d.maxHeaderBytes ?? LIMITS.maxHeaderBytes,
    maxBodyBytes: d.maxBodyBytes ?? LIMITS.maxBodyBytes,
    transaction: 'supports',
    mode: '2pc',
    nonTransactionalTarget: 'fail',
    compensation: undefined,
    tcc: undefined,
  }
  const routes = (raw.routes ?? []).map((r, i): RoutePolicy => {
    const dir = r.match?.direction ?? 'both'
    return {
      name: r.name ?? `route-${i}`,
      directions: new Set<Direction>(dir === 'both' ? ['egress', 'ingress'] : [dir]),
      host: r.match?.host?.toLowerCase(),
      pathPrefix: r.match?.pathPrefix ?? '/',
      methods: r.match?.methods ? new Set(r.match.methods) : undefined,
      timeoutMs: r.timeoutMs ?? defaultRoute.timeoutMs,
      retries: retries(r.retries, defaultRoute.retries),
      maxHeaderBytes: r.maxHeaderBytes ?? defaultRoute.maxHeaderBytes,
      maxBodyBytes: r.maxBodyBytes ?? defaultRoute.maxBodyBytes,
      transaction: r.transaction ?? defaultRoute.transaction,
      mode: r.mode ?? '2pc',
      nonTransactionalTarget: r.nonTransactionalTarget ?? defaultRoute.nonTransactionalTarget,
      compensation: stepRequest(r.compensation),
      tcc: r.tcc === undefined ? undefined : { confirm: stepRequest(r.tcc.confirm), cancel: stepRequest(r.tcc.cancel) },
    }
  })
  const services = new Map<string, HostPort>()
  const problems: ConfigProblem[] = []
  const position = (path: (string | number)[]): { line: number; col: number } => {
    const node = doc.getIn(path, true)
    return at(isNode(node) && node.range ? node.range[0] : 0)
  }
  // Values from flags/env have no position: line 0, like an unreadable file.
  const given = (g: Given, message: string): void => void problems.push({ file, line: 0, col: 0, message: `${g.from}: ${message}` })
  if (o.service !== undefined && !new RegExp(PATTERNS.service).test(o.service.value)) {
    given(o.service, `"${o.service.value}" is not a service name (lowercase letters, digits, '-' and '.', at most 63, starting and ending with a letter or digit)`)
  }
  const service = o.service?.value ?? raw.service
  if (service === undefined) problems.push({ file, line: 1, col: 1, message: 'config: missing required key "service" (or give --service NAME or TXMESH_SERVICE)' })
  if (o.storeDir !== undefined && o.storeDir.value === '') given(o.storeDir, 'the store directory must not be empty')
  let advertise = raw.mesh?.advertise
  if (o.advertise !== undefined) {
    const a = advertiseAddress(o.advertise.value)
    if (a === undefined) given(o.advertise, `"${o.advertise.value}" is not host:port (e.g. 10.1.2.3:15010, [fd00::1]:15010)`)
    else advertise = a
  } else if (advertise !== undefined && advertiseAddress(advertise) !== advertise) {
    problems.push({ file, ...position(['mesh', 'advertise']), message: `mesh.advertise: "${advertise}" is not host:port with a port 1-65535` })
  }
  const coordinators = Object.freeze([...(raw.mesh?.coordinators ?? ['127.0.0.1:*', 'localhost:*'])])
  for (const p of compileCoordinators(coordinators)) {
    problems.push({ file, ...position(['mesh', 'coordinators', p.index]), message: `mesh.coordinators.${p.index}: ${p.message}` })
  }
  // A step template whose headers can only be refused by the HTTP client would fail every send.
  for (const [i, r] of (raw.routes ?? []).entries()) {
    const templates: [(string | number)[], RawStepRequest | undefined][] = [
      [['routes', i, 'compensation'], r.compensation],
      [['routes', i, 'tcc', 'confirm'], r.tcc?.confirm],
      [['routes', i, 'tcc', 'cancel'], r.tcc?.cancel],
    ]
    for (const [path, t] of templates) {
      for (const [name, value] of Object.entries(t?.headers ?? {})) {
        const p = configHeaderProblem(name, value)
        if (p === undefined) continue
        const headers = doc.getIn([...path, 'headers'], true)
        const pair = isMap(headers) ? headers.items.find((x) => isPair(x) && isScalar(x.key) && String(x.key.value) === name) : undefined
        const node = p.on === 'name' ? pair?.key : pair?.value
        problems.push({ file, ...at(isNode(node) && node.range ? node.range[0] : 0), message: `${[...path, 'headers', name].join('.')}: ${p.message}` })
      }
    }
  }
  const servicesWithoutTls = new Set<string>()
  for (const [name, s] of Object.entries(raw.services ?? {})) {
    if (s.tls === false) servicesWithoutTls.add(name.toLowerCase())
    try {
      services.set(name.toLowerCase(), parseAddress(s.address))
    } catch (err) {
      const node = doc.getIn(['services', name, 'address'], true)
      const offset = isNode(node) && node.range ? node.range[0] : 0
      problems.push({ file, ...at(offset), message: `services.${name}.address: ${(err as Error).message}` })
    }
  }
  const l = raw.listeners ?? {}
  const adminListener = listener(l.admin, DEFAULT_LISTENERS.admin)
  const keys: Buffer[] = []
  let keyFile: string | undefined
  const keyEnv = raw.mesh?.keyEnv ?? 'TXMESH_MESH_KEY'
  const fromEnv = process.env[keyEnv]
  if (fromEnv !== undefined && fromEnv !== '') {
    const k = parseMeshKeys(fromEnv)
    // From the environment: no position; never quote the value.
    if (typeof k === 'string') problems.push({ file, line: 0, col: 0, message: `${keyEnv}: the mesh key variable ${k}` })
    else keys.push(...k)
  } else {
    // TXMESH_MESH_KEY_FILE wins over mesh.keyFile, as the variables of the other settings do.
    const fileEnv = process.env[MESH_KEY_FILE_ENV]
    const fromFileEnv = fileEnv !== undefined && fileEnv !== ''
    const path = fromFileEnv ? fileEnv : raw.mesh?.keyFile
    if (path !== undefined) {
      const k = secretFrom(path, (text) => parseMeshKeys(text))
      if (typeof k !== 'string') {
        keys.push(...k)
        keyFile = path
        // The variable's value is not quoted: it may hold the key by mistake.
      } else if (fromFileEnv) problems.push({ file, line: 0, col: 0, message: `${MESH_KEY_FILE_ENV}: ${k}` })
      else problems.push({ file, ...position(['mesh', 'keyFile']), message: `mesh.keyFile: ${k}` })
    }
  }
  const storePostgres = pgStore(storeFromEnv(raw.store), (path, message) =>
    problems.push({ file, ...position(path), message }),
  )
  const subscriptions = subscriptionsOf(raw, service ?? 'service', (path, message) => problems.push({ file, ...position(path), message }))
  const token = adminToken(raw.admin, adminListener.host, (path, message) => problems.push({ file, ...(path === undefined ? { line: 0, col: 0 } : position(path)), message }))
  let tls: TlsSettings | undefined
  if (raw.tls !== undefined) {
    tls = { certFile: raw.tls.certFile, keyFile: raw.tls.keyFile, caFile: raw.tls.caFile, requireClientCert: raw.tls.requireClientCert ?? false }
    const m = readTlsMaterial(tls)
    if (typeof m === 'string') problems.push({ file, ...position(['tls']), message: `tls: ${m}` })
  }
  if (problems.length > 0 || service === undefined) throw new ConfigInvalidError(dedupe(problems))
  return {
    source: file,
    service,
    app: listener(raw.app, { host: '127.0.0.1', port: 8080 }),
    listeners: {
      egress: listener(l.egress, DEFAULT_LISTENERS.egress),
      ingress: listener(l.ingress, DEFAULT_LISTENERS.ingress),
      control: listener(l.control, DEFAULT_LISTENERS.control),
      admin: adminListener,
      health: l.health === undefined ? undefined : listener(l.health, DEFAULT_LISTENERS.health),
    },
    services,
    servicesWithoutTls,
    defaultRoute,
    routes,
    drainTimeoutMs: raw.drainTimeoutMs ?? LIMITS.drainTimeoutMs,
    logLevel: raw.log?.level ?? 'info',
    mesh: {
      keys,
      coordinators,
      advertise,
      keyFile,
    },
    admin: {
      token,
      tokenFile: raw.admin?.tokenFile,
      allowedHosts: (raw.admin?.allowedHosts ?? []).map((h) => h.toLowerCase()),
      allowedOrigins: (raw.admin?.allowedOrigins ?? []).map((o) => o.toLowerCase()),
    },
    tls,
    storeDir: o.storeDir?.value ?? raw.store?.dir ?? `txmesh-data/${service}`,
    storeSync: raw.store?.sync,
    storePostgres,
    hooks: {
      prepare: raw.hooks?.prepare ?? '/.well-known/txmesh/prepare',
      commit: raw.hooks?.commit ?? '/.well-known/txmesh/commit',
      abort: raw.hooks?.abort ?? '/.well-known/txmesh/abort',
      confirm: raw.hooks?.confirm ?? '/.well-known/txmesh/confirm',
      cancel: raw.hooks?.cancel ?? '/.well-known/txmesh/cancel',
      batch: raw.hooks?.batch,
    },
    steps: {
      attempts: raw.steps?.attempts ?? LIMITS.stepOpAttempts,
      backoffBaseMs: raw.steps?.backoffBaseMs ?? LIMITS.stepOpBackoffBaseMs,
      backoffCapMs: raw.steps?.backoffCapMs ?? LIMITS.stepOpBackoffCapMs,
    },
    events: {
      nats:
        raw.events?.nats === undefined
          ? undefined
          : { servers: raw.events.nats.servers, stream: raw.events.nats.stream ?? 'TXMESH', topics: raw.events.nats.topics ?? ['txmesh.messages.>'] },
      webhooks: raw.events?.webhooks ?? [],
    },
    subscriptions,
    traceUrl: raw.ui?.traceUrl,
  }
}

/**
 * Whether every subject `subject` matches is one `pattern` matches (NATS wildcards: `*` one
 * token, `>` one or more trailing tokens): a subscription's subjects must lie within the stream's.
 */
export function subjectWithin(subject: string, pattern: string): boolean {
  const s = subject.split('.')
  const p = pattern.split('.')
  for (let i = 0; i < p.length; i++) {
    const pt = p[i]
    if (pt === '>') return s.length > i
    const st = s[i]
    if (st === undefined) return false
    if (st === '>') return false
    if (pt !== '*' && (st === '*' || st !== pt)) return false
  }
  return s.length === p.length
}

/**
 * `subscriptions` with their defaults, each checked against events.nats: the stream must be the
 * sidecar's (events.nats.stream), each subject within its subjects (events.nats.topics), names
 * unique, and the dead-letter subject outside what the subscription itself receives.
 */
function subscriptionsOf(
  raw: RawConfig,
  service: string,
  problem: (path: (string | number)[], message: string) => void,
): Subscription[] {
  const list = raw.subscriptions ?? []
  if (list.length === 0) return []
  const nats = raw.events?.nats
  if (nats === undefined) {
    problem(['subscriptions'], 'subscriptions: need events.nats (the JetStream servers and stream they consume)')
    return []
  }
  const stream = nats.stream ?? 'TXMESH'
  const topics = nats.topics ?? ['txmesh.messages.>']
  const token = service.replace(/[^A-Za-z0-9_-]/g, '_')
  const seen = new Set<string>()
  const out: Subscription[] = []
  for (const [i, r] of list.entries()) {
    if (seen.has(r.name)) problem(['subscriptions', i, 'name'], `subscriptions.${i}.name: "${r.name}" is used twice`)
    seen.add(r.name)
    if (r.stream !== undefined && r.stream !== stream)
      problem(['subscriptions', i, 'stream'], `subscriptions.${i}.stream: unknown stream "${r.stream}" (this sidecar's is events.nats.stream "${stream}")`)
    for (const [j, subject] of r.subjects.entries())
      if (!topics.some((t) => subjectWithin(subject, t)))
        problem(['subscriptions', i, 'subjects', j], `subscriptions.${i}.subjects.${j}: "${subject}" is outside the stream's subjects (events.nats.topics: ${topics.join(', ')})`)
    const deadLetter = r.deadLetter?.subject ?? `txmesh.deadletter.${token}.${r.name}`
    if (r.subjects.some((x) => subjectWithin(deadLetter, x)))
      problem(['subscriptions', i, 'deadLetter', 'subject'], `subscriptions.${i}.deadLetter.subject: "${deadLetter}" is among the subscription's own subjects (a dead letter would be delivered again)`)
    out.push({
      name: r.name,
      stream,
      subjects: r.subjects,
      route: { method: r.route.method ?? 'POST', path: r.route.path },
      consumer: {
        durable: r.consumer?.durable ?? `${token}-${r.name}`,
        deliver: r.consumer?.deliver ?? 'all',
        ackWaitMs: r.consumer?.ackWaitMs ?? LIMITS.subscriptionAckWaitMs,
        maxDeliver: r.consumer?.maxDeliver ?? LIMITS.subscriptionMaxDeliver,
        backoffMs: r.consumer?.backoffMs ?? LIMITS.subscriptionBackoffMs,
      },
      ordering: { by: r.ordering?.by ?? 'none', maxInFlight: r.ordering?.maxInFlight ?? LIMITS.subscriptionMaxInFlight },
      deadLetter: { subject: deadLetter },
    })
  }
  return out
}

/** Reads a secret file and parses it; a string is the problem (never the content). */
function secretFrom<T>(path: string, parse: (text: string) => T | string): T | string {
  let text: string
  try {
    text = readSecretFile(path).toString('utf8')
  } catch (err) {
    return `cannot read: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`
  }
  return parse(text)
}

/** The loopback addresses: an admin listener on any other needs a token. */
function isLoopback(host: string): boolean {
  const h = host.toLowerCase()
  return h === 'localhost' || h === '::1' || /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(h) || /^::ffff:127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(h)
}

/** An admin token as read from its file or variable, or what is wrong with it. */
export function checkAdminToken(text: string): Buffer | string {
  const t = text.trim()
  if (t === '') return 'holds no token'
  return Buffer.byteLength(t) < LIMITS.adminTokenMinBytes ? `the token is shorter than ${LIMITS.adminTokenMinBytes} bytes` : Buffer.from(t)
}

/** Environment that selects the Postgres store over the file's store (the Kubernetes injector sets it). */
export const STORE_ENV = { url: 'TXMESH_STORE_URL', group: 'TXMESH_STORE_GROUP', lease: 'TXMESH_STORE_LEASE' } as const

/**
 * TXMESH_STORE_URL set (the injector's txmesh.io/store-secret): the Postgres store with that URL,
 * whatever the file's store says (a ConfigMap shared by services on either store); the file's
 * postgres settings (schema, leaseMs, lease, group) are kept, TXMESH_STORE_GROUP and
 * TXMESH_STORE_LEASE win over store.group and store.lease.
 */
function storeFromEnv(raw: RawConfig['store']): RawConfig['store'] {
  const url = process.env[STORE_ENV.url]
  if (url === undefined || url === '') return raw
  const group = process.env[STORE_ENV.group]
  const lease = process.env[STORE_ENV.lease]
  const keep = raw?.kind === 'postgres' ? { schema: raw.schema, instance: raw.instance, leaseMs: raw.leaseMs, lease: raw.lease, group: raw.group } : {}
  const merged = { ...keep, kind: 'postgres' as const, urlEnv: STORE_ENV.url, ...(group ? { group } : {}), ...(lease ? { lease: lease as 'row' | 'kubernetes' } : {}) }
  return Object.fromEntries(Object.entries(merged).filter(([, v]) => v !== undefined)) as RawConfig['store']
}

/**
 * store.kind postgres: its connection string from exactly one of store.url, the variable
 * store.urlEnv names, or store.urlFile; the schema (default txmesh); this instance's name
 * (store.instance, else TXMESH_INSTANCE, else the host name, which is the pod's name in
 * Kubernetes). Keys of the other kind are problems, never silently ignored.
 */
function pgStore(raw: RawConfig['store'], problem: (path: (string | number)[], message: string) => void): PgStoreSettings | undefined {
  const pgKeys = ['url', 'urlEnv', 'urlFile', 'schema', 'instance', 'leaseMs', 'lease', 'group'] as const
  if (raw?.kind !== 'postgres') {
    for (const k of pgKeys) if (raw?.[k] !== undefined) problem(['store', k], `store.${k}: only for store.kind postgres`)
    return undefined
  }
  if (raw.dir !== undefined) problem(['store', 'dir'], 'store.dir: the postgres store keeps no files (store.kind file uses dir)')
  if (raw.sync !== undefined) problem(['store', 'sync'], 'store.sync: only for store.kind file')
  const given = (['url', 'urlEnv', 'urlFile'] as const).filter((k) => raw[k] !== undefined)
  if (given.length !== 1) {
    problem(['store', 'kind'], `store: kind postgres needs exactly one of url, urlEnv, urlFile (got ${given.length === 0 ? 'none' : given.join(', ')})`)
    return undefined
  }
  let url: string | undefined
  if (raw.url !== undefined) url = raw.url
  else if (raw.urlEnv !== undefined) {
    url = process.env[raw.urlEnv]
    if (url === undefined || url === '') return void problem(['store', 'urlEnv'], `store.urlEnv: the variable ${raw.urlEnv} is not set`)
  } else {
    const t = secretFrom(raw.urlFile as string, (text) => ({ url: text.trim() }))
    if (typeof t === 'string') return void problem(['store', 'urlFile'], `store.urlFile: ${t}`)
    url = t.url
  }
  if (!/^postgres(ql)?:\/\//.test(url)) return void problem(['store', given[0] as string], `store.${given[0] as string}: not a postgres:// connection string`)
  const instance = raw.instance ?? (process.env.TXMESH_INSTANCE || hostname())
  if (!/^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/.test(instance)) return void problem(['store', 'instance'], `store.instance: "${instance.slice(0, 80)}" is not a name of letters, digits, . _ - (set store.instance or TXMESH_INSTANCE)`)
  if (raw.group !== undefined && !/^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]{1,253}):[0-9]{1,5}$/.test(raw.group))
    return void problem(['store', 'group'], `store.group: "${raw.group.slice(0, 80)}" is not a host:port control address (${STORE_ENV.group} or store.group)`)
  if (raw.lease !== undefined && raw.lease !== 'row' && raw.lease !== 'kubernetes')
    return void problem(['store', 'lease'], `store.lease: "${String(raw.lease).slice(0, 40)}" is neither row nor kubernetes (${STORE_ENV.lease} or store.lease)`)
  return { url, schema: raw.schema ?? 'txmesh', instance, leaseMs: raw.leaseMs ?? LIMITS.pgLeaseMs, lease: raw.lease ?? 'row', group: raw.group }
}

/**
 * The admin token: admin.tokenFile, else the variable admin.tokenEnv (default
 * TXMESH_ADMIN_TOKEN). A variable named in the file must be set; the default one is optional.
 * A token shorter than LIMITS.adminTokenMinBytes, or an admin listener off loopback without a
 * token, is a problem (reported with the key's position when it has one).
 */
function adminToken(raw: RawConfig['admin'], host: string, problem: (path: (string | number)[] | undefined, message: string) => void): Buffer | undefined {
  let token: Buffer | undefined
  if (raw?.tokenFile !== undefined && raw.tokenEnv !== undefined) {
    problem(['admin', 'tokenFile'], 'admin: give tokenEnv or tokenFile, not both')
    return undefined
  }
  if (raw?.tokenFile !== undefined) {
    const t = secretFrom(raw.tokenFile, checkAdminToken)
    if (typeof t === 'string') return void problem(['admin', 'tokenFile'], `admin.tokenFile: ${t}`)
    token = t
  } else {
    const name = raw?.tokenEnv ?? 'TXMESH_ADMIN_TOKEN'
    const value = process.env[name]
    if (value === undefined || value === '') {
      if (raw?.tokenEnv !== undefined) return void problem(['admin', 'tokenEnv'], `admin.tokenEnv: the variable ${name} is not set`)
    } else {
      const t = checkAdminToken(value)
      if (typeof t === 'string') return void problem(raw?.tokenEnv === undefined ? undefined : ['admin', 'tokenEnv'], `${name}: ${t}`)
      token = t
    }
  }
  if (token === undefined && !isLoopback(host)) {
    problem(['listeners', 'admin', 'host'], `listeners.admin.host: ${host} is not a loopback address, so the admin API needs a token: set admin.tokenEnv (default TXMESH_ADMIN_TOKEN) or admin.tokenFile`)
  }
  return token
}

/**
 * The advertised control address in the form contexts carry (protocol.ts ADDRESS_RE), or
 * undefined. An unbracketed IPv6 address before the last colon is bracketed: Kubernetes gives
 * `$(POD_IP):15010`, which is `fd00::5:15010` in an IPv6 cluster.
 */
function advertiseAddress(value: string): string | undefined {
  const colon = value.lastIndexOf(':')
  const host = value.slice(0, colon)
  const normal = colon > 0 && isIPv6(host) ? `[${host}]${value.slice(colon)}` : value
  if (!new RegExp(PATTERNS.address).test(normal)) return undefined
  return portNumber(splitAuthority(normal)?.port) === undefined ? undefined : normal
}

/**
 * Returns a copy with port overrides applied (command-line flags win over the file). A health
 * port enables the health listener (on 0.0.0.0 unless listeners.health names a host).
 */
export function withOverrides(
  cfg: SidecarConfig,
  o: Partial<Record<'app' | 'egress' | 'ingress' | 'control' | 'admin' | 'health', number>>,
): SidecarConfig {
  const l = cfg.listeners
  const port = (hp: HostPort, p: number | undefined): HostPort => (p === undefined ? hp : { host: hp.host, port: p })
  return deepFreeze({
    ...cfg,
    app: port(cfg.app, o.app),
    listeners: {
      egress: port(l.egress, o.egress),
      ingress: port(l.ingress, o.ingress),
      control: port(l.control, o.control),
      admin: port(l.admin, o.admin),
      health: o.health === undefined ? l.health : { host: l.health?.host ?? DEFAULT_LISTENERS.health.host, port: o.health },
    },
  })
}

function deepFreeze<T>(o: T): T {
  if (o !== null && typeof o === 'object' && !ArrayBuffer.isView(o) && !Object.isFrozen(o)) {
    Object.freeze(o)
    if (o instanceof Map || o instanceof Set) return o
    for (const v of Object.values(o)) deepFreeze(v)
  }
  return o
}
