// HTTP webhook sink: one POST per event. The receiver de-duplicates on the `idempotency-key`
// header (the event id), the convention of Stripe's and the IETF draft's Idempotency-Key, so the
// queue's retries of an event it already took are harmless. Only a 2xx counts as acknowledged;
// redirects are not followed (undici's request does not), so a 3xx is a failure too.
import assert from 'node:assert/strict'
import { Agent, request } from '../http-client.js'
import { LIMITS } from '../limits.js'
import type { BusEvent, Sink } from './types.js'

export const IDEMPOTENCY_KEY_HEADER = 'idempotency-key'
export const EVENT_SUBJECT_HEADER = 'txmesh-event-subject'

export interface WebhookSinkOptions {
  url: string
  /** Sink name in stats and errors; defaults to `webhook:<origin>`. */
  name?: string
  /** Bound on one whole request (connect, send, response head and the bounded body read). */
  timeoutMs?: number
  /** Extra request headers (e.g. authorization); cannot override the three the sink sets. */
  headers?: Readonly<Record<string, string>>
}

export class WebhookSink implements Sink {
  readonly name: string
  private readonly url: URL
  private readonly timeoutMs: number
  private readonly extraHeaders: Readonly<Record<string, string>>
  private readonly agent: Agent

  constructor(opts: WebhookSinkOptions) {
    this.url = new URL(opts.url)
    assert(this.url.protocol === 'http:' || this.url.protocol === 'https:', 'webhook url must be http(s)')
    this.name = opts.name ?? `webhook:${this.url.origin}`
    this.timeoutMs = opts.timeoutMs ?? LIMITS.eventDeliveryTimeoutMs
    assert(this.timeoutMs >= 1 && this.timeoutMs <= LIMITS.eventDeliveryTimeoutCapMs, 'timeoutMs out of range')
    this.extraHeaders = opts.headers ?? {}
    this.agent = new Agent({
      connect: { timeout: Math.min(this.timeoutMs, LIMITS.webhookConnectTimeoutMs) },
      headersTimeout: this.timeoutMs,
      bodyTimeout: this.timeoutMs,
      // One event at a time per queue: a single kept-alive connection serves it.
      connections: 1,
    })
  }

  async deliver(e: BusEvent): Promise<void> {
    const where = `webhook ${this.url.href}`
    let status: number
    let snippet: string
    try {
      const res = await request(this.url, {
        method: 'POST',
        dispatcher: this.agent,
        headers: {
          ...this.extraHeaders,
          'content-type': 'application/json',
          [IDEMPOTENCY_KEY_HEADER]: e.id,
          [EVENT_SUBJECT_HEADER]: e.subject,
        },
        body: JSON.stringify(e.payload),
        signal: AbortSignal.timeout(this.timeoutMs),
      })
      status = res.statusCode
      snippet = await readBounded(res.body, LIMITS.webhookResponseBytes)
    } catch (err) {
      throw new Error(`${where} ${describeFailure(err, this.timeoutMs)}`, { cause: err })
    }
    if (status >= 200 && status < 300) return
    const quoted = snippet.replace(/\s+/g, ' ').trim().slice(0, LIMITS.webhookErrorSnippetChars)
    throw new Error(`${where} answered ${status}${quoted === '' ? '' : `: ${quoted}`}`)
  }

  close(): Promise<void> {
    return this.agent.close()
  }
}

/** Reads at most `max` bytes of a response body and discards the rest (destroying the stream). */
async function readBounded(body: AsyncIterable<unknown> & { destroy(): unknown }, max: number): Promise<string> {
  const chunks: Buffer[] = []
  let size = 0
  for await (const chunk of body) {
    const buf = chunk as Buffer
    chunks.push(buf.subarray(0, Math.max(0, max - size)))
    size += buf.length
    if (size >= max) {
      body.destroy()
      break
    }
  }
  return Buffer.concat(chunks).toString('utf8')
}

function describeFailure(err: unknown, timeoutMs: number): string {
  const e = err as { name?: string; code?: string; message?: string }
  switch (e.code) {
    case 'UND_ERR_CONNECT_TIMEOUT':
      return 'connect timed out'
    case 'UND_ERR_HEADERS_TIMEOUT':
    case 'UND_ERR_BODY_TIMEOUT':
      return `timed out after ${timeoutMs} ms (${e.code})`
    case 'ECONNREFUSED':
      return 'unreachable: connection refused (ECONNREFUSED)'
    case 'ECONNRESET':
    case 'UND_ERR_SOCKET':
      return `connection lost (${e.code}): ${e.message ?? ''}`
  }
  if (e.name === 'TimeoutError' || e.name === 'AbortError') return `timed out after ${timeoutMs} ms`
  return `failed: ${e.code !== undefined ? `${e.code} ` : ''}${e.message ?? String(err)}`
}
