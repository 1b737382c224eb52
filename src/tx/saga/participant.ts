// The participant side of TCC: a sidecar through which a try reached its app is asked by the
// coordinator (control ops confirm / cancel) to have its app confirm or cancel it. It keeps no
// state for TCC steps (the coordinator holds them durably and retries), so this only calls the
// app's hook: 2xx or 404 is done, anything else is retried by the caller.
import { LIMITS } from '../../limits.js'
import type { Logger } from '../../telemetry/logger.js'
import type { BranchId, ParticipantRef, TxId } from '../core.js'
import type { SidecarIo } from '../io.js'
import { BRANCH_ID_HEADER, OP_HEADER, TX_ID_HEADER, heldByAnotherLog } from '../protocol.js'

export interface TccParticipantDeps {
  readonly io: SidecarIo
  readonly service: string
  /** This sidecar's control address. */
  readonly self: string
  /** This sidecar's log incarnation: steps tried through it name it (ParticipantRef.holder). */
  readonly incarnation?: string
  readonly appOrigin: string
  readonly hooks: { readonly confirm: string; readonly cancel: string }
  readonly logger: Logger
  readonly onEvent?: ((type: string, data: Readonly<Record<string, unknown>>) => void) | undefined
}

/** A confirm or cancel as the step recorded it (no path: this sidecar's own hook). */
export interface TccHookCall {
  readonly method: string
  readonly path: string | undefined
  readonly body: string | undefined
  readonly headers: Readonly<Record<string, string>>
}

export class TccParticipant {
  constructor(private readonly d: TccParticipantDeps) {}

  /** This sidecar as the participant of a saga/tcc step (no branch state is kept here). */
  stepRef(branch: BranchId): ParticipantRef {
    return {
      service: this.d.service,
      control: this.d.self,
      branch,
      ...(this.d.incarnation === undefined ? {} : { holder: this.d.incarnation }),
    }
  }

  /**
   * The coordinator asks to confirm or cancel a step tried through this sidecar. `call.path`:
   * the hook the caller's route names, else this sidecar's hooks.confirm / hooks.cancel.
   */
  async stepHook(
    tx: TxId,
    branch: BranchId,
    op: 'confirm' | 'cancel',
    call: TccHookCall,
    holder?: string,
  ): Promise<'done' | 'failed' | 'not-here'> {
    // The try ran through another log's sidecar (this address was its, a pod IP reused): this
    // app never saw it, and answering for it would call a reservation confirmed that is not.
    if (heldByAnotherLog(this.d.incarnation, holder)) return 'not-here'
    try {
      const headers: Record<string, string> = {
        ...call.headers,
        [TX_ID_HEADER]: tx,
        [BRANCH_ID_HEADER]: branch,
        [OP_HEADER]: op,
      }
      if (call.body === undefined) headers['content-length'] = '0'
      else headers['content-type'] ??= 'application/json'
      const res = await this.d.io.app.exchange(this.d.appOrigin, {
        path: call.path ?? this.d.hooks[op],
        method: call.method as 'POST',
        headers: Object.entries(headers).flat(),
        ...(call.body === undefined ? {} : { body: call.body }),
        timeoutMs: LIMITS.hookCallTimeoutMs,
        limit: LIMITS.controlBodyBytes,
      })
      const s = res.status
      this.d.onEvent?.('branch-status', {
        tx,
        branch,
        status: s >= 200 && s < 300 ? (op === 'confirm' ? 'confirmed' : 'cancelled') : `${op}-failed`,
        service: this.d.service,
      })
      if ((s >= 200 && s < 300) || s === 404) return 'done'
    } catch (err) {
      this.d.logger.warn('hook_failed', { tx, hook: op, error: (err as { code?: string }).code ?? String(err) })
    }
    return 'failed'
  }
}
