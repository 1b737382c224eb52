// The sidecar: four listeners (five with the optional health listener for kubelet probes)
// around one forwarder and the transaction parts. Admin and health bind first so probes answer
// while the rest start; /readyz turns ready only once every listener is bound
// and the log has been replayed (recovery started).
import type { Server } from 'node:http'
import { resolve as resolvePath } from 'node:path'
import { EventHub } from './admin/events.js'
import { createHealthServer } from './admin/health.js'
import { createAdminServer, type Readiness } from './admin/server.js'
import { checkAdminToken } from './config/load.js'
import type { ListenerName, SidecarConfig } from './config/types.js'
import { createControlServer, type ControlDeps } from './control/server.js'
import { ConfigInvalidError, MeshKeyMissingError } from './errors.js'
import type { Logger } from './telemetry/logger.js'
import { FileLog } from './wal/file-log.js'
import { PgLog } from './store/pg-log.js'
import type { TxLog } from './store/types.js'
import { logIncarnation } from './wal/incarnation.js'
import { newRunTag } from './tx/protocol.js'
import { closeServer, listen } from './net.js'
import { LIMITS } from './limits.js'
import { Pool } from './http-client.js'
import { egressResolver, serviceOrigins } from './proxy/egress/target.js'
import { Forwarder } from './proxy/forward.js'
import { ingressResolver } from './proxy/ingress/target.js'
import { ProxyServer } from './proxy/server.js'
import { ControlClient } from './control/client.js'
import { KeyRing, watchKeyFile } from './tx/keys.js'
import { PeerTls, peerAgent } from './peer-tls.js'
import { leasedControl, leasedHttp, nodeTimers, productionIo, sleep, type SidecarIo } from './tx/io.js'
import { KubeLeases } from './store/kube-lease.js'
import { startSubscriptionsRetrying, type Subscriptions } from './events/subscriber.js'
import { Takeover, type AdoptedLog, type TakenFrom } from './store/takeover.js'
import type { LogEntry } from './store/types.js'
import { committedIn, decodeRecords } from './tx/records.js'
import { readTlsMaterial, watchSecretFile } from './secrets.js'
import { CoordinatorDriver } from './tx/coordinator/driver.js'
import { ParticipantDriver } from './tx/participant/driver.js'
import { SagaDriver } from './tx/saga/driver.js'
import { TccParticipant } from './tx/saga/participant.js'
import { Outbox } from './events/outbox.js'
import type { TxMessage } from './events/types.js'
import { EVENT_SUBJECT_PREFIX, LazyNatsSink } from './events/nats.js'
import { WebhookSink } from './events/webhook.js'
import type { Sink } from './events/types.js'
import { ActiveTxPlane, DisabledTxPlane } from './proxy/tx-hook.js'
import type { TxHook } from './proxy/types.js'
import { SidecarMetrics } from './telemetry/metrics.js'
import { startTracing } from './telemetry/tracing.js'
import { loopMonitorFromEnv } from './telemetry/loop-monitor.js'

/** Bound ports; `health` only when the health listener is enabled. */
export type Ports = Record<ListenerName, number> & { health?: number }

export interface Sidecar {
  readonly config: SidecarConfig
  readonly ports: Ports
  /** host:port at which peers reach this sidecar's control listener. */
  readonly controlAddress: string
  readiness(): Readiness
  /** SIGTERM behaviour: stop accepting, finish in-flight work up to the drain timeout, close. */
  drain(timeoutMs?: number): Promise<void>
}

function advertised(config: SidecarConfig, port: number): string {
  if (config.mesh.advertise !== undefined) return config.mesh.advertise
  const h = config.listeners.control.host
  const host = h === '0.0.0.0' || h === '::' ? '127.0.0.1' : h
  return host.includes(':') ? `[${host}]:${port}` : `${host}:${port}`
}

export async function startSidecar(config: SidecarConfig, log: Logger): Promise<Sidecar> {
  let readiness: Readiness = 'starting'
  const ports: Ports = { egress: 0, ingress: 0, control: 0, admin: 0 }
  const L = config.listeners
  // The live mesh keys: mesh.keyFile is re-read when it changes (rotation without a restart).
  const keys = config.mesh.keys.length > 0 ? new KeyRing(config.mesh.keys) : undefined
  const txEnabled = keys !== undefined
  const peerTls = config.tls === undefined ? undefined : startPeerTls(config, log)
  // What the admin API's transaction calls and the control listener answer without a mesh key.
  const txUnavailable = (): MeshKeyMissingError | undefined =>
    txEnabled
      ? undefined
      : new MeshKeyMissingError('transactions need a mesh key (TXMESH_MESH_KEY, TXMESH_MESH_KEY_FILE or mesh.keyFile)')
  const stopKeyWatch =
    keys !== undefined && config.mesh.keyFile !== undefined ? watchKeyFile(keys, config.mesh.keyFile, log) : undefined
  // The admin token: admin.tokenFile is re-read when it changes, as the mesh key file is.
  let adminToken = config.admin.token
  const stopTokenWatch =
    config.admin.tokenFile === undefined
      ? undefined
      : watchAdminTokenFile(
          config.admin.tokenFile,
          log,
          () => adminToken,
          (t) => (adminToken = t),
        )
  let coordinator: CoordinatorDriver | undefined
  let participant: ParticipantDriver | undefined
  let steps: SagaDriver | undefined
  let outbox: Outbox | undefined
  let controlDeps: ControlDeps | undefined
  // Transaction events for the dashboard (GET /v1/events, /ui).
  const events = new EventHub()
  const loop = loopMonitorFromEnv()

  const admin = createAdminServer({
    readiness: () => readiness,
    get coordinator() {
      return coordinator
    },
    get participant() {
      return participant
    },
    get steps() {
      return steps
    },
    get outbox() {
      return outbox
    },
    // Postgres store: the instance whose log holds each transaction, and those taken over.
    owner: config.storePostgres === undefined ? undefined : `${config.service}/${config.storePostgres.instance}`,
    takenOver: () => takeover?.transactions() ?? [],
    subscriptions: () => subscriptions,
    metrics: () => metrics,
    traceUrl: config.traceUrl,
    events,
    browser: { allowedHosts: config.admin.allowedHosts, allowedOrigins: config.admin.allowedOrigins },
    stats: () => ({
      log: fileLog?.stats(),
      transactions:
        coordinator === undefined ? undefined : { active: coordinator.activeCount, ...coordinator.outcomes },
      steps:
        steps === undefined ? undefined : { active: steps.activeCount, stuck: steps.stuckCount, ...steps.outcomes },
      branches: participant?.branchCount,
      // Messages sent batched and the exchanges that carried them (src/control/batcher.ts).
      batches:
        controlClient === undefined
          ? undefined
          : { control: controlClient.batchCounters, hooks: participant?.hookBatchCounters },
      eventLoop: loop?.read(),
      // Postgres store: sibling logs this instance took over and is finishing.
      takenOver: takeover?.list(),
    }),
    txUnavailable,
    logger: log,
    token: () => adminToken,
  })
  const health = L.health === undefined ? undefined : createHealthServer(() => readiness)
  const control = createControlServer(() => controlDeps, peerTls, undefined, txUnavailable)
  const metrics = new SidecarMetrics({
    inFlight: () => coordinator?.activeCount ?? 0,
    inDoubt: () => participant?.inDoubtCount ?? 0,
    stuck: () => steps?.stuckCount ?? 0,
    lag: async () => ((await subscriptions?.views()) ?? []).map((v) => ({ subscription: v.name, lag: v.lag })),
  })
  // The egress's own port, once bound: no upstream connection may reach it (src/proxy/loop.ts).
  const selfPorts = new Set<number>()
  const forwarder = new Forwarder(log, metrics, peerTls, selfPorts)
  // Undefined unless OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT is set: then nothing is traced.
  const tracing = await startTracing(config.service, log)
  const bound: Server[] = []
  let fileLog: TxLog | undefined
  let takeover: Takeover | undefined
  let kube: KubeLeases | undefined
  let subscriptions: Subscriptions | undefined
  let stopping = false
  let controlClient: ControlClient | undefined
  let appPool: Pool | undefined
  try {
    ports.admin = await listen(admin, L.admin.host, L.admin.port)
    bound.push(admin)
    // Right after admin, for the same reason: the kubelet's startup probe answers early.
    if (health !== undefined && L.health !== undefined) {
      ports.health = await listen(health, L.health.host, L.health.port)
      bound.push(health)
    }
    ports.control = await listen(control, L.control.host, L.control.port)
    bound.push(control)
    const self = advertised(config, ports.control)

    let plane: TxHook | undefined
    if (keys !== undefined) {
      const onSync = (n: number, sec: number): void => metrics.logSync(n, sec)
      const pgStore = config.storePostgres
      // store.lease kubernetes: the leases are Lease objects of the pod's namespace.
      kube = pgStore?.lease === 'kubernetes' ? KubeLeases.inCluster(log) : undefined
      const opened =
        pgStore === undefined
          ? await FileLog.open(resolvePath(config.storeDir), {
              logger: log,
              onSync,
              ...(config.storeSync === undefined ? {} : { sync: config.storeSync }),
            })
          : await PgLog.open({
              url: pgStore.url,
              schema: pgStore.schema,
              logId: `${config.service}/${pgStore.instance}`,
              holder: pgStore.instance,
              address: self,
              ...(kube === undefined ? {} : { kube }),
              leaseMs: pgStore.leaseMs,
              logger: log,
              onSync,
              onRenewed: () => metrics.leaseRenewals.inc(),
              // A sibling took this instance's log over (it was paused or cut off past its lease):
              // every write is refused from now on; stop coordinating, as on a failed log write.
              onFenced: () => {
                metrics.fenced.inc()
                events.emit('fenced', { log: `${config.service}/${pgStore.instance}` })
                io.fatal('lease_lost', { log: `${config.service}/${pgStore.instance}` })
              },
            })
      fileLog = opened.log
      const leased = opened.log instanceof PgLog ? opened.log : undefined
      const incarnation = await logIncarnation(fileLog, opened.records)
      const run = newRunTag()
      log.info('log_incarnation', { incarnation: incarnation.id, created: incarnation.created })
      controlClient = new ControlClient(keys, Date.now, peerTls, { logger: log, metrics })
      outbox = createOutbox(config, fileLog, log)
      const bus = outbox
      // Every transaction event feeds the dashboard (SSE) and, when sinks are configured, the outbox.
      const onEvent = (type: string, data: Readonly<Record<string, unknown>>): void => {
        events.emit(type, data)
        bus.record(type, data)
      }
      const publish = (id: string, messages: readonly TxMessage[], traceparent?: string): Promise<void> =>
        bus.publish(id, messages, traceparent)
      const appOrigin = config.app.host.includes(':')
        ? `http://[${config.app.host}]:${config.app.port}`
        : `http://${config.app.host}:${config.app.port}`
      // Its own pool: the forwarder's pools are evicted when many upstreams are in use.
      appPool = new Pool(appOrigin, {
        connections: LIMITS.poolConnectionsPerOrigin,
        keepAliveTimeout: LIMITS.upstreamKeepAliveMs,
        connect: { timeout: LIMITS.connectTimeoutMs },
      })
      // subscriptions: committed messages delivered to the app (started once the drivers run).
      const subscriptionsStarting =
        config.subscriptions.length === 0 || config.events.nats === undefined
          ? undefined
          : startSubscriptionsRetrying({
              servers: config.events.nats.servers,
              name: `txmesh-${config.service}-subscriptions`,
              subscriptions: config.subscriptions,
              app: appPool,
              logger: log,
              metrics: { delivery: (subscription, result) => metrics.deliveries.inc({ subscription, result }) },
              tracer: tracing?.tracer,
              started: (s) => (subscriptions = s),
              closed: () => stopping,
            })
      void subscriptionsStarting
      // With peer TLS, https:// step targets (services reached over TLS) get the mesh CA and this
      // sidecar's certificate; the connector opens plain http:// targets as before.
      const peerHttp = peerAgent(peerTls)
      const io = withLease(
        productionIo({ log: fileLog, control: controlClient, app: appPool, http: peerHttp, logger: log }),
        leased === undefined ? undefined : () => leased.leaseHeld(),
      )
      coordinator = new CoordinatorDriver({
        io,
        self,
        incarnation: incarnation.id,
        group: pgStore?.group,
        run,
        keys,
        logger: log,
        metrics,
        tracing,
        onEvent,
        publish,
      })
      participant = new ParticipantDriver({
        io,
        service: config.service,
        self,
        incarnation: incarnation.id,
        appOrigin,
        hooks: config.hooks,
        logger: log,
        coordinators: config.mesh.coordinators,
        onEvent,
      })
      steps = new SagaDriver({
        io,
        self,
        incarnation: incarnation.id,
        run,
        keys,
        logger: log,
        metrics,
        onEvent,
        publish,
        policy: config.steps,
        targets: { origins: serviceOrigins(config), controls: config.mesh.coordinators },
      })
      const tcc = new TccParticipant({
        io,
        service: config.service,
        self,
        incarnation: incarnation.id,
        appOrigin,
        hooks: config.hooks,
        logger: log,
        onEvent,
      })
      plane = new ActiveTxPlane({
        keys,
        coordinators: config.mesh.coordinators,
        coordinator,
        participant,
        tcc,
        steps,
        control: controlClient,
      })
      controlDeps = { keys, self, coordinator, participant, tcc, steps, logger: log }
      // The outbox first: events the drivers emit while recovering continue each transaction's
      // sequence after the logged ones (same ids would be taken for duplicates by the bus).
      const replayed = decodeRecords(opened.records)
      outbox.recover(replayed, committedIn(replayed))
      const c = coordinator.recover(replayed)
      const p = participant.recover(replayed)
      const st = steps.recover(replayed)
      if (c + p + st > 0) log.info('recovery_started', { coordinator: c, participant: p, steps: st })
      if (pgStore !== undefined) {
        const client = controlClient
        const pool = appPool
        // Siblings' logs whose lease lapsed: finished here with the same drivers on their records.
        const adopt = async (taken: PgLog, records: readonly LogEntry[], from: TakenFrom): Promise<AdoptedLog> => {
          const inc = await logIncarnation(taken, records)
          let stop: (() => Promise<void>) | undefined
          const base = productionIo({ log: taken, control: client, app: pool, http: peerHttp, logger: log })
          const leased = withLease(base, () => taken.leaseHeld())
          // The drivers' calls still out (a compensation running at its app, a TCC confirm, a
          // phase-2 message): the log is handed on only once they came back, else the next holder,
          // claiming it at once, sends the same compensation again while the first one still runs.
          const out = new Set<Promise<unknown>>()
          const tracked = <T>(p: Promise<T>): Promise<T> => {
            out.add(p)
            const done = (): void => void out.delete(p)
            p.then(done, done)
            return p
          }
          const tio: SidecarIo = {
            ...leased,
            control: {
              send: (address, call) => tracked(leased.control.send(address, call)),
              call: (address, method, path, b) => tracked(leased.control.call(address, method, path, b)),
            },
            // The peer client is the sidecar's own: the taken log's drivers never close it (their
            // close at the end of a takeover used to destroy it for the whole sidecar).
            // A compensation the previous holder sent before its lease lapsed may still run at its
            // target: the same one is sent again only once that call would have timed out.
            http: {
              exchange: (origin, o) =>
                tracked(
                  (async () => {
                    const wait = from.previousCallsUntil - performance.now()
                    if (wait > 0) await sleep(nodeTimers, wait)
                    return leased.http.exchange(origin, o)
                  })(),
                ),
            },
            // A write to the taken log failed: stop finishing it (a sibling claims it again).
            fatal: (what, detail) => {
              log.error('takeover_log_failed', { log: taken.id, what, ...detail })
              void stop?.()
            },
          }
          const tOutbox = createOutbox(config, taken, log)
          const tPublish = (id: string, messages: readonly TxMessage[], traceparent?: string): Promise<void> =>
            tOutbox.publish(id, messages, traceparent)
          const tOnEvent = (type: string, data: Readonly<Record<string, unknown>>): void => {
            events.emit(type, { ...data, takenFrom: taken.id })
            tOutbox.record(type, data)
          }
          const common = { io: tio, self, incarnation: inc.id, run, keys, logger: log, metrics, onEvent: tOnEvent }
          const tCoordinator = new CoordinatorDriver({ ...common, tracing, publish: tPublish })
          const tSteps = new SagaDriver({
            ...common,
            publish: tPublish,
            policy: config.steps,
            targets: { origins: serviceOrigins(config), controls: config.mesh.coordinators },
          })
          const decoded = decodeRecords(records)
          tOutbox.recover(decoded, committedIn(decoded))
          const counts = { coordinator: tCoordinator.recover(decoded), steps: tSteps.recover(decoded) }
          log.info('takeover_recovery_started', { log: taken.id, ...counts })
          let closing: Promise<void> | undefined
          stop = () =>
            (closing ??= (async () => {
              tCoordinator.close()
              await Promise.all([tSteps.close(), tOutbox.close()])
              // Closed drivers start no call; each one out ends within its own timeout.
              await Promise.allSettled([...out])
            })())
          return {
            incarnation: inc.id,
            outcomeFor: (id, holder) => (tSteps.has(id) ? tSteps.outcomeFor(id) : tCoordinator.outcomeFor(id, holder)),
            list: () => [...tCoordinator.list(), ...tSteps.list()],
            close: stop,
          }
        }
        takeover = new Takeover({
          url: pgStore.url,
          schema: pgStore.schema,
          service: config.service,
          instance: pgStore.instance,
          address: self,
          ...(kube === undefined ? {} : { kube }),
          leaseMs: pgStore.leaseMs,
          logger: log,
          adopt,
          onTakeover: (logId, token, records) => {
            metrics.takeovers.inc({ result: 'claimed' })
            events.emit('takeover', { log: logId, token, records, by: pgStore.instance })
          },
          onFinished: (logId) => {
            metrics.takeovers.inc({ result: 'finished' })
            events.emit('takeover-finished', { log: logId, by: pgStore.instance })
          },
          onRenewed: () => metrics.leaseRenewals.inc(),
          onFenced: () => metrics.fenced.inc(),
        })
        takeover.start()
        const own = leased
        controlDeps = {
          ...controlDeps,
          group: takeover,
          groupAddress: pgStore.group,
          ...(own === undefined ? {} : { ownLogHeld: () => own.stillHeld() }),
        }
      }
    } else {
      // Contexts are refused with TXM_MESH_KEY_MISSING rather than silently ignored. Said once at
      // start: a proxy that forwards fine but refuses every transaction looks like a bug otherwise.
      log.warn('mesh_key_missing', {
        message: 'no mesh key: transactions and the control listener are off (TXM_MESH_KEY_MISSING) until one is set',
        hint: 'set TXMESH_MESH_KEY (or the variable mesh.keyEnv names) to a key of at least 16 bytes, or point TXMESH_MESH_KEY_FILE or mesh.keyFile at a file holding one, and restart',
      })
      plane = new DisabledTxPlane()
    }

    const egress = new ProxyServer({
      direction: 'egress',
      config,
      forwarder,
      log,
      tx: plane,
      tracing,
      peerTls,
      selfPorts,
      resolve: egressResolver(config, () => ({ host: L.egress.host, port: ports.egress })),
    })
    const ingress = new ProxyServer({
      direction: 'ingress',
      config,
      forwarder,
      log,
      tx: plane,
      tracing,
      peerTls,
      selfPorts,
      resolve: ingressResolver(config),
    })
    ports.egress = await egress.listen(L.egress.host, L.egress.port)
    selfPorts.add(ports.egress)
    bound.push(egress.server)
    ports.ingress = await ingress.listen(L.ingress.host, L.ingress.port)
    bound.push(ingress.server)
    readiness = 'ready'

    let draining: Promise<void> | undefined
    const drain = (timeoutMs = config.drainTimeoutMs): Promise<void> =>
      (draining ??= (async () => {
        readiness = 'draining'
        const started = Date.now()
        const [e, i] = await Promise.all([egress.drain(timeoutMs), ingress.drain(timeoutMs)])
        coordinator?.close()
        participant?.close()
        stopping = true
        // Deliveries running end (each within its timeout); messages held here are redelivered.
        await subscriptions?.close()
        await takeover?.close()
        await Promise.all([
          steps?.close(),
          outbox?.close(),
          closeServer(control),
          forwarder.close(),
          controlClient?.close(),
          appPool?.close(),
        ])
        // The Postgres store: given up, not left to lapse. Every call the drivers had out came back
        // above, so a sibling may claim it at once, and this instance's next process need not wait
        // out the lease (an older process of it may act until then: PgLog quietUntil).
        if (fileLog instanceof PgLog) await fileLog.release()
        else await fileLog?.close()
        await kube?.close()
        loop?.close()
        stopKeyWatch?.()
        stopTokenWatch?.()
        peerTls?.close()
        // Every span has ended by now (responses closed, open transactions cut by close()):
        // flush them before the process exits.
        await tracing?.shutdown()
        // Probes see `draining` (readyz 503) until the very end, on both ports.
        await Promise.all([closeServer(admin), health === undefined ? undefined : closeServer(health)])
        log.info('drained', { ms: Date.now() - started, cutInflight: e.inflightAtDeadline + i.inflightAtDeadline })
      })())
    return { config, ports, controlAddress: self, readiness: () => readiness, drain }
  } catch (err) {
    await Promise.allSettled(bound.map(closeServer))
    stopKeyWatch?.()
    stopTokenWatch?.()
    peerTls?.close()
    await fileLog?.close()
    await kube?.close()
    await appPool?.close()
    await tracing?.shutdown()
    throw err
  }
}

/**
 * Drivers acting on a leased log (the Postgres store) send nothing while its lease has lapsed:
 * no control message and no saga/TCC call with effects (see leasedControl).
 */
function withLease(io: SidecarIo, held: (() => boolean) | undefined): SidecarIo {
  if (held === undefined) return io
  return { ...io, control: leasedControl(io.control, held), http: leasedHttp(io.http, held) }
}

/** Peer TLS from the config's files (checked at load; read again here), watched for changes. */
function startPeerTls(config: SidecarConfig, log: Logger): PeerTls {
  const settings = config.tls as NonNullable<SidecarConfig['tls']>
  const material = readTlsMaterial(settings)
  if (typeof material === 'string')
    throw new ConfigInvalidError([{ file: config.source, line: 0, col: 0, message: `tls: ${material}` }])
  const tls = new PeerTls(settings, material, log)
  tls.watch()
  return tls
}

/** The event bus of the config: NATS (events and messages) and webhooks (events). */
function createOutbox(config: SidecarConfig, log: TxLog, logger: Logger): Outbox {
  const sinks: Sink[] = []
  let messages: Sink | undefined
  const n = config.events.nats
  if (n !== undefined) {
    const nats = new LazyNatsSink({
      servers: [...n.servers],
      stream: n.stream,
      subjects: [`${EVENT_SUBJECT_PREFIX}.>`, ...n.topics],
      name: `txmesh-${config.service}`,
      timeoutMs: LIMITS.eventSinkTimeoutMs,
      logger,
    })
    sinks.push(nats)
    messages = nats
  }
  for (const w of config.events.webhooks) sinks.push(new WebhookSink({ url: w.url }))
  return new Outbox({ log, service: config.service, logger, sinks, messages, topics: n?.topics ?? [] })
}

/**
 * Re-reads admin.tokenFile when it changes: a valid new token replaces the old one at once (the
 * old one is refused from then on); an unreadable or invalid file keeps the current token.
 */
function watchAdminTokenFile(
  file: string,
  log: Logger,
  current: () => Buffer | undefined,
  replace: (t: Buffer) => void,
): () => void {
  return watchSecretFile(file, {
    parse: checkAdminToken,
    apply: (t) => {
      if (current()?.equals(t) === true) return false
      replace(t)
      return true
    },
    log,
    reloaded: { event: 'admin_token_reloaded' },
    invalid: { event: 'admin_token_file_invalid', fields: () => ({ keeping: 'the current token' }) },
  })
}
