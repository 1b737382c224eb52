// Signed JSON calls to peer sidecars' control listeners (prepare, commit, abort, register,
// outcome). Every request carries `txmesh-auth: <ts>.<nonce>.<hmac>` over timestamp, a fresh
// nonce, method, path and body with the current signing mesh key; the control server refuses
// anything else, and any nonce it saw before. With peer TLS the calls use HTTPS.
import { exchange, type Agent } from '../http-client.js'
import { LIMITS } from '../limits.js'
import { peerAgent, type PeerTls } from '../peer-tls.js'
import type { MeshKeys } from './keys.js'
import { Batcher } from './batcher.js'
import { signControl } from './protocol.js'

export const CONTROL_AUTH_HEADER = 'txmesh-auth'

export type ControlResult = { ok: true; status: number; body: Record<string, unknown> } | { ok: false; status: number; error: string }

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
   * that peer (src/tx/batcher.ts); the result is what the op's own endpoint would have answered.
   */
  send(address: string, call: BatchedCall): Promise<ControlResult> {
    return this.batcher.send(address, call)
  }

  private async flushBatch(address: string, items: readonly BatchedCall[]): Promise<ControlResult[]> {
    const single = (): Promise<ControlResult[]> => Promise.all(items.map((c) => this.call(address, 'POST', `/v1/tx/${c.tx}/${c.op}`, { branch: c.branch })))
    const until = this.unbatched.get(address)
    if (until !== undefined && until > performance.now()) return single()
    this.unbatched.delete(address)
    const r = await this.call(address, 'POST', '/v1/batch', { items: items.map((c) => ({ tx: c.tx, op: c.op, branch: c.branch })) })
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
      const body = typeof o?.body === 'object' && o.body !== null && !Array.isArray(o.body) ? (o.body as Record<string, unknown>) : {}
      return resultOf(typeof o?.status === 'number' ? o.status : 0, body)
    })
  }

  async call(address: string, method: 'GET' | 'POST', path: string, body?: Record<string, unknown>): Promise<ControlResult> {
    const text = body === undefined ? '' : JSON.stringify(body)
    try {
      // Read at most controlBodyBytes: a misbehaving peer cannot make us buffer more.
      const res = await exchange(this.agent, `${this.scheme}://${address}`, {
        path,
        method,
        headers: ['content-type', 'application/json', CONTROL_AUTH_HEADER, signControl(this.keys.signing, this.clock(), method, path, text)],
        ...(method === 'POST' ? { body: text } : {}),
        timeoutMs: LIMITS.controlCallTimeoutMs,
        limit: LIMITS.controlBodyBytes,
      })
      if (res.text === undefined) return { ok: false, status: res.status, error: 'control response too large' }
      let parsed: unknown = {}
      try {
        parsed = res.text === '' ? {} : (JSON.parse(res.text) as unknown)
      } catch {
        return { ok: false, status: res.status, error: 'control response is not JSON' }
      }
      if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) return { ok: false, status: res.status, error: 'control response is not a JSON object' }
      return resultOf(res.status, parsed as Record<string, unknown>)
    } catch (err) {
      return { ok: false, status: 0, error: (err as { code?: string }).code ?? String(err) }
    }
  }

  close(): Promise<void> {
    return this.agent.close()
  }
}

/** A control answer, on its own or as an item of a batch: 2xx is ok, else the error's code. */
function resultOf(status: number, body: Record<string, unknown>): ControlResult {
  if (status >= 200 && status < 300) return { ok: true, status, body }
  return { ok: false, status, error: (body.error as { code?: string } | undefined)?.code ?? `HTTP ${status}` }
}
