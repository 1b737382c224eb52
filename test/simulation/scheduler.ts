// Simulated time: a binary heap of callbacks ordered by (time, insertion order). Nothing runs
// concurrently; "now" jumps from one event to the next.
interface Entry {
  readonly time: number
  readonly seq: number
  readonly run: () => void
}

export class Scheduler {
  now = 0
  events = 0
  private seq = 0
  private readonly heap: Entry[] = []

  after(delayMs: number, run: () => void): void {
    const e: Entry = { time: this.now + Math.max(0, delayMs), seq: this.seq++, run }
    const h = this.heap
    h.push(e)
    let i = h.length - 1
    while (i > 0) {
      const parent = (i - 1) >> 1
      const p = h[parent] as Entry
      if (!before(e, p)) break
      h[i] = p
      i = parent
    }
    h[i] = e
  }

  /**
   * Runs events until none is left or a bound is hit, and says which. The nodes are async code
   * (the shipped drivers): after each event every promise continuation it set off runs (`settle`:
   * one macrotask turn) before the next event, so nothing happens between events and a run is the
   * same for the same seed.
   */
  async runAsync(
    untilTime: number,
    maxEvents: number,
    settle: () => Promise<void>,
    afterEach?: (events: number) => void,
  ): Promise<'idle' | 'time' | 'events'> {
    // What the caller started before the first event runs first.
    await settle()
    while (this.heap.length > 0) {
      if (this.events >= maxEvents) return 'events'
      const e = this.pop()
      if (e.time > untilTime) return 'time'
      this.now = e.time
      this.events++
      e.run()
      await settle()
      afterEach?.(this.events)
    }
    return 'idle'
  }

  private pop(): Entry {
    const h = this.heap
    const top = h[0] as Entry
    const last = h.pop() as Entry
    if (h.length > 0) {
      let i = 0
      for (;;) {
        const l = 2 * i + 1
        const r = l + 1
        let m = i
        let best = last
        const le = h[l]
        if (le !== undefined && before(le, best)) {
          m = l
          best = le
        }
        const re = h[r]
        if (re !== undefined && before(re, best)) {
          m = r
          best = re
        }
        if (m === i) break
        h[i] = best
        i = m
      }
      h[i] = last
    }
    return top
  }
}

function before(a: Entry, b: Entry): boolean {
  return a.time < b.time || (a.time === b.time && a.seq < b.seq)
}
