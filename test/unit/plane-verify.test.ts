// The data plane's context check (src/tx/plane.ts ContextCache, which ActiveTxPlane.verify asks): a context that verified
// is remembered, so the calls of one transaction check its signature once, but never past its
// deadline, never after the key that signed it was rotated out, and never for a forged token.
import { describe, expect, it } from 'vitest'
import { LIMITS } from '../../src/limits.js'
import { ContextCache } from '../../src/tx/plane.js'
import { KeyRing } from '../../src/tx/keys.js'
import { signContext, type TxContext } from '../../src/tx/protocol.js'
import { TxmeshError } from '../../src/errors.js'

const oldKey = Buffer.from('old-mesh-key-0123456789abcdef')
const newKey = Buffer.from('new-mesh-key-0123456789abcdef')

function plane(keys: KeyRing, clock: () => number): ContextCache {
  return new ContextCache({ keys, coordinators: ['127.0.0.1:*'], clock })
}

const ctx = (id: string, deadline: number): TxContext => ({
  id,
  mode: '2pc',
  coordinator: '127.0.0.1:15010',
  deadline,
  parent: undefined,
})
const code = (v: unknown): string | undefined => (v instanceof TxmeshError ? v.code : undefined)

describe('ContextCache.verify', () => {
  it('answers a context it verified before from memory, until its deadline passes', () => {
    let now = 1_000
    const p = plane(new KeyRing([oldKey]), () => now)
    const token = signContext(oldKey, ctx('tx1', 2_000))
    const first = p.verify(token)
    expect(first).toMatchObject({ id: 'tx1', deadline: 2_000 })
    expect(p.verify(token)).toBe(first)
    now = 2_000
    expect(code(p.verify(token))).toBe('TXM_CONTEXT_EXPIRED')
  })

  it('forgets what it verified when the keys change: a context signed with a key rotated out is refused', () => {
    const keys = new KeyRing([newKey, oldKey])
    const p = plane(keys, () => 1_000)
    const token = signContext(oldKey, ctx('tx2', 9_000))
    expect(p.verify(token)).toMatchObject({ id: 'tx2' })
    keys.replace([newKey])
    expect(code(p.verify(token))).toBe('TXM_CONTEXT_FORGED')
    expect(p.verify(signContext(newKey, ctx('tx3', 9_000)))).toMatchObject({ id: 'tx3' })
  })

  it('never remembers a forged or malformed token, and holds at most LIMITS.verifiedContexts', () => {
    const p = plane(new KeyRing([newKey]), () => 1_000)
    const forged = signContext(oldKey, ctx('tx4', 9_000))
    expect(code(p.verify(forged))).toBe('TXM_CONTEXT_FORGED')
    expect(code(p.verify(forged))).toBe('TXM_CONTEXT_FORGED')
    expect(code(p.verify('v1.e30.x'))).toBeDefined()
    const tokens = Array.from({ length: LIMITS.verifiedContexts + 10 }, (_x, i) =>
      signContext(newKey, ctx(`t${i}`, 9_000)),
    )
    for (const t of tokens) expect(p.verify(t)).toMatchObject({ deadline: 9_000 })
    const held = (p as unknown as { verified: Map<string, unknown> }).verified
    expect(held.size).toBe(LIMITS.verifiedContexts)
    // The oldest went first; they still verify (by signature) when they come back.
    expect(held.has(tokens[0] as string)).toBe(false)
    expect(p.verify(tokens[0] as string)).toMatchObject({ id: 't0' })
  })
})
