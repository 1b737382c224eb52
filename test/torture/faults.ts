// The fault driver. Every choice comes from the seeded PRNG and is made before the load starts:
// which process or proxy, at which transfer (an event fires when that transfer starts, after a
// seeded extra delay), how long a process stays down, which proxy mode and for how long. Timing
// of the real processes still varies from run to run, so a seed replays the same schedule, not
// the same interleaving.
//
// Kills: SIGKILL of an app, a participant sidecar or the coordinator sidecar; after a seeded
// downtime it is restarted on the same ports with the same durable log. In 2pc mode a share of
// sidecar restarts come back armed with a failpoint (TXMESH_FAILPOINTS): the process SIGKILLs
// itself at the next COMMIT decision (coordinator) or PREPARED record (participant), the windows
// no outside timing can hit reliably; it is then restarted unarmed.
//
// The `contract` run (apps from the hook contract alone, whose prepared rows only the sidecar
// finishes) adds the two schedules that leave such a row to the sidecar's recovery: participant
// sidecars restarted armed with participant-after-app-prepared (killed after the app answered
// prepare 200, before PREPARED: the restarted sidecar must abort the branch alone), and
// coordinator kills right after a commit answered "aborted" (its abort sends are in flight: the
// prepared participants must learn the outcome without them). Its first two kill events are one
// of each, in the first half of the load, so even a short run has both.
//
// The `shared` run (2pc, three coordinator instances of the client on one Postgres store) kills
// coordinators for good as well: a kill event marked forGood replaces the instance it kills (its
// directory deleted, a new instance name and new ports, cluster.replaceCoordinator), so its log
// is finished by a sibling's takeover, never by itself. Armed and forGood, the instance is
// restarted in place armed with coordinator-after-decision and replaced when that fires: a
// COMMIT decided and phase 2 never sent by its maker. Its first two kill events are one of each,
// in the first half of the load.
import type { FaultMode } from '../helpers/fault-proxy.js'
import type { Prng } from '../simulation/prng.js'
import type { ClientRecord } from './client.js'
import {
  sleep,
  withTimeout,
  type BankCluster,
  type ExitNote,
  type Failpoint,
  type Managed,
  type Participant,
  type ProcessKind,
} from './cluster.js'
import type { Mode } from './schema.js'

// Bounds and ranges of the fault schedule, each with its reason.
// Extra delay after the triggering transfer starts: spreads faults over the calls, the prepare
// and the phase 2 of the transfers in flight.
const FAULT_DELAY_MAX_MS = 400
// Downtime of a killed process: from a quick crash loop to a restart that outlives a commit's
// prepare round, well inside a transaction's 10 s deadline.
const DOWNTIME_MIN_MS = 100
const DOWNTIME_MAX_MS = 1_500
// Share of sidecar kills (2pc) restarted armed with a failpoint.
const FAILPOINT_SHARE = 0.3
// contract run: the sidecars' failpoints are the point of it, so half of their restarts are armed,
// and of a participant's, most in the prepare window.
const CONTRACT_FAILPOINT_SHARE = 0.5
const CONTRACT_PREPARE_WINDOW_SHARE = 0.7
// contract run: share of kill events that kill the coordinator right after a commit answered
// "aborted" instead of at a transfer's start.
const CONTRACT_ABORT_KILL_SHARE = 0.2
// ... that many ms after the client has the answer: the abort sends left in the same turn of the
// coordinator's event loop, and each takes a few ms over loopback and the proxy.
const ABORT_KILL_DELAY_MAX_MS = 10
// Proxy faults: how long a mode lasts, and the delay mode's range.
const PROXY_FAULT_MIN_MS = 200
const PROXY_FAULT_MAX_MS = 1_500
const PROXY_DELAY_MIN_MS = 20
const PROXY_DELAY_MAX_MS = 1_500
// shared run: share of coordinator kill events that replace the instance for good.
const FOR_GOOD_SHARE = 0.5
// Waiting for a restart that the driver itself scheduled, at the end of the load.
const RESTART_WAIT_MS = 60_000

export type FaultEvent =
  | {
      readonly kind: 'kill'
      readonly at: number
      readonly delayMs: number
      readonly target: string
      readonly downMs: number
      readonly failpoint: Failpoint | undefined
      /** shared run: the instance this event kills (armed: the one its failpoint kills) is replaced for good. */
      readonly forGood?: boolean
    }
  /** Kills `target` (the coordinator) `delayMs` after the first commit answered "aborted" once transfer `at` started. */
  | {
      readonly kind: 'kill-on-abort'
      readonly at: number
      readonly delayMs: number
      readonly target: string
      readonly downMs: number
    }
  | {
      readonly kind: 'proxy'
      readonly at: number
      readonly delayMs: number
      readonly target: string
      readonly mode: FaultMode
      readonly durationMs: number
    }

export interface FaultCounts {
  /** SIGKILLs sent by the driver, by kind of process (kill-on-abort events included). */
  readonly kills: Record<ProcessKind, number>
  /** Of those, coordinator kills right after a commit answered "aborted". */
  onAbort: number
  /** Kill events that found their target already down (a failpoint or an earlier kill). */
  skipped: number
  /** Events the load ended before (planned at one of the last transfers, or still in their delay). */
  notFired: { kill: number; proxy: number }
  /** Failpoints that fired (the process killed itself), by name. */
  readonly failpoints: Record<Failpoint, number>
  /** Proxy faults switched on, by mode. */
  readonly proxy: Record<'delay' | 'drop' | 'refuse', number>
  /** Processes that exited on their own without an armed failpoint (crashes): listed. */
  readonly unexpectedExits: ExitNote[]
  /** shared run: coordinator instances replaced for good (their directory deleted). */
  replaced: number
  /** shared run: coordinators that stopped fenced (exit 70: a sibling took their log while their lease had lapsed). */
  fenced: number
}

export function newFaultCounts(): FaultCounts {
  return {
    kills: { app: 0, 'participant-sidecar': 0, coordinator: 0 },
    onAbort: 0,
    skipped: 0,
    notFired: { kill: 0, proxy: 0 },
    failpoints: {
      'coordinator-after-decision': 0,
      'participant-after-prepared': 0,
      'participant-after-app-prepared': 0,
    },
    proxy: { delay: 0, drop: 0, refuse: 0 },
    unexpectedExits: [],
    replaced: 0,
    fenced: 0,
  }
}

/** Seeded schedule: `kills` kill events and `proxyFaults` proxy events spread over the transfers. */
export function planFaults(
  rng: Prng,
  mode: Mode,
  transfers: number,
  kills: number,
  proxyFaults: number,
  processes: readonly { name: string; kind: ProcessKind }[],
  proxies: readonly string[],
  participant: Participant = 'helper',
  shared = false,
): FaultEvent[] {
  const events: FaultEvent[] = []
  for (let i = 0; i < kills; i++) {
    if (participant === 'contract') {
      events.push(planContractKill(rng, i, transfers, processes))
      continue
    }
    if (shared) {
      events.push(planSharedKill(rng, i, transfers, processes))
      continue
    }
    const p = processes[rng.int(0, processes.length - 1)] as { name: string; kind: ProcessKind }
    const armed = mode === '2pc' && p.kind !== 'app' && rng.chance(FAILPOINT_SHARE)
    const failpoint: Failpoint | undefined = !armed
      ? undefined
      : p.kind === 'coordinator'
        ? 'coordinator-after-decision'
        : 'participant-after-prepared'
    events.push({
      kind: 'kill',
      at: rng.int(0, transfers - 1),
      delayMs: rng.int(0, FAULT_DELAY_MAX_MS),
      target: p.name,
      downMs: rng.int(DOWNTIME_MIN_MS, DOWNTIME_MAX_MS),
      failpoint,
    })
  }
  for (let i = 0; i < proxyFaults; i++) {
    const target = proxies[rng.int(0, proxies.length - 1)] as string
    const r = rng.next()
    const fault: FaultMode =
      r < 0.4
        ? { kind: 'delay', ms: rng.int(PROXY_DELAY_MIN_MS, PROXY_DELAY_MAX_MS) }
        : r < 0.8
          ? { kind: 'drop' }
          : { kind: 'refuse' }
    events.push({
      kind: 'proxy',
      at: rng.int(0, transfers - 1),
      delayMs: rng.int(0, FAULT_DELAY_MAX_MS),
      target,
      mode: fault,
      durationMs: rng.int(PROXY_FAULT_MIN_MS, PROXY_FAULT_MAX_MS),
    })
  }
  // Stable order: by transfer, then by the order planned.
  return events
    .map((e, i) => ({ e, i }))
    .sort((a, b) => a.e.at - b.e.at || a.i - b.i)
    .map((x) => x.e)
}

/** The contract run's kill event number `i` (see the head of this file). */
function planContractKill(
  rng: Prng,
  i: number,
  transfers: number,
  processes: readonly { name: string; kind: ProcessKind }[],
): FaultEvent {
  const pick = (of: readonly { name: string; kind: ProcessKind }[]): { name: string; kind: ProcessKind } =>
    of[rng.int(0, of.length - 1)] as { name: string; kind: ProcessKind }
  const at = i < 2 ? rng.int(0, Math.max(0, Math.floor(transfers / 2) - 1)) : rng.int(0, transfers - 1)
  const downMs = rng.int(DOWNTIME_MIN_MS, DOWNTIME_MAX_MS)
  const coordinator = processes.find((p) => p.kind === 'coordinator')
  if (coordinator === undefined) throw new Error('no coordinator process')
  if (i === 1 || (i > 1 && rng.chance(CONTRACT_ABORT_KILL_SHARE))) {
    return { kind: 'kill-on-abort', at, delayMs: rng.int(0, ABORT_KILL_DELAY_MAX_MS), target: coordinator.name, downMs }
  }
  const p = i === 0 ? pick(processes.filter((x) => x.kind === 'participant-sidecar')) : pick(processes)
  const delayMs = rng.int(0, FAULT_DELAY_MAX_MS)
  if (i === 0) return { kind: 'kill', at, delayMs, target: p.name, downMs, failpoint: 'participant-after-app-prepared' }
  let failpoint: Failpoint | undefined
  if (p.kind !== 'app' && rng.chance(CONTRACT_FAILPOINT_SHARE)) {
    failpoint =
      p.kind === 'coordinator'
        ? 'coordinator-after-decision'
        : rng.chance(CONTRACT_PREPARE_WINDOW_SHARE)
          ? 'participant-after-app-prepared'
          : 'participant-after-prepared'
  }
  return { kind: 'kill', at, delayMs, target: p.name, downMs, failpoint }
}

/** The shared run's kill event number `i` (see the head of this file). */
function planSharedKill(
  rng: Prng,
  i: number,
  transfers: number,
  processes: readonly { name: string; kind: ProcessKind }[],
): FaultEvent {
  const coordinators = processes.filter((p) => p.kind === 'coordinator')
  const pick = (of: readonly { name: string; kind: ProcessKind }[]): { name: string; kind: ProcessKind } =>
    of[rng.int(0, of.length - 1)] as { name: string; kind: ProcessKind }
  const at = i < 2 ? rng.int(0, Math.max(0, Math.floor(transfers / 2) - 1)) : rng.int(0, transfers - 1)
  const delayMs = rng.int(0, FAULT_DELAY_MAX_MS)
  const downMs = rng.int(DOWNTIME_MIN_MS, DOWNTIME_MAX_MS)
  const p = i < 2 ? pick(coordinators) : pick(processes)
  const armed = i === 0 || (i > 1 && p.kind !== 'app' && rng.chance(FAILPOINT_SHARE))
  const failpoint: Failpoint | undefined = !armed
    ? undefined
    : p.kind === 'coordinator'
      ? 'coordinator-after-decision'
      : 'participant-after-prepared'
  const forGood = p.kind === 'coordinator' && (i < 2 || rng.chance(FOR_GOOD_SHARE))
  return { kind: 'kill', at, delayMs, target: p.name, downMs, failpoint, forGood }
}

export class FaultDriver {
  private next = 0
  private readonly timers = new Set<NodeJS.Timeout>()
  /** Planned events whose delay timer is running (not fired yet). */
  private readonly pending = new Set<FaultEvent>()
  /** kill-on-abort events due, waiting for a commit answered "aborted" (oldest first). */
  private readonly awaitingAbort: FaultEvent[] = []
  private readonly tasks = new Set<Promise<void>>()
  /** Per proxy: bumped by every switch, so an expiring fault only restores `pass` if it is still the latest. */
  private readonly generation = new Map<string, number>()
  private stopped = false
  /** shared run: coordinators whose armed failpoint, when it fires, replaces the instance. */
  private readonly replaceOnFailpoint = new Set<string>()

  constructor(
    private readonly cluster: BankCluster,
    private readonly events: readonly FaultEvent[],
    readonly counts: FaultCounts,
    private readonly log: (line: string) => void,
    /** Every fault as it happens, for the mode's timeline.log (diagnosis of a failure). */
    private readonly timeline: (line: string) => void,
  ) {
    if (cluster.shared === undefined) return
    for (const slot of cluster.coordinators) {
      const name = slot.process.name
      slot.process.beforeSelfRestart = async (n) => {
        if (n.failpoint !== undefined && this.replaceOnFailpoint.delete(name)) await this.replace(name)
      }
    }
  }

  private async replace(name: string): Promise<void> {
    const instance = await this.cluster.replaceCoordinator(name)
    this.counts.replaced++
    this.timeline(`${name} replaced for good: its directory deleted, next start is instance ${instance}`)
  }

  /** The client started transfer `index`: fire every event planned up to it. */
  onTransferStart(index: number): void {
    while (!this.stopped && this.next < this.events.length && (this.events[this.next] as FaultEvent).at <= index) {
      const e = this.events[this.next++] as FaultEvent
      if (e.kind === 'kill-on-abort') {
        this.awaitingAbort.push(e)
        continue
      }
      this.schedule(e, e.delayMs)
    }
  }

  /**
   * The client finished transfer `index`: a commit answered "aborted" (the prepare round ended
   * in abort: a no vote or a failed prepare) fires the oldest kill-on-abort event due.
   */
  onTransferEnd(index: number, r: ClientRecord): void {
    if (this.stopped || r.seen !== 'aborted' || !r.detail.startsWith('commit: aborted')) return
    const e = this.awaitingAbort.shift()
    if (e === undefined) return
    this.timeline(`commit of t${index} (tx ${r.txId ?? '-'}) answered aborted: killing ${e.target} in ${e.delayMs} ms`)
    this.schedule(e, e.delayMs)
  }

  private schedule(e: FaultEvent, ms: number): void {
    this.pending.add(e)
    this.later(ms, () => {
      this.pending.delete(e)
      return this.fire(e)
    })
  }

  private later(ms: number, f: () => Promise<void>): void {
    const t = setTimeout(() => {
      this.timers.delete(t)
      if (this.stopped) return
      const task = f().catch((err: unknown) => this.log(`fault failed: ${(err as Error).message}`))
      this.tasks.add(task)
      void task.finally(() => this.tasks.delete(task))
    }, ms)
    this.timers.add(t)
  }

  private async fire(e: FaultEvent): Promise<void> {
    if (e.kind === 'proxy') {
      const proxy = this.cluster.proxies.find((p) => p.name === e.target)?.proxy
      if (proxy === undefined) throw new Error(`no proxy ${e.target}`)
      const gen = (this.generation.get(e.target) ?? 0) + 1
      this.generation.set(e.target, gen)
      this.counts.proxy[e.mode.kind as 'delay' | 'drop' | 'refuse']++
      this.timeline(
        `proxy ${e.target} ${e.mode.kind}${e.mode.kind === 'delay' ? ` ${e.mode.ms} ms` : ''} for ${e.durationMs} ms`,
      )
      await proxy.setMode(e.mode)
      this.later(e.durationMs, async () => {
        if (this.generation.get(e.target) !== gen) return
        this.timeline(`proxy ${e.target} pass`)
        await proxy.setMode({ kind: 'pass' })
      })
      return
    }
    const p = this.process(e.target)
    this.replaceOnFailpoint.delete(p.name)
    if (!(await p.kill())) {
      this.counts.skipped++
      this.timeline(`kill ${p.name}: already down`)
      return
    }
    this.counts.kills[p.kind]++
    if (e.kind === 'kill-on-abort') this.counts.onAbort++
    this.timeline(
      `kill ${p.name}${e.kind === 'kill-on-abort' ? ' (after an aborted commit)' : ''}, down ${e.downMs} ms`,
    )
    const failpoint = e.kind === 'kill' ? e.failpoint : undefined
    if (e.kind === 'kill' && e.forGood === true) {
      if (failpoint === undefined) await this.replace(p.name)
      else this.replaceOnFailpoint.add(p.name)
    }
    this.later(e.downMs, async () => {
      await p.start(failpoint)
      this.timeline(`restarted ${p.name}${failpoint === undefined ? '' : ` armed ${failpoint}`}`)
    })
  }

  private process(name: string): Managed {
    const p = this.cluster.processes.get(name)
    if (p === undefined) throw new Error(`no process ${name}`)
    return p
  }

  /**
   * End of the load: no more faults, every proxy passes, pending restarts happen now, and every
   * process is up and unarmed (an armed one is restarted without its failpoint).
   */
  async stop(): Promise<void> {
    this.stopped = true
    this.replaceOnFailpoint.clear()
    for (const t of this.timers) clearTimeout(t)
    this.timers.clear()
    for (const e of [...this.pending, ...this.awaitingAbort, ...this.events.slice(this.next)])
      this.counts.notFired[e.kind === 'proxy' ? 'proxy' : 'kill']++
    await withTimeout(Promise.allSettled([...this.tasks]), RESTART_WAIT_MS, 'fault tasks to finish')
    for (const { proxy } of this.cluster.proxies) await proxy.setMode({ kind: 'pass' })
    for (const p of this.cluster.processes.values()) {
      const armed = p.failpoint
      if (armed !== undefined) {
        await p.kill()
        this.timeline(`disarmed ${p.name} (${armed} had not fired)`)
      }
    }
    // Restart what is down (killed, or died on its own and its restart timer is pending).
    await Promise.all([...this.cluster.processes.values()].map((p) => (p.up ? undefined : p.start())))
    // A process that died on its own just now is restarted by its own timer; give it the time.
    for (let i = 0; i < 10 && [...this.cluster.processes.values()].some((p) => !p.up); i++) await sleep(500)
  }
}
