// Where transactions meet the data plane: the egress enlists the targets of calls that carry a
// context, the ingress joins the caller's transaction and tells it who took part (DESIGN.md
// "Enlistment").
import type { RoutePolicy, StepRequestTemplate } from '../config/types.js'
import {
  HookForbiddenError,
  MeshKeyMissingError,
  NoSidecarError,
  StepTemplateInvalidError,
  TxAbortedError,
  TxNotActiveError,
  TxmeshError,
  ERROR_HEADER,
} from '../errors.js'
import type { EgressCall, ResponseHook, TxHook } from '../proxy/types.js'
import type { Span } from '../telemetry/tracing.js'
import { nodeTimers, type ControlTransport, type Timers } from './io.js'
import type { MeshKeys } from './keys.js'
import type { CoordinatorDriver } from './coordinator/driver.js'
import type { ParticipantRef } from './core.js'
import type { TccParticipant } from './saga/participant.js'
import type { ParticipantDriver } from './participant/driver.js'
import {
  BRANCH_ID_HEADER,
  COMPENSATE_HEADER,
  CONTEXT_HEADER,
  ENLISTED_HEADER,
  OP_HEADER,
  OUTCOME_HEADER,
  STEP_CANCEL_PATH,
  TX_ID_HEADER,
  expired,
  newBranchId,
  signContext,
  signEnlisted,
  verifyContext,
  verifyEnlisted,
  type TxContext,
} from './protocol.js'
import type { SagaDriver } from './saga/driver.js'
import type { StepOp, StepRecord } from './saga/machine.js'
import { fillTemplate, parseCompensateHeader, requestProblem, templateNeeds, type CallFacts } from './saga/template.js'
import { LIMITS } from '../limits.js'
import { hostName } from '../proxy/routes.js'

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

export class DisabledTxPlane implements TxHook {
  private refuse(): TxmeshError {
    return new MeshKeyMissingError(
      'a transaction reached a sidecar without a mesh key (TXMESH_MESH_KEY, TXMESH_MESH_KEY_FILE or mesh.keyFile)',
    )
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
  stepHook(): TxmeshError {
    return this.refuse()
  }
}

export class ActiveTxPlane implements TxHook {
  private readonly clock: () => number
  /**
   * Contexts that verified, by token: an app sends the same context on every call of its
   * transaction, and its sidecar's egress need not check the signature again each time. Valid
   * for the keys they verified with (a rotation empties it); the deadline is checked at each use.
   */
  private readonly verified = new Map<string, TxContext>()
  private verifiedWith: readonly Buffer[] | undefined

  constructor(private readonly d: TxParts) {
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

  /** An outgoing call of the app that carries a context. */
  egress(token: string, route: RoutePolicy, call: EgressCall): ResponseHook | TxmeshError | undefined {
    if (route.transaction === 'never') return undefined
    const ctx = this.verify(token)
    if (ctx instanceof TxmeshError) return ctx
    if (ctx.mode !== '2pc') return this.stepEgress(ctx, route, call)
    return {
      onResponseHead: (_status, headers) => {
        const enlisted = take(headers, ENLISTED_HEADER)
        if (enlisted === undefined) {
          // An error the peer's sidecar produced is the more useful answer: pass it on.
          if (hasErrorHeader(headers)) return undefined
          if (route.nonTransactionalTarget === 'proceed') return undefined
          return new NoSidecarError(
            `the target answered without a txmesh sidecar; the call is not part of transaction ${ctx.id}`,
          )
        }
        const refs = verifyEnlisted(this.d.keys.verifying, enlisted, ctx.id)
        if (refs instanceof TxmeshError) return refs
        return this.deliver(ctx, refs)
      },
      onEnd: () => undefined,
    }
  }

  /** Hands enlisted participants to whoever collects them for this transaction. */
  private deliver(
    ctx: TxContext,
    refs: readonly ParticipantRef[],
  ): TxmeshError | undefined | Promise<TxmeshError | undefined> {
    if (this.d.coordinator.has(ctx.id)) return this.d.coordinator.enlist(ctx.id, refs)
    const branch = this.d.participant.branchOf(ctx.id)
    if (branch !== undefined && branch.inflight > 0) {
      // Nested call made while our inbound request runs: ride back on its response.
      for (const r of refs)
        if (!branch.nested.some((n) => n.branch === r.branch && n.control === r.control)) branch.nested.push(r)
      return undefined
    }
    // The inbound request already answered (or the app got the context another way): register.
    return this.d.control
      .call(ctx.coordinator, 'POST', `/v1/tx/${ctx.id}/register`, { participants: refs.map((r) => ({ ...r })) })
      .then((r) => (r.ok ? undefined : new TxNotActiveError(`coordinator refused registration: ${r.error}`)))
  }

  /**
   * A saga or TCC call is a step: it gets its own id (in a re-signed context, so the target's
   * barrier can key on it). Before the call is sent, its *intent* is recorded durably at the
   * coordinator with the undo the request alone tells (saga: a compensation template that reads
   * nothing of the response; TCC: a cancel through the target's ingress), so a call whose answer
   * never comes back is still undone. Once it answered, what undoes (saga) or confirms/cancels
   * (tcc) it is recorded again, same id, before the response reaches the app; a saga call
   * refused outright voids its intent.
   */
  private stepEgress(ctx: TxContext, route: RoutePolicy, call: EgressCall): ResponseHook | TxmeshError {
    const stepId = newBranchId(undefined, this.d.randomChars)
    const context = signContext(this.d.keys.signing, {
      ...ctx,
      parent: ctx.branch ?? ctx.parent,
      branch: stepId,
      op: ctx.mode === 'saga' ? 'action' : 'try',
    })
    take(call.headers, CONTEXT_HEADER)
    // The plain ids too, for a target without a sidecar (a sidecar's ingress sets its own).
    call.headers.push(
      CONTEXT_HEADER,
      context,
      TX_ID_HEADER,
      ctx.id,
      BRANCH_ID_HEADER,
      stepId,
      OP_HEADER,
      ctx.mode === 'saga' ? 'action' : 'try',
    )
    const template = ctx.mode === 'saga' ? route.compensation : undefined
    const needs = ctx.mode === 'saga' ? templateNeeds(template) : templateNeeds(route.tcc?.confirm, route.tcc?.cancel)
    const service = hostName(call.host)
    /** The intent is durable at the coordinator (its call was sent). */
    let intended = false
    const hook: ResponseHook = {
      ...(needs.responseJson ? { responseBodyLimit: LIMITS.stepTemplateBodyBytes } : {}),
      ...(needs.requestJson ? { requestBodyLimit: LIMITS.stepTemplateBodyBytes } : {}),
      // Saga without a template: only the answer can name the undo (txmesh-compensate), so
      // there is nothing to record before the call.
      ...(ctx.mode === 'tcc' || template !== undefined
        ? {
            beforeSend: async (): Promise<TxmeshError | undefined> => {
              const facts: CallFacts = {
                method: call.method,
                path: call.path,
                requestHeaders: call.headers,
                requestBody: hook.requestBody,
                status: 0,
                responseHeaders: [],
                responseBody: undefined,
                txId: ctx.id,
                stepId,
              }
              // Its undo (or confirm) could never be sent: refuse the call while there is nothing to undo.
              const invalid = stepRequestProblem(
                ctx.mode === 'saga'
                  ? [['compensation', template]]
                  : [
                      ['confirm', route.tcc?.confirm],
                      ['cancel', route.tcc?.cancel],
                    ],
                facts,
              )
              if (invalid !== undefined)
                return new StepTemplateInvalidError(`the call to ${service} is not sent: ${invalid}`)
              const err = await this.recordStep(
                ctx,
                ctx.mode === 'saga'
                  ? sagaIntent(stepId, service, call.origin, template as StepRequestTemplate, facts)
                  : tccIntent(stepId, service, call.origin, route.tcc?.cancel, facts),
              )
              intended = err === undefined
              return err
            },
          }
        : {}),
      onResponseHead: async (status, headers, body) => {
        const named = take(headers, COMPENSATE_HEADER)
        const enlisted = take(headers, ENLISTED_HEADER)
        const facts: CallFacts = {
          method: call.method,
          path: call.path,
          requestHeaders: call.headers,
          requestBody: hook.requestBody,
          status,
          responseHeaders: headers,
          responseBody: body,
          txId: ctx.id,
          stepId,
        }
        let step: StepRecord | undefined
        if (ctx.mode === 'saga') {
          step = sagaStep(
            stepId,
            service,
            call.origin,
            status,
            template,
            named,
            facts,
            needs.responseJson && body === undefined,
          )
          // Refused outright (or nothing it did can be undone): its intent's undo must not run.
          // A 4xx the target's sidecar made (a context that expired meanwhile, say) refused only
          // the delivery it answered, and an earlier one of the same call (a retry after a 503,
          // a lost answer) may have done the work: the intent stays, its undo of nothing a no-op.
          if (step === undefined && intended && !(status < 500 && hasErrorHeader(headers)))
            await this.voidStep(ctx, stepId)
        } else if (needs.responseJson && body === undefined) {
          step = {
            id: stepId,
            service,
            target: '',
            unresolved: `response body over ${LIMITS.stepTemplateBodyBytes} bytes; the tcc hook template cannot read it`,
          }
        } else {
          // TCC: the try ran through the target's sidecar, which confirms or cancels it later.
          // Where no step can be made of the answer, the intent (if any) stays: it is cancelled
          // whatever the outcome.
          const refs = enlisted === undefined ? undefined : verifyEnlisted(this.d.keys.verifying, enlisted, ctx.id)
          if (refs instanceof TxmeshError) return refs
          const self = refs?.find((r) => r.branch === stepId)
          if (self === undefined) {
            if (hasErrorHeader(headers)) return undefined
            if (route.nonTransactionalTarget === 'proceed') {
              // Not a TCC participant: nothing to confirm or cancel.
              if (intended) await this.voidStep(ctx, stepId)
              return undefined
            }
            return new NoSidecarError(
              `the target answered without a txmesh sidecar; a TCC try needs one to confirm or cancel it (transaction ${ctx.id})`,
            )
          }
          // A failed try (not 2xx) keeps its intent: it is cancelled through the target's ingress
          // whatever the outcome, never confirmed. The app never saw it succeed; it may have
          // reserved before failing (the target's barrier turns a cancel of nothing into a
          // no-op and refuses a later delivery of the try as hanging), and a confirm of one that
          // did nothing would let a late delivery of it reserve what nothing finishes.
          if (intended && (status < 200 || status >= 300)) return undefined
          const confirm = hookOp(route.tcc?.confirm, facts)
          const cancel = hookOp(route.tcc?.cancel, facts)
          step = {
            id: stepId,
            service: self.service,
            target: self.control,
            ...(self.holder === undefined ? {} : { holder: self.holder }),
          }
          if ('unresolved' in confirm || 'unresolved' in cancel)
            step = {
              ...step,
              unresolved: 'unresolved' in confirm ? confirm.unresolved : (cancel as { unresolved: string }).unresolved,
            }
          else step = { ...step, confirm, cancel }
        }
        if (step === undefined) return undefined
        return this.recordStep(ctx, step)
      },
      onEnd: () => undefined,
    }
    return hook
  }

  /** Durable at the coordinator (local, or over the control listener) before the call or the answer goes on. */
  private async recordStep(ctx: TxContext, step: StepRecord): Promise<TxmeshError | undefined> {
    if (this.d.steps.has(ctx.id)) return this.d.steps.addStep(ctx.id, step)
    const r = await this.d.control.call(ctx.coordinator, 'POST', `/v1/tx/${ctx.id}/steps`, { step: { ...step } })
    return r.ok ? undefined : new TxNotActiveError(`coordinator refused the step: ${r.error}`)
  }

  /**
   * The intent's call was refused: tell the coordinator before the app hears the answer (it may
   * commit next). If that fails, the intent stays and is undone; the target's barrier makes the
   * undo of a call that did nothing a no-op.
   */
  private async voidStep(ctx: TxContext, stepId: string): Promise<void> {
    if (this.d.steps.has(ctx.id)) {
      this.d.steps.voidStep(ctx.id, stepId)
      return
    }
    await this.d.control.call(ctx.coordinator, 'POST', `/v1/tx/${ctx.id}/steps`, { void: stepId })
  }

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
    const ctx = this.verify(token)
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
    const ctx = this.verify(token)
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

/** The saga step of an answered call, or undefined when there is nothing to undo. */
function sagaStep(
  id: string,
  service: string,
  origin: string,
  status: number,
  template: RoutePolicy['compensation'],
  named: string | undefined,
  facts: CallFacts,
  bodyTooLarge: boolean,
): StepRecord | undefined {
  // 4xx: the service refused and did nothing. 2xx: done. 5xx: it may have done part of it, so
  // it is undone when the compensation can be worked out (the target's barrier makes an undo of
  // nothing harmless).
  if (status >= 400 && status < 500) return undefined
  let op: StepOp | { unresolved: string } | undefined
  if (template !== undefined)
    op = bodyTooLarge
      ? {
          unresolved: `response body over ${LIMITS.stepTemplateBodyBytes} bytes; the compensation template cannot read it`,
        }
      : fillTemplate(template, facts)
  else if (named !== undefined) op = parseCompensateHeader(named)
  if (op === undefined) return undefined
  if ('unresolved' in op) return status < 300 ? { id, service, target: origin, unresolved: op.unresolved } : undefined
  return { id, service, target: origin, compensate: op }
}

/**
 * The saga intent of a call about to be sent, from its route's compensation template. A template
 * that reads the response leaves the intent unresolved: with no answer it goes stuck, visible,
 * instead of being lost.
 */
function sagaIntent(
  id: string,
  service: string,
  origin: string,
  template: StepRequestTemplate,
  facts: CallFacts,
): StepRecord {
  const base = { id, service, target: origin, intent: true }
  if (templateNeeds(template).response)
    return { ...base, unresolved: 'the call got no answer and its compensation needs the response' }
  const op = fillTemplate(template, facts)
  return 'unresolved' in op ? { ...base, unresolved: op.unresolved } : { ...base, compensate: op }
}

/**
 * The TCC intent of a try about to be sent: a cancel sent like a saga compensation to the
 * target's ingress (its control address comes only with the answer), on the route's cancel
 * template when it reads only the request, else on the default hook path, which the target's
 * sidecar maps to its own cancel hook.
 */
function tccIntent(
  id: string,
  service: string,
  origin: string,
  template: RoutePolicy['compensation'],
  facts: CallFacts,
): StepRecord {
  const base = { id, service, target: origin, intent: true, viaIngress: true }
  if (template === undefined || templateNeeds(template).response)
    return { ...base, cancel: { method: 'POST', path: STEP_CANCEL_PATH } }
  const op = fillTemplate(template, facts)
  return 'unresolved' in op ? { ...base, unresolved: op.unresolved } : { ...base, cancel: op }
}

/** A TCC hook of the caller's route, filled; path '' lets the target sidecar use its default hook. */
function hookOp(t: RoutePolicy['compensation'], facts: CallFacts): StepOp | { unresolved: string } {
  return t === undefined ? { method: 'POST', path: '' } : fillTemplate(t, facts)
}

/** What makes one of a step's request templates unsendable with this call's request, if anything. */
function stepRequestProblem(
  templates: readonly (readonly [string, StepRequestTemplate | undefined])[],
  facts: CallFacts,
): string | undefined {
  for (const [what, t] of templates) {
    const problem = t === undefined ? undefined : requestProblem(t, facts)
    if (problem !== undefined) return `its ${what} template, filled from it, could never be sent (${problem})`
  }
  return undefined
}

/** The response carries an error code a txmesh sidecar produced (flat [name, value, ...] headers). */
function hasErrorHeader(headers: readonly string[]): boolean {
  return headers.some((h, i) => i % 2 === 0 && h.toLowerCase() === ERROR_HEADER)
}
