// Timers behind an interface: Node's in production, the simulator's scheduler in the
// deterministic simulation (test/simulation), for the protocol drivers (src/tx/io.ts) and the
// write-ahead log (src/wal/file-log.ts).

/** A pending timer (opaque: Node's Timeout, or the simulator's). */
export type Timer = object

export interface Timers {
  /** Runs `fn` once after `ms` (clamped to what a Node timer can wait); never keeps the process alive. */
  set(fn: () => void, ms: number): Timer
  clear(t: Timer | undefined): void
}

export const nodeTimers: Timers = {
  set(fn, ms) {
    const t = setTimeout(fn, Math.min(Math.max(0, ms), 2 ** 31 - 1))
    t.unref()
    return t
  },
  clear(t) {
    if (t !== undefined) clearTimeout(t as NodeJS.Timeout)
  },
}

/** Resolves after `ms` on `timers`. */
export function sleep(timers: Timers, ms: number): Promise<void> {
  return new Promise((resolve) => timers.set(resolve, ms))
}
