// Mutating admission webhook: AdmissionReview v1 in, JSON Patch out, built by the same
// injectObject as `txmesh inject`. It never fails open silently: a review it cannot serve is
// denied with the reason (allowed: false), a request that is not a review gets a 4xx with a
// stable code, and every admission is one JSON log line.
import { statSync, readFileSync } from 'node:fs'
import { createServer, type Server } from 'node:https'
import type { IncomingMessage, ServerResponse } from 'node:http'
import type { AddressInfo } from 'node:net'
import {
  AdmissionInvalidError,
  InjectError,
  InternalError,
  MethodNotAllowedError,
  NotFoundError,
  TxmeshError,
} from '../errors.js'
import { readText, sendJson } from '../http-json.js'
import { LIMITS } from '../limits.js'
import type { Logger } from '../telemetry/logger.js'
import { answerRefusedRequests, respondError } from '../proxy/respond.js'
import { WEBHOOK } from './constants.js'
import { injectObject, objectName } from './inject.js'
import { isObject, type Json, type JsonObject } from './json-patch.js'

export const ADMISSION_API_VERSION = 'admission.k8s.io/v1'

export interface AdmissionResponse {
  uid: string
  allowed: boolean
  patchType?: 'JSONPatch'
  patch?: string
  status?: { code: number; reason: string; message: string }
  warnings?: string[]
}

export interface AdmissionReviewOut {
  apiVersion: typeof ADMISSION_API_VERSION
  kind: 'AdmissionReview'
  response: AdmissionResponse
}

/** The answer and the fields of its log line. */
export interface Admission {
  readonly review: AdmissionReviewOut
  readonly log: Record<string, unknown>
}

export interface AdmitOptions {
  /** The request came through the namespace-enabled path: inject unless the pod says "false". */
  readonly namespaceEnabled: boolean
  readonly image?: string
}

/**
 * Pure core of the webhook: a parsed body to the AdmissionReview answer. Returns an
 * AdmissionInvalidError (HTTP 400) when the body is not a v1 AdmissionReview with a request.
 */
export function admit(body: unknown, options: AdmitOptions): Admission | AdmissionInvalidError {
  if (!isObject(body)) return new AdmissionInvalidError('body must be a JSON object (an AdmissionReview)')
  if (body.kind !== 'AdmissionReview')
    return new AdmissionInvalidError(`kind must be AdmissionReview, not ${JSON.stringify(body.kind ?? null)}`)
  if (body.apiVersion !== ADMISSION_API_VERSION) {
    return new AdmissionInvalidError(
      `apiVersion must be ${ADMISSION_API_VERSION} (the webhook configuration's admissionReviewVersions: ["v1"]), not ${JSON.stringify(body.apiVersion ?? null)}`,
    )
  }
  const request = body.request
  if (!isObject(request)) return new AdmissionInvalidError('request is missing')
  const uid = request.uid
  if (typeof uid !== 'string' || uid === '') return new AdmissionInvalidError('request.uid is missing')
  const kind = isObject(request.kind) ? request.kind : {}
  const operation = typeof request.operation === 'string' ? request.operation : undefined
  const namespace = typeof request.namespace === 'string' ? request.namespace : undefined
  const base = { uid, namespace, operation }
  const answer = (response: Omit<AdmissionResponse, 'uid'>, log: Record<string, unknown>): Admission => ({
    review: { apiVersion: ADMISSION_API_VERSION, kind: 'AdmissionReview', response: { uid, ...response } },
    log: { ...base, ...log },
  })

  // Only the creation of a Pod is ours. Anything else reaching us is a configuration mistake
  // that must not block the cluster: allowed, with a warning to the client and in the log.
  const subResource = typeof request.subResource === 'string' ? request.subResource : ''
  const isPod = kind.kind === 'Pod' && (kind.group ?? '') === '' && kind.version === 'v1' && subResource === ''
  if (!isPod) {
    const what = `${String(kind.group ?? '') || 'core'}/${String(kind.version ?? '?')} ${String(kind.kind ?? '?')}${subResource === '' ? '' : `/${subResource}`}`
    return answer(
      {
        allowed: true,
        warnings: [`txmesh webhook: ${what} is not a Pod; nothing injected (check the webhook's rules)`],
      },
      { outcome: 'skipped', reason: 'not-a-pod', resource: what },
    )
  }
  if (operation !== undefined && operation !== 'CREATE')
    return answer({ allowed: true }, { outcome: 'skipped', reason: 'not-create' })
  const object = request.object
  if (!isObject(object)) return new AdmissionInvalidError('request.object is missing or not a Pod object')
  // The API server sends apiVersion/kind with the object; a hand-made review may leave them out.
  const pod: JsonObject = { ...object, apiVersion: 'v1', kind: 'Pod' }
  const name = objectName(pod)
  try {
    const outcome = injectObject(pod, {
      namespaceEnabled: options.namespaceEnabled,
      ...(options.image === undefined ? {} : { image: options.image }),
    })
    const template = outcome?.templates[0]
    if (outcome === undefined || template === undefined) throw new Error('a Pod has no pod template')
    if (template.kind === 'skipped')
      return answer({ allowed: true }, { name, outcome: 'skipped', reason: template.reason })
    return answer(
      { allowed: true, patchType: 'JSONPatch', patch: Buffer.from(JSON.stringify(outcome.patch)).toString('base64') },
      {
        name,
        outcome: 'injected',
        operations: outcome.patch.length,
        capture: template.settings.capture,
        native: template.settings.native,
        appPort: template.settings.appPort,
      },
    )
  } catch (err) {
    // Denied, never waved through: a pod that asked for a sidecar must not start without one.
    const e =
      err instanceof TxmeshError
        ? err
        : new InternalError(`injection failed: ${(err as Error).message}`, { cause: err })
    const where = e instanceof InjectError && e.path !== undefined ? ` (at ${e.path})` : ''
    const message = `txmesh: ${e.code}: ${e.message}${where}`
    return answer(
      { allowed: false, status: { code: e.status, reason: e.code, message } },
      { name, outcome: 'denied', code: e.code, message },
    )
  }
}

export interface WebhookOptions {
  readonly cert: string | Buffer
  readonly key: string | Buffer
  readonly port: number
  /** Default: the unspecified address (IPv6 when available, else IPv4). */
  readonly host?: string
  readonly log: Logger
  readonly image?: string
  /** Files to watch for a rotated certificate (cert-manager renews the Secret in place). */
  readonly certFiles?: { readonly cert: string; readonly key: string }
}

export interface WebhookServer {
  readonly port: number
  /** Re-reads certFiles now when they changed; true when a new pair is in use. */
  reloadCertificate(): boolean
  close(): Promise<void>
}

// Review path -> whether the namespace selector matched (a Map: no prototype keys such as /constructor).
const PATHS: ReadonlyMap<string, boolean> = new Map([
  [WEBHOOK.path, false],
  [WEBHOOK.namespaceEnabledPath, true],
])

export async function startWebhook(options: WebhookOptions): Promise<WebhookServer> {
  const { log } = options
  const server: Server = createServer(
    {
      cert: options.cert,
      key: options.key,
      maxHeaderSize: LIMITS.maxHeaderBytes,
      headersTimeout: LIMITS.admissionHeadersTimeoutMs,
      connectionsCheckingInterval: LIMITS.connectionsCheckMs,
      requestTimeout: LIMITS.admissionRequestTimeoutMs,
    },
    (req, res) => {
      handle(req, res, options).catch((err: unknown) => {
        log.error('admission_failed', { error: String(err) })
        respondError(res, new InternalError('the webhook failed to answer'))
      })
    },
  )
  server.on('tlsClientError', (err) => log.debug('tls_client_error', { error: err.message }))
  // Node's own answers to malformed requests (400, 408, 417, 431) carry a code like every other.
  answerRefusedRequests(server, LIMITS.maxHeaderBytes)

  const stamp = (): string | undefined => {
    if (options.certFiles === undefined) return undefined
    try {
      const a = statSync(options.certFiles.cert)
      const b = statSync(options.certFiles.key)
      return `${a.mtimeMs}:${a.size}:${b.mtimeMs}:${b.size}`
    } catch {
      return undefined
    }
  }
  let current = stamp()
  const reloadCertificate = (): boolean => {
    const files = options.certFiles
    const now = stamp()
    if (files === undefined || now === undefined || now === current) return false
    try {
      server.setSecureContext({ cert: readFileSync(files.cert), key: readFileSync(files.key) })
      current = now
      log.info('certificate_reloaded', { cert: files.cert })
      return true
    } catch (err) {
      // Half-written files (cert of the new pair, key of the old): keep serving the old pair
      // and try again at the next check.
      log.error('certificate_reload_failed', { cert: files.cert, error: (err as Error).message })
      return false
    }
  }
  const timer =
    options.certFiles === undefined ? undefined : setInterval(reloadCertificate, LIMITS.admissionCertCheckMs)
  timer?.unref()

  await new Promise<void>((resolve, reject) => {
    server.once('error', reject)
    server.listen(options.port, options.host, () => {
      server.off('error', reject)
      resolve()
    })
  })
  return {
    port: (server.address() as AddressInfo).port,
    reloadCertificate,
    close: () =>
      new Promise<void>((resolve) => {
        if (timer !== undefined) clearInterval(timer)
        server.close(() => resolve())
        // The API server keeps connections alive between reviews: idle ones would hold close().
        server.closeIdleConnections()
      }),
  }
}

async function handle(req: IncomingMessage, res: ServerResponse, options: WebhookOptions): Promise<void> {
  // The API server appends ?timeout=10s to the configured path.
  const path = new URL(req.url ?? '/', 'https://webhook').pathname
  if (path === '/healthz') {
    if (req.method !== 'GET' && req.method !== 'HEAD')
      return respondError(res, new MethodNotAllowedError('GET /healthz'))
    return sendJson(res, 200, { status: 'ok' })
  }
  const namespaceEnabled = PATHS.get(path)
  if (namespaceEnabled === undefined)
    return respondError(
      res,
      new NotFoundError(`no endpoint ${path}; reviews go to ${WEBHOOK.path} or ${WEBHOOK.namespaceEnabledPath}`),
    )
  if (req.method !== 'POST') return respondError(res, new MethodNotAllowedError(`${path} takes POST`))
  const started = performance.now()
  const text = await readText(req, LIMITS.admissionBodyBytes)
  const reject = (err: TxmeshError): void => {
    options.log.warn('admission_rejected', { path, code: err.code, status: err.status, message: err.message })
    respondError(res, err)
  }
  if (text instanceof TxmeshError) return reject(text)
  let body: unknown
  try {
    body = JSON.parse(text) as Json
  } catch {
    return reject(new AdmissionInvalidError('body is not valid JSON'))
  }
  const result = admit(body, { namespaceEnabled, ...(options.image === undefined ? {} : { image: options.image }) })
  if (result instanceof TxmeshError) return reject(result)
  const ms = Math.round((performance.now() - started) * 1000) / 1000
  const fields = { path, ...result.log, ms }
  if (result.review.response.allowed && result.log.reason !== 'not-a-pod') options.log.info('admission', fields)
  else options.log.warn('admission', fields)
  sendJson(res, 200, result.review)
}
