// Capped exponential backoff with full jitter (every retry loop of the sidecar, and txmesh/pg's
// recovery calls): attempt 1 waits up to `baseMs`, each further attempt doubles that ceiling up
// to `capMs`, and the wait is uniform below the ceiling so retrying peers spread out.
export function fullJitterMs(attempt: number, baseMs: number, capMs: number, random: () => number): number {
  const ceiling = Math.min(capMs, baseMs * 2 ** Math.min(Math.max(attempt - 1, 0), 30))
  return Math.floor(random() * ceiling)
}
