// Request templates of saga compensations and TCC hooks (config `compensation`, `tcc`), filled
// from the step's call: before it is sent, for its intent, when they read nothing of the
// response (docs/sagas-tcc.md), and when its response arrives. Placeholders (the config
// schema checks their shape, so a typo fails at load with file:line:col):
//   {request.method} {request.path} {request.query.NAME} {request.header.NAME} {request.json.A.B}
//   {response.status} {response.header.NAME} {response.json.A.B} {tx.id} {step.id}
// In a path every value is percent-encoded; in a body or header it is inserted as text (a JSON
// object or array as JSON). A placeholder with no value leaves the step unresolved: it goes
// stuck with the reason instead of sending a wrong request. A header no HTTP client would send
// (a value with CR, LF or a character beyond latin1, from `{request.json.*}` say) would fail
// every attempt: the call is refused before it is sent when the request alone makes it invalid
// (requestProblem), the step is unresolved when its response does, and the config refuses a
// template that can only produce one (configHeaderProblem).
import type { StepRequestTemplate } from '../../config/types.js'
import { LIMITS } from '../../limits.js'
import type { StepOp } from './machine.js'

const PLACEHOLDER = /\{([a-z]+(?:\.[A-Za-z0-9_.-]+)?)\}/g

export interface CallFacts {
  readonly method: string
  /** Path with query, as sent upstream. */
  readonly path: string
  /** Flat [name, value, ...] list. */
  readonly requestHeaders: readonly string[]
  readonly requestBody: Buffer | undefined
  readonly status: number
  readonly responseHeaders: readonly string[]
  readonly responseBody: Buffer | undefined
  readonly txId: string
  readonly stepId: string
}

/**
 * Which bodies the templates read (the proxy buffers only those, bounded), and whether they read
 * anything of the response at all (if not, they can be filled before the call is sent).
 */
export function templateNeeds(...ts: (StepRequestTemplate | undefined)[]): TemplateNeeds {
  let requestJson = false
  let responseJson = false
  let response = false
  for (const t of ts) {
    if (t === undefined) continue
    const n = needsOf(t)
    requestJson ||= n.requestJson
    responseJson ||= n.responseJson
    response ||= n.response
  }
  return { requestJson, responseJson, response }
}

export interface TemplateNeeds {
  readonly requestJson: boolean
  readonly responseJson: boolean
  readonly response: boolean
}

// Templates come from the loaded config and never change: each is scanned once, not on every
// saga/TCC call that uses it.
const scanned = new WeakMap<StepRequestTemplate, TemplateNeeds>()

function needsOf(t: StepRequestTemplate): TemplateNeeds {
  let n = scanned.get(t)
  if (n === undefined) {
    const all = [t.path, t.body ?? '', ...Object.values(t.headers)].join('\n')
    n = {
      requestJson: all.includes('{request.json.'),
      responseJson: all.includes('{response.json.'),
      response: all.includes('{response.'),
    }
    scanned.set(t, n)
  }
  return n
}

/** The filled request, or why it cannot be filled. */
export function fillTemplate(t: StepRequestTemplate, facts: CallFacts): StepOp | { unresolved: string } {
  const json: { request?: unknown; response?: unknown } = {}
  const missing: string[] = []
  const lookup = (name: string): string | undefined => {
    const v = valueOf(name, facts, json)
    if (v === undefined) missing.push(name)
    return v
  }
  const path = t.path.replace(PLACEHOLDER, (_m, name: string) => encodeURIComponent(lookup(name) ?? ''))
  const body = t.body?.replace(PLACEHOLDER, (_m, name: string) => lookup(name) ?? '')
  const headers: Record<string, string> = {}
  for (const [k, v] of Object.entries(t.headers))
    headers[k.toLowerCase()] = v.replace(PLACEHOLDER, (_m, name: string) => lookup(name) ?? '')
  if (missing.length > 0) return { unresolved: `compensation template has no value for {${missing.join('}, {')}}` }
  const op = {
    method: t.method,
    path,
    ...(body === undefined ? {} : { body }),
    ...(Object.keys(headers).length === 0 ? {} : { headers }),
  }
  const problem = pathProblem(path) ?? opHeadersProblem(op)
  return problem === undefined ? op : { unresolved: `compensation template: ${problem}` }
}

/**
 * Why the request of `t`, filled from the call's request alone, could never be sent, if so:
 * its headers with every `{response.*}` placeholder left empty. Checked before the call is sent
 * (what the response adds can only lengthen a value, never make an invalid one valid); a
 * placeholder without a value is not a problem here (the step is unresolved instead).
 */
export function requestProblem(t: StepRequestTemplate, facts: CallFacts): string | undefined {
  const json: { request?: unknown; response?: unknown } = {}
  // A response value stands in as one that cannot make a dot-segment.
  const path = t.path.replace(PLACEHOLDER, (_m, name: string) =>
    name.startsWith('response.') ? 'r' : encodeURIComponent(valueOf(name, facts, json) ?? ''),
  )
  const bad = pathProblem(path)
  if (bad !== undefined) return bad
  let bytes = 0
  for (const [k, v] of Object.entries(t.headers)) {
    const value = v.replace(PLACEHOLDER, (_m, name: string) =>
      name.startsWith('response.') ? '' : (valueOf(name, facts, json) ?? ''),
    )
    const problem = headerValueProblem(k, value)
    if (problem !== undefined) return problem
    bytes += k.length + value.length + HEADER_LINE_BYTES
  }
  return bytes > LIMITS.stepOpHeaderBytes ? headersTooLarge(bytes) : undefined
}

/**
 * Why a filled path could never reach the target's app, if so: a `.` or `..` segment (raw or
 * encoded), which every txmesh ingress refuses (TXM_PATH_AMBIGUOUS) however often it is sent.
 */
function pathProblem(path: string): string | undefined {
  for (const seg of path.split('?')[0]!.split('/')) {
    let s = seg
    try {
      s = decodeURIComponent(seg)
    } catch {
      // Not decodable: the ingress judges it; not a dot-segment.
    }
    if (s === '.' || s === '..')
      return `the path ${path.slice(0, 64)} has a dot-segment, which the target's ingress refuses`
  }
  return undefined
}

/** Why the headers of a filled step op (a template's, or a peer's /steps record) could never be sent, if so. */
export function opHeadersProblem(op: {
  readonly headers?: Readonly<Record<string, string>>
  readonly body?: string
}): string | undefined {
  let bytes = 0
  for (const [k, v] of Object.entries(op.headers ?? {})) {
    const problem = headerNameProblem(k) ?? headerValueProblem(k, v) ?? headerSemanticsProblem(k, v, op.body)
    if (problem !== undefined) return problem
    bytes += k.length + v.length + HEADER_LINE_BYTES
  }
  return bytes > LIMITS.stepOpHeaderBytes ? headersTooLarge(bytes) : undefined
}

/**
 * Config: why a header of a template can only produce a request no client sends, if so: a name
 * the HTTP client always refuses, literal text (outside the placeholders) with a character not
 * allowed in a header value, or literal text alone over the headers' bound.
 */
export function configHeaderProblem(
  name: string,
  template: string,
): { readonly on: 'name' | 'value'; readonly message: string } | undefined {
  const n = headerNameProblem(name)
  if (n !== undefined) return { on: 'name', message: n }
  const literal = template.replace(PLACEHOLDER, '')
  const v = headerValueProblem(name, literal)
  if (v !== undefined) return { on: 'value', message: v }
  if (name.length + literal.length + HEADER_LINE_BYTES > LIMITS.stepOpHeaderBytes)
    return { on: 'value', message: headersTooLarge(name.length + literal.length + HEADER_LINE_BYTES) }
  return undefined
}

// ": " and CRLF around each header line, as the request head carries it.
const HEADER_LINE_BYTES = 4
// RFC 9110 token: what a header name may be.
const TOKEN = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/
// What undici (and Node's http) accept in a header value: HTAB, visible ASCII, space, obs-text.
const INVALID_VALUE_CHAR = /[^\t\x20-\x7e\x80-\xff]/
// Headers undici refuses to send whatever their value: the client frames the connection itself.
const REFUSED_NAMES: ReadonlySet<string> = new Set(['transfer-encoding', 'keep-alive', 'upgrade', 'expect'])

function headerNameProblem(name: string): string | undefined {
  if (!TOKEN.test(name)) return `header name ${JSON.stringify(name.slice(0, 64))} is not an HTTP token`
  if (REFUSED_NAMES.has(name.toLowerCase()))
    return `header ${name.toLowerCase()} cannot be set on a step's request (the HTTP client frames the connection itself)`
  return undefined
}

function headerValueProblem(name: string, value: string): string | undefined {
  const bad = INVALID_VALUE_CHAR.exec(value)
  if (bad === null) return undefined
  const code = (bad[0].codePointAt(0) as number).toString(16).toUpperCase().padStart(4, '0')
  return `header ${name.toLowerCase()} would carry U+${code}: CR, LF, NUL, other control characters and characters beyond latin1 are not allowed in a header value`
}

/** The two headers whose value undici parses: a list of tokens, and the body's length. */
function headerSemanticsProblem(name: string, value: string, body: string | undefined): string | undefined {
  const n = name.toLowerCase()
  if (n === 'connection' && !value.split(',').every((t) => TOKEN.test(t.trim())))
    return `header connection must be a list of tokens`
  if (n === 'content-length' && value !== String(Buffer.byteLength(body ?? '')))
    return `header content-length must be the body's length in bytes (${Buffer.byteLength(body ?? '')})`
  return undefined
}

function headersTooLarge(bytes: number): string {
  return `the template's headers would be ${bytes} bytes; at most ${LIMITS.stepOpHeaderBytes}`
}

/**
 * `txmesh-compensate: METHOD /path` named by the service itself on a step's response. The path
 * must be origin-form (the compensation goes to the same service).
 */
export function parseCompensateHeader(value: string): StepOp | { unresolved: string } {
  const m = COMPENSATE_HEADER.exec(value.trim())
  if (m === null)
    return { unresolved: `txmesh-compensate header is not "METHOD /path": ${JSON.stringify(value.slice(0, 80))}` }
  const method = m[1] as string
  if (!isStepMethod(method))
    return { unresolved: `txmesh-compensate names ${method}, which opens a tunnel and cannot undo a step` }
  return { method, path: m[2] as string }
}

const COMPENSATE_HEADER = new RegExp(`^([A-Z]{1,${LIMITS.stepMethodChars}}) (/[^\\s]{0,${LIMITS.stepPathChars - 1}})$`)
const METHOD_SHAPE = new RegExp(`^[A-Z]{1,${LIMITS.stepMethodChars}}$`)

/**
 * A method a compensation, confirm or cancel can be sent with: upper-case letters, bounded.
 * CONNECT is not one: it asks for a tunnel, and the HTTP client refuses to send it as a request,
 * so a step naming it would fail every attempt until it went stuck.
 */
export function isStepMethod(m: unknown): m is string {
  return typeof m === 'string' && METHOD_SHAPE.test(m) && m !== 'CONNECT'
}

function valueOf(name: string, f: CallFacts, json: { request?: unknown; response?: unknown }): string | undefined {
  const [scope, field, ...rest] = name.split('.')
  if (scope === 'tx' && field === 'id') return f.txId
  if (scope === 'step' && field === 'id') return f.stepId
  if (scope === 'request') {
    if (field === 'method') return f.method
    if (field === 'path') return f.path.split('?')[0]
    if (field === 'query') return new URLSearchParams(f.path.split('?')[1] ?? '').get(rest.join('.')) ?? undefined
    if (field === 'header') return header(f.requestHeaders, rest.join('.'))
    if (field === 'json') return jsonField((json.request ??= parseJson(f.requestBody)), rest)
  }
  if (scope === 'response') {
    if (field === 'status') return String(f.status)
    if (field === 'header') return header(f.responseHeaders, rest.join('.'))
    if (field === 'json') return jsonField((json.response ??= parseJson(f.responseBody)), rest)
  }
  return undefined
}

function header(list: readonly string[], name: string): string | undefined {
  const n = name.toLowerCase()
  for (let i = 0; i < list.length; i += 2) if ((list[i] as string).toLowerCase() === n) return list[i + 1]
  return undefined
}

function parseJson(body: Buffer | undefined): unknown {
  if (body === undefined || body.length === 0) return null
  try {
    return JSON.parse(body.toString('utf8')) as unknown
  } catch {
    return null
  }
}

function jsonField(doc: unknown, path: readonly string[]): string | undefined {
  let v = doc
  for (const k of path) {
    if (typeof v !== 'object' || v === null) return undefined
    v = (v as Record<string, unknown>)[k]
  }
  if (v === undefined || v === null) return undefined
  return typeof v === 'string' ? v : JSON.stringify(v)
}
