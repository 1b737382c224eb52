// Event-loop delay of the sidecar process, for diagnostics and the footprint benchmark (a stall
// over LIMITS-sized budgets means every proxied request waited that long). Off by default: the
// sampling timer would wake an idle sidecar LOOP_MONITOR_RESOLUTION_MS apart for nothing. On with
// TXMESH_LOOP_MONITOR=1; read through GET /v1/stats (`eventLoop`), each read covering the time
// since the previous one.
import { monitorEventLoopDelay, type IntervalHistogram } from 'node:perf_hooks'
import { LIMITS } from '../limits.js'

export interface LoopDelay {
  readonly maxMs: number
  readonly p99Ms: number
  readonly meanMs: number
  /** Wall time the figures cover. */
  readonly sinceMs: number
}

export class LoopMonitor {
  private readonly h: IntervalHistogram
  private since = performance.now()

  constructor(resolutionMs: number = LIMITS.loopMonitorResolutionMs) {
    this.h = monitorEventLoopDelay({ resolution: resolutionMs })
    this.h.enable()
  }

  /** Delays since the previous read (or the start), then starts a new period. */
  read(): LoopDelay {
    const ms = (ns: number): number => Math.round(ns / 1e4) / 100
    const now = performance.now()
    const out = {
      maxMs: ms(this.h.max),
      p99Ms: ms(this.h.percentile(99)),
      meanMs: Number.isNaN(this.h.mean) ? 0 : ms(this.h.mean),
      sinceMs: Math.round(now - this.since),
    }
    this.h.reset()
    this.since = now
    return out
  }

  close(): void {
    this.h.disable()
  }
}

export function loopMonitorFromEnv(
  env: Readonly<Record<string, string | undefined>> = process.env,
): LoopMonitor | undefined {
  return env.TXMESH_LOOP_MONITOR === '1' ? new LoopMonitor() : undefined
}
