// NATS JetStream sink. deliver() is a JetStream publish with the event id as Nats-Msg-Id, so a
// redelivery inside the stream's duplicate window (server default 2 min, kept as is) is stored
// once: the PubAck then says `duplicate: true`, which is still an acknowledgement.
import assert from 'node:assert/strict'
import type { JetStreamClient, JetStreamManager } from '@nats-io/jetstream'
import type { NatsConnection } from '@nats-io/transport-node'
import { silentLogger, type Logger } from '../telemetry/logger.js'
import { LIMITS } from '../limits.js'
import type { BusEvent, Sink } from './types.js'

export const EVENT_SUBJECT_PREFIX = 'txmesh.events'

/**
 * A service name as one NATS subject token: letters, digits, `_` and `-` are kept; everything
 * else (`.` separates tokens, `*` and `>` are wildcards, whitespace is illegal) becomes `_`.
 * Distinct names can map to one token (`a.b`, `a_b`); service names are expected to be DNS-like.
 */
export function subjectToken(service: string): string {
  const token = service.replace(/[^A-Za-z0-9_-]/g, '_')
  return token === '' ? '_' : token
}

/** `txmesh.events.<service token>`: where a service's events are published. */
export function eventSubject(service: string): string {
  return `${EVENT_SUBJECT_PREFIX}.${subjectToken(service)}`
}

export interface NatsSinkOptions {
  servers: string[]
  /** JetStream stream holding the events; created (file storage) or updated to add missing subjects. */
  stream: string
  subjects: string[]
  /** Sink name and NATS connection name (shows in the server's connz). */
  name: string
  /** Connect timeout, JetStream API timeout and publish-ack timeout. */
  timeoutMs: number
  logger?: Logger
  /** Wait between reconnect attempts; default LIMITS.natsReconnectWaitMs. */
  reconnectWaitMs?: number
}

export class NatsSink implements Sink {
  readonly name: string
  private readonly nc: NatsConnection
  private readonly js: JetStreamClient
  private readonly timeoutMs: number
  private readonly logger: Logger
  private readonly statusLoop: Promise<void>
  // The client buffers publishes while reconnecting and flushes them on reconnect; a deliver()
  // then would only wait out its timeout. Refusing at once lets the queue back off instead, and
  // keeps the client's buffer from filling with events the outbox holds anyway.
  private connected = true

  private constructor(nc: NatsConnection, js: JetStreamClient, opts: NatsSinkOptions, logger: Logger) {
    this.name = opts.name
    this.nc = nc
    this.js = js
    this.timeoutMs = opts.timeoutMs
    this.logger = logger
    this.statusLoop = this.watchStatus().catch((err: unknown) => {
      this.logger.warn('events.nats.status_failed', { sink: this.name, error: String(err) })
    })
  }

  static async connect(opts: NatsSinkOptions): Promise<NatsSink> {
    assert(opts.servers.length > 0, 'NatsSink needs at least one server')
    assert(opts.subjects.length > 0, 'NatsSink needs at least one subject')
    assert(opts.timeoutMs >= 1 && opts.timeoutMs <= LIMITS.eventDeliveryTimeoutCapMs, 'timeoutMs out of range')
    const logger = opts.logger ?? silentLogger
    const reconnectWaitMs = opts.reconnectWaitMs ?? LIMITS.natsReconnectWaitMs
    assert(reconnectWaitMs >= 1 && reconnectWaitMs <= LIMITS.eventBackoffCapMs, 'reconnectWaitMs out of range')
    // Loaded on first use: a sidecar without a NATS sink never pays for the client (footprint).
    const { connect } = await import('@nats-io/transport-node')
    const { jetstream, jetstreamManager } = await import('@nats-io/jetstream')
    let nc: NatsConnection
    try {
      nc = await connect({
        servers: opts.servers,
        name: opts.name,
        timeout: Math.min(opts.timeoutMs, LIMITS.natsConnectTimeoutMs),
        reconnect: true,
        maxReconnectAttempts: -1,
        reconnectTimeWait: reconnectWaitMs,
      })
    } catch (err) {
      throw new Error(`nats sink ${opts.name}: cannot connect to ${opts.servers.join(', ')}: ${errorText(err)}`, {
        cause: err,
      })
    }
    try {
      const jsm = await jetstreamManager(nc, { timeout: opts.timeoutMs })
      await ensureStream(jsm, opts.stream, opts.subjects, logger)
      return new NatsSink(nc, jetstream(nc, { timeout: opts.timeoutMs }), opts, logger)
    } catch (err) {
      await nc.close()
      throw new Error(`nats sink ${opts.name}: cannot set up stream ${opts.stream}: ${errorText(err)}`, { cause: err })
    }
  }

  async deliver(e: BusEvent): Promise<void> {
    if (this.nc.isClosed()) throw new Error(`nats sink ${this.name}: connection closed`)
    if (!this.connected) throw new Error(`nats sink ${this.name}: disconnected, reconnecting`)
    try {
      const opts: Parameters<JetStreamClient['publish']>[2] = { msgID: e.id, timeout: this.timeoutMs }
      if (e.headers !== undefined) {
        const { headers } = await import('@nats-io/transport-node')
        const h = headers()
        for (const [k, v] of Object.entries(e.headers)) h.set(k, v)
        opts.headers = h
      }
      await this.js.publish(e.subject, JSON.stringify(e.payload), opts)
    } catch (err) {
      throw new Error(`nats sink ${this.name}: publish to ${e.subject} failed: ${errorText(err)}`, { cause: err })
    }
  }

  async close(): Promise<void> {
    if (!this.nc.isClosed()) await this.nc.close()
    await this.statusLoop
  }

  private async watchStatus(): Promise<void> {
    for await (const s of this.nc.status()) {
      if (s.type === 'disconnect') {
        this.connected = false
        this.logger.warn('events.nats.disconnected', { sink: this.name, server: s.server })
      } else if (s.type === 'reconnect') {
        this.connected = true
        this.logger.info('events.nats.reconnected', { sink: this.name, server: s.server })
      } else if (s.type === 'close') {
        this.connected = false
        return
      }
    }
  }
}

/** Creates the stream, or adds the subjects it lacks; storage and limits of an existing stream are left alone. */
export async function ensureStream(
  jsm: JetStreamManager,
  stream: string,
  subjects: string[],
  logger: Logger,
): Promise<void> {
  const { JetStreamApiCodes, JetStreamApiError, StorageType } = await import('@nats-io/jetstream')
  // Two sidecars may race to create the stream: the loser's add fails with "already in use",
  // and its second pass finds the stream and updates it.
  for (let pass = 0; ; pass++) {
    try {
      const info = await jsm.streams.info(stream)
      const have = info.config.subjects ?? []
      const missing = subjects.filter((s) => !have.includes(s))
      if (missing.length > 0) {
        await jsm.streams.update(stream, { subjects: [...have, ...missing] })
        logger.info('events.nats.stream_updated', { stream, added: missing })
      }
      return
    } catch (err) {
      // The public module exports JetStreamApiError and its codes, not StreamNotFoundError.
      if (!(err instanceof JetStreamApiError && err.code === JetStreamApiCodes.StreamNotFound)) throw err
    }
    try {
      // duplicate_window is not set: the server's default (2 min) is the dedup horizon.
      await jsm.streams.add({ name: stream, subjects, storage: StorageType.File })
      logger.info('events.nats.stream_created', { stream, subjects })
      return
    } catch (err) {
      if (pass >= 1) throw err
    }
  }
}

function errorText(err: unknown): string {
  return err instanceof Error ? err.message : String(err)
}

/**
 * A NatsSink that connects on first use and again after a failed connect: a sidecar starts (and
 * keeps its outbox) while the bus is down; deliveries fail, and the queue retries, until it is up.
 */
export class LazyNatsSink implements Sink {
  readonly name: string
  private sink: NatsSink | undefined
  private connecting: Promise<NatsSink> | undefined
  private closed = false

  constructor(private readonly opts: NatsSinkOptions) {
    this.name = opts.name
  }

  async deliver(e: BusEvent): Promise<void> {
    if (this.closed) throw new Error('sink closed')
    if (this.sink === undefined) {
      this.connecting ??= NatsSink.connect(this.opts).finally(() => (this.connecting = undefined))
      const s = await this.connecting
      if (this.closed) {
        await s.close()
        throw new Error('sink closed')
      }
      this.sink ??= s
    }
    return this.sink.deliver(e)
  }

  async close(): Promise<void> {
    this.closed = true
    await this.sink?.close()
  }
}
