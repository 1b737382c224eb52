// Leases on the Kubernetes API (config `store: {kind: postgres, lease: kubernetes}`): each log's
// liveness is a coordination.k8s.io/v1 Lease in the pod's namespace instead of the row's expiry,
// for clusters whose operators watch leases (kubectl get leases) and want Postgres to see only
// the store's writes. The Postgres token still fences: a claim first wins the Lease (an update
// that names the resourceVersion it read, so two claimers cannot both win), then moves the log's
// token on with a compare-and-set on the token it read; every write of the old holder is refused
// by the token, and its next renewal finds another holder and stops it.
//
// Lapse, as client-go's leader election judges it: on the observer's own monotonic clock, not
// by comparing renewTime with a clock of another machine. A Lease whose resourceVersion has not
// changed for its leaseDurationSeconds since this process first saw that version has lapsed; one
// without a holder is free. The holder counts its lease from when it sent the update that went
// through (PgLog.leaseHeld), so it stops acting before any observer can count it lapsed.
//
// In cluster: the API server from KUBERNETES_SERVICE_HOST/PORT (https), the token, CA and
// namespace from the service account mount (TXMESH_K8S_SERVICEACCOUNT_DIR overrides its path).
import { createHash } from 'node:crypto'
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { Agent, request } from 'undici'
import { LIMITS } from '../limits.js'
import type { Logger } from '../telemetry/logger.js'

const SERVICEACCOUNT_DIR = '/var/run/secrets/kubernetes.io/serviceaccount'
/** The version observed of a Lease that is not there (no resourceVersion looks like it). */
const MISSING = '(missing)'
export const SERVICEACCOUNT_DIR_ENV = 'TXMESH_K8S_SERVICEACCOUNT_DIR'

/** The Lease API could not be used (unreachable, refused, unexpected answer): the caller retries. */
export class KubeApiError extends Error {
  constructor(
    message: string,
    readonly status?: number,
  ) {
    super(message)
    this.name = 'KubeApiError'
  }
}

interface LeaseObject {
  metadata: { name: string; namespace?: string; resourceVersion?: string; [k: string]: unknown }
  spec?: {
    holderIdentity?: string | null
    leaseDurationSeconds?: number
    acquireTime?: string | null
    renewTime?: string | null
    leaseTransitions?: number
  }
  [k: string]: unknown
}

export interface KubeLeasesOptions {
  /** API server origin, https://host:port. */
  readonly api: string
  readonly namespace: string
  /** The service account token file (read again when older than LIMITS.k8sTokenRereadMs). */
  readonly tokenFile: string
  /** PEM of the API server's CA. */
  readonly ca: string | undefined
  readonly logger: Logger
}

/** A Lease's name for a log id (`<service>/<instance>`): a DNS-1123 subdomain, unique per id. */
export function leaseName(logId: string): string {
  const hash = createHash('sha256').update(logId).digest('hex').slice(0, 10)
  const base = logId
    .toLowerCase()
    .replace(/[^a-z0-9.-]+/g, '-')
    .replace(/^[^a-z0-9]+|[^a-z0-9]+$/g, '')
    .slice(0, 200)
  return `txmesh-${base === '' ? 'log' : base}-${hash}`
}

/** Kubernetes MicroTime: RFC 3339 with microseconds. */
function microTime(ms: number): string {
  return new Date(ms).toISOString().replace(/\.(\d{3})Z$/, '.$1000Z')
}

export class KubeLeases {
  private readonly agent: Agent
  private token: { value: string; readAt: number } | undefined
  /** Per Lease: the resourceVersion last seen and when (performance.now()) it was first seen. */
  private readonly observed = new Map<string, { rv: string; since: number }>()

  constructor(private readonly o: KubeLeasesOptions) {
    this.agent = new Agent({
      connect: { timeout: LIMITS.k8sApiTimeoutMs, ...(o.ca === undefined ? {} : { ca: o.ca }) },
      connections: LIMITS.k8sApiConnections,
    })
  }

  /** The in-cluster API server and service account; a clear error when not in a cluster. */
  static inCluster(logger: Logger, env: NodeJS.ProcessEnv = process.env): KubeLeases {
    const host = env.KUBERNETES_SERVICE_HOST
    const port = env.KUBERNETES_SERVICE_PORT ?? '443'
    if (host === undefined || host === '')
      throw new KubeApiError(
        'store.lease kubernetes: KUBERNETES_SERVICE_HOST is not set (not running in a cluster); use lease: row outside one',
      )
    const dir = env[SERVICEACCOUNT_DIR_ENV] || SERVICEACCOUNT_DIR
    const read = (f: string): string | undefined => {
      try {
        return readFileSync(join(dir, f), 'utf8')
      } catch {
        return undefined
      }
    }
    const namespace = (env.POD_NAMESPACE || read('namespace'))?.trim()
    if (namespace === undefined || namespace === '')
      throw new KubeApiError(`store.lease kubernetes: no namespace (POD_NAMESPACE, or ${join(dir, 'namespace')})`)
    const api = host.includes(':') ? `https://[${host}]:${port}` : `https://${host}:${port}`
    return new KubeLeases({ api, namespace, tokenFile: join(dir, 'token'), ca: read('ca.crt'), logger })
  }

  async close(): Promise<void> {
    await this.agent.close()
  }

  /**
   * Takes the log's Lease for `holder` when it is free, already held by `holder`, or lapsed on
   * this process's clock; true when the update went through. Creates the Lease when missing (an
   * instance's first open); a claimer of another's log asks lapsed() first, which counts a
   * missing Lease lapsed only once it has been missing for a lease.
   */
  async acquire(logId: string, holder: string, leaseMs: number): Promise<boolean> {
    const name = leaseName(logId)
    const now = Date.now()
    const seconds = Math.max(1, Math.ceil(leaseMs / 1000))
    const current = await this.get(name)
    if (current === undefined) return this.create(name, holder, leaseMs)
    const spec = current.spec ?? {}
    const held = spec.holderIdentity ?? ''
    if (held !== '' && held !== holder && !this.lapsedSeen(name, current, spec)) return false
    const next: LeaseObject = {
      ...current,
      spec: {
        ...spec,
        holderIdentity: holder,
        leaseDurationSeconds: seconds,
        renewTime: microTime(now),
        ...(held === holder ? {} : { acquireTime: microTime(now), leaseTransitions: (spec.leaseTransitions ?? 0) + 1 }),
      },
    }
    return this.replace(name, next)
  }

  /**
   * Moves the Lease's renewTime on while `holder` holds it: 'lost' when another holds it now. A
   * Lease found deleted (kubectl delete lease, a clean-up job) is created again for `holder`: no
   * observer counts a missing Lease lapsed before it has been missing for a lease on its own clock
   * (lapsed), and this holder renewed it last before it went missing; a sibling that created it
   * first wins (409), and this holder has lost it.
   */
  async renew(logId: string, holder: string, leaseMs: number): Promise<'renewed' | 'lost'> {
    const name = leaseName(logId)
    for (let attempt = 0; attempt < LIMITS.k8sLeaseConflictRetries; attempt++) {
      const current = await this.get(name)
      if (current === undefined) return (await this.create(name, holder, leaseMs)) ? 'renewed' : 'lost'
      if ((current.spec?.holderIdentity ?? '') !== holder) return 'lost'
      const next: LeaseObject = {
        ...current,
        spec: {
          ...current.spec,
          leaseDurationSeconds: Math.max(1, Math.ceil(leaseMs / 1000)),
          renewTime: microTime(Date.now()),
        },
      }
      if (await this.replace(name, next)) return 'renewed'
    }
    // Changed under it every time: by another holder, or the next renewal sees.
    throw new KubeApiError(
      `lease ${name}: changed by another writer at each of ${LIMITS.k8sLeaseConflictRetries} renewals`,
    )
  }

  /** The log's Lease's holder now ('' when free or missing). */
  async holderOf(logId: string): Promise<string> {
    return (await this.get(leaseName(logId)))?.spec?.holderIdentity ?? ''
  }

  /**
   * Whether the log's Lease is free or has lapsed on this process's clock (a first sight never
   * has). A missing Lease has lapsed once it has been missing for `leaseMs` on this clock: one
   * deleted under a live holder (kubectl delete lease) is created again at its next renewal.
   */
  async lapsed(logId: string, leaseMs: number = LIMITS.pgLeaseMs): Promise<boolean> {
    const name = leaseName(logId)
    const current = await this.get(name)
    if (current === undefined) return performance.now() - this.seeVersion(name, MISSING).since > leaseMs
    const spec = current.spec ?? {}
    if ((spec.holderIdentity ?? '') === '') return true
    return this.lapsedSeen(name, current, spec)
  }

  /** Gives the Lease up (no holder) if `holder` still holds it. */
  async release(logId: string, holder: string): Promise<void> {
    const name = leaseName(logId)
    for (let attempt = 0; attempt < LIMITS.k8sLeaseConflictRetries; attempt++) {
      const current = await this.get(name)
      if (current === undefined || (current.spec?.holderIdentity ?? '') !== holder) return
      const next = { ...current, spec: { ...current.spec, holderIdentity: null, renewTime: microTime(Date.now()) } }
      if (await this.replace(name, next)) return
    }
    // Left held: it lapses by time, as a holder that died would.
    this.o.logger.warn('store.lease_release_conflict', { lease: name })
  }

  private lapsedSeen(name: string, obj: LeaseObject, spec: NonNullable<LeaseObject['spec']>): boolean {
    const rv = obj.metadata.resourceVersion ?? ''
    const seen = this.see(name, obj)
    const ms = (spec.leaseDurationSeconds ?? 0) * 1000
    return rv !== '' && performance.now() - seen.since > ms
  }

  /** Creates the Lease for `holder`; false when another created it first. */
  private async create(name: string, holder: string, leaseMs: number): Promise<boolean> {
    const now = Date.now()
    const created = await this.call('POST', this.path(), {
      apiVersion: 'coordination.k8s.io/v1',
      kind: 'Lease',
      metadata: { name, namespace: this.o.namespace, labels: { 'app.kubernetes.io/managed-by': 'txmesh' } },
      spec: {
        holderIdentity: holder,
        leaseDurationSeconds: Math.max(1, Math.ceil(leaseMs / 1000)),
        acquireTime: microTime(now),
        renewTime: microTime(now),
        leaseTransitions: 0,
      },
    })
    if (created.status === 409) return false
    this.expect(created, [201, 200], 'create')
    this.see(name, created.body as LeaseObject)
    return true
  }

  private see(name: string, obj: LeaseObject): { rv: string; since: number } {
    return this.seeVersion(name, obj.metadata.resourceVersion ?? '')
  }

  private seeVersion(name: string, rv: string): { rv: string; since: number } {
    const prev = this.observed.get(name)
    if (prev !== undefined && prev.rv === rv) return prev
    if (this.observed.size >= LIMITS.k8sLeasesObserved)
      this.observed.delete(this.observed.keys().next().value as string)
    const now = { rv, since: performance.now() }
    this.observed.set(name, now)
    return now
  }

  private async replace(name: string, next: LeaseObject): Promise<boolean> {
    const r = await this.call('PUT', this.path(name), next)
    if (r.status === 409 || r.status === 404) return false
    this.expect(r, [200], 'update')
    this.see(name, r.body as LeaseObject)
    return true
  }

  private async get(name: string): Promise<LeaseObject | undefined> {
    const r = await this.call('GET', this.path(name))
    if (r.status === 404) return undefined
    this.expect(r, [200], 'get')
    const obj = r.body as LeaseObject
    if (typeof obj.metadata !== 'object' || obj.metadata === null)
      throw new KubeApiError(`lease ${name}: the API answered an object without metadata`)
    return obj
  }

  private path(name?: string): string {
    const base = `/apis/coordination.k8s.io/v1/namespaces/${encodeURIComponent(this.o.namespace)}/leases`
    return name === undefined ? base : `${base}/${encodeURIComponent(name)}`
  }

  private expect(r: { status: number; body: unknown }, ok: readonly number[], what: string): void {
    if (ok.includes(r.status)) return
    const message = (r.body as { message?: unknown } | undefined)?.message
    throw new KubeApiError(
      `lease ${what}: the API answered ${r.status}${typeof message === 'string' ? `: ${message.slice(0, 200)}` : ''}`,
      r.status,
    )
  }

  private bearer(): string {
    const now = performance.now()
    if (this.token === undefined || now - this.token.readAt > LIMITS.k8sTokenRereadMs) {
      try {
        this.token = { value: readFileSync(this.o.tokenFile, 'utf8').trim(), readAt: now }
      } catch (err) {
        throw new KubeApiError(`service account token ${this.o.tokenFile}: ${(err as Error).message}`)
      }
    }
    return this.token.value
  }

  private async call(
    method: 'GET' | 'POST' | 'PUT',
    path: string,
    body?: unknown,
  ): Promise<{ status: number; body: unknown }> {
    try {
      const r = await request(`${this.o.api}${path}`, {
        method,
        dispatcher: this.agent,
        headers: {
          authorization: `Bearer ${this.bearer()}`,
          accept: 'application/json',
          ...(body === undefined ? {} : { 'content-type': 'application/json' }),
        },
        ...(body === undefined ? {} : { body: JSON.stringify(body) }),
        headersTimeout: LIMITS.k8sApiTimeoutMs,
        bodyTimeout: LIMITS.k8sApiTimeoutMs,
      })
      const len = Number(r.headers['content-length'] ?? 0)
      if (len > LIMITS.k8sApiMaxBodyBytes) {
        await r.body.dump()
        throw new KubeApiError(`lease API answer of ${len} bytes exceeds ${LIMITS.k8sApiMaxBodyBytes}`)
      }
      const text = await r.body.text()
      if (text.length > LIMITS.k8sApiMaxBodyBytes)
        throw new KubeApiError(`lease API answer of ${text.length} bytes exceeds ${LIMITS.k8sApiMaxBodyBytes}`)
      let parsed: unknown
      try {
        parsed = text === '' ? undefined : JSON.parse(text)
      } catch {
        throw new KubeApiError(`lease API answered ${r.statusCode} with a body that is not JSON`, r.statusCode)
      }
      return { status: r.statusCode, body: parsed }
    } catch (err) {
      if (err instanceof KubeApiError) throw err
      throw new KubeApiError(`lease API ${method} ${path}: ${(err as Error).message}`)
    }
  }
}
