// `txmesh webhook --cert FILE --key FILE [--port 8443] [--host ADDR] [--image IMAGE]`: the
// mutating admission webhook over HTTPS. Prints one JSON line with the bound port on stdout;
// SIGTERM/SIGINT close the listener and exit 0. The cert/key files are re-read when they change.
import { readFileSync } from 'node:fs'
import { parseArgs } from 'node:util'
import { WEBHOOK } from '../k8s/constants.js'
import { startWebhook } from '../k8s/webhook.js'
import { createLogger, type LogLevel } from '../telemetry/logger.js'
import { UsageError } from './usage.js'

const LEVELS = new Set(['debug', 'info', 'warn', 'error', 'silent'])

export async function webhookCommand(argv: string[]): Promise<number> {
  const { values } = parseArgs({
    args: argv,
    options: {
      cert: { type: 'string' },
      key: { type: 'string' },
      port: { type: 'string' },
      host: { type: 'string' },
      image: { type: 'string' },
    },
    strict: true,
  })
  if (values.cert === undefined || values.key === undefined)
    throw new UsageError('webhook needs --cert FILE and --key FILE')
  const portText = values.port ?? String(WEBHOOK.port)
  const port = Number(portText)
  if (!/^\d{1,5}$/.test(portText) || port > 65535)
    throw new UsageError(`--port must be a port number 0-65535, got "${portText}"`)
  const envLevel = process.env.TXMESH_LOG_LEVEL ?? 'info'
  const log = createLogger(LEVELS.has(envLevel) ? (envLevel as LogLevel) : 'info', { component: 'webhook' })
  let cert: Buffer
  let key: Buffer
  try {
    cert = readFileSync(values.cert)
    key = readFileSync(values.key)
  } catch (err) {
    process.stderr.write(`txmesh webhook: ${(err as Error).message}\n`)
    return 1
  }
  const server = await startWebhook({
    cert,
    key,
    port,
    log,
    certFiles: { cert: values.cert, key: values.key },
    ...(values.host === undefined ? {} : { host: values.host }),
    ...(values.image === undefined ? {} : { image: values.image }),
  })
  process.stdout.write(
    JSON.stringify({ event: 'listening', component: 'webhook', pid: process.pid, port: server.port }) + '\n',
  )
  return new Promise<number>((resolve) => {
    const stop = (signal: string): void => {
      log.info('closing', { signal })
      server.close().then(
        () => resolve(0),
        (err: unknown) => {
          log.error('close_failed', { error: String(err) })
          resolve(1)
        },
      )
    }
    process.once('SIGTERM', () => stop('SIGTERM'))
    process.once('SIGINT', () => stop('SIGINT'))
  })
}
