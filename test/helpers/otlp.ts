// A real OTLP/HTTP receiver (JSON encoding, POST /v1/traces) collecting what sidecar processes
// export, with each span's service and attributes made plain.
import { startServer } from './servers.js'

export interface OtlpValue {
  stringValue?: string
  intValue?: number | string
  boolValue?: boolean
  arrayValue?: { values?: OtlpValue[] }
}
export interface OtlpSpan {
  traceId: string
  spanId: string
  parentSpanId?: string
  name: string
  kind: number
  attributes?: { key: string; value: OtlpValue }[]
  links?: unknown[]
}
export interface Collected extends OtlpSpan {
  service: string
  attrs: Record<string, unknown>
}

function plain(v: OtlpValue): unknown {
  if (v.stringValue !== undefined) return v.stringValue
  if (v.intValue !== undefined) return Number(v.intValue)
  if (v.boolValue !== undefined) return v.boolValue
  if (v.arrayValue !== undefined) return (v.arrayValue.values ?? []).map(plain)
  return undefined
}

export /** A real OTLP/HTTP receiver: POST /v1/traces with the JSON encoding. */
async function startReceiver() {
  // The OTLP/HTTP receiver: POST /v1/traces with the JSON encoding.
  const payloads: string[] = []
  const spans: Collected[] = []
  const receiver = await startServer((req, res) => {
    const chunks: Buffer[] = []
    req.on('data', (c: Buffer) => chunks.push(c))
    req.on('end', () => {
      const text = Buffer.concat(chunks).toString()
      if (req.method === 'POST' && req.url === '/v1/traces') {
        payloads.push(text)
        const body = JSON.parse(text) as {
          resourceSpans?: {
            resource?: { attributes?: { key: string; value: OtlpValue }[] }
            scopeSpans?: { spans?: OtlpSpan[] }[]
          }[]
        }
        for (const rs of body.resourceSpans ?? []) {
          const service = String(plain(rs.resource?.attributes?.find((a) => a.key === 'service.name')?.value ?? {}))
          for (const ss of rs.scopeSpans ?? []) {
            for (const s of ss.spans ?? [])
              spans.push({
                ...s,
                service,
                attrs: Object.fromEntries((s.attributes ?? []).map((a) => [a.key, plain(a.value)])),
              })
          }
        }
      }
      res.writeHead(200, { 'content-type': 'application/json' }).end('{}')
    })
  })
  return { receiver, spans, payloads }
}
