// deploy/base and deploy/examples/shop: what `kubectl apply -k` would send is schema-valid
// Kubernetes (kubernetes-models' OpenAPI validators, cert-manager's CRD schemas), hardened, and
// agrees with the Kubernetes contract (src/k8s/constants.ts) and the sidecar's config validator.
//
// The kustomizations are built with `kubectl kustomize` when kubectl is installed, else by a
// small builder that supports exactly what they use (resources + namespace) and refuses anything
// else; with kubectl present, the two builds must agree. When `txmesh inject` is built
// (dist/cli/index.js), the shop manifests are injected and the result is checked the same way.
import { execFileSync, spawnSync } from 'node:child_process'
import { existsSync, readFileSync, statSync } from 'node:fs'
import { join } from 'node:path'
import { describe, expect, it } from 'vitest'
import { parse as parseYaml, parseAllDocuments } from 'yaml'
import { Certificate, Issuer } from '@kubernetes-models/cert-manager/cert-manager.io/v1'
import { MutatingWebhookConfiguration } from 'kubernetes-models/admissionregistration.k8s.io/v1'
import { Deployment, StatefulSet } from 'kubernetes-models/apps/v1'
import { PodDisruptionBudget } from 'kubernetes-models/policy/v1'
import { ClusterRole, ClusterRoleBinding, Role, RoleBinding } from 'kubernetes-models/rbac.authorization.k8s.io/v1'
import { ConfigMap, Namespace, Secret, Service, ServiceAccount } from 'kubernetes-models/v1'
import { parseConfig, overridesFrom } from '../../src/config/load.js'
import {
  ANNOTATIONS,
  CONFIG_KEY,
  DEFAULTS,
  NAMESPACE_LABEL,
  NAMESPACE_LABEL_ENABLED,
  PORT_NAMES,
  PORTS,
  PROXY_CONTAINER,
  STATUS_INJECTED,
  STORE_DIR,
  TXMESH_UID,
  WEBHOOK,
  defaultImage,
} from '../../src/k8s/constants.js'
import { coordinatorAllowed } from '../../src/tx/protocol.js'

const root = join(import.meta.dirname, '../..')
const BASE = join(root, 'deploy/base')
const SHOP = join(root, 'deploy/examples/shop')
const CLI = join(root, 'dist/cli/index.js')

type Obj = Record<string, unknown>
const isObj = (v: unknown): v is Obj => typeof v === 'object' && v !== null && !Array.isArray(v)
const obj = (v: unknown, what: string): Obj => {
  if (!isObj(v)) throw new Error(`${what} is not an object`)
  return v
}
const arr = (v: unknown, what: string): unknown[] => {
  if (!Array.isArray(v)) throw new Error(`${what} is not a list`)
  return v
}
const meta = (o: Obj): Obj => obj(o.metadata, `${String(o.kind)} metadata`)
const nameOf = (o: Obj): string => String(meta(o).name)
const idOf = (o: Obj): string => `${String(o.kind)}/${String(meta(o).namespace ?? '')}/${nameOf(o)}`

// ---- validation: every kind deploy/ uses has a schema; an unknown kind fails the test ----

interface Validatable {
  validate(): void
}
const MODELS: Record<string, new (o: Obj) => Validatable> = {
  'v1/Namespace': Namespace as never,
  'v1/ServiceAccount': ServiceAccount as never,
  'v1/ConfigMap': ConfigMap as never,
  'v1/Secret': Secret as never,
  'v1/Service': Service as never,
  'apps/v1/Deployment': Deployment as never,
  'apps/v1/StatefulSet': StatefulSet as never,
  'policy/v1/PodDisruptionBudget': PodDisruptionBudget as never,
  'rbac.authorization.k8s.io/v1/Role': Role as never,
  'rbac.authorization.k8s.io/v1/RoleBinding': RoleBinding as never,
  'rbac.authorization.k8s.io/v1/ClusterRole': ClusterRole as never,
  'rbac.authorization.k8s.io/v1/ClusterRoleBinding': ClusterRoleBinding as never,
  'admissionregistration.k8s.io/v1/MutatingWebhookConfiguration': MutatingWebhookConfiguration as never,
  'cert-manager.io/v1/Issuer': Issuer as never,
  'cert-manager.io/v1/Certificate': Certificate as never,
}

function validate(o: Obj): void {
  const Model = MODELS[`${String(o.apiVersion)}/${String(o.kind)}`]
  if (Model === undefined)
    throw new Error(`${idOf(o)}: no schema for ${String(o.apiVersion)} ${String(o.kind)} (add it to MODELS)`)
  new Model(structuredClone(o)).validate()
}

// ---- building a kustomization ----

const CLUSTER_SCOPED = new Set([
  'Namespace',
  'MutatingWebhookConfiguration',
  'ValidatingWebhookConfiguration',
  'ClusterRole',
  'ClusterRoleBinding',
  'ClusterIssuer',
  'CustomResourceDefinition',
  'PersistentVolume',
  'StorageClass',
  'PriorityClass',
])
const SUPPORTED_FIELDS = new Set(['apiVersion', 'kind', 'namespace', 'resources'])

/** Parsed as Kubernetes reads YAML (1.1: `0440` is octal, `yes`/`on` are booleans). */
function yamlDocs(text: string, what: string): Obj[] {
  return parseAllDocuments(text, { version: '1.1' })
    .filter((d) => d.contents !== null) // a trailing `---` is an empty document
    .map((d, i) => {
      expect(d.errors, `${what} document ${i}`).toEqual([])
      return obj(d.toJS(), `${what} document ${i}`)
    })
}

/** resources (files and kustomization directories, recursively) + namespace; nothing else. */
function simpleKustomize(dir: string): Obj[] {
  const k = obj(parseYaml(readFileSync(join(dir, 'kustomization.yaml'), 'utf8')), `${dir}/kustomization.yaml`)
  const unsupported = Object.keys(k).filter((f) => !SUPPORTED_FIELDS.has(f))
  if (unsupported.length > 0)
    throw new Error(`${dir}: the simple builder does not support ${unsupported.join(', ')}; use kubectl kustomize`)
  const out: Obj[] = []
  for (const r of arr(k.resources ?? [], 'resources')) {
    const path = join(dir, String(r))
    out.push(...(statSync(path).isDirectory() ? simpleKustomize(path) : yamlDocs(readFileSync(path, 'utf8'), path)))
  }
  if (typeof k.namespace === 'string') {
    for (const o of out) if (!CLUSTER_SCOPED.has(String(o.kind))) meta(o).namespace = k.namespace
  }
  return out
}

const kubectl = spawnSync('kubectl', ['version', '--client'], { encoding: 'utf8', timeout: 20_000 }).status === 0
function kubectlKustomize(dir: string): Obj[] {
  return yamlDocs(
    execFileSync('kubectl', ['kustomize', dir], { encoding: 'utf8', timeout: 60_000 }),
    `kubectl kustomize ${dir}`,
  )
}
const build = (dir: string): Obj[] => (kubectl ? kubectlKustomize(dir) : simpleKustomize(dir))

// ---- pods ----

interface Workload {
  id: string
  obj: Obj
  template: Obj
  pod: Obj
}
function workloads(objs: Obj[]): Workload[] {
  return objs
    .filter((o) => ['Deployment', 'StatefulSet', 'DaemonSet', 'ReplicaSet', 'Job'].includes(String(o.kind)))
    .map((o) => {
      const template = obj(obj(o.spec, `${idOf(o)} spec`).template, `${idOf(o)} template`)
      return { id: idOf(o), obj: o, template, pod: obj(template.spec, `${idOf(o)} pod spec`) }
    })
}
const containersOf = (pod: Obj): Obj[] =>
  [...((pod.initContainers as unknown[] | undefined) ?? []), ...arr(pod.containers, 'containers')].map((c) =>
    obj(c, 'container'),
  )
const annotationsOf = (template: Obj): Obj =>
  isObj(obj(template.metadata ?? {}, 'metadata').annotations)
    ? (obj(template.metadata, 'metadata').annotations as Obj)
    : {}
const labelsOf = (o: Obj): Obj =>
  isObj(obj(o.metadata ?? {}, 'metadata').labels) ? (obj(o.metadata, 'metadata').labels as Obj) : {}
const envOf = (c: Obj): Map<string, Obj> =>
  new Map(((c.env as unknown[] | undefined) ?? []).map((e) => [String(obj(e, 'env').name), obj(e, 'env')]))

/** Every container (init and sidecar included) non-root, read-only root, no privileges, bounded. */
function checkHardened(w: Workload, opts: { allowIptablesInit: boolean } = { allowIptablesInit: false }): void {
  const podSec = isObj(w.pod.securityContext) ? w.pod.securityContext : {}
  for (const c of containersOf(w.pod)) {
    const where = `${w.id}/${String(c.name)}`
    const own = isObj(c.securityContext) ? c.securityContext : {}
    // The iptables init container runs as root with NET_ADMIN by design (k8s contract).
    if (opts.allowIptablesInit && c.name === 'txmesh-init') continue
    const sec = { ...podSec, ...own }
    expect(sec.runAsNonRoot, `${where} runAsNonRoot`).toBe(true)
    expect(sec.runAsUser, `${where} runAsUser`).toBeTypeOf('number')
    expect(sec.runAsUser, `${where} runAsUser`).not.toBe(0)
    expect(own.readOnlyRootFilesystem, `${where} readOnlyRootFilesystem`).toBe(true)
    expect(own.allowPrivilegeEscalation, `${where} allowPrivilegeEscalation`).toBe(false)
    expect(own.privileged ?? false, `${where} privileged`).toBe(false)
    expect(obj(own.capabilities, `${where} capabilities`).drop, `${where} capabilities.drop`).toEqual(['ALL'])
    expect(obj(own.capabilities, `${where} capabilities`).add ?? [], `${where} capabilities.add`).toEqual([])
    expect(obj(sec.seccompProfile, `${where} seccompProfile`).type, `${where} seccompProfile`).toBe('RuntimeDefault')
    const limits = obj(obj(c.resources, `${where} resources`).limits, `${where} limits`)
    expect(limits.cpu, `${where} cpu limit`).toBeDefined()
    expect(limits.memory, `${where} memory limit`).toBeDefined()
  }
}

function checkAll(objs: Obj[]): void {
  const ids = objs.map(idOf)
  expect(new Set(ids).size, 'no object twice').toBe(ids.length)
  for (const o of objs) {
    expect(() => validate(o), idOf(o)).not.toThrow()
  }
}

const baseObjs = build(BASE)
const shopObjs = build(SHOP)
const find = (objs: Obj[], kind: string, name: string): Obj => {
  const o = objs.find((x) => x.kind === kind && nameOf(x) === name)
  if (o === undefined) throw new Error(`no ${kind} ${name}`)
  return o
}

describe('kustomize builds', () => {
  it.skipIf(!kubectl)('the simple builder gives what kubectl kustomize gives', () => {
    for (const dir of [BASE, SHOP]) {
      const byId = (objs: Obj[]): Map<string, Obj> => new Map(objs.map((o) => [idOf(o), o]))
      const simple = byId(simpleKustomize(dir))
      const real = byId(kubectlKustomize(dir))
      expect([...simple.keys()].sort()).toEqual([...real.keys()].sort())
      for (const [id, o] of real) expect(simple.get(id), id).toEqual(o)
    }
  })

  for (const [name, objs, ns] of [
    ['deploy/base', baseObjs, 'txmesh-system'],
    ['deploy/examples/shop', shopObjs, 'txmesh-shop'],
  ] as const) {
    it(`${name}: every object validates against its Kubernetes or cert-manager schema`, () => {
      expect(objs.length).toBeGreaterThan(5)
      checkAll(objs)
    })

    it(`${name}: namespaced objects are in ${ns}, and the build creates ${ns}`, () => {
      for (const o of objs) if (!CLUSTER_SCOPED.has(String(o.kind))) expect(meta(o).namespace, idOf(o)).toBe(ns)
      expect(objs.filter((o) => o.kind === 'Namespace').map(nameOf)).toEqual([ns])
    })

    it(`${name}: every container runs non-root, read-only, without capabilities, with limits`, () => {
      const ws = workloads(objs)
      expect(ws.length).toBeGreaterThan(0)
      for (const w of ws) checkHardened(w)
    })
  }
})

describe('deploy/base: the injector webhook', () => {
  const mwc = find(baseObjs, 'MutatingWebhookConfiguration', 'txmesh-sidecar-injector')
  const hooks = arr(mwc.webhooks, 'webhooks').map((h) => obj(h, 'webhook'))
  const byPath = (path: string): Obj => {
    const h = hooks.find((x) => obj(obj(x.clientConfig, 'clientConfig').service, 'service').path === path)
    if (h === undefined) throw new Error(`no webhook on path ${path}`)
    return h
  }
  const cert = find(baseObjs, 'Certificate', 'txmesh-webhook-tls')
  const deployment = find(baseObjs, 'Deployment', WEBHOOK.service)
  const pod = obj(obj(obj(deployment.spec, 'spec').template, 'template').spec, 'pod')
  const webhookLabels = labelsOf(obj(obj(deployment.spec, 'spec').template, 'template'))

  it('both webhooks call service txmesh-webhook/txmesh-system, fail closed, have no side effects and speak v1', () => {
    expect(hooks).toHaveLength(2)
    for (const h of hooks) {
      const where = String(h.name)
      const svc = obj(obj(h.clientConfig, 'clientConfig').service, 'service')
      expect(svc.name, where).toBe(WEBHOOK.service)
      expect(svc.namespace, where).toBe(WEBHOOK.namespace)
      expect(svc.port ?? 443, where).toBe(443)
      expect([WEBHOOK.path, WEBHOOK.namespaceEnabledPath], where).toContain(svc.path)
      expect(h.failurePolicy, where).toBe('Fail')
      expect(h.sideEffects, where).toBe('None')
      expect(h.admissionReviewVersions, where).toEqual(['v1'])
      expect(h.rules, where).toEqual([
        { operations: ['CREATE'], apiGroups: [''], apiVersions: ['v1'], resources: ['pods'], scope: 'Namespaced' },
      ])
    }
  })

  it('pods of namespaces labelled txmesh.io/inject=enabled go to the namespace-enabled path', () => {
    const h = byPath(WEBHOOK.namespaceEnabledPath)
    expect(obj(h.namespaceSelector, 'namespaceSelector').matchLabels).toEqual({
      [NAMESPACE_LABEL]: NAMESPACE_LABEL_ENABLED,
    })
  })

  it('other namespaces send only pods annotated txmesh.io/inject: "true" to /inject, never system namespaces', () => {
    const h = byPath(WEBHOOK.path)
    const expressions = arr(obj(h.namespaceSelector, 'namespaceSelector').matchExpressions, 'matchExpressions')
    expect(expressions).toContainEqual({ key: NAMESPACE_LABEL, operator: 'NotIn', values: [NAMESPACE_LABEL_ENABLED] })
    const names = expressions.map((e) => obj(e, 'expression')).find((e) => e.key === 'kubernetes.io/metadata.name')
    expect(names?.operator).toBe('NotIn')
    expect(names?.values).toEqual(expect.arrayContaining(['kube-system', WEBHOOK.namespace]))
    const conditions = arr(h.matchConditions, 'matchConditions').map((c) => String(obj(c, 'matchCondition').expression))
    expect(conditions).toHaveLength(1)
    expect(conditions[0]).toContain(`object.metadata.annotations['${ANNOTATIONS.inject}'] == 'true'`)
    expect(conditions[0]).toContain('has(object.metadata.annotations)') // a pod without annotations is not an error
  })

  it("both webhooks exclude the webhook's own pods by label", () => {
    for (const h of hooks) {
      const expressions = arr(obj(h.objectSelector, 'objectSelector').matchExpressions, 'matchExpressions').map((e) =>
        obj(e, 'expression'),
      )
      const own = expressions.find((e) => isObj(e) && webhookLabels[String(e.key)] !== undefined)
      expect(own, String(h.name)).toBeDefined()
      expect(own?.operator).toBe('NotIn')
      expect(own?.values).toContain(webhookLabels[String(own?.key)])
    }
    expect(annotationsOf(obj(obj(deployment.spec, 'spec').template, 'template'))[ANNOTATIONS.inject]).toBe('false')
  })

  it('cert-manager issues the serving certificate, injects its CA, and the webhook serves it on 8443', () => {
    expect(meta(mwc).annotations).toMatchObject({
      'cert-manager.io/inject-ca-from': `${WEBHOOK.namespace}/${nameOf(cert)}`,
    })
    const spec = obj(cert.spec, 'certificate spec')
    expect(spec.dnsNames).toEqual(expect.arrayContaining([`${WEBHOOK.service}.${WEBHOOK.namespace}.svc`]))
    const issuer = find(baseObjs, 'Issuer', String(obj(spec.issuerRef, 'issuerRef').name))
    expect(obj(issuer.spec, 'issuer spec').selfSigned).toEqual({})
    const tls = arr(pod.volumes, 'volumes')
      .map((v) => obj(v, 'volume'))
      .find((v) => isObj(v.secret))
    expect(obj(tls?.secret, 'secret volume').secretName).toBe(spec.secretName)
    const c = obj(arr(pod.containers, 'containers')[0], 'container')
    const mount = arr(c.volumeMounts, 'volumeMounts')
      .map((m) => obj(m, 'mount'))
      .find((m) => m.name === tls?.name)
    const args = arr(c.args, 'args').map(String)
    expect(args[0]).toBe('webhook')
    expect(args[args.indexOf('--cert') + 1]).toBe(`${String(mount?.mountPath)}/tls.crt`)
    expect(args[args.indexOf('--key') + 1]).toBe(`${String(mount?.mountPath)}/tls.key`)
    expect(c.image).toBe(defaultImage())
    const ports = arr(c.ports, 'ports').map((p) => obj(p, 'port'))
    const service = find(baseObjs, 'Service', WEBHOOK.service)
    const sp = obj(arr(obj(service.spec, 'spec').ports, 'ports')[0], 'service port')
    expect(sp.port).toBe(443)
    expect(ports.find((p) => p.name === sp.targetPort || p.containerPort === sp.targetPort)?.containerPort).toBe(
      WEBHOOK.port,
    )
    expect(obj(service.spec, 'spec').selector).toEqual(
      obj(obj(deployment.spec, 'spec').selector, 'selector').matchLabels,
    )
    // fail closed needs the webhook up: more than one replica, kept through drains.
    expect(obj(deployment.spec, 'spec').replicas).toBeGreaterThanOrEqual(2)
    expect(obj(find(baseObjs, 'PodDisruptionBudget', WEBHOOK.service).spec, 'pdb spec').minAvailable).toBe(1)
  })

  it('the webhook has no API access: its ServiceAccount mounts no token and nothing is bound to it', () => {
    const sa = find(baseObjs, 'ServiceAccount', String(pod.serviceAccountName))
    expect(sa.automountServiceAccountToken).toBe(false)
    expect(pod.automountServiceAccountToken).toBe(false)
    const bindings = baseObjs.filter((o) => o.kind === 'RoleBinding' || o.kind === 'ClusterRoleBinding')
    const toWebhook = bindings.filter((b) =>
      ((b.subjects as unknown[] | undefined) ?? []).some((s) => obj(s, 'subject').name === nameOf(sa)),
    )
    expect(toWebhook.map(idOf)).toEqual([])
  })

  it('runs as the image user (uid 10001)', () => {
    expect(obj(pod.securityContext, 'pod securityContext').runAsUser).toBe(TXMESH_UID)
  })
})

// ---- the sidecar config in the ConfigMaps ----

function txmeshYaml(objs: Obj[]): string {
  const cm = find(objs, 'ConfigMap', DEFAULTS.configMap)
  return String(obj(cm.data, 'ConfigMap data')[CONFIG_KEY])
}
const podEnv = { TXMESH_SERVICE: 'orders', TXMESH_ADVERTISE: '10.1.2.3:15010', TXMESH_STORE_DIR: STORE_DIR }

describe('the txmesh-config ConfigMaps', () => {
  for (const [name, objs] of [
    ['deploy/base', baseObjs],
    ['deploy/examples/shop', shopObjs],
  ] as const) {
    it(`${name}: txmesh.yaml leaves service and app.port to the injector and passes the sidecar's validator`, () => {
      const text = txmeshYaml(objs)
      const raw = obj(parseYaml(text), 'txmesh.yaml')
      expect(raw.service).toBeUndefined()
      expect(isObj(raw.app) ? raw.app.port : undefined).toBeUndefined()
      // Without the injector's env the service name is missing, and said so.
      expect(() => parseConfig(text, `${name}/txmesh.yaml`)).toThrow(/service/)
      const cfg = parseConfig(text, `${name}/txmesh.yaml`, overridesFrom({}, podEnv))
      expect(cfg.service).toBe('orders')
      expect(cfg.storeDir).toBe(STORE_DIR)
      expect(cfg.mesh.advertise).toBe('10.1.2.3:15010')
      // Ports are the contract's (the file does not move them).
      expect(cfg.listeners.ingress).toEqual({ host: '0.0.0.0', port: PORTS.ingress })
      expect(cfg.listeners.control).toEqual({ host: '0.0.0.0', port: PORTS.control })
      expect(cfg.listeners.egress).toEqual({ host: '127.0.0.1', port: PORTS.egress })
      expect(cfg.listeners.admin).toEqual({ host: '127.0.0.1', port: PORTS.admin })
      // store.dir is the log volume's mount path even without TXMESH_STORE_DIR.
      expect(raw.store).toEqual({ dir: STORE_DIR })
    })

    it(`${name}: contexts may name coordinators on private pod networks' control port, nothing else`, () => {
      const cfg = parseConfig(txmeshYaml(objs), `${name}/txmesh.yaml`, overridesFrom({}, podEnv))
      for (const ok of ['10.1.2.3:15010', '172.20.0.9:15010', '192.168.5.6:15010'])
        expect(coordinatorAllowed(cfg.mesh.coordinators, ok), ok).toBe(true)
      for (const no of ['10.1.2.3:80', '8.8.8.8:15010', '127.0.0.1:15010', '169.254.169.254:15010', 'payments:15010']) {
        expect(coordinatorAllowed(cfg.mesh.coordinators, no), no).toBe(false)
      }
    })
  }

  it('the shop policy is the base policy plus its routes', () => {
    const { mesh: baseMesh, ...base } = obj(parseYaml(txmeshYaml(baseObjs)), 'base')
    const { routes, hooks, mesh, ...shop } = obj(parseYaml(txmeshYaml(shopObjs)), 'shop')
    expect(shop).toEqual(base)
    // ...and the orders replicas' group address (store.group) among the coordinators participants ask.
    const coordinators = (m: unknown): unknown => obj(m, 'mesh').coordinators
    expect(coordinators(mesh)).toEqual([
      ...arr(coordinators(baseMesh), 'coordinators'),
      'orders-txmesh.txmesh-shop.svc:15010',
    ])
    // The shop's apps run txmesh/pg, which serves the batch hook; the base policy fits any app.
    expect(hooks).toEqual({ batch: '/.well-known/txmesh/batch' })
    const cfg = parseConfig(txmeshYaml(shopObjs), 'shop/txmesh.yaml', overridesFrom({}, podEnv))
    const order = cfg.routes.find((r) => r.pathPrefix === '/orders')
    expect(order?.transaction).toBe('required')
    expect(order?.directions).toEqual(new Set(['ingress']))
    expect(order?.methods).toEqual(new Set(['POST']))
    expect(arr(routes, 'routes')).toHaveLength(cfg.routes.length)
  })
})

// ---- the shop ----

const SHOP_SERVICES = ['orders', 'payments', 'inventory'] as const

describe('deploy/examples/shop', () => {
  it('orders: three replicas on the shared Postgres store, and the group Service in front of their control ports', () => {
    const d = find(shopObjs, 'Deployment', 'orders')
    const spec = obj(d.spec, 'spec')
    expect(spec.replicas).toBe(3)
    const annotations = obj(obj(obj(spec.template, 'template').metadata, 'metadata').annotations, 'annotations')
    expect({
      secret: annotations['txmesh.io/store-secret'],
      group: annotations['txmesh.io/store-group'],
      lease: annotations['txmesh.io/store-lease'],
    }).toEqual({ secret: 'shop-store', group: 'orders-txmesh.txmesh-shop.svc:15010', lease: 'kubernetes' })
    // The leases are Lease objects: the pod's service account may get, create and update them.
    const pod = obj(obj(spec.template, 'template').spec, 'template.spec')
    expect([pod.serviceAccountName, pod.automountServiceAccountToken]).toEqual(['orders', false])
    const role = find(shopObjs, 'Role', 'orders-txmesh-leases')
    expect(role.rules).toEqual([
      { apiGroups: ['coordination.k8s.io'], resources: ['leases'], verbs: ['get', 'create', 'update'] },
    ])
    const binding = find(shopObjs, 'RoleBinding', 'orders-txmesh-leases')
    expect([binding.roleRef, binding.subjects]).toEqual([
      { apiGroup: 'rbac.authorization.k8s.io', kind: 'Role', name: 'orders-txmesh-leases' },
      [{ kind: 'ServiceAccount', name: 'orders', namespace: 'txmesh-shop' }],
    ])
    expect(find(shopObjs, 'ServiceAccount', 'orders').kind).toBe('ServiceAccount')
    const svc = obj(find(shopObjs, 'Service', 'orders-txmesh').spec, 'spec')
    expect(svc.selector).toEqual({ 'app.kubernetes.io/name': 'orders' })
    expect(arr(svc.ports, 'ports')).toEqual([
      { name: 'txmesh-control', port: 15010, targetPort: 15010, protocol: 'TCP' },
    ])
  })

  it('the namespace is labelled for injection', () => {
    expect(labelsOf(find(shopObjs, 'Namespace', 'txmesh-shop'))[NAMESPACE_LABEL]).toBe(NAMESPACE_LABEL_ENABLED)
  })

  for (const name of SHOP_SERVICES) {
    it(`${name}: an opted-in Deployment running \`txmesh demo-app --service ${name}\` on its own database`, () => {
      const [w] = workloads([find(shopObjs, 'Deployment', name)])
      if (w === undefined) throw new Error('no workload')
      expect(annotationsOf(w.template)[ANNOTATIONS.inject]).toBe('true')
      const [app, ...others] = arr(w.pod.containers, 'containers').map((c) => obj(c, 'container'))
      expect(others).toEqual([])
      expect(app?.image).toBe(defaultImage())
      expect(app?.args).toEqual(['demo-app', '--service', name, '--port', '8080'])
      const port = obj(arr(app?.ports, 'ports')[0], 'port').containerPort
      expect(annotationsOf(w.template)[ANNOTATIONS.appPort]).toBe(String(port))
      const env = envOf(app ?? {})
      expect(env.get('DATABASE_URL')?.value).toBe(`postgres://shop@postgres:5432/${name}`)
      expect(obj(obj(env.get('PGPASSWORD')?.valueFrom, 'valueFrom').secretKeyRef, 'secretKeyRef')).toEqual({
        name: 'shop-postgres',
        key: 'password',
      })
      expect(w.pod.automountServiceAccountToken).toBe(false)
    })

    it(`${name}: its Service sends port 80 to the sidecar's ingress, not to the app`, () => {
      const svc = find(shopObjs, 'Service', name)
      const deployment = find(shopObjs, 'Deployment', name)
      const spec = obj(svc.spec, 'spec')
      expect(spec.selector).toEqual(obj(obj(deployment.spec, 'spec').selector, 'selector').matchLabels)
      const ports = arr(spec.ports, 'ports').map((p) => obj(p, 'port'))
      expect(ports).toHaveLength(1)
      expect(ports[0]?.port).toBe(80) // apps call http://<service>/...
      expect([PORTS.ingress, PORT_NAMES.ingress]).toContain(ports[0]?.targetPort)
    })
  }

  it('Postgres 17 with prepared transactions, three databases, not injected', () => {
    const sts = find(shopObjs, 'StatefulSet', 'postgres')
    const [w] = workloads([sts])
    if (w === undefined) throw new Error('no workload')
    expect(annotationsOf(w.template)[ANNOTATIONS.inject]).toBe('false')
    const c = obj(arr(w.pod.containers, 'containers')[0], 'container')
    expect(c.image).toBe('postgres:17')
    const args = arr(c.args, 'args').map(String)
    expect(args[args.indexOf('-c') + 1]).toBe('max_prepared_transactions=64')
    const initdb = obj(find(shopObjs, 'ConfigMap', 'shop-postgres-initdb').data, 'initdb data')
    const sql = Object.values(initdb).join('\n')
    for (const db of SHOP_SERVICES) expect(sql).toMatch(new RegExp(`CREATE DATABASE ${db};`))
    expect(find(shopObjs, 'Service', 'postgres')).toBeDefined()
  })

  it('ships no Secret: the mesh key and the database password are created by hand (deploy/README.md)', () => {
    expect(shopObjs.filter((o) => o.kind === 'Secret').map(idOf)).toEqual([])
    expect(baseObjs.filter((o) => o.kind === 'Secret').map(idOf)).toEqual([])
    const readme = readFileSync(join(root, 'deploy/README.md'), 'utf8')
    expect(readme).toContain(`create secret generic ${DEFAULTS.meshKeySecret}`)
    expect(readme).toContain('create secret generic shop-postgres')
  })
})

// ---- txmesh inject over the shop (when the injector is built) ----

const injectBuilt =
  existsSync(CLI) &&
  spawnSync(process.execPath, [CLI, 'help'], { encoding: 'utf8', timeout: 20_000 }).stdout.includes('inject')
function inject(input: string): string {
  const r = spawnSync(process.execPath, [CLI, 'inject'], { input, encoding: 'utf8', timeout: 30_000 })
  if (r.status !== 0) throw new Error(`txmesh inject exited ${String(r.status)}: ${r.stderr}`)
  return r.stdout
}

describe.skipIf(!injectBuilt)('txmesh inject over deploy/examples/shop', () => {
  for (const file of ['orders.yaml', 'payments.yaml', 'inventory.yaml', 'postgres.yaml']) {
    it(`${file}: the injected manifests validate, stay hardened, and injecting again changes nothing`, () => {
      const input = readFileSync(join(SHOP, file), 'utf8')
      const out = inject(input)
      const objs = yamlDocs(out, `inject ${file}`)
      checkAll(objs)
      expect(inject(out), 'idempotent').toBe(out)
      for (const w of workloads(objs)) {
        checkHardened(w, { allowIptablesInit: true })
        const injected = annotationsOf(w.template)[ANNOTATIONS.status] === STATUS_INJECTED
        if (file === 'postgres.yaml') {
          expect(injected, `${w.id} opted out`).toBe(false)
          expect(containersOf(w.pod).map((c) => c.name)).toEqual(['postgres'])
          continue
        }
        expect(injected, w.id).toBe(true)
        const proxy = containersOf(w.pod).find((c) => c.name === PROXY_CONTAINER)
        expect(proxy, `${w.id} has ${PROXY_CONTAINER}`).toBeDefined()
        const ingress = arr(proxy?.ports, 'ports')
          .map((p) => obj(p, 'port'))
          .find((p) => p.name === PORT_NAMES.ingress)
        expect(ingress?.containerPort).toBe(PORTS.ingress)
        // The Service in the same file still (or now) reaches the ingress port.
        const svc = objs.find((o) => o.kind === 'Service')
        const target = obj(arr(obj(svc?.spec, 'spec').ports, 'ports')[0], 'port').targetPort
        expect([PORTS.ingress, PORT_NAMES.ingress]).toContain(target)
        // The sidecar is given the service name the demo app uses for its gids.
        const app = containersOf(w.pod).find((c) => c.name === 'app')
        const service = String(arr(app?.args, 'args')[2])
        expect(envOf(proxy ?? {}).get('TXMESH_SERVICE')?.value).toBe(service)
      }
    })
  }
})
