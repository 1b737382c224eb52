// The config schema is compiled ahead of time (scripts/gen-schema-validator.ts); the committed
// validator must be exactly what the current schema compiles to.
import { readFileSync } from 'node:fs'
import { describe, expect, it } from 'vitest'
import { GENERATED, generateValidator } from '../../scripts/gen-schema-validator.js'

describe('precompiled config schema', () => {
  it('matches config/txmesh.schema.json (else run: npx tsx scripts/gen-schema-validator.ts)', () => {
    expect(readFileSync(GENERATED, 'utf8')).toBe(generateValidator())
  })
})
