// Node runtime settings of the sidecar process.
//
// A proxy turns every socket read into a short-lived Buffer. With V8's default young generation
// (larger on Node 22+), scavenges are rare and those Buffers' memory piles up until V8's
// external-memory limit forces a collection: streaming 200 MB through the sidecar raised its
// RSS by ~65 MB on Node 24 (25 MB on Node 20). A 2 MB semi-space keeps it near 30 MB on both at
// a cost of about 7% peak throughput (bench). The `txmesh` bin's shebang passes these flags;
// anything that starts the sidecar with `node dist/cli/index.js` (Dockerfile, injector, tests)
// passes them too.
export const SIDECAR_NODE_FLAGS: readonly string[] = Object.freeze(['--max-semi-space-size=2'])

/** Flags the sidecar expects but was started without (logged as a warning at start). */
export function missingRuntimeFlags(execArgv: readonly string[] = process.execArgv): string[] {
  return SIDECAR_NODE_FLAGS.filter((f) => !execArgv.includes(f))
}
