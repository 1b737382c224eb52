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
import type { FaultMode } from '../helpers/fault-proxy.js'
import type { Prng } from '../simulation/prng.js'
import { sleep, withTimeout, type BankCluster, type ExitNote, type Failpoint, type Managed, type ProcessKind } from './cluster.js'
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
// Proxy faults: how long a mode lasts, and the delay mode's range.
const PROXY_FAULT_MIN_MS = 200
const PROXY_FAULT_MAX_MS = 1_500
const PROXY_DELAY_MIN_MS = 20
const PROXY_DELAY_MAX_MS = 1_500
// Waiting for a restart that the driver itself scheduled, at the end of the load.
const RESTART_WAIT_MS = 60_000

export type FaultEvent =
  | { readonly kind: 'kill'; readonly at: number; readonly delayMs: number; readonly target: string; readonly downMs: number; readonly failpoint: Failpoint | undefined }
  | { readonly kind: 'proxy'; readonly at: number; readonly delayMs: number; readonly target: string; readonly mode: FaultMode; readonly durationMs: number }

export interface FaultCounts {
  /** SIGKILLs sent by the driver, by kind of process. */
  readonly kills: Record<ProcessKind, number>
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
}

export function newFaultCounts(): FaultCounts {
  return {
    kills: { app: 0, 'participant-sidecar': 0, coordinator: 0 },
    skipped: 0,
    notFired: { kill: 0, proxy: 0 },
    failpoints: { 'coordinator-after-decision': 0, 'participant-after-prepared': 0 },
    proxy: { delay: 0, drop: 0, refuse: 0 },
    unexpectedExits: [],
  }
}

/** Seeded schedule: `kills` kill events and `proxyFaults` proxy events spread over the transfers. */
export function planFaults(rng: Prng, mode: Mode, transfers: number, kills: number, proxyFaults: number, processes: readonly { name: string; kind: ProcessKind }[], proxies: readonly string[]): FaultEvent[] {
  const events: FaultEvent[] = []
  for (let i = 0; i < kills; i++) {
    const p = processes[rng.int(0, processes.length - 1)] as { name: string; kind: ProcessKind }
    const armed = mode === '2pc' && p.kind !== 'app' && rng.chance(FAILPOINT_SHARE)
    const failpoint: Failpoint | undefined = !armed ? undefined : p.kind === 'coordinator' ? 'coordinator-after-decision' : 'participant-after-prepared'
    events.push({ kind: 'kill', at: rng.int(0, transfers - 1), delayMs: rng.int(0, FAULT_DELAY_MAX_MS), target: p.name, downMs: rng.int(DOWNTIME_MIN_MS, DOWNTIME_MAX_MS), failpoint })
  }
  for (let i = 0; i < proxyFaults; i++) {
    const target = proxies[rng.int(0, proxies.length - 1)] as string
    const r = rng.next()
    const fault: FaultMode = r < 0.4 ? { kind: 'delay', ms: rng.int(PROXY_DELAY_MIN_MS, PROXY_DELAY_MAX_MS) } : r < 0.8 ? { kind: 'drop' } : { kind: 'refuse' }
    events.push({ kind: 'proxy', at: rng.int(0, transfers - 1), delayMs: rng.int(0, FAULT_DELAY_MAX_MS), target, mode: fault, durationMs: rng.int(PROXY_FAULT_MIN_MS, PROXY_FAULT_MAX_MS) })
  }
  // Stable order: by transfer, then by the order planned.
  return events.map((e, i) => ({ e, i })).sort((a, b) => a.e.at - b.e.at || a.i - b.i).map((x) => x.e)
}

export class FaultDriver {
  private next = 0
  private readonly timers = new Set<NodeJS.Timeout>()
  /** Planned events whose delay timer is running (not fired yet). */
  private readonly pending = new Set<FaultEvent>()
  private readonly tasks = new Set<Promise<void>>()
  /** Per proxy: bumped by every switch, so an expiring fault only restores `pass` if it is still the latest. */
  private readonly generation = new Map<string, number>()
  private stopped = false

  constructor(
    private readonly cluster: BankCluster,
    private readonly events: readonly FaultEvent[],
    readonly counts: FaultCounts,
    private readonly log: (line: string) => void,
    /** Every fault as it happens, for the mode's timeline.log (diagnosis of a failure). */
    private readonly timeline: (line: string) => void,
  ) {}

  /** The client started transfer `index`: fire every event planned up to it. */
  onTransferStart(index: number): void {
    while (!this.stopped && this.next < this.events.length && (this.events[this.next] as FaultEvent).at <= index) {
      const e = this.events[this.next++] as FaultEvent
      this.pending.add(e)
      this.later(e.delayMs, () => {
        this.pending.delete(e)
        return this.fire(e)
      })
    }
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
      this.timeline(`proxy ${e.target} ${e.mode.kind}${e.mode.kind === 'delay' ? ` ${e.mode.ms} ms` : ''} for ${e.durationMs} ms`)
      await proxy.setMode(e.mode)
      this.later(e.durationMs, async () => {
        if (this.generation.get(e.target) !== gen) return
        this.timeline(`proxy ${e.target} pass`)
        await proxy.setMode({ kind: 'pass' })
      })
      return
    }
    const p = this.process(e.target)
    if (!(await p.kill())) {
      this.counts.skipped++
      this.timeline(`kill ${p.name}: already down`)
      return
    }
    this.counts.kills[p.kind]++
    this.timeline(`kill ${p.name}, down ${e.downMs} ms`)
    this.later(e.downMs, async () => {
      await p.start(e.failpoint)
      this.timeline(`restarted ${p.name}${e.failpoint === undefined ? '' : ` armed ${e.failpoint}`}`)
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
    for (const t of this.timers) clearTimeout(t)
    this.timers.clear()
    for (const e of [...this.pending, ...this.events.slice(this.next)]) this.counts.notFired[e.kind]++
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
