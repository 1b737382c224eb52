import { readFileSync, readdirSync, statSync } from 'node:fs'
import { join } from 'node:path'
import { describe, expect, it } from 'vitest'
import { allErrorCodes } from '../../src/errors.js'
import { pgErrorCodes } from '../../src/helpers/pg/errors.js'

const root = join(import.meta.dirname, '../..')

function sources(dir: string): string[] {
  return readdirSync(dir).flatMap((name) => {
    const p = join(dir, name)
    return statSync(p).isDirectory() ? sources(p) : p.endsWith('.ts') ? [p] : []
  })
}

describe('error registry', () => {
  const doc = readFileSync(join(root, 'docs/errors.md'), 'utf8')
  // Rows of the error tables in docs/errors.md (the sidecar's, then txmesh/pg's): | `TXM_...` | status | meaning |
  const rows = new Map(
    [...doc.matchAll(/^\|\s*`(TXM_[A-Z_]+)`\s*\|\s*(\d{3})\s*\|/gm)].map((m) => [m[1] as string, Number(m[2])]),
  )

  it('documents every code of the registry with its status in the docs/errors.md tables', () => {
    for (const { code, status } of [...allErrorCodes(), ...pgErrorCodes()]) expect(rows.get(code), code).toBe(status)
  })

  it('has no code in the source that the registry does not list', () => {
    const registry = new Set([...allErrorCodes(), ...pgErrorCodes()].map((e) => e.code))
    const inSource = new Set(
      sources(join(root, 'src')).flatMap((f) =>
        [...readFileSync(f, 'utf8').matchAll(/'(TXM_[A-Z_]+)'/g)].map((m) => m[1] as string),
      ),
    )
    for (const code of inSource) expect(registry.has(code), code).toBe(true)
  })

  it('gives every code one status and a unique name', () => {
    const codes = allErrorCodes().map((e) => e.code)
    expect(new Set(codes).size).toBe(codes.length)
  })
})
