// Mesh keys: the HMAC-SHA256 keys that sign contexts, enlistment headers and control calls.
// Several keys may be configured (comma-separated, in TXMESH_MESH_KEY or in the key file): the first
// signs and every one verifies, which is how a key is rotated without stopping the mesh:
//   1. every sidecar gets [K1,K2]  (accepts K2, still signs with K1)
//   2. every sidecar gets [K2,K1]  (signs with K2, still accepts K1 from those not moved yet)
//   3. every sidecar gets [K2]     (K1 is refused)
// Step 1 must be complete before step 2 starts anywhere: a sidecar signing with K2 sends
// enlistment headers and control calls that a peer knowing only K1 refuses.
//
// The key file (TXMESH_MESH_KEY_FILE, else mesh.keyFile) is watched: a valid new content replaces
// the keys in place (no restart); an invalid one (no key, a key under 16 bytes, unreadable) keeps
// the current keys and logs one warning.
import { LIMITS } from '../limits.js'
import type { Logger } from '../telemetry/logger.js'
import { keyId, watchSecretFile } from '../secrets.js'

/**
 * The variable naming the mesh key file; it wins over mesh.keyFile (the key variable itself,
 * mesh.keyEnv, wins over both). The Kubernetes injector points it at the mounted mesh key Secret.
 */
export const MESH_KEY_FILE_ENV = 'TXMESH_MESH_KEY_FILE'

/** What signing and verification read: the current keys, the first one signing. */
export interface MeshKeys {
  readonly signing: Buffer
  readonly verifying: readonly Buffer[]
}

/** Keys that never change (tests, tools). */
export function staticKeys(keys: readonly Buffer[]): MeshKeys {
  if (keys.length === 0) throw new Error('at least one mesh key is needed')
  return { signing: keys[0] as Buffer, verifying: keys }
}

/**
 * Parses the value of TXMESH_MESH_KEY or of the key file: comma-separated keys, blanks around them
 * ignored. Returns the keys, or what is wrong (never quoting a key).
 */
export function parseMeshKeys(text: string): Buffer[] | string {
  const keys = text
    .split(',')
    .map((k) => k.trim())
    .filter((k) => k !== '')
    .map((k) => Buffer.from(k))
  if (keys.length === 0) return 'holds no key'
  const short = keys.findIndex((k) => k.length < LIMITS.meshKeyMinBytes)
  if (short >= 0) return `key ${short + 1} is shorter than ${LIMITS.meshKeyMinBytes} bytes`
  return keys
}

/** The live key set of a sidecar. */
export class KeyRing implements MeshKeys {
  private keys: readonly Buffer[]

  constructor(keys: readonly Buffer[]) {
    if (keys.length === 0) throw new Error('at least one mesh key is needed')
    this.keys = Object.freeze([...keys])
  }

  get signing(): Buffer {
    return this.keys[0] as Buffer
  }

  get verifying(): readonly Buffer[] {
    return this.keys
  }

  /** True when the keys differ from the current ones (and were replaced). */
  replace(keys: readonly Buffer[]): boolean {
    if (keys.length === 0) throw new Error('at least one mesh key is needed')
    if (keys.length === this.keys.length && keys.every((k, i) => k.equals(this.keys[i] as Buffer))) return false
    this.keys = Object.freeze([...keys])
    return true
  }

  /** Key ids (not keys) for logs: the signing one first. */
  ids(): string[] {
    return this.keys.map(keyId)
  }
}

/**
 * Re-reads `file` into `ring` whenever it changes. Logs `mesh_keys_reloaded` (key ids only) on
 * success, and `mesh_key_file_invalid` once per distinct problem while the file stays invalid.
 * Returns the function that stops watching.
 */
export function watchKeyFile(ring: KeyRing, file: string, log: Logger, intervalMs?: number): () => void {
  return watchSecretFile(file, {
    parse: parseMeshKeys,
    apply: (keys) => ring.replace(keys),
    log,
    reloaded: { event: 'mesh_keys_reloaded', fields: () => ({ keys: ring.ids() }) },
    invalid: { event: 'mesh_key_file_invalid', fields: () => ({ keeping: ring.ids() }) },
    ...(intervalMs === undefined ? {} : { intervalMs }),
  })
}
