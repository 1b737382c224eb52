// Scratch directories of tests, benchmarks and the demo.
import { mkdtempSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'

/** A new directory under the OS temp dir; the caller removes it. */
export function tempDir(prefix = 'txmesh-'): string {
  return mkdtempSync(join(tmpdir(), prefix))
}
