import { describe, expect, it } from 'vitest'
import { RecentMap } from '../../src/tx/recent.js'

describe('RecentMap', () => {
  it('forgets entries past their age and beyond the count, oldest first', () => {
    let now = 0
    const m = new RecentMap<string, number>(3, 1_000, () => now)
    m.set('a', 1)
    now = 400
    m.set('b', 2)
    m.set('c', 3)
    m.set('d', 4)
    expect(m.get('a')).toBeUndefined()
    expect(m.keys()).toEqual(['b', 'c', 'd'])
    now = 1_401
    expect(m.get('b')).toBeUndefined()
    expect(m.keys()).toEqual([])
  })
})
