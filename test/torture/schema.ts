// The bank's tables, created fresh for each mode in each service's database, and what the
// checker reads back from them.
//
// accounts  balance, and frozen (TCC holds on debits). 2pc: an overdraft is refused by a deferred
//           constraint trigger, i.e. at PREPARE TRANSACTION (the branch votes no); saga and tcc:
//           by CHECK constraints at the UPDATE (the step fails).
// ledger    one row per effect on a balance, written in the same local transaction as the
//           UPDATE: (transfer, account, op) with op apply (2pc), action/compensate (saga),
//           confirm (tcc). The primary key makes a second application of the same op fail.
// holds     tcc tries: one row per (tx, branch), held -> confirmed | cancelled.
import pg from 'pg'

export type Mode = '2pc' | 'saga' | 'tcc'

export function schemaSql(mode: Mode): string[] {
  const checks = mode === '2pc' ? '' : ', CHECK (balance >= 0), CHECK (frozen >= 0), CHECK (balance >= frozen)'
  const sql = [
    `CREATE TABLE accounts (id int PRIMARY KEY, balance bigint NOT NULL, frozen bigint NOT NULL DEFAULT 0${checks})`,
    `CREATE TABLE ledger (transfer_id text NOT NULL, account int NOT NULL, delta bigint NOT NULL, op text NOT NULL,
       PRIMARY KEY (transfer_id, account, op))`,
    `CREATE TABLE holds (tx_id text NOT NULL, branch_id text NOT NULL, transfer_id text NOT NULL, account int NOT NULL,
       delta bigint NOT NULL, status text NOT NULL CHECK (status IN ('held', 'confirmed', 'cancelled')), PRIMARY KEY (tx_id, branch_id))`,
  ]
  if (mode === '2pc') {
    sql.push(
      `CREATE FUNCTION no_overdraft() RETURNS trigger LANGUAGE plpgsql AS $$
       BEGIN
         IF (SELECT balance FROM accounts WHERE id = NEW.id) < 0 THEN
           RAISE EXCEPTION 'overdraft on account %', NEW.id USING ERRCODE = 'check_violation';
         END IF;
         RETURN NULL;
       END $$`,
      // Checked when the transaction ends: for a branch, at PREPARE TRANSACTION.
      `CREATE CONSTRAINT TRIGGER no_overdraft AFTER UPDATE ON accounts DEFERRABLE INITIALLY DEFERRED
       FOR EACH ROW EXECUTE FUNCTION no_overdraft()`,
    )
  }
  return sql
}

export async function createBank(
  connectionString: string,
  mode: Mode,
  accounts: number,
  initialBalance: number,
): Promise<void> {
  const c = new pg.Client({ connectionString })
  await c.connect()
  try {
    for (const s of schemaSql(mode)) await c.query(s)
    await c.query('INSERT INTO accounts (id, balance) SELECT g, $1 FROM generate_series(1, $2) g', [
      initialBalance,
      accounts,
    ])
  } finally {
    await c.end()
  }
}

export interface LedgerRow {
  readonly transfer: string
  readonly account: number
  readonly delta: bigint
  readonly op: string
}

export interface HoldRow {
  readonly transfer: string
  readonly account: number
  readonly delta: bigint
  readonly status: string
}

export interface BankState {
  readonly accounts: ReadonlyMap<number, { readonly balance: bigint; readonly frozen: bigint }>
  readonly ledger: readonly LedgerRow[]
  readonly holds: readonly HoldRow[]
  /** gids left in pg_prepared_xacts for this database. */
  readonly prepared: readonly string[]
}

export async function readBank(connectionString: string): Promise<BankState> {
  const c = new pg.Client({ connectionString })
  await c.connect()
  try {
    const a = await c.query<{ id: number; balance: string; frozen: string }>(
      'SELECT id, balance::text, frozen::text FROM accounts ORDER BY id',
    )
    const l = await c.query<{ transfer_id: string; account: number; delta: string; op: string }>(
      'SELECT transfer_id, account, delta::text, op FROM ledger',
    )
    const h = await c.query<{ transfer_id: string; account: number; delta: string; status: string }>(
      'SELECT transfer_id, account, delta::text, status FROM holds',
    )
    const p = await c.query<{ gid: string }>(
      'SELECT gid FROM pg_prepared_xacts WHERE database = current_database() ORDER BY gid',
    )
    return {
      accounts: new Map(a.rows.map((r) => [r.id, { balance: BigInt(r.balance), frozen: BigInt(r.frozen) }])),
      ledger: l.rows.map((r) => ({ transfer: r.transfer_id, account: r.account, delta: BigInt(r.delta), op: r.op })),
      holds: h.rows.map((r) => ({
        transfer: r.transfer_id,
        account: r.account,
        delta: BigInt(r.delta),
        status: r.status,
      })),
      prepared: p.rows.map((r) => r.gid),
    }
  } finally {
    await c.end()
  }
}

// The recovery poll's connection to a local Postgres: slower than this is a hang, not load.
const POLL_CONNECT_TIMEOUT_MS = 5_000

/** Prepared transactions left in a database (the recovery wait polls this). */
export async function preparedCount(connectionString: string): Promise<number> {
  const c = new pg.Client({ connectionString, connectionTimeoutMillis: POLL_CONNECT_TIMEOUT_MS })
  await c.connect()
  try {
    const r = await c.query<{ n: string }>(
      'SELECT count(*)::text AS n FROM pg_prepared_xacts WHERE database = current_database()',
    )
    return Number(r.rows[0]?.n ?? 0)
  } finally {
    await c.end()
  }
}

/**
 * Shared run: coordinator records still in the store, over every log (a finished transaction's are
 * deleted with its END), and other instances' logs a live holder still leases (a takeover not
 * given up; a dead taker's lapsed lease is not one, its log's records are counted).
 */
export async function storeBacklog(
  connectionString: string,
  schema: string,
): Promise<{ records: number; takenLogs: number }> {
  const c = new pg.Client({ connectionString, connectionTimeoutMillis: POLL_CONNECT_TIMEOUT_MS })
  await c.connect()
  try {
    const r = await c.query<{ n: string }>(
      `SELECT count(*)::text AS n FROM ${schema}.records WHERE substr(key, 1, 2) = 'c:'`,
    )
    const t = await c.query<{ n: string }>(
      `SELECT count(*)::text AS n FROM ${schema}.logs WHERE holder IS NOT NULL AND log_id <> 'bank-client/' || holder AND expires_at > now()`,
    )
    return { records: Number(r.rows[0]?.n ?? 0), takenLogs: Number(t.rows[0]?.n ?? 0) }
  } finally {
    await c.end()
  }
}

export interface LockProbe {
  /** The probe took every account's row lock within its wait. */
  readonly ok: boolean
  readonly waitedMs: number
  /** When not: the sessions that held locks in the database (pid, state, query). */
  readonly holders: readonly string[]
}

/**
 * "No branch lock blocks a later transfer": after recovery, one transaction updates every account
 * (then rolls back), waiting at most `waitMs` for any row lock still held.
 */
export async function lockProbe(connectionString: string, waitMs: number): Promise<LockProbe> {
  const c = new pg.Client({ connectionString, connectionTimeoutMillis: POLL_CONNECT_TIMEOUT_MS })
  await c.connect()
  const started = Date.now()
  try {
    await c.query('BEGIN')
    await c.query(`SET LOCAL lock_timeout = ${Math.max(1, Math.floor(waitMs))}`)
    try {
      await c.query('UPDATE accounts SET balance = balance')
      return { ok: true, waitedMs: Date.now() - started, holders: [] }
    } catch (err) {
      if ((err as { code?: unknown }).code !== '55P03') throw err
      await c.query('ROLLBACK')
      const h = await c.query<{ pid: number; state: string | null; xact_start: string | null; query: string }>(
        `SELECT a.pid, a.state, a.xact_start::text, left(a.query, 80) AS query FROM pg_stat_activity a
         WHERE a.datname = current_database() AND a.pid <> pg_backend_pid() AND a.backend_type = 'client backend'
           AND EXISTS (SELECT 1 FROM pg_locks l WHERE l.pid = a.pid AND l.granted AND l.relation = 'accounts'::regclass)`,
      )
      return {
        ok: false,
        waitedMs: Date.now() - started,
        holders: h.rows.map((r) => `pid ${r.pid} ${r.state ?? '?'} since ${r.xact_start ?? '?'}: ${r.query}`),
      }
    }
  } finally {
    await c.query('ROLLBACK').catch(() => undefined)
    await c.end()
  }
}
