// Tracing helpers and the coordinator's recovery span, with an in-memory exporter (no SDK
// registered globally, no network).
import { BasicTracerProvider, InMemorySpanExporter, SimpleSpanProcessor } from '@opentelemetry/sdk-trace-base'
import { trace } from '@opentelemetry/api'
import { describe, expect, it } from 'vitest'
import { localIo } from '../../src/tx/io.js'
import { decodeRecords } from '../../src/tx/records.js'
import { silentLogger } from '../../src/telemetry/logger.js'
import type { FileLog } from '../../src/wal/file-log.js'
import type { ControlClient } from '../../src/control/client.js'
import { CoordinatorDriver } from '../../src/tx/coordinator/driver.js'
import { staticKeys } from '../../src/tx/keys.js'
import {
  extractFromHeaders,
  injectTraceparent,
  parseTraceparent,
  tracingConfigured,
  type Tracing,
} from '../../src/telemetry/tracing.js'

const TP = '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01'

describe('tracing helpers', () => {
  it('is on only when an OTLP endpoint is set and the SDK is not disabled', () => {
    expect(tracingConfigured({})).toBe(false)
    expect(tracingConfigured({ OTEL_EXPORTER_OTLP_ENDPOINT: 'http://c:4318' })).toBe(true)
    expect(tracingConfigured({ OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: 'http://c:4318/v1/traces' })).toBe(true)
    expect(tracingConfigured({ OTEL_EXPORTER_OTLP_ENDPOINT: 'http://c:4318', OTEL_SDK_DISABLED: 'true' })).toBe(false)
    expect(tracingConfigured({ OTEL_EXPORTER_OTLP_ENDPOINT: ' ' })).toBe(false)
  })

  it('parses valid traceparents and refuses malformed or all-zero ones', () => {
    expect(parseTraceparent(TP)).toMatchObject({
      traceId: '0af7651916cd43dd8448eb211c80319c',
      spanId: 'b7ad6b7169203331',
      traceFlags: 1,
      isRemote: true,
    })
    expect(parseTraceparent('00-00000000000000000000000000000000-b7ad6b7169203331-01')).toBeUndefined()
    expect(parseTraceparent('00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01')).toBeUndefined()
    expect(parseTraceparent('ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01')).toBeUndefined()
    expect(parseTraceparent('00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01')).toBeUndefined()
    expect(parseTraceparent('garbage')).toBeUndefined()
    expect(
      trace.getSpanContext(extractFromHeaders(['TraceParent', TP, 'tracestate', 'a=1']))?.traceState?.serialize(),
    ).toBe('a=1')
    expect(trace.getSpanContext(extractFromHeaders(['x', 'y']))).toBeUndefined()
  })

  it('sets exactly one traceparent on the forwarded headers', () => {
    const provider = new BasicTracerProvider()
    const span = provider.getTracer('t').startSpan('s')
    const headers = ['traceparent', TP, 'tracestate', 'a=1', 'Traceparent', TP]
    injectTraceparent(headers, span)
    const sc = span.spanContext()
    expect(headers).toEqual(['traceparent', `00-${sc.traceId}-${sc.spanId}-01`, 'tracestate', 'a=1'])
    const none: string[] = ['accept', '*/*']
    injectTraceparent(none, span)
    expect(none).toHaveLength(4)
  })
})

describe('coordinator recovery span', () => {
  it('starts a new transaction span linked to the trace stored in the decision record', async () => {
    const exporter = new InMemorySpanExporter()
    const provider = new BasicTracerProvider({ spanProcessors: [new SimpleSpanProcessor(exporter)] })
    const tracing: Tracing = { tracer: provider.getTracer('t'), shutdown: () => provider.shutdown() }
    const calls: string[] = []
    const control = {
      send: async (_to: string, m: { tx: string; op: string }) => (
        calls.push(`/v1/tx/${m.tx}/${m.op}`),
        { ok: true, status: 200, body: {} }
      ),
    } as unknown as ControlClient
    const log = { end: () => undefined } as unknown as FileLog
    const c = new CoordinatorDriver({
      io: localIo({ log, control }),
      self: '127.0.0.1:1',
      incarnation: 'AAAAAAAAAA',
      run: '',
      keys: staticKeys([Buffer.alloc(32)]),
      logger: silentLogger,
      tracing,
    })
    const participants = [{ service: 'orders', control: '127.0.0.1:2', branch: 'b1' }]
    expect(
      c.recover(
        decodeRecords([{ txId: 'c:tx1', body: { type: 'decision', mode: '2pc', participants, traceparent: TP } }]),
      ),
    ).toBe(1)
    for (let i = 0; i < 50 && !exporter.getFinishedSpans().some((s) => s.name === 'txmesh.transaction'); i++)
      await new Promise((r) => setTimeout(r, 10))
    c.close()
    const spans = exporter.getFinishedSpans()
    const tx = spans.find((s) => s.name === 'txmesh.transaction')!
    expect(tx.attributes).toMatchObject({
      'txmesh.tx.id': 'tx1',
      'txmesh.recovered': true,
      'txmesh.outcome': 'committed',
    })
    expect(tx.links.map((l) => l.context.traceId)).toEqual(['0af7651916cd43dd8448eb211c80319c'])
    expect(tx.spanContext().traceId).not.toBe('0af7651916cd43dd8448eb211c80319c')
    const commit = spans.find((s) => s.name === 'txmesh.commit')!
    expect(commit.attributes['txmesh.participant']).toBe('orders')
    expect(commit.parentSpanContext?.spanId).toBe(tx.spanContext().spanId)
    expect(calls).toEqual(['/v1/tx/tx1/commit'])
  })
})
