// The batcher of protocol messages (src/control/batcher.ts): what meets in one turn of the event loop
// leaves together, at most maxInFlight exchanges per peer are out, the rest waits and leaves as
// one batch, results come back to their own callers in order, and a full queue is refused.
import { describe, expect, it } from 'vitest'
import { Batcher } from '../../src/control/batcher.js'
import type { ControlOverloadedError } from '../../src/errors.js'

interface Flush {
  readonly key: string
  readonly items: readonly number[]
  release(): void
}

function batcher(o: { maxItems?: number; maxInFlight?: number; maxQueued?: number; holdMs?: number } = {}): {
  b: Batcher<number, string>
  flushes: Flush[]
} {
  const flushes: Flush[] = []
  const b = new Batcher<number, string>({
    maxItems: o.maxItems ?? 64,
    maxInFlight: o.maxInFlight ?? 1,
    holdMs: o.holdMs ?? 60_000,
    maxQueued: o.maxQueued ?? 1_000,
    flush: (key, items) =>
      new Promise((resolve) => {
        flushes.push({ key, items, release: () => resolve(items.map((i) => `${key}:${i * 10}`)) })
      }),
    overloaded: (err: ControlOverloadedError) => `refused:${err.code}`,
    failed: (err: Error) => `failed:${err.message}`,
  })
  return { b, flushes }
}

/** A batcher whose flush breaks its contract in the way given. */
function broken(how: 'throws' | 'rejects' | 'short'): Batcher<number, string> {
  return new Batcher<number, string>({
    maxItems: 64,
    maxInFlight: 1,
    holdMs: 60_000,
    maxQueued: 100,
    flush: (_key, items) => {
      if (how === 'throws') throw new Error('boom')
      if (how === 'rejects') return Promise.reject(new Error('gone'))
      return Promise.resolve(items.slice(1).map(String))
    },
    overloaded: (err: ControlOverloadedError) => `refused:${err.code}`,
    failed: (err: Error) => `failed:${err.message}`,
  })
}

const turn = (): Promise<void> => new Promise((r) => setImmediate(r))

describe('Batcher', () => {
  it('sends what is queued for one peer in the same turn as one batch, and each caller gets its own result', async () => {
    const { b, flushes } = batcher({ maxInFlight: 4 })
    const answers = [b.send('p', 1), b.send('p', 2), b.send('q', 3), b.send('p', 4)]
    await turn()
    expect(flushes.map((f) => [f.key, f.items])).toEqual([
      ['p', [1, 2, 4]],
      ['q', [3]],
    ])
    for (const f of flushes) f.release()
    expect(await Promise.all(answers)).toEqual(['p:10', 'p:20', 'q:30', 'p:40'])
    expect(b.counters).toEqual({ items: 4, batches: 2 })
  })

  it('keeps at most maxInFlight exchanges out per peer; what arrives meanwhile leaves together when one comes back', async () => {
    const { b, flushes } = batcher({ maxInFlight: 1 })
    const first = b.send('p', 1)
    await turn()
    expect(flushes).toHaveLength(1)
    const later = [b.send('p', 2), b.send('p', 3)]
    await turn()
    const more = b.send('p', 4)
    await turn()
    // Still one out: 2, 3 and 4 wait.
    expect(flushes).toHaveLength(1)
    // Another peer is not held up by p.
    const other = b.send('q', 9)
    await turn()
    expect(flushes.map((f) => f.key)).toEqual(['p', 'q'])
    flushes[0]?.release()
    expect(await first).toBe('p:10')
    await turn()
    expect(flushes[2]?.items).toEqual([2, 3, 4])
    flushes[1]?.release()
    flushes[2]?.release()
    expect(await Promise.all([...later, more, other])).toEqual(['p:20', 'p:30', 'p:40', 'q:90'])
  })

  it('stops holding messages back behind an exchange out longer than holdMs', async () => {
    const { b, flushes } = batcher({ maxInFlight: 1, holdMs: 40 })
    const slow = b.send('p', 1)
    await turn()
    const t0 = performance.now()
    const next = b.send('p', 2)
    await turn()
    expect(flushes).toHaveLength(1)
    // The first is still out: after holdMs the second leaves anyway.
    for (let i = 0; i < 100 && flushes.length < 2; i++) await new Promise((r) => setTimeout(r, 5))
    expect(flushes.map((f) => f.items)).toEqual([[1], [2]])
    expect(performance.now() - t0).toBeGreaterThanOrEqual(30)
    flushes[1]?.release()
    expect(await next).toBe('p:20')
    flushes[0]?.release()
    expect(await slow).toBe('p:10')
  })

  it('splits a queue longer than maxItems into several batches, within maxInFlight', async () => {
    const { b, flushes } = batcher({ maxItems: 3, maxInFlight: 2 })
    const answers = Array.from({ length: 8 }, (_x, i) => b.send('p', i))
    await turn()
    expect(flushes.map((f) => f.items)).toEqual([
      [0, 1, 2],
      [3, 4, 5],
    ])
    flushes[0]?.release()
    await turn()
    await turn()
    expect(flushes.map((f) => f.items)).toEqual([
      [0, 1, 2],
      [3, 4, 5],
      [6, 7],
    ])
    flushes[1]?.release()
    flushes[2]?.release()
    expect(await Promise.all(answers)).toEqual([0, 1, 2, 3, 4, 5, 6, 7].map((i) => `p:${i * 10}`))
  })

  it('answers every caller when a flush throws, rejects or answers too few results, and forgets the peer', async () => {
    for (const [how, want] of [
      ['throws', 'failed:boom'],
      ['rejects', 'failed:gone'],
      ['short', 'failed:the exchange answered 1 results for 2 items'],
    ] as const) {
      const b = broken(how)
      expect(await Promise.all([b.send('p', 1), b.send('p', 2)]), how).toEqual([want, want])
      // Later messages still go out (the exchange no longer counts as out).
      expect(await b.send('p', 3), how).toBe(
        how === 'short' ? 'failed:the exchange answered 0 results for 1 items' : want,
      )
      expect((b as unknown as { peers: Map<string, unknown> }).peers.size, how).toBe(0)
    }
  })

  it('refuses a message at once when maxQueued wait for its peer already', async () => {
    const { b, flushes } = batcher({ maxInFlight: 1, maxQueued: 2 })
    const first = b.send('p', 1)
    await turn()
    const waiting = [b.send('p', 2), b.send('p', 3)]
    expect(await b.send('p', 4)).toBe('refused:TXM_CONTROL_OVERLOADED')
    // Other peers have their own queue.
    const other = b.send('q', 5)
    await turn()
    for (const f of flushes) f.release()
    await turn()
    await turn()
    for (const f of flushes.slice(2)) f.release()
    expect(await Promise.all([first, ...waiting, other])).toEqual(['p:10', 'p:20', 'p:30', 'q:50'])
  })
})
