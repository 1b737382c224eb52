// `txmesh inject [-f FILE|-] [--image IMAGE]`: injects the sidecar into the annotated pod
// templates of a YAML stream and writes the result to stdout; everything else passes through
// byte for byte. Exit 1 with `file:line:col: Kind/name (document N): message [CODE]` when a
// document cannot be injected; nothing is written then (no half-injected output in a pipe).
import { statSync } from 'node:fs'
import { parseArgs } from 'node:util'
import { InjectError } from '../errors.js'
import { injectManifests } from '../k8s/manifests.js'
import { readBoundedFd, readBoundedFile } from '../secrets.js'
import { LIMITS } from '../limits.js'
import { UsageError } from './usage.js'

/** The input, bounded by LIMITS.manifestBytes whether it is a file or stdin. */
function readInput(file: string): string {
  if (file !== '-') {
    const size = statSync(file).size
    if (size > LIMITS.manifestBytes)
      throw new UsageError(`${file} is ${size} bytes; inject reads at most ${LIMITS.manifestBytes}`)
  }
  const bytes =
    file === '-' ? readBoundedFd(0, LIMITS.manifestBytes, 'stdin') : readBoundedFile(file, LIMITS.manifestBytes)
  return bytes.toString('utf8')
}

export function injectCommand(argv: string[]): number {
  const { values, positionals } = parseArgs({
    args: argv,
    options: {
      filename: { type: 'string', short: 'f' },
      image: { type: 'string' },
    },
    strict: true,
    allowPositionals: true,
  })
  if (positionals.length > 0)
    throw new UsageError(`inject reads -f FILE (or stdin); unexpected "${positionals[0] ?? ''}"`)
  const file = values.filename ?? '-'
  let text: string
  try {
    text = readInput(file)
  } catch (err) {
    if (err instanceof UsageError) throw err
    process.stderr.write(`txmesh inject: cannot read ${file}: ${(err as Error).message}\n`)
    return 1
  }
  try {
    const result = injectManifests(
      text,
      file === '-' ? '<stdin>' : file,
      values.image === undefined ? {} : { image: values.image },
    )
    for (const w of result.warnings) process.stderr.write(`txmesh inject: warning: ${w}\n`)
    process.stdout.write(result.output)
    return 0
  } catch (err) {
    if (!(err instanceof InjectError)) throw err
    process.stderr.write(`txmesh inject: ${err.message} [${err.code}]\n`)
    return 1
  }
}
