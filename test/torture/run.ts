// One mode of the bank torture (Jepsen's bank test, for txmesh): three bank services, each an
// app on its own Postgres database behind its own sidecar process; a client moving money
// between them through a coordinator sidecar, 2 or 3 services per transfer, several at once;
// a seeded fault driver killing apps and sidecars and flipping fault proxies meanwhile. Then a
// bounded recovery window and the invariants (check.ts). Used by test/torture/bank.ts (the
// `npm run torture` CLI) and test/integration/bank.test.ts (a short run in `npm test`).
//
// Runs: the three modes with apps on txmesh/pg (bank-app.ts), and `contract`: 2pc with apps
// written from the README's hook contract alone on pg (contract-app.ts: no txmesh/pg, no sweep of
// pg_prepared_xacts), so what finishes their prepared rows is the sidecar's own records and
// recovery. It is 2pc only: the contract is the 2PC hooks'.
import { appendFileSync, existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type { PostgresInstance } from '../../harness/pg.js'
import { startKubeApi, type KubeApi } from '../helpers/kube-api.js'
import { Prng } from '../simulation/prng.js'
import {
  checkInvariants,
  resolvedUnknowns,
  VIOLATIONS_SHOWN,
  waitRecovered,
  type RecoveryStatus,
  type Violation,
} from './check.js'
import {
  planTransfers,
  runClient,
  TX_TIMEOUT_MS,
  type ClientRecord,
  type CoordinatorPorts,
  type Seen,
} from './client.js'
import {
  SERVICES,
  SHARED_COORDINATORS,
  startBankCluster,
  takeoversLogged,
  type BankCluster,
  type CoordinatorSlot,
  type Participant,
  type Service,
  type SharedStore,
} from './cluster.js'
import { FaultDriver, newFaultCounts, planFaults, type FaultCounts } from './faults.js'
import { createBank, lockProbe, readBank, type BankState, type Mode } from './schema.js'

export const MODES: readonly Mode[] = ['2pc', 'saga', 'tcc']
/**
 * What `TORTURE_MODE` names: a mode (apps on txmesh/pg), `contract` (2pc, apps on pg alone), or
 * `shared` (2pc, three coordinator instances on one Postgres store, killed for good as well).
 */
export type RunName = Mode | 'contract' | 'shared'
export const RUNS: readonly RunName[] = [...MODES, 'contract', 'shared']

export function runMode(run: RunName): Mode {
  return run === 'contract' || run === 'shared' ? '2pc' : run
}

// The sidecar's exit status when its own log was fenced (src/tx/io.ts fatal 'lease_lost').
const EXIT_LEASE_LOST = 70

export function runParticipant(run: RunName): Participant {
  return run === 'contract' ? 'contract' : 'helper'
}

// Shape of the bank, each with its reason.
// Accounts per service: few enough that transfers contend for rows (2pc lock waits, overdrafts),
// enough that 8 transfers in flight do not all queue on one row.
const ACCOUNTS = 16
// 2pc and tcc: small balances, so overdrafts happen on their own as money moves (refused at
// PREPARE, or by the try's freeze). saga: large, because a saga's credit is visible at once and
// undoing it must never overdraw the account (a saga has no isolation; that is not what this
// test is about); its overdrafts come from the planned oversize transfers.
const INITIAL_BALANCE: Readonly<Record<Mode, number>> = { '2pc': 1_000, saga: 1_000_000, tcc: 1_000 }
// shared run: the coordinators' lease on their logs. Short, so a sibling takes over a dead
// instance's log well inside a transfer's 10 s deadline, and three renewals a lease keep it held
// through the event-loop stalls of a loaded 2-core machine.
const SHARED_LEASE_MS = 3_000
// Transfers in flight at once (the brief: "e.g. 8").
export const IN_FLIGHT = 8
// The lock probe after recovery waits this long for a row lock: above the txmesh/pg apps' 15 s
// idleTimeoutMs on an open branch nobody prepares and the sidecars' 8 s hook hold at restart, so
// only a lock held for good fails it.
const LOCK_PROBE_WAIT_MS = 20_000

export interface BankOptions {
  readonly mode: RunName
  /** The run's seed; this mode's choices come from a seed derived from it and the mode. */
  readonly seed: number
  readonly transfers: number
  readonly kills: number
  readonly proxyFaults: number
  /** Cap of the recovery window. */
  readonly recoveryCapMs: number
  readonly pg: PostgresInstance
  /** Keep the mode's directory (configs, durable logs, process logs) when it fails. */
  readonly keepDirOnFailure: boolean
  /** Keep it whatever the outcome (diagnosis of a passing run: TORTURE_KEEP=always). */
  readonly keepDir?: boolean
  /** contract run: the apps' idle-in-transaction limit (0: none, the default, see contract-app.ts). */
  readonly contractIdleMs?: number
  /** shared run: the coordinators' leases as store rows (default) or Kubernetes Leases (TORTURE_LEASE). */
  readonly sharedLease?: 'row' | 'kubernetes'
  readonly log: (line: string) => void
}

export interface BankResult {
  readonly mode: RunName
  readonly seed: number
  readonly ok: boolean
  readonly seen: Readonly<Record<Seen, number>>
  readonly unknownResolved: { readonly applied: number; readonly none: number }
  readonly abortReasons: readonly [string, number][]
  readonly faults: FaultCounts
  readonly connectionsDropped: number
  readonly loadMs: number
  readonly recovery: { readonly ok: boolean; readonly ms: number; readonly last: RecoveryStatus }
  readonly violations: readonly Violation[]
  /** Longest wait of the lock probe over the databases (ms). */
  readonly lockProbeMs: number
  /** contract run: what the apps logged (see contract-app.ts). */
  readonly contractApp:
    { readonly breaches: number; readonly idleBranchesEnded: number; readonly branchesLost: number } | undefined
  /** shared run: logs claimed by takeover, over every coordinator instance of the run (their logs' `takeover` events). */
  readonly takeovers: number | undefined
  /** shared run with TORTURE_LEASE=kubernetes: the Lease objects' holder changes (takeovers and give-ups). */
  readonly leaseChanges?: number | undefined
  readonly dir: string | undefined
}

/** A 32-bit seed per run, so `TORTURE_MODE=saga` alone replays the saga part of an `all` run. */
export function modeSeed(seed: number, mode: RunName): number {
  const r = new Prng((seed ^ Math.imul(RUNS.indexOf(mode) + 1, 0x9e3779b9)) >>> 0)
  r.next()
  return Math.floor(r.next() * 2 ** 32) >>> 0
}

export async function runBankMode(o: BankOptions): Promise<BankResult> {
  const ms = modeSeed(o.seed, o.mode)
  const transferRng = new Prng(ms)
  const faultRng = new Prng(ms ^ 0x5bd1e995)
  const proxyRng = new Prng(ms ^ 0x1b873593)
  const mode = runMode(o.mode)
  const participant = runParticipant(o.mode)
  const initialBalance = INITIAL_BALANCE[mode]
  const dir = mkdtempSync(join(tmpdir(), `txmesh-torture-${o.mode}-`))
  const dbOf = (s: Service): string => `${s.replace('-', '_')}_${o.mode}`
  for (const s of SERVICES) {
    await o.pg.createDatabase(dbOf(s))
    await createBank(o.pg.connectionString(dbOf(s)), mode, ACCOUNTS, initialBalance)
  }

  let shared: SharedStore | undefined
  let kube: KubeApi | undefined
  if (o.mode === 'shared') {
    await o.pg.createDatabase('txmesh_store_shared')
    if (o.sharedLease === 'kubernetes') kube = await startKubeApi('torture')
    shared = {
      url: o.pg.connectionString('txmesh_store_shared'),
      schema: 'bank',
      leaseMs: SHARED_LEASE_MS,
      ...(kube === undefined ? {} : { kube: { env: kube.env } }),
    }
  }
  const faults = newFaultCounts()
  const timelineFile = join(dir, 'timeline.log')
  const timeline = (line: string): void => appendFileSync(timelineFile, `${new Date().toISOString()} ${line}\n`)
  const cluster = await startBankCluster({
    mode,
    participant,
    ...(o.contractIdleMs === undefined ? {} : { contractIdleMs: o.contractIdleMs }),
    dir,
    connectionString: (db) => o.pg.connectionString(db),
    dbOf,
    random: () => proxyRng.next(),
    ...(shared === undefined ? {} : { shared }),
    onSelfExit: (n) => {
      timeline(
        `${n.name} exited on its own: code ${n.code}, signal ${n.signal}${n.failpoint === undefined ? '' : ` (armed ${n.failpoint})`}`,
      )
      if (n.failpoint !== undefined && n.signal === 'SIGKILL') faults.failpoints[n.failpoint]++
      // A coordinator whose lease lapsed (a stall longer than it) and whose log a sibling took
      // stops with 70: the fence working, restarted like any exit.
      else if (shared !== undefined && n.name.startsWith('coordinator') && n.code === EXIT_LEASE_LOST) faults.fenced++
      else {
        faults.unexpectedExits.push(n)
        o.log(`${o.mode}: ${n.name} exited on its own (code ${n.code}, signal ${n.signal}); restarting it`)
      }
    },
  })
  let ok = false
  try {
    const transfers = planTransfers(transferRng, mode, o.transfers, ACCOUNTS, initialBalance)
    const events = planFaults(
      faultRng,
      mode,
      o.transfers,
      o.kills,
      o.proxyFaults,
      [...cluster.processes.values()].map((p) => ({ name: p.name, kind: p.kind })),
      cluster.proxies.map((p) => p.name),
      participant,
      shared !== undefined,
    )
    const driver = new FaultDriver(cluster, events, faults, (line) => o.log(`${o.mode}: ${line}`), timeline)
    const started = Date.now()
    let records: ClientRecord[]
    try {
      records = await runClient(
        {
          mode,
          coordinator: (i) => pickCoordinator(cluster, i),
          inFlight: IN_FLIGHT,
          onStart: (i) => driver.onTransferStart(i),
          onEnd: (i, r) => driver.onTransferEnd(i, r),
        },
        transfers,
      )
    } finally {
      await driver.stop()
    }
    const loadMs = Date.now() - started
    // What the client saw, one JSON line per transfer (diagnosis of a failure).
    writeFileSync(join(dir, 'client.log'), records.map((r) => JSON.stringify(r)).join('\n') + '\n')
    const connectionsDropped = cluster.proxies.reduce((n, p) => n + p.proxy.stats.dropped, 0)

    const recovery = await waitRecovered(cluster, (db) => o.pg.connectionString(db), o.recoveryCapMs)
    const takeovers =
      shared === undefined
        ? undefined
        : cluster.coordinators.reduce((n, c) => n + c.takeoversBefore + takeoversLogged(c), 0)
    // Locks first: a probe that had to wait for a lock shows in lockProbeMs.
    let lockProbeMs = 0
    const lockViolations: Violation[] = []
    for (const n of cluster.nodes) {
      const p = await lockProbe(o.pg.connectionString(n.db), LOCK_PROBE_WAIT_MS)
      lockProbeMs = Math.max(lockProbeMs, p.waitedMs)
      if (!p.ok)
        lockViolations.push({
          invariant: 'no lock left behind',
          transfer: undefined,
          detail: `${n.service}: a transaction updating every account waited ${p.waitedMs} ms for a row lock; holders: ${p.holders.join('; ') || 'none left'}`,
        })
    }
    const states = new Map<Service, BankState>()
    for (const n of cluster.nodes) states.set(n.service, await readBank(o.pg.connectionString(n.db)))
    const input = { mode, records, states, initialBalance, accounts: ACCOUNTS }
    const violations = [...checkInvariants(input), ...lockViolations]
    const contractApp = participant === 'contract' ? contractAppNotes(dir, violations) : undefined
    if (!recovery.ok) {
      const l = recovery.last
      violations.unshift({
        invariant: 'recovered within the window',
        transfer: undefined,
        detail: `after ${recovery.ms} ms: ${l.prepared} prepared, ${l.unfinished} unfinished transactions (${l.stuck} stuck steps), ${l.branches} branches held, ${l.unreachable} sidecars/databases not answering${shared === undefined ? '' : `, ${l.storeRecords} coordinator records in the store, ${l.takenLogs} logs taken over and not finished`}`,
      })
    }
    const seen: Record<Seen, number> = { committed: 0, aborted: 0, unknown: 0, 'not-begun': 0 }
    const reasons = new Map<string, number>()
    for (const r of records) {
      seen[r.seen]++
      if (r.seen === 'aborted') {
        const why = r.detail.replace(/^leg bank-[abc] /, 'leg ').replace(/; abort: .*$/, '')
        reasons.set(why, (reasons.get(why) ?? 0) + 1)
      }
    }
    ok = violations.length === 0
    return {
      mode: o.mode,
      seed: o.seed,
      ok,
      seen,
      unknownResolved: resolvedUnknowns(input),
      abortReasons: [...reasons].sort((a, b) => b[1] - a[1]).slice(0, 6),
      faults,
      connectionsDropped,
      loadMs,
      recovery,
      violations,
      lockProbeMs,
      contractApp,
      takeovers,
      ...(kube === undefined
        ? {}
        : { leaseChanges: [...kube.holders.values()].reduce((n, h) => n + Math.max(0, h.length - 1), 0) }),
      dir: o.keepDir === true || (!ok && o.keepDirOnFailure) ? dir : undefined,
    }
  } finally {
    await cluster.stop()
    await kube?.close()
    if (o.keepDir !== true && (ok || !o.keepDirOnFailure)) rmSync(dir, { recursive: true, force: true })
  }
}

/**
 * The coordinator transfer `i` runs on: round robin over the instances up (the shared run's
 * client spreads its transfers as a Service would), the only one otherwise.
 */
function pickCoordinator(cluster: BankCluster, i: number): CoordinatorPorts {
  const all = cluster.coordinators
  const up = all.filter((c) => c.process.up)
  const c = (up.length > 0 ? up[i % up.length] : all[i % all.length]) as CoordinatorSlot
  return { admin: c.ports.admin, egress: c.ports.egress }
}

/**
 * What the contract apps logged (contract-app.ts): every `contract_breach` line is a violation
 * (the app saw a hook the contract says it never sees); `branch_connection_lost` lines count
 * open branches whose session ended under them, 25P03 those Postgres's idle timeout ended (a
 * branch nobody prepared or aborted for TORTURE_CONTRACT_IDLE_MS, when set).
 */
function contractAppNotes(
  dir: string,
  violations: Violation[],
): { breaches: number; idleBranchesEnded: number; branchesLost: number } {
  let breaches = 0
  let idleBranchesEnded = 0
  let branchesLost = 0
  for (const s of SERVICES) {
    const file = join(dir, s, 'app.log')
    if (!existsSync(file)) continue
    for (const line of readFileSync(file, 'utf8').split('\n')) {
      const at = line.indexOf('{')
      if (at < 0) continue
      let e: { event?: unknown; what?: unknown; branch?: unknown; code?: unknown }
      try {
        e = JSON.parse(line.slice(at)) as typeof e
      } catch {
        continue
      }
      if (e.event === 'contract_breach') {
        breaches++
        violations.push({
          invariant: 'hooks as the contract says',
          transfer: undefined,
          detail: `${s}: ${String(e.what)} (branch ${String(e.branch)}) at ${line.slice(0, at).trim()}`,
        })
      } else if (e.event === 'branch_connection_lost') {
        branchesLost++
        if (e.code === '25P03') idleBranchesEnded++
      }
    }
  }
  return { breaches, idleBranchesEnded, branchesLost }
}

export interface ReplayArgs {
  readonly transfers: number
  readonly kills: number
  readonly defaults: { readonly transfers: number; readonly kills: number }
}

export function replayCommand(r: BankResult, a: ReplayArgs): string {
  const extra = [
    a.transfers !== a.defaults.transfers ? `TORTURE_TRANSFERS=${a.transfers}` : '',
    a.kills !== a.defaults.kills ? `TORTURE_KILLS=${a.kills}` : '',
  ].filter((s) => s !== '')
  return [`TORTURE_SEED=${r.seed}`, `TORTURE_MODE=${r.mode}`, ...extra, 'npm run torture'].join(' ')
}

export function formatResult(r: BankResult, replay: string): string {
  const f = r.faults
  const kills = f.kills.app + f.kills['participant-sidecar'] + f.kills.coordinator
  const fired =
    f.failpoints['coordinator-after-decision'] +
    f.failpoints['participant-after-prepared'] +
    f.failpoints['participant-after-app-prepared']
  const proxy = f.proxy.delay + f.proxy.drop + f.proxy.refuse
  const total = r.seen.committed + r.seen.aborted + r.seen.unknown + r.seen['not-begun']
  const lines = [
    `${r.mode === 'contract' ? 'run contract (2pc, apps on pg from the hook contract alone)' : r.mode === 'shared' ? 'run shared (2pc, coordinators on one Postgres store, killed for good too)' : `mode ${r.mode}`}  seed ${r.seed} (mode seed ${modeSeed(r.seed, r.mode)})  ${r.ok ? 'PASS' : 'FAIL'}`,
    `  transfers  ${total}: committed ${r.seen.committed}, aborted ${r.seen.aborted}, unknown ${r.seen.unknown} (afterwards all applied ${r.unknownResolved.applied}, all undone ${r.unknownResolved.none}), not begun ${r.seen['not-begun']}`,
    `  aborted    ${r.abortReasons.map(([k, n]) => `${k} ×${n}`).join('; ') || '-'}`,
    `  kills      ${kills + fired}: SIGKILL app ${f.kills.app}, participant sidecar ${f.kills['participant-sidecar']}, coordinator ${f.kills.coordinator}${r.mode === 'contract' ? ` (${f.onAbort} right after a commit answered aborted)` : ''}; failpoints fired: coordinator-after-decision ${f.failpoints['coordinator-after-decision']}, participant-after-prepared ${f.failpoints['participant-after-prepared']}${r.mode === 'contract' ? `, participant-after-app-prepared ${f.failpoints['participant-after-app-prepared']}` : ''}; kill events that found the target down ${f.skipped}, not fired before the load ended ${f.notFired.kill}`,
    `  proxy      ${proxy} faults: delay ${f.proxy.delay}, drop ${f.proxy.drop}, refuse ${f.proxy.refuse}; connections cut ${r.connectionsDropped}${f.notFired.proxy > 0 ? `; not fired before the load ended ${f.notFired.proxy}` : ''}`,
    `  crashes    ${f.unexpectedExits.length === 0 ? 'none' : f.unexpectedExits.map((e) => `${e.name} (code ${e.code}, signal ${e.signal})`).join(', ')}`,
    `  timing     load ${(r.loadMs / 1000).toFixed(1)} s (${((total * 1000) / Math.max(1, r.loadMs)).toFixed(1)} transfers/s, ${IN_FLIGHT} in flight, tx deadline ${TX_TIMEOUT_MS} ms), recovery ${(r.recovery.ms / 1000).toFixed(1)} s, lock probe waited ${(r.lockProbeMs / 1000).toFixed(1)} s`,
  ]
  if (r.takeovers !== undefined)
    lines.push(
      `  store      ${SHARED_COORDINATORS} coordinator instances on one Postgres store (lease ${SHARED_LEASE_MS} ms${r.leaseChanges === undefined ? '' : `, Kubernetes Leases: ${r.leaseChanges} holder changes`}): replaced for good ${f.replaced} (directory deleted, new instance), fenced exits ${f.fenced}, logs claimed by takeover ${r.takeovers}`,
    )
  const c = r.contractApp
  if (c !== undefined)
    lines.push(
      `  apps       hook contract breaches seen ${c.breaches}; open branches whose session ended ${c.branchesLost} (by Postgres's idle-in-transaction timeout ${c.idleBranchesEnded})`,
    )
  if (r.ok && r.dir !== undefined) lines.push(`  logs       ${r.dir}`)
  if (r.ok) {
    lines.push(
      `  invariants all hold: total unchanged, none negative, ledgers match balances, committed present everywhere, aborted nowhere, unknown all-or-nothing, pg_prepared_xacts empty, no lock left behind${c === undefined ? '' : ', hooks as the contract says'}`,
    )
  } else {
    const byInvariant = new Map<string, number>()
    for (const v of r.violations) byInvariant.set(v.invariant, (byInvariant.get(v.invariant) ?? 0) + 1)
    lines.push(
      `  invariants ${r.violations.length} violation(s): ${[...byInvariant].map(([k, n]) => `${k} ×${n}`).join('; ')}`,
    )
    for (const v of r.violations.slice(0, VIOLATIONS_SHOWN))
      lines.push(`    [${v.invariant}]${v.transfer === undefined ? '' : ` transfer ${v.transfer}:`} ${v.detail}`)
    if (r.violations.length > VIOLATIONS_SHOWN) lines.push(`    ... and ${r.violations.length - VIOLATIONS_SHOWN} more`)
    if (r.dir !== undefined)
      lines.push(`  logs       ${r.dir} (sidecar.yaml, sidecar.log, app.log and the durable log of each process)`)
    lines.push(`  replay     ${replay}`)
  }
  return lines.join('\n')
}
