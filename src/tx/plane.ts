// Where transactions meet the data plane: the egress enlists the targets of calls that carry a
// context, the ingress joins the caller's transaction and tells it who took part (DESIGN.md
// "Enlistment").
import type { RoutePolicy } from '../config/types.js'
import { MeshKeyMissingError, NoSidecarError, TxAbortedError, TxNotActiveError, TxmeshError } from '../errors.js'
import type { ResponseHook } from '../proxy/forward.js'
import type { Span } from '../telemetry/tracing.js'
import type { ControlClient } from './control-client.js'
import type { CoordinatorDriver } from './coordinator/driver.js'
import type { ParticipantRef } from './core.js'
import type { ParticipantDriver } from './participant/driver.js'
import { BRANCH_ID_HEADER, CONTEXT_HEADER, ENLISTED_HEADER, OUTCOME_HEADER, TX_ID_HEADER, signEnlisted, verifyContext, verifyEnlisted, type TxContext } from './protocol.js'

export interface TxParts {
  readonly keys: readonly Buffer[]
  readonly coordinators: readonly string[]
  readonly coordinator: CoordinatorDriver
  readonly participant: ParticipantDriver
  readonly control: ControlClient
  readonly clock?: () => number
}

/** Removes every `name` header from a flat header list and returns the last value seen. */
function take(headers: string[], name: string): string | undefined {
  let value: string | undefined
  for (let i = headers.length - 2; i >= 0; i -= 2) {
    if ((headers[i] as string).toLowerCase() === name) {
      value ??= headers[i + 1]
      headers.splice(i, 2)
    }
  }
  return value
}

/** The data plane's view of transactions. Without a mesh key every context is refused. */
export interface TxPlane {
  egress(token: string, route: RoutePolicy): ResponseHook | TxmeshError | undefined
  ingress(token: string, route: RoutePolicy, headers: string[]): ResponseHook | TxmeshError | undefined
  /** `trace`: the request's SERVER span (tracing on), parent of the transaction's span. */
  implicit(route: RoutePolicy, headers: string[], trace?: Span): ResponseHook | TxmeshError | undefined
}

export class DisabledTxPlane implements TxPlane {
  private refuse(): TxmeshError {
    return new MeshKeyMissingError('a transaction reached a sidecar without a mesh key (TXMESH_MESH_KEY or mesh.keyFile)')
  }
  egress(): TxmeshError {
    return this.refuse()
  }
  ingress(): TxmeshError {
    return this.refuse()
  }
  implicit(): TxmeshError {
    return this.refuse()
  }
}

export class ActiveTxPlane implements TxPlane {
  private readonly clock: () => number

  constructor(private readonly d: TxParts) {
    this.clock = d.clock ?? Date.now
  }

  verify(token: string): TxContext | TxmeshError {
    return verifyContext(this.d.keys, token, this.clock(), this.d.coordinators)
  }

  /** An outgoing call of the app that carries a context. */
  egress(token: string, route: RoutePolicy): ResponseHook | TxmeshError | undefined {
    if (route.transaction === 'never') return undefined
    const ctx = this.verify(token)
    if (ctx instanceof TxmeshError) return ctx
    return {
      onResponseHead: (_status, headers) => {
        const enlisted = take(headers, ENLISTED_HEADER)
        if (enlisted === undefined) {
          // An error the peer's sidecar produced is the more useful answer: pass it on.
          if (headers.some((h, i) => i % 2 === 0 && h.toLowerCase() === 'x-txmesh-error')) return undefined
          if (route.nonTransactionalTarget === 'proceed') return undefined
          return new NoSidecarError(`the target answered without a txmesh sidecar; the call is not part of transaction ${ctx.id}`)
        }
        const refs = verifyEnlisted(this.d.keys, enlisted, ctx.id)
        if (refs instanceof TxmeshError) return refs
        return this.deliver(ctx, refs)
      },
      onEnd: () => undefined,
    }
  }

  /** Hands enlisted participants to whoever collects them for this transaction. */
  private deliver(ctx: TxContext, refs: readonly ParticipantRef[]): TxmeshError | undefined | Promise<TxmeshError | undefined> {
    if (this.d.coordinator.has(ctx.id)) return this.d.coordinator.enlist(ctx.id, refs)
    const branch = this.d.participant.branchOf(ctx.id)
    if (branch !== undefined && branch.inflight > 0) {
      // Nested call made while our inbound request runs: ride back on its response.
      for (const r of refs) if (!branch.nested.some((n) => n.branch === r.branch && n.control === r.control)) branch.nested.push(r)
      return undefined
    }
    // The inbound request already answered (or the app got the context another way): register.
    return this.d.control
      .call(ctx.coordinator, 'POST', `/v1/tx/${ctx.id}/register`, { participants: refs.map((r) => ({ ...r })) })
      .then((r) => (r.ok ? undefined : new TxNotActiveError(`coordinator refused registration: ${r.error}`)))
  }

  /**
   * Implicit transaction (ingress route `transaction: required`, request without a context):
   * begin one here, let the app see its context and join it as a participant itself, and end
   * it with the app's answer: 2xx commits, anything else aborts. The response waits for the
   * outcome; a 2xx whose transaction aborted becomes 409 TXM_TX_ABORTED.
   */
  implicit(route: RoutePolicy, headers: string[], trace?: Span): ResponseHook | TxmeshError {
    const tx = this.d.coordinator.begin('2pc', route.timeoutMs, route.name, trace)
    if (tx instanceof TxmeshError) return tx
    headers.push(CONTEXT_HEADER, tx.context)
    const inner = this.ingress(tx.context, route, headers)
    if (inner === undefined || inner instanceof TxmeshError) {
      void this.d.coordinator.abort(tx.id, 'could not join')
      return inner ?? new TxNotActiveError('implicit transaction could not start')
    }
    let answered = false
    return {
      onResponseHead: async (status, out) => {
        answered = true
        await inner.onResponseHead(status, out)
        const refs = verifyEnlisted(this.d.keys, take(out, ENLISTED_HEADER) ?? '', tx.id)
        const ok = status >= 200 && status < 300
        const enlistErr = refs instanceof TxmeshError ? refs : this.d.coordinator.enlist(tx.id, refs)
        const result = ok && enlistErr === undefined ? await this.d.coordinator.commit(tx.id) : await this.d.coordinator.abort(tx.id, `the app answered ${status}`)
        const outcome = result instanceof TxmeshError ? 'aborted' : result.outcome
        out.push(TX_ID_HEADER, tx.id, OUTCOME_HEADER, outcome)
        if (ok && outcome !== 'committed') {
          return new TxAbortedError(`transaction ${tx.id} aborted: ${result instanceof TxmeshError ? result.message : (result.reason ?? 'a participant refused')}`)
        }
        return undefined
      },
      onEnd: () => {
        // Failed before the app answered (reset, timeout, client gone): end it now rather than
        // at its deadline.
        if (!answered) void this.d.coordinator.abort(tx.id, 'the request failed before the app answered')
        inner.onEnd()
      },
    }
  }

  /** An incoming call that carries a context: join the transaction as a branch. */
  ingress(token: string, route: RoutePolicy, headers: string[]): ResponseHook | TxmeshError | undefined {
    if (route.transaction === 'never') return undefined
    const ctx = this.verify(token)
    if (ctx instanceof TxmeshError) return ctx
    const branch = this.d.participant.join(ctx, token)
    if (branch instanceof TxmeshError) return branch
    if (branch.state.status !== 'active') {
      return new TxNotActiveError(`transaction ${ctx.id} is ${branch.state.status} here; new work cannot join it`)
    }
    headers.push(TX_ID_HEADER, ctx.id, BRANCH_ID_HEADER, branch.state.branch)
    branch.inflight++
    let open = true
    // Once the head leaves, later nested enlistments must use register instead.
    const close = (): void => {
      if (!open) return
      open = false
      branch.inflight--
    }
    return {
      onResponseHead: (_status, out) => {
        close()
        take(out, ENLISTED_HEADER) // never trust one the app made up
        const self = this.d.participant.ref(branch)
        const refs = [self, ...branch.nested.splice(0).filter((n) => n.branch !== self.branch || n.control !== self.control)]
        out.push(ENLISTED_HEADER, signEnlisted(this.d.keys[0] as Buffer, ctx.id, refs))
        return undefined
      },
      onEnd: close,
    }
  }
}
