// With env capture nothing redirects inbound traffic: peers must reach the sidecar's ingress
// port, which forwards to the app. `txmesh inject` therefore points a Service in its input whose
// selector matches an injected pod template at the ingress port. By number, not by its name
// txmesh-ingress: a named port of a native sidecar (an init container) got no EndpointSlice port
// before Kubernetes 1.32/1.33 (kubernetes/kubernetes#127958, fixed by #128850), which would
// leave the Service without endpoints on the clusters most teams run. The webhook cannot
// do this: it sees one Pod at a time, never the Services that select it (docs/kubernetes.md).
// Pure, like inject.ts; rewriting a rewritten Service changes nothing.
import { PORTS } from './constants.js'
import type { InjectedTemplate } from './inject.js'
import { isObject, pointer, type Json, type PatchOp } from './json-patch.js'

/** Operations that point the matching ports of `svc` (at pointer `at`) to the ingress port. */
export function retargetService(svc: Json, at: string, templates: readonly InjectedTemplate[]): PatchOp[] {
  if (!isObject(svc) || svc.kind !== 'Service' || !isObject(svc.spec)) return []
  const spec = svc.spec
  if (spec.type === 'ExternalName' || !isObject(spec.selector) || !Array.isArray(spec.ports)) return []
  const selector = Object.entries(spec.selector)
  if (selector.length === 0) return []
  const meta = isObject(svc.metadata) ? svc.metadata : {}
  const namespace = typeof meta.namespace === 'string' ? meta.namespace : undefined
  const selected = templates.filter(
    (t) =>
      t.capture === 'env' &&
      // An object without a namespace lands in the one `kubectl apply -n` names: same as any.
      (namespace === undefined || t.namespace === undefined || namespace === t.namespace) &&
      selector.every(([k, v]) => t.labels[k] === v),
  )
  if (selected.length === 0) return []
  const ops: PatchOp[] = []
  spec.ports.forEach((port, i) => {
    if (!isObject(port)) return
    if (port.protocol !== undefined && port.protocol !== 'TCP') return
    // targetPort defaults to port; a name refers to a container port of the selected pods.
    const target = port.targetPort ?? port.port
    const hits = selected.some((t) =>
      typeof target === 'number' ? target === t.appPort : typeof target === 'string' && t.appPortNames.includes(target),
    )
    if (!hits) return
    ops.push({
      op: port.targetPort === undefined ? 'add' : 'replace',
      path: at + pointer('spec', 'ports', i, 'targetPort'),
      value: PORTS.ingress,
    })
  })
  return ops
}
