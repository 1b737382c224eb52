// Signed JSON calls to peer sidecars' control listeners (prepare, commit, abort, register,
// outcome). Every request carries `txmesh-auth: <ts>.<nonce>.<hmac>` over timestamp, a fresh
// nonce, method, path and body with the current signing mesh key; the control server refuses
// anything else, and any nonce it saw before. With peer TLS the calls use HTTPS.
import { Agent, request } from '../http-client.js'
import { LIMITS } from '../limits.js'
import type { PeerTls } from '../peer-tls.js'
import type { MeshKeys } from './keys.js'
import { signControl } from './protocol.js'

export const CONTROL_AUTH_HEADER = 'txmesh-auth'

export type ControlResult = { ok: true; status: number; body: Record<string, unknown> } | { ok: false; status: number; error: string }

export class ControlClient {
  private readonly agent: Agent
  private readonly scheme: 'http' | 'https'

  constructor(
    private readonly keys: MeshKeys,
    private readonly clock: () => number = Date.now,
    tls?: PeerTls,
  ) {
    this.scheme = tls === undefined ? 'http' : 'https'
    this.agent = new Agent({
      connections: LIMITS.poolConnectionsPerOrigin,
      keepAliveTimeout: LIMITS.upstreamKeepAliveMs,
      connect: tls?.connector ?? { timeout: LIMITS.connectTimeoutMs },
    })
  }

  async call(address: string, method: 'GET' | 'POST', path: string, body?: Record<string, unknown>): Promise<ControlResult> {
    const text = body === undefined ? '' : JSON.stringify(body)
    try {
      const res = await request(`${this.scheme}://${address}${path}`, {
        method,
        dispatcher: this.agent,
        headers: {
          'content-type': 'application/json',
          [CONTROL_AUTH_HEADER]: signControl(this.keys.signing, this.clock(), method, path, text),
        },
        ...(method === 'POST' ? { body: text } : {}),
        headersTimeout: LIMITS.controlCallTimeoutMs,
        bodyTimeout: LIMITS.controlCallTimeoutMs,
      })
      // Read at most controlBodyBytes: a misbehaving peer cannot make us buffer more.
      const chunks: Buffer[] = []
      let size = 0
      for await (const chunk of res.body) {
        size += (chunk as Buffer).length
        if (size > LIMITS.controlBodyBytes) {
          res.body.destroy()
          return { ok: false, status: res.statusCode, error: 'control response too large' }
        }
        chunks.push(chunk as Buffer)
      }
      const raw = Buffer.concat(chunks).toString('utf8')
      let parsed: Record<string, unknown> = {}
      try {
        parsed = raw === '' ? {} : (JSON.parse(raw) as Record<string, unknown>)
      } catch {
        return { ok: false, status: res.statusCode, error: 'control response is not JSON' }
      }
      if (res.statusCode >= 200 && res.statusCode < 300) return { ok: true, status: res.statusCode, body: parsed }
      const err = (parsed.error as { code?: string } | undefined)?.code ?? `HTTP ${res.statusCode}`
      return { ok: false, status: res.statusCode, error: err }
    } catch (err) {
      return { ok: false, status: 0, error: (err as { code?: string }).code ?? String(err) }
    }
  }

  close(): Promise<void> {
    return this.agent.close()
  }
}
