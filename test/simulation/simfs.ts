// A simulated disk for the log simulation (log.sim.test.ts): the four node:fs/promises calls
// src/wal/file-log.ts makes (mkdir, open, readdir, unlink) and the FileHandle methods it uses,
// in memory, with a page cache separate from what is durable, so a crash can land at any await
// of the log (mid-write, mid-rollover, mid-compaction, mid-replay) and keep only what a real
// disk may keep.
//
// The model (ext4-like, stated so the log's promise can be stated against it):
// - A file's content is what is durable plus the operations (writes, truncates) made since its
//   last fsync/fdatasync, which only the page cache holds. fsync makes them all durable.
// - A name (create, unlink, mkdir) is durable once its directory is fsynced.
// - Power loss keeps what is durable and, of the rest, either a prefix of each file's pending
//   operations with the next one torn (a random prefix of its bytes, maybe followed by zeros or
//   garbage where the size grew but the data never landed), or ("reorder") any subset of them,
//   each possibly torn, as out-of-order writeback does; and each pending name change or not.
// - A process crash (SIGKILL) keeps the page cache: everything written is still there, durable
//   or not, for the next process to read, and still lost if the power goes later.
// - A file opened with O_DSYNC: each write that returns is durable, with what the file held
//   before it (fdatasync of the file after the write: what the log's `dsync` mode relies on).
//   A write cut by a crash is not.
// - Faults: an operation fails with EIO; a write is short; a "lying" fsync (or O_DSYNC write)
//   reports success and persists nothing (a volatile write cache without barriers).
// Everything is deterministic: one Prng, operations complete in microtasks, no real I/O.
import { constants as fsConstants } from 'node:fs'
import type { Prng } from './prng.js'

export interface FsFaults {
  /** Chance that a write, fsync, create, unlink or truncate fails with EIO. */
  readonly ioError: number
  /** Chance that a write writes only part of its bytes (and says so). */
  readonly shortWrite: number
  /** Chance that an fsync (of a file or a directory) reports success without persisting. */
  readonly lyingSync: number
}

export const NO_FAULTS: FsFaults = { ioError: 0, shortWrite: 0, lyingSync: 0 }

export type CrashKind = 'power' | 'process'
export type Persistence = 'prefix' | 'reorder'

type FileOp =
  | { readonly kind: 'write'; readonly pos: number; readonly bytes: Buffer }
  | { readonly kind: 'truncate'; readonly len: number }

class Inode {
  /** What reads see (the page cache). */
  cur: Buffer = Buffer.alloc(0)
  /** What survives a power loss. */
  durable: Buffer = Buffer.alloc(0)
  /** Operations since the last fsync, oldest first. */
  pending: FileOp[] = []
}

type Node = Inode | 'dir'
type DirOp =
  | { readonly kind: 'add'; readonly path: string; readonly node: Node }
  | { readonly kind: 'remove'; readonly path: string }

export interface CrashInfo {
  readonly op: number
  /** The operation under way when the crash hit ('between' when it hit between operations). */
  readonly during: string
  /** Which part of the log was running (from the stack): open, roll, compact or write. */
  readonly phase: string
}

function fsError(code: string, what: string): Error {
  return Object.assign(new Error(`${code}: ${what}`), { code })
}

function parentOf(path: string): string {
  const i = path.lastIndexOf('/')
  return i <= 0 ? '/' : path.slice(0, i)
}

function applyOp(b: Buffer, op: FileOp): Buffer {
  if (op.kind === 'truncate') {
    if (op.len <= b.length) return b.subarray(0, op.len)
    return Buffer.concat([b, Buffer.alloc(op.len - b.length)])
  }
  const end = op.pos + op.bytes.length
  const out = end > b.length ? Buffer.concat([b, Buffer.alloc(end - b.length)]) : Buffer.from(b)
  op.bytes.copy(out, op.pos)
  return out
}

const never = <T>(): Promise<T> => new Promise<T>(() => undefined)

export class SimFs {
  /** The namespace the running process sees: absolute path -> file or directory. */
  private ns = new Map<string, Node>()
  /** The namespace that survives a power loss. */
  private durableNs = new Map<string, Node>()
  private pendingDir: DirOp[] = []
  /** Operations performed so far (the crash point counts them). */
  ops = 0
  private crashAt = Infinity
  /** Set when the planned crash hit; every later operation of that process hangs. */
  crashed: CrashInfo | undefined
  private onCrash: (() => void) | undefined
  /** Bumped at every restart: handles of an earlier process hang. */
  private incarnation = 0
  faults: FsFaults = NO_FAULTS
  /** Awaited before each operation runs (unset: operations complete in microtasks). */
  gate: ((what: string) => Promise<void>) | undefined
  readonly injected = { ioErrors: 0, shortWrites: 0, lies: 0 }

  constructor(
    private readonly rng: Prng,
    private readonly trace: ((line: string) => void) | undefined,
  ) {
    this.ns.set('/', 'dir')
    this.durableNs.set('/', 'dir')
  }

  /** Crashes the process when operation number `op` starts (Infinity: not by itself). */
  planCrash(op: number, onCrash: () => void): void {
    this.crashAt = op
    this.onCrash = onCrash
  }

  /** Crashes now, between operations. */
  crashNow(): void {
    if (this.crashed === undefined) this.hit('between', false)
  }

  /**
   * The next process starts: after a power loss only what persisted is there (and is now
   * durable); after a process crash the page cache is intact (and still not durable).
   */
  restart(kind: CrashKind, persistence: Persistence): void {
    if (kind === 'power') this.powerLoss(persistence)
    this.incarnation++
    this.crashed = undefined
    this.crashAt = Infinity
    this.onCrash = undefined
  }

  /** Flips one bit of durable data in a file under `dir`; returns where. */
  flipBit(dir: string): { readonly path: string; readonly offset: number } | undefined {
    const files = [...this.ns.entries()]
      .filter((e): e is [string, Inode] => e[1] !== 'dir' && parentOf(e[0]) === dir && e[1].cur.length > 0)
      .sort((a, b) => (a[0] < b[0] ? -1 : 1))
    if (files.length === 0) return undefined
    const [path, inode] = files[this.rng.int(0, files.length - 1)] as [string, Inode]
    const offset = this.rng.int(0, inode.cur.length - 1)
    const bit = 1 << this.rng.int(0, 7)
    inode.cur = Buffer.from(inode.cur)
    ;(inode.cur as Buffer)[offset] = ((inode.cur[offset] as number) ^ bit) & 0xff
    inode.durable = Buffer.from(inode.cur)
    inode.pending = []
    return { path, offset }
  }

  /** The content of a file as the running process sees it (traces). */
  content(path: string): Buffer | undefined {
    const node = this.ns.get(path)
    return node === undefined || node === 'dir' ? undefined : node.cur
  }

  /** Durable files under `dir` and their durable sizes (what a power loss keeps for sure). */
  durableList(dir: string): { readonly name: string; readonly size: number }[] {
    return [...this.durableNs.entries()]
      .filter((e): e is [string, Inode] => e[1] !== 'dir' && parentOf(e[0]) === dir)
      .map(([p, f]) => ({ name: p.slice(dir.length + 1), size: f.durable.length }))
      .sort((a, b) => (a.name < b.name ? -1 : 1))
  }

  /** Files under `dir` and their sizes, sorted by name (traces and checks). */
  list(dir: string): { readonly name: string; readonly size: number }[] {
    return [...this.ns.entries()]
      .filter((e): e is [string, Inode] => e[1] !== 'dir' && parentOf(e[0]) === dir)
      .map(([p, f]) => ({ name: p.slice(dir.length + 1), size: f.cur.length }))
      .sort((a, b) => (a.name < b.name ? -1 : 1))
  }

  // ---- node:fs/promises ----

  readonly api = {
    mkdir: (path: string, opts?: { recursive?: boolean }): Promise<string | undefined> =>
      this.op('mkdir', undefined, (partial) => {
        const missing: string[] = []
        for (let p = path; !this.ns.has(p); p = parentOf(p)) missing.unshift(p)
        if (missing.length === 0) {
          if (opts?.recursive === true) return undefined
          throw fsError('EEXIST', `mkdir ${path}`)
        }
        if (missing.length > 1 && opts?.recursive !== true) throw fsError('ENOENT', `mkdir ${path}`)
        for (const p of missing) {
          if (partial && this.rng.chance(0.5)) break
          this.addName(p, 'dir')
        }
        return missing[0]
      }),
    readdir: (path: string): Promise<string[]> =>
      this.op('readdir', undefined, () => {
        if (this.ns.get(path) !== 'dir') throw fsError('ENOENT', `readdir ${path}`)
        const names = [...this.ns.keys()]
          .filter((p) => p !== '/' && parentOf(p) === path)
          .map((p) => p.slice(path.length + 1))
        // Directory order is whatever the file system likes.
        for (let i = names.length - 1; i > 0; i--) {
          const j = this.rng.int(0, i)
          ;[names[i], names[j]] = [names[j] as string, names[i] as string]
        }
        return names
      }),
    unlink: (path: string): Promise<void> =>
      this.op('unlink', undefined, (partial) => {
        const node = this.ns.get(path)
        if (node === undefined || node === 'dir') throw fsError('ENOENT', `unlink ${path}`)
        this.maybeFail('unlink')
        if (partial && this.rng.chance(0.5)) return
        this.ns.delete(path)
        this.pendingDir.push({ kind: 'remove', path })
      }),
    open: (path: string, given: string | number): Promise<SimHandle> => {
      const { flags, dsync } = simFlags(given)
      return this.op(`open(${flags}${dsync ? ', O_DSYNC' : ''})`, undefined, (partial) => {
        const node = this.ns.get(path)
        if (flags === 'wx+') {
          if (node !== undefined) throw fsError('EEXIST', `open ${path}`)
          if (this.ns.get(parentOf(path)) !== 'dir') throw fsError('ENOENT', `open ${path}`)
          this.maybeFail('create')
          const inode = new Inode()
          if (!partial || this.rng.chance(0.5)) this.addName(path, inode)
          return new SimHandle(this, path, inode, this.incarnation, dsync)
        }
        if (node === undefined) throw fsError('ENOENT', `open ${path}`)
        if (flags !== 'r' && flags !== 'r+')
          throw fsError('EINVAL', `open ${path} with flags ${flags} is not simulated`)
        if (node === 'dir' && flags !== 'r') throw fsError('EISDIR', `open ${path}`)
        return new SimHandle(this, path, node, this.incarnation, dsync)
      })
    },
  }

  // ---- FileHandle operations (called by SimHandle) ----

  write(
    h: SimHandle,
    buf: Buffer,
    off: number,
    len: number,
    pos: number,
  ): Promise<{ bytesWritten: number; buffer: Buffer }> {
    return this.op('write', h, (partial) => {
      const inode = h.file()
      this.maybeFail('write')
      let n = len
      if (partial) n = this.rng.int(0, len)
      else if (len > 1 && this.rng.chance(this.faults.shortWrite)) {
        this.injected.shortWrites++
        n = this.rng.int(1, len - 1)
      }
      if (n > 0) this.fileOp(inode, { kind: 'write', pos, bytes: Buffer.from(buf.subarray(off, off + n)) })
      // O_DSYNC: the write returns durable, unless the crash cut it or the disk lies.
      if (h.dsync && !partial) {
        if (this.rng.chance(this.faults.lyingSync)) this.injected.lies++
        else {
          inode.durable = Buffer.from(inode.cur)
          inode.pending = []
        }
      }
      return { bytesWritten: n, buffer: buf }
    })
  }

  read(
    h: SimHandle,
    buf: Buffer,
    off: number,
    len: number,
    pos: number,
  ): Promise<{ bytesRead: number; buffer: Buffer }> {
    return this.op('read', h, () => {
      const inode = h.file()
      const n = Math.max(0, Math.min(len, inode.cur.length - pos))
      if (n > 0) inode.cur.copy(buf, off, pos, pos + n)
      return { bytesRead: n, buffer: buf }
    })
  }

  stat(h: SimHandle): Promise<{ size: number }> {
    return this.op('stat', h, () => ({ size: h.node === 'dir' ? 4096 : h.file().cur.length }))
  }

  truncate(h: SimHandle, len: number): Promise<void> {
    return this.op('truncate', h, (partial) => {
      const inode = h.file()
      this.maybeFail('truncate')
      if (!partial || this.rng.chance(0.5)) this.fileOp(inode, { kind: 'truncate', len })
    })
  }

  sync(h: SimHandle): Promise<void> {
    return this.op(h.node === 'dir' ? 'fsync(dir)' : 'fsync', h, (partial) => {
      if (partial) return
      this.maybeFail('fsync')
      if (this.rng.chance(this.faults.lyingSync)) {
        this.injected.lies++
        return
      }
      if (h.node === 'dir') {
        // The directory's own entries: names added or removed in it.
        const keep: DirOp[] = []
        for (const d of this.pendingDir) {
          if (parentOf(d.path) !== h.path) keep.push(d)
          else if (d.kind === 'add') this.durableNs.set(d.path, d.node)
          else this.durableNs.delete(d.path)
        }
        this.pendingDir = keep
        return
      }
      const inode = h.file()
      inode.durable = Buffer.from(inode.cur)
      inode.pending = []
    })
  }

  close(h: SimHandle): Promise<void> {
    return this.op('close', h, () => undefined)
  }

  // ---- internals ----

  private addName(path: string, node: Node): void {
    this.ns.set(path, node)
    this.pendingDir.push({ kind: 'add', path, node })
  }

  private fileOp(inode: Inode, op: FileOp): void {
    inode.cur = applyOp(inode.cur, op)
    inode.pending.push(op)
  }

  private maybeFail(what: string): void {
    if (this.rng.chance(this.faults.ioError)) {
      this.injected.ioErrors++
      this.trace?.(`fs: ${what} fails with EIO`)
      throw fsError('EIO', `${what} (injected)`)
    }
  }

  /**
   * Runs one operation: it hangs forever once its process crashed (or its handle belongs to an
   * earlier process); the operation the planned crash lands on is done in part (`partial`) and
   * hangs too.
   */
  private async op<T>(what: string, h: SimHandle | undefined, perform: (partial: boolean) => T): Promise<T> {
    if (this.crashed !== undefined || (h !== undefined && h.incarnation !== this.incarnation)) return never<T>()
    if (this.gate !== undefined) {
      // The device takes its time (mesh simulation): the process may die meanwhile.
      const incarnation = this.incarnation
      await this.gate(what)
      if (this.crashed !== undefined || incarnation !== this.incarnation) return never<T>()
    }
    if (h?.closed === true) throw fsError('EBADF', `${what} on a closed handle`)
    this.ops++
    if (this.ops >= this.crashAt) {
      try {
        perform(true)
      } catch {
        // A failure of the interrupted operation changes nothing: nobody hears of it.
      }
      this.hit(what, true)
      return never<T>()
    }
    const r = perform(false)
    if (what === 'close' && h !== undefined) h.closed = true
    return r
  }

  private hit(during: string, inOp: boolean): void {
    const stack = new Error().stack ?? ''
    const phase = /\.compact \(|at compact /.test(stack)
      ? 'compact'
      : /\.roll \(|createSegment/.test(stack)
        ? 'roll'
        : /FileLog\.open|replaySegment|ensureDir/.test(stack)
          ? 'open'
          : inOp
            ? 'write'
            : 'between'
    this.crashed = { op: this.ops, during, phase }
    this.trace?.(`fs: CRASH during ${during} (op ${this.ops}, ${phase})`)
    this.onCrash?.()
  }

  private powerLoss(persistence: Persistence): void {
    const ns = new Map(this.durableNs)
    for (const d of this.pendingDir) {
      if (!this.rng.chance(0.5)) continue
      if (d.kind === 'add') ns.set(d.path, d.node)
      else ns.delete(d.path)
    }
    // A name whose directory did not survive is gone with it (shortest paths first).
    for (const p of [...ns.keys()].sort((a, b) => a.length - b.length))
      if (p !== '/' && !ns.has(parentOf(p))) ns.delete(p)
    const seen = new Set<Inode>()
    for (const node of ns.values()) {
      if (node === 'dir' || seen.has(node)) continue
      seen.add(node)
      let b = node.durable
      const ops = node.pending
      if (persistence === 'prefix') {
        const n = this.rng.int(0, ops.length)
        for (let i = 0; i < n; i++) b = applyOp(b, ops[i] as FileOp)
        const next = ops[n]
        if (next !== undefined && next.kind === 'write' && this.rng.chance(0.5)) b = this.torn(b, next)
      } else {
        for (const op of ops) {
          if (!this.rng.chance(0.5)) continue
          b = op.kind === 'write' && this.rng.chance(0.3) ? this.torn(b, op) : applyOp(b, op)
        }
      }
      this.trace?.(`power loss: a file keeps ${b.length} bytes (durable ${node.durable.length}, ${ops.length} pending)`)
      node.durable = b
      node.cur = b
      node.pending = []
    }
    this.ns = ns
    this.durableNs = new Map(ns)
    this.pendingDir = []
  }

  /** Part of a write landed: a prefix of its bytes, then (maybe) zeros or garbage to its end. */
  private torn(b: Buffer, op: FileOp & { kind: 'write' }): Buffer {
    const k = this.rng.int(0, op.bytes.length)
    const bytes = Buffer.from(op.bytes)
    const r = this.rng.next()
    if (r < 0.4) return applyOp(b, { kind: 'write', pos: op.pos, bytes: bytes.subarray(0, k) })
    for (let i = k; i < bytes.length; i++) bytes[i] = r < 0.7 ? 0 : this.rng.int(0, 255)
    return applyOp(b, { kind: 'write', pos: op.pos, bytes })
  }
}

/** The FileHandle the log gets. */
export class SimHandle {
  closed = false

  constructor(
    private readonly fs: SimFs,
    readonly path: string,
    readonly node: Node,
    readonly incarnation: number,
    /** Opened with O_DSYNC: each write returns durable. */
    readonly dsync = false,
  ) {}

  file(): Inode {
    if (this.node === 'dir') throw fsError('EISDIR', this.path)
    return this.node
  }

  write(buf: Buffer, off: number, len: number, pos: number): Promise<{ bytesWritten: number; buffer: Buffer }> {
    return this.fs.write(this, buf, off, len, pos)
  }

  read(buf: Buffer, off: number, len: number, pos: number): Promise<{ bytesRead: number; buffer: Buffer }> {
    return this.fs.read(this, buf, off, len, pos)
  }

  stat(): Promise<{ size: number }> {
    return this.fs.stat(this)
  }

  truncate(len: number): Promise<void> {
    return this.fs.truncate(this, len)
  }

  sync(): Promise<void> {
    return this.fs.sync(this)
  }

  datasync(): Promise<void> {
    return this.fs.sync(this)
  }

  close(): Promise<void> {
    return this.fs.close(this)
  }
}

/** What vi.mock('node:fs/promises') hands to the log: calls go to the current simulated disk. */
export const simDisk: { current: SimFs | undefined } = { current: undefined }

function disk(): SimFs {
  if (simDisk.current === undefined) throw new Error('no simulated disk installed')
  return simDisk.current
}

export const fsPromisesMock = {
  mkdir: (path: string, opts?: { recursive?: boolean }) => disk().api.mkdir(path, opts),
  readdir: (path: string) => disk().api.readdir(path),
  unlink: (path: string) => disk().api.unlink(path),
  open: (path: string, flags: string | number) => disk().api.open(path, flags),
}

/** The string flags the log uses, from either form it passes (numeric: with O_DSYNC). */
function simFlags(given: string | number): { flags: string; dsync: boolean } {
  if (typeof given === 'string') return { flags: given, dsync: false }
  const { O_RDWR, O_CREAT, O_EXCL, O_DSYNC } = fsConstants
  const dsync = O_DSYNC !== undefined && (given & O_DSYNC) !== 0
  const rest = given & ~(O_DSYNC ?? 0)
  if (rest === (O_RDWR | O_CREAT | O_EXCL)) return { flags: 'wx+', dsync }
  if (rest === O_RDWR) return { flags: 'r+', dsync }
  throw fsError('EINVAL', `open with flags ${given} is not simulated`)
}
