#!/usr/bin/env -S node --max-semi-space-size=2
// The `txmesh` command: dispatches to subcommands. Process wiring only.
import { readFileSync } from 'node:fs'
import { ConfigInvalidError, allErrorCodes } from '../errors.js'
import { USAGE, UsageError } from './usage.js'

async function main(argv: string[]): Promise<number> {
  const [cmd, ...rest] = argv
  switch (cmd) {
    // Each command is loaded on demand: a sidecar process loads no CLI client code (footprint).
    case 'sidecar':
      return (await import('./sidecar.js')).sidecarCommand(rest)
    case 'validate':
      return (await import('./validate.js')).validateCommand(rest)
    case 'tx':
      return (await import('./tx.js')).txCommand(rest)
    case 'events':
      return (await import('./events.js')).eventsCommand(rest)
    case 'demo-app':
      return (await import('./demo-app.js')).demoAppCommand(rest)
    case 'inject':
      return (await import('./inject.js')).injectCommand(rest)
    case 'webhook':
      return (await import('./webhook.js')).webhookCommand(rest)
    case 'errors':
      for (const e of allErrorCodes()) process.stdout.write(`${e.code}\t${e.status}\n`)
      return 0
    case 'version':
    case '--version': {
      const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as {
        version: string
      }
      process.stdout.write(pkg.version + '\n')
      return 0
    }
    case undefined:
    case 'help':
    case '--help':
    case '-h':
      process.stdout.write(USAGE)
      return cmd === undefined ? 2 : 0
    default:
      throw new UsageError(`unknown command "${cmd}"`)
  }
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code
  },
  (err: unknown) => {
    if (err instanceof UsageError || (err as { code?: string }).code === 'ERR_PARSE_ARGS_UNKNOWN_OPTION') {
      process.stderr.write(`txmesh: ${(err as Error).message}\n\n${USAGE}`)
      process.exitCode = 2
    } else if (err instanceof ConfigInvalidError) {
      process.stderr.write(err.message + '\n')
      process.exitCode = 1
    } else {
      process.stderr.write(`txmesh: ${(err as Error).stack ?? String(err)}\n`)
      process.exitCode = 1
    }
  },
)
