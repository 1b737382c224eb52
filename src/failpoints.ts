// Crash points for recovery tests, in the manner of fail-rs: TXMESH_FAILPOINTS=name[,name] makes
// the sidecar SIGKILL itself when it reaches a named point, so a test can stop it between two
// protocol steps that no outside timing can separate reliably. Off unless the variable is set.
const active = new Set((process.env.TXMESH_FAILPOINTS ?? '').split(',').filter((s) => s !== ''))

export type FailpointName =
  | 'coordinator-after-decision'
  | 'participant-after-prepared'
  // The app answered prepare 200, before the sidecar wrote PREPARED (the prepare window).
  | 'participant-after-app-prepared'
  // A committed branch's END is durable and its acknowledgement on its way (see failpointSoon).
  | 'participant-after-end'
  // store.lease kubernetes: a takeover won the log's Lease and has not moved its token on yet.
  | 'takeover-after-lease'

export function failpoint(name: FailpointName): void {
  if (active.has(name)) process.kill(process.pid, 'SIGKILL')
  // `name:stop` pauses the process there instead (SIGSTOP; the test resumes it with SIGCONT): a
  // process paused past its lease, then resumed.
  else if (active.has(`${name}:stop`)) process.kill(process.pid, 'SIGSTOP')
}

/**
 * The same, `ms` later: for a point whose interesting crash is just after an answer left (the
 * answer must reach the peer first). No timer unless the point is active.
 */
export function failpointSoon(name: FailpointName, ms: number): void {
  if (active.has(name)) setTimeout(() => process.kill(process.pid, 'SIGKILL'), ms)
}
