// `txmesh sidecar --config FILE [--app-port N] [--egress-port N] [--ingress-port N]
//  [--control-port N] [--admin-port N] [--health-port N] [--service NAME] [--store-dir DIR]
//  [--advertise HOST:PORT]`: flags override the file; 0 picks a free port. TXMESH_SERVICE,
// TXMESH_STORE_DIR and TXMESH_ADVERTISE override the file too, flags override them. Prints one
// JSON line with the bound ports on stdout; SIGTERM/SIGINT drain and exit 0.
import { parseArgs } from 'node:util'
import { loadConfigFile, overridesFrom, withOverrides } from '../config/load.js'
import { createLogger } from '../telemetry/logger.js'
import { missingRuntimeFlags } from '../runtime.js'
import { startSidecar } from '../sidecar.js'
import { UsageError } from './usage.js'

function portFlag(v: string | undefined, name: string): number | undefined {
  if (v === undefined) return undefined
  const n = Number(v)
  if (!/^\d{1,5}$/.test(v) || n > 65535) throw new UsageError(`--${name} must be a port number 0-65535, got "${v}"`)
  return n
}

export async function sidecarCommand(argv: string[]): Promise<number> {
  const { values } = parseArgs({
    args: argv,
    options: {
      config: { type: 'string', short: 'c' },
      'app-port': { type: 'string' },
      'egress-port': { type: 'string' },
      'ingress-port': { type: 'string' },
      'control-port': { type: 'string' },
      'admin-port': { type: 'string' },
      'health-port': { type: 'string' },
      service: { type: 'string' },
      'store-dir': { type: 'string' },
      advertise: { type: 'string' },
    },
    strict: true,
  })
  const file = values.config ?? process.env.TXMESH_CONFIG
  if (file === undefined) throw new UsageError('sidecar needs --config FILE (or TXMESH_CONFIG)')
  const overrides: Parameters<typeof withOverrides>[1] = {}
  const set = (k: keyof typeof overrides, flag: string, v: string | undefined): void => {
    const p = portFlag(v, flag)
    if (p !== undefined) overrides[k] = p
  }
  set('app', 'app-port', values['app-port'])
  set('egress', 'egress-port', values['egress-port'])
  set('ingress', 'ingress-port', values['ingress-port'])
  set('control', 'control-port', values['control-port'])
  set('admin', 'admin-port', values['admin-port'])
  set('health', 'health-port', values['health-port'])
  const given = overridesFrom(
    { service: values.service, storeDir: values['store-dir'], advertise: values.advertise },
    process.env,
  )
  const config = withOverrides(loadConfigFile(file, given), overrides)
  const level = (process.env.TXMESH_LOG_LEVEL as typeof config.logLevel | undefined) ?? config.logLevel
  const log = createLogger(level, { service: config.service })
  const missing = missingRuntimeFlags()
  if (missing.length > 0)
    log.warn('runtime_flags_missing', { missing, hint: 'start with: node ' + missing.join(' ') + ' dist/cli/index.js' })
  const sidecar = await startSidecar(config, log)
  process.stdout.write(
    JSON.stringify({
      event: 'listening',
      service: config.service,
      pid: process.pid,
      ports: sidecar.ports,
      app: config.app,
    }) + '\n',
  )
  return new Promise<number>((resolve) => {
    const stop = (signal: string): void => {
      log.info('draining', { signal, timeoutMs: config.drainTimeoutMs })
      sidecar.drain().then(
        () => resolve(0),
        (err: unknown) => {
          log.error('drain_failed', { error: String(err) })
          resolve(1)
        },
      )
    }
    process.once('SIGTERM', () => stop('SIGTERM'))
    process.once('SIGINT', () => stop('SIGINT'))
  })
}
