// The ingress side of transactions: a call that carries a context joins the caller's
// transaction as a branch and answers with who took part (signed), a saga/TCC step gets its ids,
// and a route with `transaction: required` begins an implicit transaction that the app's answer
// ends (DESIGN.md "Enlistment").
import type { RoutePolicy } from '../../config/types.js'
import { HookForbiddenError, TxAbortedError, TxNotActiveError, TxmeshError } from '../../errors.js'
import { LIMITS } from '../../limits.js'
import { nodeTimers } from '../../tx/io.js'
import { take, type ContextCache, type TxParts } from '../../tx/plane.js'
import {
  BRANCH_ID_HEADER,
  CONTEXT_HEADER,
  ENLISTED_HEADER,
  OP_HEADER,
  OUTCOME_HEADER,
  TX_ID_HEADER,
  newBranchId,
  signEnlisted,
  verifyEnlisted,
  type TxContext,
} from '../../tx/protocol.js'
import type { Span } from '../../telemetry/tracing.js'
import type { ResponseHook } from '../types.js'

export class IngressTx {
  constructor(
    private readonly d: TxParts,
    private readonly contexts: ContextCache,
  ) {}

  /**
   * Implicit transaction (ingress route `transaction: required`, request without a context):
   * begin one here, let the app see its context and join it as a participant itself, and end
   * it with the app's answer: 2xx commits, anything else aborts. The response waits for the
   * outcome; a 2xx whose transaction aborted becomes 409 TXM_TX_ABORTED.
   */
  implicit(route: RoutePolicy, headers: string[], trace?: Span): ResponseHook | TxmeshError {
    if (route.mode !== '2pc') return this.implicitSteps(route, headers)
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
      ...(inner.beforeSend === undefined ? {} : { beforeSend: inner.beforeSend }),
      onResponseHead: async (status, out) => {
        answered = true
        await inner.onResponseHead(status, out)
        const refs = verifyEnlisted(this.d.keys.verifying, take(out, ENLISTED_HEADER) ?? '', tx.id)
        const ok = status >= 200 && status < 300
        const enlistErr = refs instanceof TxmeshError ? refs : this.d.coordinator.enlist(tx.id, refs)
        const result =
          ok && enlistErr === undefined
            ? await this.d.coordinator.commit(tx.id)
            : await this.d.coordinator.abort(tx.id, `the app answered ${status}`)
        const outcome = result instanceof TxmeshError ? 'aborted' : result.outcome
        out.push(TX_ID_HEADER, tx.id, OUTCOME_HEADER, outcome)
        if (ok && outcome !== 'committed') {
          return new TxAbortedError(
            `transaction ${tx.id} aborted: ${result instanceof TxmeshError ? result.message : (result.reason ?? 'a participant refused')}`,
          )
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

  /** Implicit saga/tcc: the app orchestrates; its calls are the steps; its answer ends it. */
  private implicitSteps(route: RoutePolicy, headers: string[]): ResponseHook | TxmeshError {
    const tx = this.d.steps.begin(route.mode as 'saga' | 'tcc', route.timeoutMs, route.name)
    if (tx instanceof TxmeshError) return tx
    // The context only: the app is the orchestrator, not a branch, and a tx id without a branch
    // id reads as a malformed branch to txmesh/pg. The client gets the id on the response.
    headers.push(CONTEXT_HEADER, tx.context)
    let answered = false
    return {
      onResponseHead: async (status, out) => {
        answered = true
        const ok = status >= 200 && status < 300
        const result = ok
          ? await this.d.steps.commit(tx.id)
          : await this.d.steps.abort(tx.id, `the app answered ${status}`)
        const outcome = result instanceof TxmeshError ? 'aborted' : result.outcome
        out.push(TX_ID_HEADER, tx.id, OUTCOME_HEADER, outcome)
        if (ok && outcome !== 'committed')
          return new TxAbortedError(
            `transaction ${tx.id} aborted: ${result instanceof TxmeshError ? result.message : (result.reason ?? 'aborted')}`,
          )
        return undefined
      },
      onEnd: () => {
        if (!answered) void this.d.steps.abort(tx.id, 'the request failed before the app answered')
      },
    }
  }

  /**
   * Only a coordinator signs a tcc context whose op is cancel (SagaDriver.sendOp); the
   * ingress then sets the ids and op for the app as for any step request (stepIngress).
   */
  stepHook(token: string, op: 'cancel'): TxmeshError | undefined {
    const ctx = this.contexts.verify(token)
    if (ctx instanceof TxmeshError) return ctx
    if (ctx.mode !== 'tcc' || ctx.op !== op || ctx.branch === undefined)
      return new HookForbiddenError(
        `the TCC ${op} hook takes only a coordinator's ${op} of a try; this context is a ${ctx.mode} ${ctx.op ?? 'transaction'}`,
      )
    return undefined
  }

  /** An incoming call that carries a context: join the transaction as a branch. */
  ingress(token: string, route: RoutePolicy, headers: string[]): ResponseHook | TxmeshError | undefined {
    if (route.transaction === 'never') return undefined
    const ctx = this.contexts.verify(token)
    if (ctx instanceof TxmeshError) return ctx
    if (ctx.mode !== '2pc') return this.stepIngress(ctx, headers)
    const branch = this.d.participant.join(ctx, token)
    if (branch instanceof TxmeshError) return branch
    if (branch.state.status !== 'active') {
      return new TxNotActiveError(`transaction ${ctx.id} is ${branch.state.status} here; new work cannot join it`)
    }
    headers.push(TX_ID_HEADER, ctx.id, BRANCH_ID_HEADER, branch.state.branch)
    this.d.participant.enter(branch)
    const beforeSend = this.d.participant.joinedBeforeSend(branch)
    let open = true
    // Once the head leaves, later nested enlistments must use register instead, and hook calls
    // held for the request may go.
    const close = (): void => {
      if (!open) return
      open = false
      this.d.participant.leave(branch)
    }
    return {
      ...(beforeSend === undefined ? {} : { beforeSend }),
      onResponseHead: (_status, out) => {
        close()
        take(out, ENLISTED_HEADER) // never trust one the app made up
        const self = this.d.participant.ref(branch)
        const refs = [
          self,
          ...branch.nested.splice(0).filter((n) => n.branch !== self.branch || n.control !== self.control),
        ]
        out.push(ENLISTED_HEADER, signEnlisted(this.d.keys.signing, ctx.id, refs))
        return undefined
      },
      // Ended before the app's response head (the caller gave up, the route timed out): the
      // sidecar stopped the exchange, but the app's handler may run on (a Node app is not told).
      // Keep holding the branch's hooks as long as a running request would hold them.
      onEnd: () => {
        if (!open) return
        ;(this.d.timers ?? nodeTimers).set(close, LIMITS.hookHoldMs)
      },
    }
  }

  /**
   * A saga/tcc step reaching its service: the app gets the ids and what the request is (its
   * barrier keys on them); no branch state is kept here. A TCC try answers with this sidecar's
   * control address so the coordinator can have it confirmed or cancelled.
   */
  private stepIngress(ctx: TxContext, headers: string[]): ResponseHook {
    const branch = ctx.branch ?? newBranchId(undefined, this.d.randomChars)
    const op = ctx.op ?? (ctx.mode === 'saga' ? 'action' : 'try')
    headers.push(TX_ID_HEADER, ctx.id, BRANCH_ID_HEADER, branch, OP_HEADER, op)
    return {
      onResponseHead: (_status, out) => {
        take(out, ENLISTED_HEADER)
        if (ctx.mode === 'tcc' && op === 'try')
          out.push(ENLISTED_HEADER, signEnlisted(this.d.keys.signing, ctx.id, [this.d.tcc.stepRef(branch)]))
        return undefined
      },
      onEnd: () => undefined,
    }
  }
}
