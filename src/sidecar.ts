// The sidecar: four listeners around one forwarder. Admin binds first so probes answer while
// the rest start; /readyz turns ready only once every listener is bound.
import type { Server } from 'node:http'
import { createAdminServer, type Readiness } from './admin/server.js'
import type { ListenerName, SidecarConfig } from './config/types.js'
import { createControlServer } from './control/server.js'
import type { Logger } from './log.js'
import { closeServer, listen } from './net.js'
import { egressResolver } from './proxy/egress/target.js'
import { Forwarder } from './proxy/forward.js'
import { ingressResolver } from './proxy/ingress/target.js'
import { ProxyServer } from './proxy/server.js'

export type Ports = Record<ListenerName, number>

export interface Sidecar {
  readonly config: SidecarConfig
  readonly ports: Ports
  readiness(): Readiness
  /** SIGTERM behaviour: stop accepting, finish in-flight work up to the drain timeout, close. */
  drain(timeoutMs?: number): Promise<void>
}

export async function startSidecar(config: SidecarConfig, log: Logger): Promise<Sidecar> {
  let readiness: Readiness = 'starting'
  const ports: Ports = { egress: 0, ingress: 0, control: 0, admin: 0 }
  const admin = createAdminServer(() => readiness)
  const control = createControlServer()
  const forwarder = new Forwarder(log)
  const L = config.listeners
  const egress = new ProxyServer({
    direction: 'egress',
    config,
    forwarder,
    log,
    resolve: egressResolver(config, () => ({ host: L.egress.host, port: ports.egress })),
  })
  const ingress = new ProxyServer({ direction: 'ingress', config, forwarder, log, resolve: ingressResolver(config) })

  const bound: Server[] = []
  try {
    ports.admin = await listen(admin, L.admin.host, L.admin.port)
    bound.push(admin)
    ports.egress = await egress.listen(L.egress.host, L.egress.port)
    bound.push(egress.server)
    ports.ingress = await ingress.listen(L.ingress.host, L.ingress.port)
    bound.push(ingress.server)
    ports.control = await listen(control, L.control.host, L.control.port)
    bound.push(control)
  } catch (err) {
    await Promise.allSettled(bound.map(closeServer))
    throw err
  }
  readiness = 'ready'

  let draining: Promise<void> | undefined
  const drain = (timeoutMs = config.drainTimeoutMs): Promise<void> =>
    (draining ??= (async () => {
      readiness = 'draining'
      const started = Date.now()
      const [e, i] = await Promise.all([egress.drain(timeoutMs), ingress.drain(timeoutMs)])
      await Promise.all([closeServer(control), forwarder.close()])
      await closeServer(admin)
      log.info('drained', {
        ms: Date.now() - started,
        cutInflight: e.inflightAtDeadline + i.inflightAtDeadline,
      })
    })())

  return { config, ports, readiness: () => readiness, drain }
}
