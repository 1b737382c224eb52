// Sidecar injection (src/k8s/): golden files per workload kind and option, idempotency of every
// output, Kubernetes schema validation of every object produced, the contract's shape of the
// sidecar, errors with codes and file:line:col, and the CLI on real files and stdin.
// UPDATE_GOLDEN=1 rewrites test/fixtures/k8s/inject/*.out.yaml from the *.in.yaml inputs.
import { spawnSync } from 'node:child_process'
import { existsSync, readFileSync, readdirSync, writeFileSync } from 'node:fs'
import { join, relative } from 'node:path'
import { CronJob, Job } from 'kubernetes-models/batch/v1'
import { DaemonSet, Deployment, ReplicaSet, StatefulSet } from 'kubernetes-models/apps/v1'
import type {
  IContainer,
  IContainerPort,
  IEnvVar,
  IProbe,
  IResourceRequirements,
  ISecurityContext,
  IVolume,
  IVolumeMount,
} from 'kubernetes-models/v1'
import { ConfigMap, Pod, Secret, Service } from 'kubernetes-models/v1'
import { describe, expect, it } from 'vitest'
import { parseAllDocuments } from 'yaml'
import {
  InjectConflictError,
  InjectInvalidError,
  InjectNoAppPortError,
  ManifestInvalidError,
  type TxmeshError,
} from '../../src/errors.js'
import { ANNOTATIONS, PORTS, TXMESH_UID, defaultImage } from '../../src/k8s/constants.js'
import { SERVICE_NAME, injectObject } from '../../src/k8s/inject.js'
import { applyPatch, escapeSegment, pointer, type Json, type JsonObject } from '../../src/k8s/json-patch.js'
import { injectManifests } from '../../src/k8s/manifests.js'
import type {
  Container,
  ContainerPort,
  EnvVar,
  Probe,
  ResourceRequirements,
  SecurityContext,
  Volume,
  VolumeMount,
} from '../../src/k8s/types.js'

const root = join(import.meta.dirname, '../..')
const dir = join(root, 'test/fixtures/k8s/inject')
// Goldens pin the image so a version bump does not rewrite them; the default is tested below.
const IMAGE = 'ghcr.io/txmesh/txmesh:golden'
const UPDATE = process.env.UPDATE_GOLDEN === '1'

const inputs = readdirSync(dir)
  .filter((f) => f.endsWith('.in.yaml'))
  .sort()
const rel = (f: string): string => relative(root, join(dir, f))
const inject = (text: string, file = 'test.yaml'): ReturnType<typeof injectManifests> =>
  injectManifests(text, file, { image: IMAGE })

// ---- compile-time: every field the injector writes exists in the Kubernetes API types ----
// (the OpenAPI validators accept unknown fields, so a misspelt one would pass them silently)
type Deep<Mine, Theirs> = Mine extends readonly (infer E)[]
  ? Theirs extends readonly (infer F)[]
    ? Deep<E, F>
    : false
  : Mine extends object
    ? [Exclude<keyof Mine, keyof Theirs>] extends [never]
      ? {
          [K in keyof Mine]-?: K extends keyof Theirs ? Deep<NonNullable<Mine[K]>, NonNullable<Theirs[K]>> : false
        }[keyof Mine]
      : false
    : true
type AllKnown<M, T> = false extends Deep<M, T> ? false : true
const fieldsKnown: [
  AllKnown<Container, IContainer>,
  AllKnown<Volume, IVolume>,
  AllKnown<EnvVar, IEnvVar>,
  AllKnown<ContainerPort, IContainerPort>,
  AllKnown<Probe, IProbe>,
  AllKnown<SecurityContext, ISecurityContext>,
  AllKnown<ResourceRequirements, IResourceRequirements>,
  AllKnown<VolumeMount, IVolumeMount>,
] = [true, true, true, true, true, true, true, true]
// And the values are of the API's types (assignability of the whole shapes, nested ones included).
const assignable: [IContainer, IVolume] = [{} as Container, {} as Volume]

// ---- helpers ----
type Obj = JsonObject
const obj = (v: unknown): Obj => {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new Error(`not an object: ${JSON.stringify(v)}`)
  return v as Obj
}
const list = (v: unknown): Obj[] => (Array.isArray(v) ? (v as Obj[]) : [])
const at = (o: unknown, ...path: (string | number)[]): unknown =>
  path.reduce<unknown>((v, k) => (v as Record<string | number, unknown> | undefined)?.[k], o)

function objects(text: string): Obj[] {
  return parseAllDocuments(text)
    .filter((d) => d.contents !== null)
    .map((d) => {
      expect(d.errors).toEqual([])
      return obj(d.toJS())
    })
}

const MODELS: Record<string, new (data: never) => { validate(): void }> = {
  Pod,
  Service,
  ConfigMap,
  Secret,
  Deployment,
  StatefulSet,
  DaemonSet,
  ReplicaSet,
  Job,
  CronJob,
}

/** kubernetes-models' OpenAPI validation of an object and, for a List, of each item. */
function validate(o: Obj): void {
  if (o.kind === 'List') {
    // v1 List has no model of its own: it is apiVersion v1 and a list of objects.
    expect(o.apiVersion).toBe('v1')
    expect(Array.isArray(o.items)).toBe(true)
    for (const item of list(o.items)) validate(item)
    return
  }
  const Model = MODELS[String(o.kind)]
  if (Model === undefined) throw new Error(`no model for kind ${String(o.kind)}`)
  new Model(o as never).validate()
}

const TEMPLATE_AT: Record<string, string[]> = {
  Pod: [],
  Deployment: ['spec', 'template'],
  StatefulSet: ['spec', 'template'],
  DaemonSet: ['spec', 'template'],
  ReplicaSet: ['spec', 'template'],
  Job: ['spec', 'template'],
  CronJob: ['spec', 'jobTemplate', 'spec', 'template'],
}
function templates(o: Obj): Obj[] {
  if (o.kind === 'List') return list(o.items).flatMap(templates)
  const path = TEMPLATE_AT[String(o.kind)]
  return path === undefined ? [] : [obj(at(o, ...path))]
}
const annotationsOf = (t: Obj): Record<string, string> =>
  (at(t, 'metadata', 'annotations') ?? {}) as Record<string, string>
const proxyOf = (t: Obj): Obj | undefined =>
  [...list(at(t, 'spec', 'initContainers')), ...list(at(t, 'spec', 'containers'))].find(
    (c) => c.name === 'txmesh-proxy',
  )
const envOf = (c: Obj): Record<string, unknown> =>
  Object.fromEntries(list(c.env).map((e) => [e.name, e.value ?? e.valueFrom]))

function injected(file: string): Obj[] {
  return objects(readFileSync(join(dir, file.replace('.in.yaml', '.out.yaml')), 'utf8'))
    .flatMap(templates)
    .filter((t) => annotationsOf(t)['txmesh.io/status'] === 'injected')
}

function thrown(fn: () => unknown): TxmeshError {
  try {
    fn()
  } catch (err) {
    return err as TxmeshError
  }
  throw new Error('expected an error')
}

describe('txmesh inject: golden files', () => {
  it('has fixtures for every workload kind and option', () => {
    expect(fieldsKnown.every(Boolean) && assignable.length === 2).toBe(true)
    const kinds = new Set(
      inputs
        .flatMap((f) => objects(readFileSync(join(dir, f), 'utf8')))
        .flatMap((o) => (o.kind === 'List' ? list(o.items) : [o]))
        .map((o) => o.kind),
    )
    for (const k of Object.keys(TEMPLATE_AT)) expect(kinds, k).toContain(k)
    expect(inputs.length).toBeGreaterThanOrEqual(12)
  })

  for (const input of inputs) {
    const golden = input.replace('.in.yaml', '.out.yaml')
    it(`${input} -> ${golden}`, () => {
      const out = inject(readFileSync(join(dir, input), 'utf8'), rel(input)).output
      if (UPDATE || !existsSync(join(dir, golden))) writeFileSync(join(dir, golden), out)
      expect(out).toBe(readFileSync(join(dir, golden), 'utf8'))
    })

    it(`${golden}: injecting it again is byte-identical and changes nothing`, () => {
      const text = readFileSync(join(dir, golden), 'utf8')
      const again = inject(text, rel(golden))
      expect(again.output).toBe(text)
      expect([again.injected, again.retargeted]).toEqual([0, 0])
    })

    it(`${golden}: every object validates against the Kubernetes schemas`, () => {
      const out = objects(readFileSync(join(dir, golden), 'utf8'))
      expect(out.length).toBeGreaterThan(0)
      for (const o of out) validate(o)
    })
  }
})

describe('txmesh inject: the sidecar follows the contract', () => {
  // Read when the tests run, after the golden tests above (re)wrote the outputs.
  const all = (): { f: string; t: Obj }[] => inputs.flatMap((f) => injected(f).map((t) => ({ f, t })))

  it('injects at least one template per injecting fixture', () => {
    expect(new Set(all().map((x) => x.f)).size).toBe(inputs.length - 2) // opt-out, workload-annotation
  })

  it('runs the proxy non-root, read-only, without capabilities, with probes on the health port', () => {
    for (const { t } of all()) {
      const proxy = obj(proxyOf(t))
      expect(proxy.args).toEqual([
        'sidecar',
        '--config',
        '/etc/txmesh/txmesh.yaml',
        '--app-port',
        expect.stringMatching(/^\d+$/),
        '--health-port',
        '15021',
      ])
      expect(proxy.securityContext).toEqual({
        runAsNonRoot: true,
        runAsUser: TXMESH_UID,
        runAsGroup: TXMESH_UID,
        readOnlyRootFilesystem: true,
        allowPrivilegeEscalation: false,
        capabilities: { drop: ['ALL'] },
        seccompProfile: { type: 'RuntimeDefault' },
      })
      expect(list(proxy.ports).map((p) => [p.name, p.containerPort])).toEqual([
        ['txmesh-ingress', PORTS.ingress],
        ['txmesh-control', PORTS.control],
        ['txmesh-health', PORTS.health],
      ])
      // The admin port stays on loopback: never declared, never probed.
      expect(JSON.stringify(proxy)).not.toContain(String(PORTS.admin))
      expect(at(proxy, 'readinessProbe', 'httpGet')).toEqual({ path: '/readyz', port: 'txmesh-health' })
      expect(at(proxy, 'livenessProbe', 'httpGet')).toEqual({ path: '/healthz', port: 'txmesh-health' })
      expect(at(proxy, 'startupProbe', 'httpGet')).toEqual({ path: '/healthz', port: 'txmesh-health' })
      const env = envOf(proxy)
      expect(env.POD_IP).toEqual({ fieldRef: { fieldPath: 'status.podIP' } })
      expect(env.TXMESH_ADVERTISE).toBe('$(POD_IP):15010')
      expect(env.TXMESH_STORE_DIR).toBe('/var/lib/txmesh')
      expect(list(proxy.env).findIndex((e) => e.name === 'POD_IP')).toBeLessThan(
        list(proxy.env).findIndex((e) => e.name === 'TXMESH_ADVERTISE'),
      )
      const mounts = list(proxy.volumeMounts)
      expect(mounts.find((m) => m.name === 'txmesh-config')).toEqual({
        name: 'txmesh-config',
        mountPath: '/etc/txmesh',
        readOnly: true,
      })
      expect(mounts.find((m) => m.name === 'txmesh-log')?.mountPath).toBe('/var/lib/txmesh')
    }
  })

  it('places a native sidecar first among init containers with restartPolicy Always', () => {
    const [t] = injected('statefulset-pvc.in.yaml')
    const init = list(at(t, 'spec', 'initContainers'))
    expect(init.map((c) => c.name)).toEqual(['txmesh-proxy', 'migrate'])
    expect(init[0]?.restartPolicy).toBe('Always')
    expect(list(at(t, 'spec', 'containers')).map((c) => c.name)).toEqual(['ledger'])
  })

  it('appends a classic sidecar to the containers, without restartPolicy', () => {
    const [t] = injected('replicaset-classic.in.yaml')
    expect(list(at(t, 'spec', 'containers')).map((c) => c.name)).toEqual(['payments', 'txmesh-proxy'])
    expect(proxyOf(obj(t))?.restartPolicy).toBeUndefined()
    expect(at(t, 'spec', 'initContainers')).toBeUndefined()
  })

  it('iptables capture: txmesh-init with NET_ADMIN redirects port 80 out and the app port in, sparing uid 10001', () => {
    const [native] = injected('daemonset-iptables.in.yaml')
    expect(list(at(native, 'spec', 'initContainers')).map((c) => c.name)).toEqual(['txmesh-init', 'txmesh-proxy'])
    const [classic] = injected('classic-iptables.in.yaml')
    expect(list(at(classic, 'spec', 'initContainers')).map((c) => c.name)).toEqual(['wait-for-db', 'txmesh-init'])
    expect(list(at(classic, 'spec', 'containers')).map((c) => c.name)).toEqual([
      'shipping',
      'log-shipper',
      'txmesh-proxy',
    ])
    for (const [t, appPort] of [
      [native, 7070],
      [classic, 8080],
    ] as const) {
      const init = obj(list(at(t, 'spec', 'initContainers')).find((c) => c.name === 'txmesh-init'))
      expect(at(init, 'securityContext', 'capabilities')).toEqual({ add: ['NET_ADMIN', 'NET_RAW'], drop: ['ALL'] })
      expect(at(init, 'securityContext', 'runAsUser')).toBe(0)
      const script = String(list(init.command)[2])
      expect(script).toContain(`--uid-owner ${TXMESH_UID} -j RETURN`)
      expect(script).toContain('-p tcp --dport 80 -j REDIRECT --to-ports 15001')
      expect(script).toContain(`-p tcp --dport ${appPort} -j REDIRECT --to-ports 15006`)
      // No proxy variables: the kernel redirects.
      for (const c of list(at(t, 'spec', 'containers'))) expect(envOf(c).HTTP_PROXY).toBeUndefined()
    }
    // And the Service keeps pointing at the app port, which the rules redirect.
    const svc = objects(readFileSync(join(dir, 'daemonset-iptables.out.yaml'), 'utf8')).find(
      (o) => o.kind === 'Service',
    )
    expect(at(svc, 'spec', 'ports', 0, 'targetPort')).toBe(7070)
  })

  it('env capture: app containers get the proxy variables, but keep their own', () => {
    const [t] = injected('pod.in.yaml')
    const app = obj(list(at(t, 'spec', 'containers'))[0])
    expect(envOf(app)).toEqual({
      NO_PROXY: '127.0.0.1,localhost,::1,.svc.cluster.local',
      HTTP_PROXY: 'http://127.0.0.1:15001',
      http_proxy: 'http://127.0.0.1:15001',
      no_proxy: '127.0.0.1,localhost,::1',
      NODE_USE_ENV_PROXY: '1',
    })
    const [classic] = injected('classic-iptables.in.yaml')
    expect(envOf(obj(proxyOf(obj(classic)))).HTTP_PROXY).toBeUndefined()
  })

  it('takes the app port from txmesh.io/app-port (number or port name), else the first containerPort', () => {
    const port = (f: string): unknown => list(proxyOf(obj(injected(f)[0]))?.args)[4]
    expect(port('job-app-port.in.yaml')).toBe('9000') // annotation over the first port (5005)
    expect(port('cronjob.in.yaml')).toBe('8081') // annotation "http"
    expect(port('pod.in.yaml')).toBe('3000') // first containerPort
  })

  it('reads resources, ConfigMap, Secret, service name and image from annotations, with defaults', () => {
    const job = obj(proxyOf(obj(injected('job-app-port.in.yaml')[0])))
    expect(job.resources).toEqual({ requests: { cpu: '100m', memory: '128Mi' }, limits: { memory: '512Mi' } })
    const dflt = obj(proxyOf(obj(injected('deployment.in.yaml')[0])))
    expect(dflt.resources).toEqual({ requests: { cpu: '50m', memory: '64Mi' }, limits: { cpu: '1', memory: '256Mi' } })
    expect(envOf(dflt).TXMESH_SERVICE).toBe('orders') // label app
    // The mesh key is a mounted file, not a variable: the kubelet updates it in place and the
    // sidecar watches it, so a rotation needs no restart.
    expect(envOf(dflt).TXMESH_MESH_KEY).toBeUndefined()
    expect(envOf(dflt).TXMESH_MESH_KEY_FILE).toBe('/var/run/secrets/txmesh/mesh-key/mesh-key')
    expect(list(dflt.volumeMounts).find((m) => m.name === 'txmesh-mesh-key')).toEqual({
      name: 'txmesh-mesh-key',
      mountPath: '/var/run/secrets/txmesh/mesh-key',
      readOnly: true,
    })
    const meshKeyVolume = (w: unknown): unknown =>
      list(at(w, 'spec', 'volumes')).find((v) => v.name === 'txmesh-mesh-key')
    expect(meshKeyVolume(injected('deployment.in.yaml')[0])).toEqual({
      name: 'txmesh-mesh-key',
      secret: { secretName: 'txmesh-mesh-key', items: [{ key: 'mesh-key', path: 'mesh-key' }] },
    })
    expect(dflt.image).toBe(IMAGE)
    const [cron] = injected('cronjob.in.yaml')
    const proxy = obj(proxyOf(obj(cron)))
    expect(envOf(proxy).TXMESH_SERVICE).toBe('reconciler')
    expect(list(at(cron, 'spec', 'volumes')).find((v) => v.name === 'txmesh-mesh-key')).toEqual({
      name: 'txmesh-mesh-key',
      secret: { secretName: 'shop-mesh-key', items: [{ key: 'mesh-key', path: 'mesh-key' }] },
    })
    expect(proxy.image).toBe('registry.internal/mirror/txmesh:0.1.0')
    expect(list(at(cron, 'spec', 'volumes')).find((v) => v.name === 'txmesh-config')).toEqual({
      name: 'txmesh-config',
      configMap: { name: 'txmesh-reconcile', items: [{ key: 'txmesh.yaml', path: 'txmesh.yaml' }] },
    })
    expect(envOf(obj(proxyOf(obj(injected('pod.in.yaml')[0])))).TXMESH_SERVICE).toBe('inventory') // app.kubernetes.io/name
  })

  it('keeps the log on an emptyDir by default and on the claim of txmesh.io/log-pvc, one directory per pod', () => {
    const vol = (t: unknown): unknown => list(at(t, 'spec', 'volumes')).find((v) => v.name === 'txmesh-log')
    expect(vol(injected('deployment.in.yaml')[0])).toEqual({ name: 'txmesh-log', emptyDir: {} })
    const [sts] = injected('statefulset-pvc.in.yaml')
    expect(vol(sts)).toEqual({ name: 'txmesh-log', persistentVolumeClaim: { claimName: 'txmesh-ledger-log' } })
    const proxy = obj(proxyOf(obj(sts)))
    expect(list(proxy.volumeMounts)[0]).toEqual({
      name: 'txmesh-log',
      mountPath: '/var/lib/txmesh',
      subPathExpr: '$(POD_NAME)',
    })
    expect(envOf(proxy).POD_NAME).toEqual({ fieldRef: { fieldPath: 'metadata.name' } })
    expect(list(at(sts, 'spec', 'volumes')).map((v) => v.name)).toEqual([
      'scratch',
      'txmesh-log',
      'txmesh-config',
      'txmesh-mesh-key',
    ])
  })
})

describe('txmesh inject: the Postgres store', () => {
  it('txmesh.io/store-secret gives the sidecar the store URL from the Secret, the pod name as instance, and the group', () => {
    const text = readFileSync(join(dir, 'deployment.in.yaml'), 'utf8').replace(
      '        txmesh.io/inject: "true" # opt in\n',
      '        txmesh.io/inject: "true" # opt in\n        txmesh.io/store-secret: orders-store\n        txmesh.io/store-group: orders-txmesh.shop.svc:15010\n',
    )
    const [template] = objects(inject(text).output).flatMap(templates)
    const env = envOf(obj(proxyOf(obj(template))))
    expect({
      url: env.TXMESH_STORE_URL,
      instance: env.TXMESH_INSTANCE,
      group: env.TXMESH_STORE_GROUP,
    }).toEqual({
      url: { secretKeyRef: { name: 'orders-store', key: 'url' } },
      instance: { fieldRef: { fieldPath: 'metadata.name' } },
      group: 'orders-txmesh.shop.svc:15010',
    })
    const plain = envOf(obj(proxyOf(obj(injected('deployment.in.yaml')[0]))))
    expect([plain.TXMESH_STORE_URL, plain.TXMESH_INSTANCE, plain.TXMESH_STORE_GROUP]).toEqual([
      undefined,
      undefined,
      undefined,
    ])
  })
})

describe('txmesh inject: leases on the Kubernetes API', () => {
  it('txmesh.io/store-lease: kubernetes sets TXMESH_STORE_LEASE, and gives the sidecar alone the API credentials; it needs the store', () => {
    const base = readFileSync(join(dir, 'deployment.in.yaml'), 'utf8')
    const withAnnotations = (extra: string): string =>
      base.replace('        txmesh.io/inject: "true" # opt in\n', `        txmesh.io/inject: "true" # opt in\n${extra}`)
    const text = withAnnotations(
      '        txmesh.io/store-secret: orders-store\n        txmesh.io/store-lease: kubernetes\n',
    )
    const [template] = objects(inject(text).output).flatMap(templates)
    const env = envOf(obj(proxyOf(obj(template))))
    expect({ lease: env.TXMESH_STORE_LEASE, namespace: env.POD_NAMESPACE }).toEqual({
      lease: 'kubernetes',
      namespace: { fieldRef: { fieldPath: 'metadata.namespace' } },
    })
    expect(() => inject(withAnnotations('        txmesh.io/store-lease: kubernetes\n'))).toThrow(
      /txmesh\.io\/store-lease: needs txmesh\.io\/store-secret/,
    )
    expect(() =>
      inject(withAnnotations('        txmesh.io/store-secret: orders-store\n        txmesh.io/store-lease: etcd\n')),
    ).toThrow(/txmesh\.io\/store-lease: "etcd" is neither row nor kubernetes/)
    // The token, CA and namespace go to the sidecar alone, as a projected volume: the app's
    // containers get no API credentials (automountServiceAccountToken stays as the pod has it).
    const proxy = obj(proxyOf(obj(template)))
    expect(env.TXMESH_K8S_SERVICEACCOUNT_DIR).toBe('/var/run/secrets/txmesh/kube-api')
    expect(proxy.volumeMounts).toContainEqual({
      name: 'txmesh-kube-api',
      mountPath: '/var/run/secrets/txmesh/kube-api',
      readOnly: true,
    })
    const volumes = (obj(obj(template).spec).volumes ?? []) as { name: string }[]
    expect(volumes.find((v) => v.name === 'txmesh-kube-api')).toEqual({
      name: 'txmesh-kube-api',
      projected: {
        sources: [
          { serviceAccountToken: { path: 'token', expirationSeconds: 3600 } },
          { configMap: { name: 'kube-root-ca.crt', items: [{ key: 'ca.crt', path: 'ca.crt' }] } },
          { downwardAPI: { items: [{ path: 'namespace', fieldRef: { fieldPath: 'metadata.namespace' } }] } },
        ],
      },
    })
    const app = (obj(obj(template).spec).containers as { name: string; volumeMounts?: { name: string }[] }[])[0]
    expect((app?.volumeMounts ?? []).map((m) => m.name)).not.toContain('txmesh-kube-api')
  })
})

describe('txmesh inject: documents it does not inject', () => {
  it('copies unchanged documents byte for byte, comments, anchors and directives included', () => {
    const text = readFileSync(join(dir, 'configmap-passthrough.in.yaml'), 'utf8')
    const out = inject(text).output
    const head = text.slice(0, text.indexOf('# The only injected document'))
    expect(out.startsWith(head)).toBe(true)
    expect(head).toContain(`defaults: &defaults   '{"retries":  2}'`)
    const staging = text.slice(
      text.indexOf('---\n# A Service in another namespace'),
      text.indexOf('---\n# And the catalog'),
    )
    expect(out).toContain(staging)
  })

  it('keeps comments, key order and flow style inside an injected document', () => {
    const out = readFileSync(join(dir, 'deployment.out.yaml'), 'utf8')
    expect(out).toContain('txmesh.io/inject: "true" # opt in')
    expect(out).toContain('# The orders service: a Deployment opted in')
    expect(out.indexOf('replicas: 2')).toBeLessThan(out.indexOf('selector:\n    matchLabels'))
    expect(readFileSync(join(dir, 'configmap-passthrough.out.yaml'), 'utf8')).toContain(
      'annotations: {txmesh.io/inject: "true", txmesh.io/status: injected}',
    )
  })

  it('leaves opted-out and unannotated workloads alone: output equals input', () => {
    const text = readFileSync(join(dir, 'opt-out.in.yaml'), 'utf8')
    const r = inject(text)
    expect(r.output).toBe(text)
    expect([r.injected, r.retargeted]).toEqual([0, 0])
  })

  it("warns about txmesh.io/* on a workload's own metadata and does not inject it", () => {
    const text = readFileSync(join(dir, 'workload-annotation.in.yaml'), 'utf8')
    const r = inject(text, 'w.yaml')
    expect(r.output).toBe(text)
    expect(r.warnings).toEqual([
      expect.stringMatching(
        /^w\.yaml:8:5: Deployment\/reports: txmesh\.io\/inject on the Deployment's own metadata is ignored; txmesh reads annotations from the pod template \(spec\.template\.metadata\.annotations\)$/,
      ),
    ])
  })

  it('passes through empty documents, scalars and unknown kinds', () => {
    const text =
      '---\n# only a comment\n---\nplain scalar\n---\napiVersion: example.com/v1\nkind: Widget\nspec:\n  template: {metadata: {annotations: {txmesh.io/inject: "true"}}}\n'
    expect(inject(text).output).toBe(text)
    expect(inject('').output).toBe('')
  })
})

describe('txmesh inject: Services in the same input (env capture)', () => {
  it('points only the ports that reach the app port at the ingress port, by number', () => {
    const [svc] = objects(readFileSync(join(dir, 'deployment.out.yaml'), 'utf8'))
    expect(list(at(svc, 'spec', 'ports')).map((p) => [p.name, p.targetPort])).toEqual([
      ['http', PORTS.ingress],
      ['metrics', undefined],
    ])
  })

  it('follows a named targetPort, adds one where the port was implied, and respects namespaces', () => {
    const out = objects(readFileSync(join(dir, 'configmap-passthrough.out.yaml'), 'utf8')).filter(
      (o) => o.kind === 'Service',
    )
    expect(out.map((s) => [at(s, 'metadata', 'namespace'), at(s, 'spec', 'ports', 0, 'targetPort')])).toEqual([
      ['staging', 'http'],
      ['shop', PORTS.ingress],
    ])
    const [lst] = objects(readFileSync(join(dir, 'list.out.yaml'), 'utf8'))
    expect(at(lst, 'items', 1, 'spec', 'ports', 0)).toEqual({ port: 8080, targetPort: PORTS.ingress })
  })

  it('retargets a Service added after an already injected workload', () => {
    const injectedText = readFileSync(join(dir, 'replicaset-classic.out.yaml'), 'utf8')
    const svc =
      'apiVersion: v1\nkind: Service\nmetadata:\n  name: payments\nspec:\n  selector:\n    app: payments\n  ports:\n  - port: 80\n    targetPort: 8080\n'
    const r = inject(svc + '---\n' + injectedText)
    expect([r.injected, r.retargeted]).toEqual([0, 1])
    expect(at(objects(r.output)[0], 'spec', 'ports', 0, 'targetPort')).toBe(PORTS.ingress)
    expect(r.output.endsWith(injectedText)).toBe(true)
  })

  it('leaves a Service that already names txmesh-ingress alone', () => {
    const injectedText = readFileSync(join(dir, 'replicaset-classic.out.yaml'), 'utf8')
    const svc =
      'apiVersion: v1\nkind: Service\nmetadata:\n  name: payments\nspec:\n  selector:\n    app: payments\n  ports:\n  - port: 80\n    targetPort: txmesh-ingress\n---\n'
    const r = inject(svc + injectedText)
    expect(r.output).toBe(svc + injectedText)
  })
})

describe('txmesh inject: errors name the document and the line', () => {
  const deployment = (
    annotations: string,
    containers = '      - name: app\n        image: app:1\n        ports:\n        - containerPort: 8080\n',
  ): string =>
    'apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: first\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: orders\nspec:\n  selector:\n    matchLabels:\n      app: orders\n  template:\n    metadata:\n      labels:\n        app: orders\n      annotations:\n        txmesh.io/inject: "true"\n' +
    annotations +
    '    spec:\n      containers:\n' +
    containers

  it('no app port: TXM_INJECT_NO_APP_PORT at the first container', () => {
    const e = thrown(() => inject(deployment('', '      - name: app\n        image: app:1\n'), 'app.yaml'))
    expect(e).toBeInstanceOf(InjectNoAppPortError)
    expect(e.code).toBe('TXM_INJECT_NO_APP_PORT')
    expect(e.message).toMatch(
      /^app\.yaml:22:9: Deployment\/orders \(document 2\): no txmesh\.io\/app-port annotation and the first container "app" declares no containerPort/,
    )
  })

  const bad: [string, string, new (...a: never[]) => TxmeshError, RegExp][] = [
    [
      'unknown capture',
      '        txmesh.io/capture: ebpf\n',
      InjectInvalidError,
      /:20:28: .*txmesh\.io\/capture: must be "env" or "iptables", not "ebpf"/,
    ],
    ['inject not a boolean word', '', InjectInvalidError, /must be "true" or "false", not "yes"/],
    [
      'native-sidecar not a boolean word',
      '        txmesh.io/native-sidecar: "no"\n',
      InjectInvalidError,
      /txmesh\.io\/native-sidecar: must be "true" or "false"/,
    ],
    [
      'unquoted boolean',
      '        txmesh.io/native-sidecar: false\n',
      InjectInvalidError,
      /annotation values must be strings; quote it/,
    ],
    [
      'bad quantity',
      '        txmesh.io/proxy-memory-limit: 1 GB\n',
      InjectInvalidError,
      /:20:39: .*"1 GB" is not a Kubernetes quantity/,
    ],
    [
      'request above limit',
      '        txmesh.io/proxy-cpu-request: "2"\n',
      InjectInvalidError,
      /txmesh\.io\/proxy-cpu-request: request 2 is above the limit 1/,
    ],
    ['app port out of range', '        txmesh.io/app-port: "70000"\n', InjectInvalidError, /70000 is not a port/],
    [
      'app port name unknown',
      '        txmesh.io/app-port: grpc\n',
      InjectInvalidError,
      /"grpc" is neither a port number nor the name of a container port/,
    ],
    [
      'app port is a sidecar port',
      '        txmesh.io/app-port: "15006"\n',
      InjectConflictError,
      /app port 15006 is one of the sidecar's own ports/,
    ],
    [
      'bad ConfigMap name',
      '        txmesh.io/config: My_Config\n',
      InjectInvalidError,
      /"My_Config" is not a valid ConfigMap name/,
    ],
    [
      'bad service name',
      '        txmesh.io/service: Orders Service\n',
      InjectInvalidError,
      /service name "Orders Service" \(from annotation txmesh\.io\/service\)/,
    ],
    [
      'store group not host:port',
      '        txmesh.io/store-secret: orders-store\n        txmesh.io/store-group: orders-control\n',
      InjectInvalidError,
      /txmesh\.io\/store-group: "orders-control" is not a host:port address/,
    ],
    [
      'store group without the store',
      '        txmesh.io/store-group: orders-control.shop.svc:15010\n',
      InjectInvalidError,
      /txmesh\.io\/store-group: needs txmesh\.io\/store-secret/,
    ],
    [
      'store and log claim both',
      '        txmesh.io/store-secret: orders-store\n        txmesh.io/log-pvc: orders-log\n',
      InjectInvalidError,
      /txmesh\.io\/store-secret: the Postgres store keeps no log files/,
    ],
    [
      'bad TLS Secret name',
      '        txmesh.io/tls-secret: Mesh_TLS\n',
      InjectInvalidError,
      /txmesh\.io\/tls-secret: "Mesh_TLS" is not a valid Secret name/,
    ],
    [
      'empty admin token Secret name',
      '        txmesh.io/admin-token-secret: ""\n',
      InjectInvalidError,
      /txmesh\.io\/admin-token-secret: "" is not a valid Secret name/,
    ],
  ]
  for (const [what, annotations, Cls, message] of bad) {
    it(`${what}: ${new Cls('' as never).code}`, () => {
      const text =
        what === 'inject not a boolean word' ? deployment('').replace('"true"', 'yes') : deployment(annotations)
      const e = thrown(() => inject(text, 'app.yaml'))
      expect(e).toBeInstanceOf(Cls)
      expect(e.message).toMatch(/^app\.yaml:\d+:\d+: Deployment\/orders \(document 2\): /)
      expect(e.message).toMatch(message)
    })
  }

  it('a container or volume named like the sidecar, or a txmesh port in use: TXM_INJECT_CONFLICT', () => {
    const named = thrown(() =>
      inject(
        deployment(
          '',
          '      - name: txmesh-proxy\n        image: x:1\n        ports:\n        - containerPort: 8080\n',
        ),
        'app.yaml',
      ),
    )
    expect(named).toBeInstanceOf(InjectConflictError)
    expect(named.message).toMatch(/^app\.yaml:22:15: .*already named "txmesh-proxy"/)
    const port = thrown(() =>
      inject(
        deployment(
          '',
          '      - name: app\n        image: x:1\n        ports:\n        - containerPort: 8080\n        - containerPort: 15021\n',
        ),
        'app.yaml',
      ),
    )
    expect(port.code).toBe('TXM_INJECT_CONFLICT')
    expect(port.message).toMatch(/port 15021 is used by the txmesh sidecar/)
    const host = thrown(() =>
      inject(
        deployment('').replace('    spec:\n      containers:', '    spec:\n      hostNetwork: true\n      containers:'),
        'app.yaml',
      ),
    )
    expect(host.code).toBe('TXM_INJECT_CONFLICT')
    expect(host.message).toMatch(/^app\.yaml:21:20: .*a hostNetwork pod shares the node's ports/)
    const tls = thrown(() =>
      inject(
        deployment('        txmesh.io/tls-secret: mesh-tls\n').replace(
          '    spec:\n      containers:',
          '    spec:\n      volumes:\n      - name: txmesh-tls\n        emptyDir: {}\n      containers:',
        ),
        'app.yaml',
      ),
    )
    expect(tls.code).toBe('TXM_INJECT_CONFLICT')
    expect(tls.message).toMatch(/a volume is already named "txmesh-tls"/)
    const key = thrown(() =>
      inject(
        deployment('').replace(
          '    spec:\n      containers:',
          '    spec:\n      volumes:\n      - name: txmesh-mesh-key\n        emptyDir: {}\n      containers:',
        ),
        'app.yaml',
      ),
    )
    expect([key.code, key.message]).toEqual([
      'TXM_INJECT_CONFLICT',
      expect.stringMatching(/a volume is already named "txmesh-mesh-key"/),
    ])
  })

  it('YAML syntax errors: TXM_MANIFEST_INVALID with file:line:col and nothing written', () => {
    const e = thrown(() => inject('kind: ConfigMap\n---\nkind: Pod\nmetadata:\n  name: x\n  name: y\n', 'broken.yaml'))
    expect(e).toBeInstanceOf(ManifestInvalidError)
    expect(e.code).toBe('TXM_MANIFEST_INVALID')
    expect(e.message).toMatch(/^broken\.yaml:6:3: Map keys must be unique/)
    const flow = thrown(() => inject('kind: Pod\nmetadata: {name: x\n', 'flow.yaml'))
    expect(flow.message).toMatch(/^flow\.yaml:3:1: Flow map .* must .* end with a }/)
  })

  it('a workload without containers: TXM_MANIFEST_INVALID', () => {
    const e = thrown(() =>
      inject(
        'apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n  annotations: {txmesh.io/inject: "true"}\nspec: {containers: []}\n',
        'p.yaml',
      ),
    )
    expect(e.code).toBe('TXM_MANIFEST_INVALID')
    expect(e.message).toMatch(/^p\.yaml:6:20: Pod\/p \(document 1\): spec\.containers is empty/)
  })
})

describe('injectObject and its JSON Patch', () => {
  const pod = (): Obj => obj(objects(readFileSync(join(dir, 'pod.in.yaml'), 'utf8'))[0])

  it('escapes ~ and / in annotation keys (RFC 6901)', () => {
    expect(escapeSegment('txmesh.io/status')).toBe('txmesh.io~1status')
    expect(escapeSegment('a~/b')).toBe('a~0~1b')
    expect(pointer('metadata', 'annotations', 'x~y/z')).toBe('/metadata/annotations/x~0y~1z')
    const r = injectObject(pod(), { image: IMAGE })
    expect(r?.patch[0]).toEqual({ op: 'add', path: '/metadata/annotations/txmesh.io~1status', value: 'injected' })
  })

  it('returns the object its own patch produces, and leaves the input untouched', () => {
    const input = pod()
    const before = JSON.stringify(input)
    const r = injectObject(input, { image: IMAGE })
    expect(JSON.stringify(input)).toBe(before)
    expect(r?.object).toEqual(applyPatch(input, r?.patch ?? []))
    expect(r?.templates[0]?.kind).toBe('injected')
  })

  it('injects a pod of a namespace with txmesh.io/inject=enabled unless it opts out', () => {
    const plain = pod()
    delete (plain.metadata as Obj).annotations
    expect(injectObject(plain, { image: IMAGE })?.templates[0]).toEqual({ kind: 'skipped', reason: 'not-annotated' })
    const r = injectObject(plain, { image: IMAGE, namespaceEnabled: true })
    expect(r?.templates[0]?.kind).toBe('injected')
    // No annotations map yet: the patch adds the map rather than a key inside it.
    expect(r?.patch[0]).toEqual({
      op: 'add',
      path: '/metadata/annotations',
      value: { [ANNOTATIONS.status]: 'injected' },
    })
    const out = pod()
    ;(out.metadata as { annotations: Record<string, string> }).annotations[ANNOTATIONS.inject] = 'false'
    expect(injectObject(out, { namespaceEnabled: true })?.templates[0]).toEqual({
      kind: 'skipped',
      reason: 'opted-out',
    })
  })

  it("names the service after a ReplicaSet pod's Deployment when no label names it", () => {
    const p: Obj = {
      apiVersion: 'v1',
      kind: 'Pod',
      metadata: {
        generateName: 'orders-7d9f8c6b5-',
        labels: { 'pod-template-hash': '7d9f8c6b5' },
        annotations: { [ANNOTATIONS.inject]: 'true' },
      },
      spec: { containers: [{ name: 'app', image: 'app:1', ports: [{ containerPort: 8080 }] }] },
    }
    const r = injectObject(p, { image: IMAGE })
    expect(r?.templates[0]?.kind === 'injected' && r.templates[0].settings.service).toBe('orders')
  })

  it("uses this build's image by default", () => {
    const pkg = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')) as { version: string }
    expect(defaultImage()).toBe(`ghcr.io/txmesh/txmesh:${pkg.version}`)
    const r = injectObject(pod())
    expect(r?.templates[0]?.kind === 'injected' && r.templates[0].settings.image).toBe(defaultImage())
  })

  it('accepts exactly the service names the sidecar config accepts', () => {
    const schema = JSON.parse(readFileSync(join(root, 'config/txmesh.schema.json'), 'utf8')) as {
      properties: { service: { pattern: string } }
    }
    expect(SERVICE_NAME.source).toBe(schema.properties.service.pattern)
  })
})

describe('txmesh inject CLI', () => {
  const cli = join(root, 'dist/cli/index.js')
  const run = (args: string[], input?: string): { status: number | null; stdout: string; stderr: string } =>
    spawnSync(process.execPath, [cli, 'inject', ...args], {
      cwd: root,
      encoding: 'utf8',
      ...(input === undefined ? {} : { input }),
    })

  it('writes the golden output for -f FILE, and reads stdin with -f - or no -f', () => {
    const input = rel('deployment.in.yaml')
    const golden = readFileSync(join(dir, 'deployment.out.yaml'), 'utf8')
    const fromFile = run(['--image', IMAGE, '-f', input])
    expect([fromFile.status, fromFile.stderr]).toEqual([0, ''])
    expect(fromFile.stdout).toBe(golden)
    const text = readFileSync(join(root, input), 'utf8')
    expect(run(['--image', IMAGE, '-f', '-'], text).stdout).toBe(golden)
    expect(run(['--image', IMAGE], text).stdout).toBe(golden)
  })

  it('exits 1 with the code and position, writing nothing to stdout', () => {
    const r = run(
      ['-f', '-'],
      'apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n  annotations:\n    txmesh.io/inject: "true"\n    txmesh.io/capture: sidecarless\nspec:\n  containers:\n  - {name: a, image: a, ports: [{containerPort: 80}]}\n',
    )
    expect(r.status).toBe(1)
    expect(r.stdout).toBe('')
    expect(r.stderr).toBe(
      'txmesh inject: <stdin>:7:24: Pod/p (document 1): txmesh.io/capture: must be "env" or "iptables", not "sidecarless" [TXM_INJECT_INVALID]\n',
    )
  })
})
