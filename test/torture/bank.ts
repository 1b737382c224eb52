// `npm run torture`: the bank test under faults (issue 8, item 1), in every mode or one.
//
//   TORTURE_MODE       2pc | saga | tcc | contract | shared | all (default all: the five one after
//                      another; contract is 2pc with bank apps written from the hook contract
//                      alone on pg, test/torture/contract-app.ts; shared is 2pc with three
//                      coordinator instances on one Postgres store, killed for good as well as
//                      restarted, test/torture/faults.ts)
//   TORTURE_SEED       replay a run (default: a random seed, printed)
//   TORTURE_TRANSFERS  transfers per mode (default 1000)
//   TORTURE_KILLS      SIGKILLs per mode sent by the fault driver (default 50; failpoint kills
//                      in 2pc come on top)
//   TORTURE_PROXY_FAULTS  proxy faults per mode (default: one per 20 transfers)
//   TORTURE_CONTRACT_IDLE_MS  contract run: Postgres's idle_in_transaction_session_timeout for
//                      the apps' open branches (default 15000; 0: none, to see what the hook
//                      contract alone leaves open)
//   TORTURE_KEEP=1     keep the directory of a failed mode (default on; 0 removes it; always:
//                      keep every mode's)
// Prints per mode the counts, the seed and, on failure, each violated invariant with the
// transfer and what every database and the client said, and the command that replays it.
// Exits 0 only if every invariant of every mode holds.
import { randomInt } from 'node:crypto'
import { startPostgres } from '../../harness/pg.js'
import { formatResult, replayCommand, RUNS, runBankMode, type BankResult, type RunName } from './run.js'

const DEFAULT_TRANSFERS = 1_000
const DEFAULT_KILLS = 50
// Recovery after the load: phase 2 retries back off up to 10 s and saga/tcc ops up to 1 s, so a
// healthy cluster settles within a few seconds; two minutes means something will never finish.
const RECOVERY_CAP_MS = 120_000
// Prepared transactions at once: 8 transfers in flight prepare at most 3 branches each, plus
// rows left by killed apps until they are resolved.
const MAX_PREPARED_TRANSACTIONS = 128
// Three app pools (up to 64 each) and the checker's connections.
const MAX_CONNECTIONS = 300

function intEnv(name: string, fallback: number, min: number): number {
  const raw = process.env[name]
  if (raw === undefined || raw === '') return fallback
  const n = Number(raw)
  if (!Number.isSafeInteger(n) || n < min)
    throw new Error(`${name} must be an integer >= ${min}, got ${JSON.stringify(raw)}`)
  return n
}

async function main(): Promise<number> {
  const modeArg = process.env.TORTURE_MODE ?? 'all'
  if (modeArg !== 'all' && !RUNS.includes(modeArg as RunName))
    throw new Error(`TORTURE_MODE must be 2pc, saga, tcc, contract, shared or all, got ${JSON.stringify(modeArg)}`)
  const modes = modeArg === 'all' ? RUNS : [modeArg as RunName]
  const seed = intEnv('TORTURE_SEED', randomInt(1, 2 ** 31 - 1), 0)
  const transfers = intEnv('TORTURE_TRANSFERS', DEFAULT_TRANSFERS, 1)
  const kills = intEnv('TORTURE_KILLS', DEFAULT_KILLS, 0)
  const proxyFaults = intEnv('TORTURE_PROXY_FAULTS', Math.ceil(transfers / 20), 0)
  const keep = process.env.TORTURE_KEEP !== '0'
  const keepAlways = process.env.TORTURE_KEEP === 'always'
  const leaseArg = process.env.TORTURE_LEASE ?? 'row'
  if (leaseArg !== 'row' && leaseArg !== 'kubernetes')
    throw new Error(`TORTURE_LEASE must be row or kubernetes, got ${JSON.stringify(leaseArg)}`)
  const contractIdle = process.env.TORTURE_CONTRACT_IDLE_MS
  const contractIdleMs =
    contractIdle === undefined || contractIdle === '' ? undefined : intEnv('TORTURE_CONTRACT_IDLE_MS', 0, 0)
  const log = (line: string): void => void process.stderr.write(`torture: ${line}\n`)
  process.stdout.write(
    `txmesh bank torture: seed ${seed}, modes ${modes.join(', ')}, ${transfers} transfers and ${kills} kills and ${proxyFaults} proxy faults per mode\n`,
  )

  const pg = await startPostgres({
    maxPreparedTransactions: MAX_PREPARED_TRANSACTIONS,
    extraFlags: ['-c', `max_connections=${MAX_CONNECTIONS}`],
  })
  const results: BankResult[] = []
  const started = Date.now()
  try {
    for (const mode of modes) {
      const r = await runBankMode({
        mode,
        seed,
        transfers,
        kills,
        proxyFaults,
        recoveryCapMs: RECOVERY_CAP_MS,
        pg,
        keepDirOnFailure: keep,
        keepDir: keepAlways,
        sharedLease: leaseArg,
        ...(contractIdleMs === undefined ? {} : { contractIdleMs }),
        log,
      })
      results.push(r)
      process.stdout.write(
        formatResult(
          r,
          replayCommand(r, { transfers, kills, defaults: { transfers: DEFAULT_TRANSFERS, kills: DEFAULT_KILLS } }),
        ) + '\n',
      )
    }
  } finally {
    await pg.stop()
  }
  const sum = (f: (r: BankResult) => number): number => results.reduce((n, r) => n + f(r), 0)
  const allKills = sum(
    (r) =>
      r.faults.kills.app +
      r.faults.kills['participant-sidecar'] +
      r.faults.kills.coordinator +
      r.faults.failpoints['coordinator-after-decision'] +
      r.faults.failpoints['participant-after-prepared'] +
      r.faults.failpoints['participant-after-app-prepared'],
  )
  const failed = results.filter((r) => !r.ok)
  process.stdout.write(
    `total: ${sum((r) => r.seen.committed + r.seen.aborted + r.seen.unknown + r.seen['not-begun'])} transfers (committed ${sum((r) => r.seen.committed)}, aborted ${sum((r) => r.seen.aborted)}, unknown ${sum((r) => r.seen.unknown)}, not begun ${sum((r) => r.seen['not-begun'])}), ${allKills} kills, ${sum((r) => r.faults.proxy.delay + r.faults.proxy.drop + r.faults.proxy.refuse)} proxy faults, ${((Date.now() - started) / 1000).toFixed(0)} s; seed ${seed}: ${failed.length === 0 ? 'PASS' : `FAIL (${failed.map((r) => r.mode).join(', ')})`}\n`,
  )
  return failed.length === 0 ? 0 : 1
}

main().then(
  (code) => process.exit(code),
  (err: unknown) => {
    process.stderr.write(`torture: ${(err as Error).stack ?? String(err)}\n`)
    process.exit(2)
  },
)
