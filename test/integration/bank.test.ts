// The bank torture (test/torture, `npm run torture`) in a short run per mode: three bank
// services on Postgres behind real sidecar processes, transfers over 2-3 of them, 8 in flight,
// while seeded faults SIGKILL apps and sidecars and fault proxies delay, cut and refuse traffic.
// A fixed seed per run (TORTURE_SEED overrides it); a failure prints every violated invariant
// with its transfer and the command that replays the full-size run of that seed. The `contract`
// run is 2pc with bank apps written from the hook contract alone (docs/participant-contract.md) on pg (no txmesh/pg,
// no sweep of pg_prepared_xacts): only the sidecars finish what they prepared.
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Client } from 'pg'
import { request } from 'undici'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { startPostgres, type PostgresInstance } from '../../harness/pg.js'
import { until } from '../../harness/ports.js'
import { rawRequest } from '../helpers/servers.js'
import { sleep, startBankCluster, type Service } from '../torture/cluster.js'
import { formatResult, replayCommand, RUNS, runBankMode, type RunName } from '../torture/run.js'
import { createBank, readBank } from '../torture/schema.js'

const SEED = process.env.TORTURE_SEED === undefined ? 8_001 : Number(process.env.TORTURE_SEED)
const TRANSFERS = 60
const KILLS = 4
const PROXY_FAULTS = 6
// Recovery of a short run settles in a few seconds; the cap keeps a test under its timeout.
const RECOVERY_CAP_MS = 20_000
const TEST_TIMEOUT_MS = 60_000

let pg: PostgresInstance
beforeAll(async () => {
  pg = await startPostgres({ maxPreparedTransactions: 64, extraFlags: ['-c', 'max_connections=300'] })
})
afterAll(async () => {
  await pg?.stop()
})

const TITLE: Readonly<Record<RunName, string>> = {
  '2pc': '2pc',
  saga: 'saga',
  tcc: 'tcc',
  contract:
    'contract (2pc, apps on pg from the hook contract alone, sidecars killed in the prepare window and the coordinator during its abort sends)',
  shared:
    'shared (2pc, three coordinator instances on one Postgres store, killed for good after a COMMIT decision and at random, a sibling taking over)',
}

describe('bank under faults (a short torture run per mode)', () => {
  for (const mode of RUNS) {
    it(
      `${TITLE[mode]}: total unchanged, none negative, committed everywhere, aborted nowhere, unknown all-or-nothing, no prepared xacts, no lock left`,
      async () => {
        const r = await runBankMode({
          mode,
          seed: SEED,
          transfers: TRANSFERS,
          kills: KILLS,
          proxyFaults: PROXY_FAULTS,
          recoveryCapMs: RECOVERY_CAP_MS,
          pg,
          keepDirOnFailure: true,
          log: () => undefined,
        })
        const report = formatResult(
          r,
          replayCommand(r, { transfers: TRANSFERS, kills: KILLS, defaults: { transfers: 1_000, kills: 50 } }),
        )
        process.stdout.write(`${report}\n`)
        // Every mode, saga and TCC included: a call that got no answer is undone too (its step is
        // recorded before the call is sent; docs/sagas-tcc.md).
        expect(
          r.violations.map((v) => `[${v.invariant}] ${v.transfer ?? ''} ${v.detail}`),
          report,
        ).toEqual([])
        // The faults ran: every planned kill killed its target, found it already down, or came
        // after the load (planned at one of the last transfers); most of them ran.
        const f = r.faults
        const kills = f.kills.app + f.kills['participant-sidecar'] + f.kills.coordinator
        expect(kills + f.skipped + f.notFired.kill, report).toBe(KILLS)
        expect(kills, report).toBeGreaterThanOrEqual(KILLS / 2)
        expect(f.proxy.delay + f.proxy.drop + f.proxy.refuse + f.notFired.proxy, report).toBe(PROXY_FAULTS)
        expect(f.unexpectedExits, report).toEqual([])
        expect(r.seen.committed + r.seen.aborted + r.seen.unknown + r.seen['not-begun'], report).toBe(TRANSFERS)
        expect(r.seen.committed, report).toBeGreaterThan(0)
        if (mode === 'contract') {
          // Its first two kill events (first half of the load): a participant sidecar restarted
          // armed in the prepare window, and the coordinator killed after a commit answered
          // aborted. The armed one fires at its next prepare answered 200.
          expect(f.failpoints['participant-after-app-prepared'], report).toBeGreaterThanOrEqual(1)
          expect(f.onAbort, report).toBeGreaterThanOrEqual(1)
          expect(r.contractApp?.breaches, report).toBe(0)
        }
        if (mode === 'shared') {
          // Its first two kill events (first half of the load): a coordinator restarted armed
          // with coordinator-after-decision and replaced for good when it fires (its COMMIT
          // finished by a sibling), and one replaced for good at a transfer's start.
          expect(f.failpoints['coordinator-after-decision'], report).toBeGreaterThanOrEqual(1)
          expect(f.replaced, report).toBeGreaterThanOrEqual(2)
          expect(r.takeovers, report).toBeGreaterThanOrEqual(1)
        }
      },
      TEST_TIMEOUT_MS,
    )
  }
})

// Found by the torture (2pc, seed 11): a participant sidecar SIGKILLed while its app ran PREPARE
// TRANSACTION used to restart without the branch; the coordinator's abort was its only way out,
// and a coordinator killed after deciding abort forgets it (presumed abort logs nothing). The row
// then stayed in pg_prepared_xacts for good, holding its row locks. The sidecar now force-writes
// JOINED before the branch's first request reaches the app, so at restart it knows the branch
// never voted and rolls it back itself (the helper's periodic recovery, recoverIntervalMs, is no longer needed for it).
describe('a prepared row whose sidecar died during its PREPARE, with the coordinator after its abort', () => {
  it(
    'is rolled back by the restarted sidecar, without an app restart',
    async () => {
      const dbOf = (s: Service): string => `${s.replace('-', '_')}_orphan`
      for (const s of ['bank-a', 'bank-b', 'bank-c'] as const) {
        await pg.createDatabase(dbOf(s))
        await createBank(pg.connectionString(dbOf(s)), '2pc', 4, 1_000)
      }
      // bank-b takes 3 s to PREPARE a transaction that touched its account 4: the window in which
      // its sidecar is killed.
      const b = new Client({ connectionString: pg.connectionString(dbOf('bank-b')) })
      await b.connect()
      const dir = mkdtempSync(join(tmpdir(), 'txmesh-orphan-'))
      const cluster = await startBankCluster({
        mode: '2pc',
        dir,
        connectionString: (db) => pg.connectionString(db),
        dbOf,
        random: () => 0.5,
        onSelfExit: () => undefined,
      })
      try {
        await b.query(
          'CREATE FUNCTION slow() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN IF NEW.id = 4 THEN PERFORM pg_sleep(3); END IF; RETURN NULL; END $$',
        )
        await b.query(
          'CREATE CONSTRAINT TRIGGER slow AFTER UPDATE ON accounts DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION slow()',
        )
        const admin = `http://127.0.0.1:${cluster.coordinatorPorts.admin}`
        const tx = (await (
          await request(`${admin}/v1/transactions`, {
            method: 'POST',
            headers: { 'content-type': 'application/json' },
            body: JSON.stringify({ mode: '2pc', timeoutMs: 10_000 }),
          })
        ).body.json()) as { id: string; context: string }
        for (const [service, account, delta] of [
          ['bank-a', 1, -5],
          ['bank-b', 4, 5],
        ] as const) {
          const r = await rawRequest(cluster.coordinatorPorts.egress, {
            method: 'POST',
            path: `http://${service}/apply?transfer=x1&account=${account}&delta=${delta}`,
            headers: { 'txmesh-context': tx.context },
          })
          expect(r.status).toBe(200)
        }
        const commit = request(`${admin}/v1/transactions/${tx.id}/commit`, { method: 'POST' }).then(
          async (r) => (await r.body.json()) as { outcome: string },
        )
        await sleep(1_000)
        const node = cluster.nodes.find((n) => n.service === 'bank-b')!
        await node.sidecar.kill()
        expect((await commit).outcome).toBe('aborted')
        await cluster.coordinator.kill()
        await Promise.all([node.sidecar.start(), cluster.coordinator.start()])
        const left = async (): Promise<number> =>
          (await b.query('SELECT count(*)::int AS n FROM pg_prepared_xacts WHERE database = current_database()'))
            .rows[0].n as number
        // The restarted sidecar found PREPARING without PREPARED: it holds the branch, aborting.
        const branches = (await (
          await request(`http://127.0.0.1:${node.sidecarPorts.admin}/v1/branches`)
        ).body.json()) as { branches: { tx: string; status: string }[] }
        expect(branches.branches.filter((x) => x.tx === tx.id).map((x) => x.status)).toEqual(['aborting'])
        // Once the slow PREPARE is done (3 s) its abort goes through: no prepared row is left.
        await sleep(3_000)
        await until('the row rolled back', async () => (await left()) === 0, 30_000, 250)
        await until(
          'the sidecar forgot the branch',
          async () =>
            (
              (await (await request(`http://127.0.0.1:${node.sidecarPorts.admin}/v1/branches`)).body.json()) as {
                branches: unknown[]
              }
            ).branches.length === 0,
        )
        const state = await readBank(pg.connectionString(dbOf('bank-b')))
        expect(state.ledger).toEqual([])
        expect(state.accounts.get(4)?.balance).toBe(1_000n)
      } finally {
        await b.end()
        await cluster.stop()
        rmSync(dir, { recursive: true, force: true })
      }
    },
    TEST_TIMEOUT_MS,
  )
})
