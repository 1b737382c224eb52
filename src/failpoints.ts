// Crash points for recovery tests, in the manner of fail-rs: TXMESH_FAILPOINTS=name[,name] makes
// the sidecar SIGKILL itself when it reaches a named point, so a test can stop it between two
// protocol steps that no outside timing can separate reliably. Off unless the variable is set.
const active = new Set((process.env.TXMESH_FAILPOINTS ?? '').split(',').filter((s) => s !== ''))

export function failpoint(name: 'coordinator-after-decision' | 'participant-after-prepared'): void {
  if (active.has(name)) process.kill(process.pid, 'SIGKILL')
}
