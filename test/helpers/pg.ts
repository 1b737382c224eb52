// One embedded Postgres for a test file (harness/pg.ts), started before its tests and stopped
// after them, with one database made for the file and a one-shot query on it.
import pg from 'pg'
import { afterAll, beforeAll } from 'vitest'
import { startPostgres, type PostgresInstance, type StartPostgresOptions } from '../../harness/pg.js'

// initdb and the first start take a few seconds, more on a loaded machine.
const START_TIMEOUT_MS = 60_000

export interface TestDatabase {
  /** The running cluster (set once beforeAll ran). */
  readonly pg: PostgresInstance
  /** The file's database's connection string. */
  readonly url: string
  /** One query on a connection of its own. */
  sql<T extends pg.QueryResultRow>(text: string, values?: unknown[]): Promise<T[]>
}

/** Registers beforeAll/afterAll for a cluster with database `name`; read its fields inside tests. */
export function usePgDatabase(name: string, options: StartPostgresOptions = {}): TestDatabase {
  let instance: PostgresInstance | undefined
  const started = (): PostgresInstance => {
    if (instance === undefined) throw new Error('Postgres is not started yet (read it inside a test)')
    return instance
  }
  beforeAll(async () => {
    instance = await startPostgres(options)
    await instance.createDatabase(name)
  }, START_TIMEOUT_MS)
  afterAll(async () => {
    await instance?.stop()
  })
  const handle: TestDatabase = {
    get pg() {
      return started()
    },
    get url() {
      return started().connectionString(name)
    },
    async sql<T extends pg.QueryResultRow>(text: string, values: unknown[] = []): Promise<T[]> {
      const c = new pg.Client({ connectionString: handle.url })
      await c.connect()
      try {
        return (await c.query<T>(text, values)).rows
      } finally {
        await c.end()
      }
    },
  }
  return handle
}
