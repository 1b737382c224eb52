// deploy/observability: the Kubernetes manifests are well-formed and hardened, and the Grafana
// dashboard queries only metrics the sidecar exports (names read from a real metrics registry,
// so a renamed metric breaks this test rather than silently emptying a panel).
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { describe, expect, it } from 'vitest'
import { parseAllDocuments, parse as parseYaml } from 'yaml'
import { SidecarMetrics } from '../../src/telemetry/metrics.js'

const root = join(import.meta.dirname, '../..')
const dir = join(root, 'deploy/observability')
const MANIFESTS = ['otel-collector.yaml', 'jaeger.yaml']

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

function documents(file: string): Obj[] {
  const docs = parseAllDocuments(readFileSync(join(dir, file), 'utf8'))
  return docs
    .filter((d) => d.contents !== null) // a trailing `---` yields an empty document
    .map((d, i) => {
      expect(d.errors, `${file} document ${i}`).toEqual([])
      return obj(d.toJS(), `${file} document ${i}`)
    })
}

/** Metric names a real sidecar registry exposes (# TYPE lines of its text), and the histograms. */
async function exportedMetrics(): Promise<{ names: Set<string>; histograms: Set<string> }> {
  const text = await new SidecarMetrics({ inFlight: () => 0, inDoubt: () => 0 }).text()
  const typed = [...text.matchAll(/^# TYPE (txmesh_[a-z_]+) (\w+)$/gm)]
  expect(typed.length).toBeGreaterThan(5)
  return {
    names: new Set(typed.map((m) => m[1] as string)),
    histograms: new Set(typed.filter((m) => m[2] === 'histogram').map((m) => m[1] as string)),
  }
}

async function allowedSeries(): Promise<Set<string>> {
  const { names, histograms } = await exportedMetrics()
  const allowed = new Set(names)
  for (const h of histograms) for (const s of ['_bucket', '_sum', '_count']) allowed.add(h + s)
  return allowed
}

/** Every panel, including those nested in collapsed rows. */
function panels(list: unknown): Obj[] {
  return arr(list ?? [], 'panels').flatMap((p) => {
    const o = obj(p, 'panel')
    return [o, ...panels(o.panels)]
  })
}

describe('deploy/observability manifests', () => {
  it('kustomization lists both manifests', () => {
    const k = obj(parseYaml(readFileSync(join(dir, 'kustomization.yaml'), 'utf8')), 'kustomization')
    expect(k.kind).toBe('Kustomization')
    expect(arr(k.resources, 'resources')).toEqual(expect.arrayContaining(MANIFESTS))
  })

  for (const file of MANIFESTS) {
    it(`${file}: every document has apiVersion, kind and metadata.name`, () => {
      const docs = documents(file)
      expect(docs.length).toBeGreaterThan(0)
      for (const d of docs) {
        expect(typeof d.apiVersion, JSON.stringify(d).slice(0, 80)).toBe('string')
        expect(typeof d.kind).toBe('string')
        const name = obj(d.metadata, `${String(d.kind)} metadata`).name
        expect(typeof name, `${String(d.kind)} metadata.name`).toBe('string')
        expect(name).not.toBe('')
        if (d.kind !== 'Namespace') expect(obj(d.metadata, 'metadata').namespace).toBe('txmesh-observability')
      }
    })

    it(`${file}: Deployments set resource limits and run as non-root`, () => {
      const deployments = documents(file).filter((d) => d.kind === 'Deployment')
      expect(deployments.length).toBeGreaterThan(0)
      for (const d of deployments) {
        const name = String(obj(d.metadata, 'metadata').name)
        const pod = obj(obj(obj(d.spec, `${name} spec`).template, `${name} template`).spec, `${name} pod spec`)
        const podSec = isObj(pod.securityContext) ? pod.securityContext : {}
        const containers = arr(pod.containers, `${name} containers`).map((c) => obj(c, `${name} container`))
        expect(containers.length).toBeGreaterThan(0)
        for (const c of containers) {
          const where = `${name}/${String(c.name)}`
          const limits = obj(obj(c.resources, `${where} resources`).limits, `${where} resources.limits`)
          expect(limits.cpu, `${where} cpu limit`).toBeDefined()
          expect(limits.memory, `${where} memory limit`).toBeDefined()
          const sec = { ...podSec, ...(isObj(c.securityContext) ? c.securityContext : {}) }
          expect(sec.runAsNonRoot, `${where} runAsNonRoot`).toBe(true)
          if (sec.runAsUser !== undefined) expect(sec.runAsUser, `${where} runAsUser`).not.toBe(0)
          if (isObj(c.securityContext))
            expect(c.securityContext.allowPrivilegeEscalation, `${where} allowPrivilegeEscalation`).not.toBe(true)
        }
      }
    })
  }

  it('the collector receives OTLP on 4317/4318, batches, and exports traces to jaeger-collector:4317', () => {
    const docs = documents('otel-collector.yaml')
    const cm = docs.find((d) => d.kind === 'ConfigMap')
    const config = obj(parseYaml(String(obj(cm?.data, 'ConfigMap data')['config.yaml'])), 'collector config')
    const protocols = obj(obj(obj(config.receivers, 'receivers').otlp, 'otlp receiver').protocols, 'protocols')
    expect(obj(protocols.grpc, 'grpc').endpoint).toBe('0.0.0.0:4317')
    expect(obj(protocols.http, 'http').endpoint).toBe('0.0.0.0:4318')
    expect(obj(obj(config.extensions, 'extensions').health_check, 'health_check').endpoint).toBe('0.0.0.0:13133')
    const exporter = obj(obj(config.exporters, 'exporters')['otlp/jaeger'], 'otlp/jaeger')
    expect(exporter.endpoint).toBe('jaeger-collector:4317')
    expect(obj(exporter.tls, 'tls').insecure).toBe(true)
    const traces = obj(obj(obj(config.service, 'service').pipelines, 'pipelines').traces, 'traces pipeline')
    expect(traces.receivers).toEqual(['otlp'])
    expect(arr(traces.processors, 'processors')).toContain('batch')
    expect(traces.exporters).toEqual(['otlp/jaeger'])

    const services = docs.filter((d) => d.kind === 'Service')
    const ports = services.flatMap((s) => arr(obj(s.spec, 'spec').ports, 'ports').map((p) => obj(p, 'port').port))
    expect(ports).toEqual(expect.arrayContaining([4317, 4318]))
    const dep = docs.find((d) => d.kind === 'Deployment')
    const c = obj(
      arr(obj(obj(obj(dep?.spec, 'spec').template, 'template').spec, 'pod').containers, 'containers')[0],
      'container',
    )
    expect(c.image).toBe('otel/opentelemetry-collector:0.115.1')
    expect(obj(obj(c.readinessProbe, 'readinessProbe').httpGet, 'httpGet').port).toBe('health')
  })
})

describe('deploy/observability/grafana-dashboard.json', () => {
  const dashboard = obj(JSON.parse(readFileSync(join(dir, 'grafana-dashboard.json'), 'utf8')), 'dashboard')

  it('has schemaVersion 39 and the datasource and service variables', () => {
    expect(dashboard.schemaVersion).toBe(39)
    const vars = arr(obj(dashboard.templating, 'templating').list, 'templating.list').map((v) => obj(v, 'variable'))
    const ds = vars.find((v) => v.name === 'datasource')
    expect(ds).toMatchObject({ type: 'datasource', query: 'prometheus' })
    const service = vars.find((v) => v.name === 'service')
    expect(service?.type).toBe('query')
    expect(JSON.stringify(service?.query)).toContain('label_values(txmesh_proxy_requests_total, job)')
  })

  it('queries only metric names the sidecar exports', async () => {
    const allowed = await allowedSeries()
    expect(allowed.size).toBeGreaterThan(0)
    const exprs = panels(dashboard.panels).flatMap((p) =>
      arr(p.targets ?? [], 'targets').map((t) => String(obj(t, 'target').expr)),
    )
    // Variable queries select metrics too.
    for (const v of arr(obj(dashboard.templating, 'templating').list, 'templating.list')) {
      const o = obj(v, 'variable')
      if (o.type === 'query') exprs.push(JSON.stringify(o.query), String(o.definition ?? ''))
    }
    expect(exprs.length).toBeGreaterThan(0)
    const used = new Set(exprs.flatMap((e) => e.match(/txmesh_[a-z_]+/g) ?? []))
    expect(used.size).toBeGreaterThan(0)
    const unknown = [...used].filter((m) => !allowed.has(m))
    expect(unknown, `metric names not exported by src/telemetry/metrics.ts`).toEqual([])
  })

  it('every panel target uses the datasource variable', () => {
    for (const p of panels(dashboard.panels)) {
      if (p.type === 'row') continue
      expect(obj(p.datasource, `panel ${String(p.title)} datasource`).uid).toBe('${datasource}')
      for (const t of arr(p.targets, `panel ${String(p.title)} targets`))
        expect(obj(obj(t, 'target').datasource, 'target datasource').uid).toBe('${datasource}')
    }
  })
})
