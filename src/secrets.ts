// Small helpers for secrets and the files that hold them (mesh keys, the admin token, TLS keys).
// Nothing here ever puts a secret's bytes into a message: errors name the file and what is
// wrong with it, never its content.
import { createHash, timingSafeEqual } from 'node:crypto'
import { closeSync, openSync, readSync, statSync, unwatchFile, watchFile } from 'node:fs'
import { createSecureContext } from 'node:tls'
import type { TlsSettings } from './config/types.js'
import { LIMITS } from './limits.js'
import type { Logger } from './telemetry/logger.js'

/**
 * Reads a small secret or certificate file; throws (naming the size, not the content) past
 * LIMITS.secretFileBytes. Only a regular file (a Secret volume's symlink leads to one): stat
 * reports size 0 for /dev/zero or a FIFO, whose read would never end or never start (found by
 * test/fuzz/config.test.ts), and the read itself stops one byte past the limit in case the file
 * grows after the stat.
 */
export function readSecretFile(path: string): Buffer {
  return readBoundedFile(path, LIMITS.secretFileBytes)
}

/**
 * A regular file of at most `maxBytes`, read without trusting its size (a file that grows, or a
 * device that claims 0 bytes, stops being read at maxBytes + 1).
 */
export function readBoundedFile(path: string, maxBytes: number): Buffer {
  const st = statSync(path)
  if (!st.isFile()) throw new Error(`${path} is not a regular file`)
  if (st.size > maxBytes) throw new Error(`${path} is ${st.size} bytes; the limit is ${maxBytes}`)
  const fd = openSync(path, 'r')
  try {
    return readBoundedFd(fd, maxBytes, path)
  } finally {
    closeSync(fd)
  }
}

/** At most `maxBytes` from an open descriptor (a file, or a pipe such as stdin), else an error. */
export function readBoundedFd(fd: number, maxBytes: number, name: string): Buffer {
  const buf = Buffer.alloc(maxBytes + 1)
  let n = 0
  while (n < buf.length) {
    const got = readSync(fd, buf, n, buf.length - n, null)
    if (got === 0) break
    n += got
  }
  if (n > maxBytes) throw new Error(`${name} is over ${maxBytes} bytes`)
  return Buffer.from(buf.subarray(0, n))
}

/**
 * Constant-time comparison of a presented secret with the expected one. Both are hashed first so
 * the comparison takes the same time whatever the lengths (timingSafeEqual needs equal lengths,
 * and comparing lengths first would tell an attacker the token's length).
 */
export function sameSecret(given: string | Buffer, want: Buffer): boolean {
  const a = createHash('sha256').update(given).digest()
  const b = createHash('sha256').update(want).digest()
  return timingSafeEqual(a, b)
}

/** A short, non-reversible id of a key for logs (8 hex chars of its SHA-256), never the key. */
export function keyId(key: Buffer): string {
  return createHash('sha256').update(key).digest('hex').slice(0, 8)
}

/**
 * Calls `onChange(path)` when one of `paths` changes (fs.watchFile, polling every
 * LIMITS.secretFileCheckMs: polling follows the symlink swaps of a Kubernetes Secret volume,
 * where inotify on the old target would go quiet). Does not keep the process alive. Returns the
 * function that stops watching.
 */
export function watchFiles(
  paths: readonly string[],
  onChange: (path: string) => void,
  intervalMs: number = LIMITS.secretFileCheckMs,
): () => void {
  const listeners = paths.map((path) => {
    const listener = (): void => onChange(path)
    watchFile(path, { interval: intervalMs, persistent: false }, listener)
    return { path, listener }
  })
  return () => {
    for (const { path, listener } of listeners) unwatchFile(path, listener)
  }
}

export interface SecretFileWatch<T> {
  /** The new value, or what is wrong with the file's text. */
  readonly parse: (text: string) => T | string
  /** Takes a valid value; true when it differed from the current one. */
  readonly apply: (value: T) => boolean
  readonly log: Logger
  /** Log events, and the fields each adds (never the secret). */
  readonly reloaded: { readonly event: string; readonly fields?: () => Record<string, unknown> }
  readonly invalid: { readonly event: string; readonly fields?: () => Record<string, unknown> }
  readonly intervalMs?: number
}

/**
 * Re-reads a secret file whenever it changes (mesh.keyFile, admin.tokenFile): a valid new value
 * is applied and logged; an unreadable or invalid file keeps the current value and is logged
 * once, until the file changes again.
 */
export function watchSecretFile<T>(file: string, w: SecretFileWatch<T>): () => void {
  let warned: string | undefined
  const reload = (): void => {
    let v: T | string
    try {
      v = w.parse(readSecretFile(file).toString('utf8'))
    } catch (err) {
      v = `cannot read: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`
    }
    if (typeof v === 'string') {
      if (warned !== v) w.log.warn(w.invalid.event, { file, problem: v, ...w.invalid.fields?.() })
      warned = v
      return
    }
    warned = undefined
    if (w.apply(v)) w.log.info(w.reloaded.event, { file, ...w.reloaded.fields?.() })
  }
  return watchFiles([file], reload, w.intervalMs)
}

export interface TlsMaterial {
  readonly cert: Buffer
  readonly key: Buffer
  readonly ca: Buffer
}

/**
 * Reads and checks the three files: the key must match the certificate, and all must parse.
 * Returns the material, or what is wrong (file names and OpenSSL's reason, never key bytes).
 */
export function readTlsMaterial(files: Pick<TlsSettings, 'certFile' | 'keyFile' | 'caFile'>): TlsMaterial | string {
  let m: TlsMaterial
  try {
    m = { cert: readSecretFile(files.certFile), key: readSecretFile(files.keyFile), ca: readSecretFile(files.caFile) }
  } catch (err) {
    const e = err as NodeJS.ErrnoException
    return `cannot read ${e.path ?? 'a file'}: ${e.code ?? e.message}`
  }
  try {
    createSecureContext({ cert: m.cert, key: m.key, ca: m.ca })
  } catch (err) {
    return `the certificate, key and CA do not load together: ${(err as Error).message}`
  }
  return m
}
