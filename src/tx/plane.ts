// What the transaction hooks of the data plane are built from (src/proxy/tx-hook.ts plugs them
// into the listeners): the sidecar's drivers and transports, the cache of contexts that verified,
// and the header helpers the egress (src/proxy/egress/tx.ts: enlistment, saga/TCC steps) and
// the ingress (src/proxy/ingress/tx.ts: joining, implicit transactions) share (DESIGN.md
// "Enlistment").
import { ERROR_HEADER, TxmeshError } from '../errors.js'
import { LIMITS } from '../limits.js'
import type { ControlTransport, Timers } from './io.js'
import type { MeshKeys } from './keys.js'
import type { CoordinatorDriver } from './coordinator/driver.js'
import type { TccParticipant } from './saga/participant.js'
import type { ParticipantDriver } from './participant/driver.js'
import { expired, verifyContext, type TxContext } from './protocol.js'
import type { SagaDriver } from './saga/driver.js'

export interface TxParts {
  /** Mesh keys, read at each use: a reloaded mesh.keyFile takes effect at once. */
  readonly keys: MeshKeys
  readonly coordinators: readonly string[]
  readonly coordinator: CoordinatorDriver
  readonly participant: ParticipantDriver
  readonly tcc: TccParticipant
  readonly steps: SagaDriver
  readonly control: ControlTransport
  readonly clock?: () => number
  /** Node's unless given (the simulation's scheduler). */
  readonly timers?: Timers
  /** Random URL-safe characters of step ids (io.randomChars); crypto's unless given (the simulation's seed). */
  readonly randomChars?: (n: number) => string
}

/** Checks the contexts calls carry, remembering those that verified. */
export class ContextCache {
  private readonly clock: () => number
  /**
   * Contexts that verified, by token: an app sends the same context on every call of its
   * transaction, and its sidecar's egress need not check the signature again each time. Valid
   * for the keys they verified with (a rotation empties it); the deadline is checked at each use.
   */
  private readonly verified = new Map<string, TxContext>()
  private verifiedWith: readonly Buffer[] | undefined

  constructor(private readonly d: Pick<TxParts, 'keys' | 'coordinators' | 'clock'>) {
    this.clock = d.clock ?? Date.now
  }

  verify(token: string): TxContext | TxmeshError {
    const now = this.clock()
    const keys = this.d.keys.verifying
    if (keys !== this.verifiedWith) {
      this.verified.clear()
      this.verifiedWith = keys
    }
    const known = this.verified.get(token)
    if (known !== undefined) return expired(known, now) ?? known
    const ctx = verifyContext(keys, token, now, this.d.coordinators)
    if (ctx instanceof TxmeshError) return ctx
    // Oldest first out (Map keeps insertion order).
    if (this.verified.size >= LIMITS.verifiedContexts) this.verified.delete(this.verified.keys().next().value as string)
    // A copy as the key: the token may be a slice of the whole request head, which a cached
    // slice would keep alive (about 2 KiB per entry measured; tokens are ASCII).
    this.verified.set(Buffer.from(token, 'latin1').toString('latin1'), ctx)
    return ctx
  }
}

/** Removes every `name` header from a flat header list and returns the last value seen. */
export function take(headers: string[], name: string): string | undefined {
  let value: string | undefined
  for (let i = headers.length - 2; i >= 0; i -= 2) {
    if ((headers[i] as string).toLowerCase() === name) {
      value ??= headers[i + 1]
      headers.splice(i, 2)
    }
  }
  return value
}

/** The response carries an error code a txmesh sidecar produced (flat [name, value, ...] headers). */
export function hasErrorHeader(headers: readonly string[]): boolean {
  return headers.some((h, i) => i % 2 === 0 && h.toLowerCase() === ERROR_HEADER)
}
