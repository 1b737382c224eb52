// A Kubernetes API server that serves only coordination.k8s.io/v1 Leases, over HTTPS on loopback,
// as the API documents them: bearer-token authentication, create (409 AlreadyExists when the
// name is taken), get (404 NotFound), and update with optimistic concurrency (the update must
// name the object's current metadata.resourceVersion, else 409 Conflict; every write moves the
// version on). It also writes the service account mount the sidecar reads (token, ca.crt,
// namespace) and the environment that points a sidecar at it, as a pod's would.
import type { IncomingMessage, ServerResponse } from 'node:http'
import { createServer } from 'node:https'
import { readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import type { AddressInfo } from 'node:net'
import { tempDir } from '../../harness/temp.js'
import { makePki } from './certs.js'

export interface Lease {
  metadata: { name: string; namespace: string; resourceVersion: string; uid: string; creationTimestamp: string }
  spec: {
    holderIdentity?: string | null
    leaseDurationSeconds?: number
    acquireTime?: string | null
    renewTime?: string | null
    leaseTransitions?: number
  }
}

export interface KubeApi {
  readonly port: number
  readonly namespace: string
  /** Environment of a sidecar in a pod of `namespace` with the mount. */
  readonly env: Record<string, string>
  readonly leases: ReadonlyMap<string, Lease>
  /** Every holder each Lease had, in order (undefined: released). */
  readonly holders: ReadonlyMap<string, (string | undefined)[]>
  /** Answers every request with 503 while true (the API server away). */
  unavailable: boolean
  /** Deletes a Lease, as `kubectl delete lease NAME` (an operator, a clean-up job) does. */
  deleteLease(name: string): boolean
  close(): Promise<void>
}

const PREFIX = '/apis/coordination.k8s.io/v1/namespaces/'

function status(res: ServerResponse, code: number, reason: string, message: string): void {
  res.writeHead(code, { 'content-type': 'application/json' })
  res.end(JSON.stringify({ kind: 'Status', apiVersion: 'v1', status: 'Failure', reason, message, code }))
}

async function readBody(req: IncomingMessage): Promise<unknown> {
  const chunks: Buffer[] = []
  for await (const c of req) chunks.push(c as Buffer)
  return JSON.parse(Buffer.concat(chunks).toString('utf8') || '{}')
}

export async function startKubeApi(namespace = 'shop'): Promise<KubeApi> {
  const pki = makePki('txmesh-test-kube-ca')
  const leaf = pki.issue('kube-apiserver', '2A')
  const token = `test-token-${Math.random().toString(36).slice(2)}`
  const leases = new Map<string, Lease>()
  const holders = new Map<string, (string | undefined)[]>()
  let version = 100
  const api = {
    unavailable: false,
  }
  const note = (l: Lease): void => {
    const h = holders.get(l.metadata.name) ?? []
    const now = l.spec.holderIdentity ?? undefined
    if (h.length === 0 || h[h.length - 1] !== now) h.push(now)
    holders.set(l.metadata.name, h)
  }
  const server = createServer({ cert: readFileSync(leaf.certFile), key: readFileSync(leaf.keyFile) }, (req, res) => {
    void (async () => {
      if (api.unavailable) return status(res, 503, 'ServiceUnavailable', 'the API server is away')
      if (req.headers.authorization !== `Bearer ${token}`) return status(res, 401, 'Unauthorized', 'Unauthorized')
      const url = req.url ?? ''
      if (!url.startsWith(PREFIX)) return status(res, 404, 'NotFound', 'the server could not find the resource')
      const [ns, kind, name, ...rest] = url.slice(PREFIX.length).split('/')
      if (kind !== 'leases' || rest.length > 0) return status(res, 404, 'NotFound', 'not a lease path')
      if (ns !== namespace)
        return status(res, 403, 'Forbidden', `leases is forbidden in namespace "${decodeURIComponent(ns ?? '')}"`)
      if (req.method === 'POST' && name === undefined) {
        const body = (await readBody(req)) as Lease
        const n = body.metadata?.name
        if (typeof n !== 'string') return status(res, 422, 'Invalid', 'metadata.name: Required value')
        if (leases.has(n)) return status(res, 409, 'AlreadyExists', `leases "${n}" already exists`)
        const stored: Lease = {
          metadata: {
            name: n,
            namespace,
            resourceVersion: String(++version),
            uid: `uid-${version}`,
            creationTimestamp: new Date().toISOString(),
          },
          spec: body.spec ?? {},
        }
        leases.set(n, stored)
        note(stored)
        res.writeHead(201, { 'content-type': 'application/json' })
        return res.end(JSON.stringify({ apiVersion: 'coordination.k8s.io/v1', kind: 'Lease', ...stored }))
      }
      if (name === undefined) return status(res, 405, 'MethodNotAllowed', 'method not allowed')
      const n = decodeURIComponent(name)
      const current = leases.get(n)
      if (req.method === 'GET') {
        if (current === undefined) return status(res, 404, 'NotFound', `leases "${n}" not found`)
        res.writeHead(200, { 'content-type': 'application/json' })
        return res.end(JSON.stringify({ apiVersion: 'coordination.k8s.io/v1', kind: 'Lease', ...current }))
      }
      if (req.method === 'PUT') {
        const body = (await readBody(req)) as Lease
        if (current === undefined) return status(res, 404, 'NotFound', `leases "${n}" not found`)
        if (body.metadata?.resourceVersion !== current.metadata.resourceVersion)
          return status(
            res,
            409,
            'Conflict',
            `Operation cannot be fulfilled on leases.coordination.k8s.io "${n}": the object has been modified; please apply your changes to the latest version and try again`,
          )
        const stored: Lease = {
          metadata: { ...current.metadata, resourceVersion: String(++version) },
          spec: body.spec ?? {},
        }
        leases.set(n, stored)
        note(stored)
        res.writeHead(200, { 'content-type': 'application/json' })
        return res.end(JSON.stringify({ apiVersion: 'coordination.k8s.io/v1', kind: 'Lease', ...stored }))
      }
      return status(res, 405, 'MethodNotAllowed', 'method not allowed')
    })().catch((err: unknown) => status(res, 400, 'BadRequest', String(err)))
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const port = (server.address() as AddressInfo).port
  const mount = tempDir('txmesh-sa-')
  writeFileSync(join(mount, 'token'), token)
  writeFileSync(join(mount, 'ca.crt'), readFileSync(pki.caFile))
  writeFileSync(join(mount, 'namespace'), namespace)
  return Object.assign(api, {
    port,
    namespace,
    env: {
      KUBERNETES_SERVICE_HOST: '127.0.0.1',
      KUBERNETES_SERVICE_PORT: String(port),
      TXMESH_K8S_SERVICEACCOUNT_DIR: mount,
    },
    leases,
    holders,
    deleteLease: (n: string) => leases.delete(n),
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections()
        server.close(() => resolve())
      }),
  })
}
