// `txmesh validate FILE`: exit 0 for a good file, 1 with one `file:line:col: message` line per
// problem otherwise.
import { loadConfigFile } from '../config/load.js'
import { ConfigInvalidError, formatProblem } from '../errors.js'
import { UsageError } from './usage.js'

export function validateCommand(argv: string[]): number {
  if (argv.length !== 1 || argv[0] === undefined) throw new UsageError('validate takes one file')
  try {
    const cfg = loadConfigFile(argv[0])
    process.stdout.write(`${argv[0]}: ok (service ${cfg.service}, ${cfg.routes.length} routes)\n`)
    return 0
  } catch (err) {
    if (!(err instanceof ConfigInvalidError)) throw err
    for (const p of err.problems) process.stderr.write(formatProblem(p) + '\n')
    return 1
  }
}
