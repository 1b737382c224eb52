// OpenTelemetry tracing (issue 5 item 1): off unless an OTLP endpoint is configured by the
// standard environment, and then spans are made by hand at the proxy's and the coordinator's
// hook points. No auto-instrumentation: it would trace undici and node:http a second time.
//
// Cost when off: startTracing() returns undefined and every caller checks that one value before
// creating anything, so the data plane does no tracing work at all. The SDK is imported only
// when tracing is on.
import {
  ROOT_CONTEXT,
  SpanKind,
  SpanStatusCode,
  TraceFlags,
  trace,
  type Attributes,
  type Context,
  type Link,
  type Span,
  type SpanContext,
  type Tracer,
} from '@opentelemetry/api'
import type { Logger } from './logger.js'

export { SpanKind, SpanStatusCode, type Context, type Span, type Tracer }

export interface Tracing {
  readonly tracer: Tracer
  /** Ends the exporter after flushing what the batch processor holds (drain, SIGTERM). */
  shutdown(): Promise<void>
}

type Env = Readonly<Record<string, string | undefined>>

/** Tracing is on when an OTLP endpoint is set and the SDK is not disabled (OTel env spec). */
export function tracingConfigured(env: Env = process.env): boolean {
  if ((env.OTEL_SDK_DISABLED ?? '').trim().toLowerCase() === 'true') return false
  return nonEmpty(env.OTEL_EXPORTER_OTLP_ENDPOINT) || nonEmpty(env.OTEL_EXPORTER_OTLP_TRACES_ENDPOINT)
}

function nonEmpty(v: string | undefined): boolean {
  return v !== undefined && v.trim() !== ''
}

/**
 * Starts the OpenTelemetry SDK (OTLP/HTTP exporter behind a BatchSpanProcessor, W3C trace
 * context) when the environment asks for it; undefined otherwise. The service name is
 * OTEL_SERVICE_NAME, else the config's service.
 */
export async function startTracing(service: string, log: Logger, env: Env = process.env): Promise<Tracing | undefined> {
  if (!tracingConfigured(env)) return undefined
  const [{ NodeSDK }, { OTLPTraceExporter }, { BatchSpanProcessor }, { W3CTraceContextPropagator }] = await Promise.all(
    [
      import('@opentelemetry/sdk-node'),
      import('@opentelemetry/exporter-trace-otlp-http'),
      import('@opentelemetry/sdk-trace-base'),
      import('@opentelemetry/core'),
    ],
  )
  const sdk = new NodeSDK({
    // NodeSDK reads OTEL_SERVICE_NAME itself; an explicit serviceName would override it.
    ...(nonEmpty(env.OTEL_SERVICE_NAME) ? {} : { serviceName: service }),
    spanProcessors: [new BatchSpanProcessor(new OTLPTraceExporter())],
    textMapPropagator: new W3CTraceContextPropagator(),
    instrumentations: [],
    // Traces only: metrics are served by /metrics, logs go to stdout. Without these NodeSDK
    // would start OTLP metric and log exporters from the same endpoint.
    metricReaders: [],
    logRecordProcessors: [],
  })
  sdk.start()
  log.info('tracing_started', { endpoint: env.OTEL_EXPORTER_OTLP_TRACES_ENDPOINT ?? env.OTEL_EXPORTER_OTLP_ENDPOINT })
  let stopped: Promise<void> | undefined
  return {
    tracer: trace.getTracer('txmesh'),
    shutdown: () =>
      (stopped ??= sdk.shutdown().catch((err: unknown) => {
        log.warn('tracing_shutdown_failed', { error: String(err) })
      })),
  }
}

// W3C trace context (https://www.w3.org/TR/trace-context/#traceparent-header), parsed here on
// the flat header arrays the proxy already holds instead of through a propagator and a carrier
// object per request.
const TRACEPARENT = /^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?$/
const INVALID_TRACE = '00000000000000000000000000000000'
const INVALID_SPAN = '0000000000000000'

export function parseTraceparent(value: string | undefined, tracestate?: string): SpanContext | undefined {
  if (value === undefined) return undefined
  const m = TRACEPARENT.exec(value.trim())
  if (m === null) return undefined
  const [, version, traceId, spanId, flags, rest] = m as unknown as [
    string,
    string,
    string,
    string,
    string,
    string | undefined,
  ]
  if (version === 'ff' || (version === '00' && rest !== undefined)) return undefined
  if (traceId === INVALID_TRACE || spanId === INVALID_SPAN) return undefined
  const ctx: SpanContext = { traceId, spanId, traceFlags: parseInt(flags, 16) & TraceFlags.SAMPLED, isRemote: true }
  if (tracestate !== undefined && tracestate !== '') {
    // The proxy forwards tracestate untouched; the span context only needs to carry it along.
    return { ...ctx, traceState: rawTraceState(tracestate) }
  }
  return ctx
}

/** A minimal TraceState that keeps the header's text as is (we never edit vendor entries). */
function rawTraceState(text: string): NonNullable<SpanContext['traceState']> {
  const self: NonNullable<SpanContext['traceState']> = {
    set: () => self,
    unset: () => self,
    get: () => undefined,
    serialize: () => text,
  }
  return self
}

export function formatTraceparent(sc: SpanContext): string {
  return `00-${sc.traceId}-${sc.spanId}-${(sc.traceFlags & TraceFlags.SAMPLED) === 0 ? '00' : '01'}`
}

/** The remote parent named by `traceparent`/`tracestate` in a flat [name, value, ...] list. */
export function extractFromHeaders(headers: readonly string[]): Context {
  let parent: string | undefined
  let state: string | undefined
  for (let i = 0; i < headers.length; i += 2) {
    const name = headers[i] as string
    if (name.length === 11 && name.toLowerCase() === 'traceparent') parent = headers[i + 1]
    else if (name.length === 10 && name.toLowerCase() === 'tracestate')
      state = state === undefined ? headers[i + 1] : `${state},${headers[i + 1]}`
  }
  const sc = parseTraceparent(parent, state)
  return sc === undefined ? ROOT_CONTEXT : trace.setSpanContext(ROOT_CONTEXT, sc)
}

/** Sets the one `traceparent` of a flat header list to `span`'s (tracestate is left alone). */
export function injectTraceparent(headers: string[], span: Span): void {
  const value = formatTraceparent(span.spanContext())
  let set = false
  for (let i = 0; i < headers.length; i += 2) {
    const name = headers[i] as string
    if (name.length !== 11 || name.toLowerCase() !== 'traceparent') continue
    if (set) {
      headers.splice(i, 2)
      i -= 2
    } else {
      headers[i + 1] = value
      set = true
    }
  }
  if (!set) headers.push('traceparent', value)
}

/** Starts a span under `parent` (a context, or a span). */
export function childSpan(
  tracer: Tracer,
  name: string,
  kind: SpanKind,
  parent: Context | Span | undefined,
  attributes?: Attributes,
  links?: Link[],
): Span {
  const ctx =
    parent === undefined ? ROOT_CONTEXT : 'spanContext' in parent ? trace.setSpan(ROOT_CONTEXT, parent) : parent
  return tracer.startSpan(
    name,
    { kind, ...(attributes === undefined ? {} : { attributes }), ...(links === undefined ? {} : { links }) },
    ctx,
  )
}

export function contextOf(span: Span): Context {
  return trace.setSpan(ROOT_CONTEXT, span)
}

/** A link to the span a stored `traceparent` names (recovery after a restart). */
export function linkTo(traceparent: unknown): Link[] | undefined {
  if (typeof traceparent !== 'string') return undefined
  const sc = parseTraceparent(traceparent)
  return sc === undefined ? undefined : [{ context: sc, attributes: { 'txmesh.link': 'original-transaction' } }]
}
