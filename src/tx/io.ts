// What the protocol drivers (coordinator, participant, saga/TCC) do to the world, behind one
// interface: time, timers, randomness, the control transport to peer sidecars, HTTP to the app's
// hooks and to other services, the durable log, and stopping the process. `productionIo` builds
// it from Node timers, crypto, undici and a FileLog; the deterministic simulation
// (test/simulation) builds it from its scheduler, network and simulated disk, so the simulated
// sidecars run these same drivers.
import { exchange, type Dispatcher, type ExchangeOptions, type Exchanged } from '../http-client.js'
import type { TxLog } from '../store/types.js'
import type { Logger } from '../telemetry/logger.js'
import type { BatchedCall, ControlResult } from '../control/client.js'
import { randomBase64url } from './protocol.js'
import { nodeTimers, sleep, type Timer, type Timers } from '../timers.js'

export { nodeTimers, sleep, type Timer, type Timers }

/** Signed calls to peer sidecars' control listeners (ControlClient in production). */
export interface ControlTransport {
  /** A prepare, commit, abort or one-phase commit (batched per peer in production). */
  send(address: string, call: BatchedCall): Promise<ControlResult>
  call(address: string, method: 'GET' | 'POST', path: string, body?: Record<string, unknown>): Promise<ControlResult>
}

/** One small HTTP exchange with `origin`; rejects on a transport failure (with the error's `code`). */
export interface HttpTransport {
  exchange(origin: string, o: ExchangeOptions): Promise<Exchanged>
  /** Closes its connections (drain). */
  close?(): Promise<void>
}

export interface SidecarIo {
  /** Wall-clock milliseconds (deadlines, ages). */
  readonly clock: () => number
  /** Uniform in [0, 1) (retry jitter). */
  readonly random: () => number
  /** `n` random URL-safe characters (transaction and branch ids). */
  readonly randomChars: (n: number) => string
  readonly timers: Timers
  readonly control: ControlTransport
  /** This sidecar's app (2PC hooks, TCC confirm/cancel). */
  readonly app: HttpTransport
  /** Other services' origins (saga compensations). */
  readonly http: HttpTransport
  readonly log: TxLog
  /**
   * A log write failed in a way that leaves an outcome unknown (it may or may not be on disk):
   * the process stops, as databases do on a failed fsync, and recovery decides from the log.
   * Production exits with code 70 and does not return.
   */
  readonly fatal: (what: string, detail: Readonly<Record<string, unknown>>) => void
}

/** Exit code of a sidecar stopped by `fatal` (EX_SOFTWARE). */
export const FATAL_EXIT_CODE = 70

/** Exchanges through an undici dispatcher (a Pool for the app, an Agent for many origins). */
export function undiciHttp(dispatcher: Dispatcher): HttpTransport {
  return { exchange: (origin, o) => exchange(dispatcher, origin, o), close: () => dispatcher.close() }
}

export function productionIo(parts: {
  log: TxLog
  control: ControlTransport
  app: Dispatcher
  http: Dispatcher
  logger: Logger
}): SidecarIo {
  return {
    clock: Date.now,
    random: Math.random,
    randomChars: randomBase64url,
    timers: nodeTimers,
    control: parts.control,
    app: undiciHttp(parts.app),
    http: undiciHttp(parts.http),
    log: parts.log,
    fatal: (what, detail) => {
      parts.logger.error('fatal', { what, ...detail, exitCode: FATAL_EXIT_CODE })
      process.exit(FATAL_EXIT_CODE)
    },
  }
}

const unconnected = (what: string): never => {
  throw Object.assign(new Error(`${what} is not connected`), { code: 'ENOTCONN' })
}

/**
 * An io on Node's clock and timers with only what `parts` gives connected (the rest rejects, and
 * `fatal` throws): drivers used in-process, without a sidecar around them (tools, unit tests).
 */
export function localIo(parts: Partial<SidecarIo> & Pick<SidecarIo, 'log'>): SidecarIo {
  const http: HttpTransport = { exchange: () => Promise.reject(unconnected('http')) }
  return {
    clock: Date.now,
    random: Math.random,
    randomChars: randomBase64url,
    timers: nodeTimers,
    control: { send: () => Promise.reject(unconnected('control')), call: () => Promise.reject(unconnected('control')) },
    app: http,
    http,
    fatal: (what) => {
      throw new Error(`fatal: ${what}`)
    },
    ...parts,
  }
}

/**
 * The control transport of drivers that act on a leased log (the Postgres store): while the lease
 * has lapsed (`held` false) nothing is sent and the call fails as an unreachable peer would (the
 * drivers retry later), so a process paused past its lease does not send phase 2 for
 * transactions a sibling may have taken over before it learns it was fenced.
 */
export function leasedControl(control: ControlTransport, held: () => boolean): ControlTransport {
  const lapsed: ControlResult = { ok: false, status: 0, error: 'the lease on this log has lapsed' }
  return {
    send: (address, call) => (held() ? control.send(address, call) : Promise.resolve(lapsed)),
    call: (address, method, path, body) =>
      held() ? control.call(address, method, path, body) : Promise.resolve(lapsed),
  }
}

/** The same for HTTP calls with effects (saga compensations, TCC confirm/cancel). */
export function leasedHttp(http: HttpTransport, held: () => boolean): HttpTransport {
  return {
    exchange: (origin, o) =>
      held()
        ? http.exchange(origin, o)
        : Promise.reject(Object.assign(new Error('the lease on this log has lapsed'), { code: 'ENOTLEASED' })),
    ...(http.close === undefined ? {} : { close: () => (http.close as () => Promise<void>)() }),
  }
}
