// Small JSON request/response helpers for the admin and control listeners (not the proxy hot
// path). Bodies are bounded; malformed JSON is a 400 with a stable code.
import type { IncomingMessage, ServerResponse } from 'node:http'
import { BadRequestError, BodyTooLargeError, type TxmeshError } from './errors.js'

export function sendJson(res: ServerResponse, status: number, body: unknown): void {
  const text = JSON.stringify(body)
  res.writeHead(status, {
    'content-type': 'application/json',
    'content-length': Buffer.byteLength(text),
    'cache-control': 'no-store',
  })
  res.end(text)
}

/** Reads the whole body as text, refusing more than `limit` bytes. */
export function readText(req: IncomingMessage, limit: number): Promise<string | TxmeshError> {
  return new Promise((resolve) => {
    const declared = Number(req.headers['content-length'] ?? 0)
    if (declared > limit) {
      req.resume()
      return resolve(new BodyTooLargeError(`body of ${declared} bytes exceeds ${limit}`))
    }
    const chunks: Buffer[] = []
    let n = 0
    let failed = false
    req.on('data', (c: Buffer) => {
      n += c.length
      if (n > limit && !failed) {
        failed = true
        resolve(new BodyTooLargeError(`body exceeds ${limit} bytes`))
      }
      if (!failed) chunks.push(c)
    })
    req.once('end', () => {
      if (!failed) resolve(Buffer.concat(chunks).toString('utf8'))
    })
    req.once('error', () => resolve(new BadRequestError('request body could not be read')))
  })
}

export function parseJsonObject(text: string): Record<string, unknown> | TxmeshError {
  if (text === '') return {}
  try {
    const v = JSON.parse(text) as unknown
    if (v === null || typeof v !== 'object' || Array.isArray(v))
      return new BadRequestError('body must be a JSON object')
    return v as Record<string, unknown>
  } catch {
    return new BadRequestError('body is not valid JSON')
  }
}
