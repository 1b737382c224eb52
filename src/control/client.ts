// Signed JSON calls to peer sidecars' control listeners (prepare, commit, abort, register,
// outcome). Every request carries `txmesh-auth: <ts>.<nonce>.<hmac>` over timestamp, a fresh
// nonce, method, path and body with the current signing mesh key; the control server refuses
// anything else, and any nonce it saw before. Every answer must carry its own `txmesh-auth`, the
// peer's signature over its address, our request's txmesh-auth, the status and the body
// (src/tx/protocol.ts signAnswer), verified with any of our keys: one without it, or one that does
// not verify, is not the peer's answer (a man in the middle's forged vote or outcome). It is a
// failed call, as a lost connection is (status 0, TXM_CONTROL_ANSWER_UNSIGNED): no vote, outcome
// unknown, retried; logged (`control_answer_refused`) and counted. With peer TLS the calls use HTTPS.
import { ControlAnswerUnsignedError } from '../errors.js'
import { exchange, type Agent } from '../http-client.js'
import { LIMITS } from '../limits.js'
import type { Logger } from '../telemetry/logger.js'
import { peerAgent, type PeerTls } from '../peer-tls.js'
import type { SidecarMetrics } from '../telemetry/metrics.js'
import type { MeshKeys } from '../tx/keys.js'
import { Batcher } from './batcher.js'
import { signControl, verifyAnswer } from '../tx/protocol.js'

export const CONTROL_AUTH_HEADER = 'txmesh-auth'

export type ControlResult =
  { ok: true; status: number; body: Record<string, unknown> } | { ok: false; status: number; error: string }

/** A 2PC message to a participant sidecar, sent batched (control POST /v1/batch). */
export interface BatchedCall {
  readonly tx: string
  readonly op: 'prepare' | 'commit' | 'abort' | 'commit-one-phase'
  readonly branch: string
}

export class ControlClient {
  private readonly agent: Agent
  private readonly scheme: 'http' | 'https'
  private readonly batcher: Batcher<BatchedCall, ControlResult>
  /** Peers without the batch endpoint, until when they are sent one message at a time. */
  private readonly unbatched = new Map<string, number>()

  constructor(
    private readonly keys: MeshKeys,
    private readonly clock: () => number = Date.now,
    tls?: PeerTls,
    /** Where refused answers are reported (a warning and txmesh_control_answers_refused_total). */
    private readonly observe: { readonly logger?: Logger; readonly metrics?: SidecarMetrics } = {},
  ) {
    this.scheme = tls === undefined ? 'http' : 'https'
    this.agent = peerAgent(tls)
    this.batcher = new Batcher({
      maxItems: LIMITS.batchMaxItems,
      maxInFlight: LIMITS.batchMaxInFlight,
      holdMs: LIMITS.batchHoldMs,
      maxQueued: LIMITS.batchMaxQueued,
      flush: (address, items) => this.flushBatch(address, items),
      overloaded: (err) => ({ ok: false, status: err.status, error: err.code }),
      failed: (err) => ({ ok: false, status: 0, error: `control batch failed: ${err.message}` }),
    })
  }

  /** Messages and exchanges the batched sends used (GET /v1/stats). */
  get batchCounters(): { readonly items: number; readonly batches: number } {
    return this.batcher.counters
  }

  /**
   * A prepare, commit, abort or one-phase commit for `address`: sent with whatever else waits for
   * that peer (src/control/batcher.ts); the result is what the op's own endpoint would have answered.
   */
  send(address: string, call: BatchedCall): Promise<ControlResult> {
    return this.batcher.send(address, call)
  }

  private async flushBatch(address: string, items: readonly BatchedCall[]): Promise<ControlResult[]> {
    const single = (): Promise<ControlResult[]> =>
      Promise.all(items.map((c) => this.call(address, 'POST', `/v1/tx/${c.tx}/${c.op}`, { branch: c.branch })))
    const until = this.unbatched.get(address)
    if (until !== undefined && until > performance.now()) return single()
    this.unbatched.delete(address)
    const r = await this.call(address, 'POST', '/v1/batch', {
      items: items.map((c) => ({ tx: c.tx, op: c.op, branch: c.branch })),
    })
    if (!r.ok) {
      if (r.status === 404 && r.error === 'TXM_NOT_FOUND') {
        // A peer without the batch endpoint: talk to it one message at a time from now on.
        // Asked again later: the peer may have been upgraded meanwhile.
        if (this.unbatched.size >= LIMITS.batchUnbatchedPeers) this.unbatched.clear()
        this.unbatched.set(address, performance.now() + LIMITS.batchReprobeMs)
        return single()
      }
      return items.map(() => r)
    }
    const results = r.body.results
    if (!Array.isArray(results) || results.length !== items.length) {
      const bad: ControlResult = { ok: false, status: r.status, error: 'control batch answer does not match the batch' }
      return items.map(() => bad)
    }
    return results.map((x: unknown): ControlResult => {
      const o = x as { status?: unknown; body?: unknown } | null
      const body =
        typeof o?.body === 'object' && o.body !== null && !Array.isArray(o.body)
          ? (o.body as Record<string, unknown>)
          : {}
      return resultOf(typeof o?.status === 'number' ? o.status : 0, body)
    })
  }

  async call(
    address: string,
    method: 'GET' | 'POST',
    path: string,
    body?: Record<string, unknown>,
  ): Promise<ControlResult> {
    const text = body === undefined ? '' : JSON.stringify(body)
    const auth = signControl(this.keys.signing, this.clock(), method, path, text)
    try {
      // Read at most controlBodyBytes: a misbehaving peer cannot make us buffer more.
      const res = await exchange(this.agent, `${this.scheme}://${address}`, {
        path,
        method,
        headers: ['content-type', 'application/json', CONTROL_AUTH_HEADER, auth],
        ...(method === 'POST' ? { body: text } : {}),
        timeoutMs: LIMITS.controlCallTimeoutMs,
        limit: LIMITS.controlBodyBytes,
        header: CONTROL_AUTH_HEADER,
      })
      if (res.text === undefined) return { ok: false, status: res.status, error: 'control response too large' }
      // Before anything of the answer is used: only the peer, holding the mesh key, can sign it.
      const signed = verifyAnswer(this.keys.verifying, res.header, address, auth, res.status, res.text)
      if (signed !== 'ok') return this.refused(address, method, path, res.status, res.text, signed)
      let parsed: unknown = {}
      try {
        parsed = res.text === '' ? {} : (JSON.parse(res.text) as unknown)
      } catch {
        return { ok: false, status: res.status, error: 'control response is not JSON' }
      }
      if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed))
        return { ok: false, status: res.status, error: 'control response is not a JSON object' }
      return resultOf(res.status, parsed as Record<string, unknown>)
    } catch (err) {
      return { ok: false, status: 0, error: (err as { code?: string }).code ?? String(err) }
    }
  }

  /** An answer that is not the peer's: reported, then a failed call like a transport error. */
  private refused(
    address: string,
    method: string,
    path: string,
    status: number,
    text: string,
    why: 'missing' | 'signature',
  ): ControlResult {
    const err = new ControlAnswerUnsignedError(
      why === 'missing'
        ? 'the control answer carries no txmesh-auth'
        : "the control answer's txmesh-auth does not verify for our request with the mesh key",
    )
    // The code it claims, for operators (unverified: a peer that refused our request's signature
    // answers unsigned 401 TXM_CONTROL_UNAUTHORIZED, e.g. a key rotation step done out of order).
    const claimed = /"code":"(TXM_[A-Z_]{1,40})"/.exec(text.slice(0, 200))?.[1]
    this.observe.logger?.warn('control_answer_refused', {
      peer: address,
      method,
      path,
      status,
      ...(claimed === undefined ? {} : { claimed }),
      reason: why === 'missing' ? 'unsigned' : 'bad signature',
      code: err.code,
    })
    this.observe.metrics?.controlAnswerRefused(why === 'missing' ? 'unsigned' : 'bad-signature')
    return { ok: false, status: 0, error: err.code }
  }

  close(): Promise<void> {
    return this.agent.close()
  }
}

/** A control answer, on its own or as an item of a batch: 2xx is ok, else the error's code. */
/** A control answer as a result: 2xx is ok, anything else fails with the error code it names. */
export function resultOf(status: number, body: Record<string, unknown>): ControlResult {
  if (status >= 200 && status < 300) return { ok: true, status, body }
  return { ok: false, status, error: (body.error as { code?: string } | undefined)?.code ?? `HTTP ${status}` }
}
