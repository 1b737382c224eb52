// The egress side of transactions: an app's outgoing call that carries a context enlists its
// target (2PC: the target's sidecar answers with the participants it stands for, handed to
// whoever collects them), or is a saga/TCC step whose intent and undo are recorded at the
// coordinator around the call (DESIGN.md "Enlistment", "Sagas and TCC").
import type { RoutePolicy, StepRequestTemplate } from '../../config/types.js'
import { NoSidecarError, StepTemplateInvalidError, TxNotActiveError, TxmeshError } from '../../errors.js'
import { LIMITS } from '../../limits.js'
import type { ParticipantRef } from '../../tx/core.js'
import { hasErrorHeader, take, type ContextCache, type TxParts } from '../../tx/plane.js'
import {
  BRANCH_ID_HEADER,
  COMPENSATE_HEADER,
  CONTEXT_HEADER,
  ENLISTED_HEADER,
  OP_HEADER,
  STEP_CANCEL_PATH,
  TX_ID_HEADER,
  newBranchId,
  signContext,
  verifyEnlisted,
  type TxContext,
} from '../../tx/protocol.js'
import type { StepOp, StepRecord } from '../../tx/saga/machine.js'
import {
  fillTemplate,
  parseCompensateHeader,
  requestProblem,
  templateNeeds,
  type CallFacts,
} from '../../tx/saga/template.js'
import { hostName } from '../routes.js'
import type { EgressCall, ResponseHook } from '../types.js'

/** One saga or TCC call on its way: what its intent and its answer are recorded from. */
interface StepCall {
  readonly ctx: TxContext
  readonly route: RoutePolicy
  readonly call: EgressCall
  readonly stepId: string
  /** The target's service name (the call's host). */
  readonly service: string
  /** Saga: the route's compensation template. */
  readonly template: RoutePolicy['compensation']
  readonly needs: ReturnType<typeof templateNeeds>
  /** The intent is durable at the coordinator (its call was sent). */
  intended: boolean
}

export class EgressTx {
  constructor(
    private readonly d: TxParts,
    private readonly contexts: ContextCache,
  ) {}

  /** An outgoing call of the app that carries a context. */
  egress(token: string, route: RoutePolicy, call: EgressCall): ResponseHook | TxmeshError | undefined {
    if (route.transaction === 'never') return undefined
    const ctx = this.contexts.verify(token)
    if (ctx instanceof TxmeshError) return ctx
    if (ctx.mode !== '2pc') return this.stepEgress(ctx, route, call)
    return {
      onResponseHead: (status, headers) => {
        const enlisted = take(headers, ENLISTED_HEADER)
        if (enlisted === undefined) {
          // An error the peer's sidecar produced is the more useful answer: pass it on. Only an
          // error status: a 2xx with the header comes from a target without a sidecar.
          if (status >= 400 && hasErrorHeader(headers)) return undefined
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
    const stepId = this.signStep(ctx, call.headers)
    const template = ctx.mode === 'saga' ? route.compensation : undefined
    const step: StepCall = {
      ctx,
      route,
      call,
      stepId,
      service: hostName(call.host),
      template,
      needs: ctx.mode === 'saga' ? templateNeeds(template) : templateNeeds(route.tcc?.confirm, route.tcc?.cancel),
      intended: false,
    }
    const hook: ResponseHook = {
      ...(step.needs.responseJson ? { responseBodyLimit: LIMITS.stepTemplateBodyBytes } : {}),
      ...(step.needs.requestJson ? { requestBodyLimit: LIMITS.stepTemplateBodyBytes } : {}),
      // Saga without a template: only the answer can name the undo (txmesh-compensate), so
      // there is nothing to record before the call.
      ...(ctx.mode === 'tcc' || template !== undefined ? { beforeSend: () => this.recordIntent(step, hook) } : {}),
      onResponseHead: (status, headers, body) => this.stepAnswered(step, hook, status, headers, body),
      onEnd: () => undefined,
    }
    return hook
  }

  /** The step's id, in a context re-signed for it that replaces the call's. */
  private signStep(ctx: TxContext, headers: string[]): string {
    const stepId = newBranchId(undefined, this.d.randomChars)
    const op = ctx.mode === 'saga' ? 'action' : 'try'
    const context = signContext(this.d.keys.signing, { ...ctx, parent: ctx.branch ?? ctx.parent, branch: stepId, op })
    take(headers, CONTEXT_HEADER)
    // The plain ids too, for a target without a sidecar (a sidecar's ingress sets its own).
    headers.push(CONTEXT_HEADER, context, TX_ID_HEADER, ctx.id, BRANCH_ID_HEADER, stepId, OP_HEADER, op)
    return stepId
  }

  /** What the step's templates are filled from: the call, and its answer once there is one. */
  private facts(s: StepCall, hook: ResponseHook, status = 0, headers: string[] = [], body?: Buffer): CallFacts {
    return {
      method: s.call.method,
      path: s.call.path,
      requestHeaders: s.call.headers,
      requestBody: hook.requestBody,
      status,
      responseHeaders: headers,
      responseBody: body,
      txId: s.ctx.id,
      stepId: s.stepId,
    }
  }

  /** Before the call is sent: its intent, durable at the coordinator, or the reason it is not sent. */
  private async recordIntent(s: StepCall, hook: ResponseHook): Promise<TxmeshError | undefined> {
    const { ctx, route, template } = s
    const facts = this.facts(s, hook)
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
    if (invalid !== undefined) return new StepTemplateInvalidError(`the call to ${s.service} is not sent: ${invalid}`)
    const err = await this.recordStep(
      ctx,
      ctx.mode === 'saga'
        ? sagaIntent(s.stepId, s.service, s.call.origin, template as StepRequestTemplate, facts)
        : tccIntent(s.stepId, s.service, s.call.origin, route.tcc?.cancel, facts),
    )
    s.intended = err === undefined
    return err
  }

  /** The call answered: record what undoes (saga) or confirms and cancels (TCC) it before the app hears. */
  private async stepAnswered(
    s: StepCall,
    hook: ResponseHook,
    status: number,
    headers: string[],
    body: Buffer | undefined,
  ): Promise<TxmeshError | undefined> {
    const named = take(headers, COMPENSATE_HEADER)
    const enlisted = take(headers, ENLISTED_HEADER)
    const facts = this.facts(s, hook, status, headers, body)
    const step =
      s.ctx.mode === 'saga'
        ? await this.sagaAnswered(s, status, headers, named, facts, body)
        : await this.tccAnswered(s, status, headers, enlisted, facts, body)
    if (step === undefined || step instanceof TxmeshError) return step
    return this.recordStep(s.ctx, step)
  }

  private async sagaAnswered(
    s: StepCall,
    status: number,
    headers: string[],
    named: string | undefined,
    facts: CallFacts,
    body: Buffer | undefined,
  ): Promise<StepRecord | undefined> {
    const step = sagaStep(
      s.stepId,
      s.service,
      s.call.origin,
      status,
      s.template,
      named,
      facts,
      s.needs.responseJson && body === undefined,
    )
    // Refused outright (or nothing it did can be undone): its intent's undo must not run.
    // A 4xx the target's sidecar made (a context that expired meanwhile, say) refused only
    // the delivery it answered, and an earlier one of the same call (a retry after a 503,
    // a lost answer) may have done the work: the intent stays, its undo of nothing a no-op.
    if (step === undefined && s.intended && !(status >= 400 && status < 500 && hasErrorHeader(headers)))
      await this.voidStep(s.ctx, s.stepId)
    return step
  }

  private async tccAnswered(
    s: StepCall,
    status: number,
    headers: string[],
    enlisted: string | undefined,
    facts: CallFacts,
    body: Buffer | undefined,
  ): Promise<StepRecord | TxmeshError | undefined> {
    const { ctx, route, stepId } = s
    if (s.needs.responseJson && body === undefined) {
      return {
        id: stepId,
        service: s.service,
        target: '',
        unresolved: `response body over ${LIMITS.stepTemplateBodyBytes} bytes; the tcc hook template cannot read it`,
      }
    }
    // TCC: the try ran through the target's sidecar, which confirms or cancels it later.
    // Where no step can be made of the answer, the intent (if any) stays: it is cancelled
    // whatever the outcome.
    const refs = enlisted === undefined ? undefined : verifyEnlisted(this.d.keys.verifying, enlisted, ctx.id)
    if (refs instanceof TxmeshError) return refs
    const self = refs?.find((r) => r.branch === stepId)
    if (self === undefined) {
      if (status >= 400 && hasErrorHeader(headers)) return undefined
      if (route.nonTransactionalTarget === 'proceed') {
        // Not a TCC participant: nothing to confirm or cancel.
        if (s.intended) await this.voidStep(ctx, stepId)
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
    if (s.intended && (status < 200 || status >= 300)) return undefined
    const confirm = hookOp(route.tcc?.confirm, facts)
    const cancel = hookOp(route.tcc?.cancel, facts)
    const step: StepRecord = {
      id: stepId,
      service: self.service,
      target: self.control,
      ...(self.holder === undefined ? {} : { holder: self.holder }),
    }
    if ('unresolved' in confirm || 'unresolved' in cancel)
      return {
        ...step,
        unresolved: 'unresolved' in confirm ? confirm.unresolved : (cancel as { unresolved: string }).unresolved,
      }
    return { ...step, confirm, cancel }
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
