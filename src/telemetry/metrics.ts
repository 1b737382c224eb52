// Prometheus metrics of one sidecar (prom-client, served as text on the admin port /metrics).
// A registry per sidecar (not prom-client's global one) so several sidecars can live in one
// process (tests). Label values are bounded: routes come from config, statuses are HTTP codes,
// participants are services (capped by LIMITS.metricsMaxServices).
import { Counter, Gauge, Histogram, Registry, type Metric, type MetricType } from 'prom-client'
import type { Direction } from '../config/types.js'
import { LIMITS } from '../limits.js'

const LATENCY_BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10]

/** Sliding window of a participant service's recent prepare results (true = voted yes). */
class Window {
  private readonly results: boolean[] = []
  private next = 0
  private yes = 0
  record(ok: boolean): void {
    if (this.results.length < LIMITS.metricsPrepareWindow) {
      this.results.push(ok)
    } else {
      if (this.results[this.next] === true) this.yes--
      this.results[this.next] = ok
      this.next = (this.next + 1) % LIMITS.metricsPrepareWindow
    }
    if (ok) this.yes++
  }
  rate(): number {
    return this.results.length === 0 ? 1 : this.yes / this.results.length
  }
}

export class SidecarMetrics {
  readonly registry = new Registry()
  /** Per-request accumulators (hot path): plain numbers, turned into metric values at scrape. */
  private readonly requestCounts = new Map<string, { direction: string; route: string; status: string; n: number }>()
  private readonly durations = new Map<
    string,
    { direction: string; route: string; buckets: Float64Array; sum: number; count: number }
  >()
  private readonly retries: Counter<'direction' | 'route'>
  readonly transactions: Counter<'mode' | 'outcome'>
  readonly phase: Histogram<'phase'>
  private readonly fsyncs: Counter
  private readonly batch: Histogram
  private readonly fsyncSeconds: Histogram
  private readonly windows = new Map<string, Window>()
  /** route -> participant services seen in its transactions. */
  private readonly routeServices = new Map<string, Set<string>>()

  private readonly stepOps: Counter<'op' | 'result'>
  /** Phase-2 answers whose outcome contradicts the decision (heuristic mixed). */
  readonly heuristic: Counter<'decision' | 'branch'>
  private readonly answersRefused: Counter<'reason'>
  /** Postgres store leases (src/store): renewals, logs taken over from a sibling, writes refused by fencing. */
  readonly leaseRenewals: Counter
  readonly takeovers: Counter<'result'>
  readonly fenced: Counter
  /** Subscriptions (src/events/subscriber.ts): deliveries by result. */
  readonly deliveries: Counter<'subscription' | 'result'>

  constructor(gauges: {
    inFlight: () => number
    inDoubt: () => number
    stuck?: () => number
    /** Subscriptions: messages of each one's stream not delivered yet (asked of NATS at scrape). */
    lag?: () => Promise<readonly { readonly subscription: string; readonly lag: number | undefined }[]>
  }) {
    const registers = [this.registry]
    // prom-client's Counter.inc + Histogram.observe cost ~1 µs a request; these two are kept as
    // plain numbers on the proxy path and rendered by their own collectors at scrape time.
    this.registry.registerMetric(this.requestsMetric())
    this.registry.registerMetric(this.durationMetric())
    this.retries = new Counter({
      name: 'txmesh_proxy_retries_total',
      help: 'Upstream attempts retried, by direction and route.',
      labelNames: ['direction', 'route'],
      registers,
    })
    this.transactions = new Counter({
      name: 'txmesh_transactions_total',
      help: 'Transactions this sidecar coordinated, by mode and outcome.',
      labelNames: ['mode', 'outcome'],
      registers,
    })
    this.phase = new Histogram({
      name: 'txmesh_phase_duration_seconds',
      help: 'Duration of protocol phases at the coordinator: prepare (commit requested to decision), commit and abort (decision to every acknowledgement).',
      labelNames: ['phase'],
      buckets: LATENCY_BUCKETS,
      registers,
    })
    new Gauge({
      name: 'txmesh_transactions_in_flight',
      help: 'Transactions this sidecar coordinates that have not finished.',
      registers,
      collect() {
        this.set(gauges.inFlight())
      },
    })
    new Gauge({
      name: 'txmesh_branches_in_doubt',
      help: 'Branches this sidecar holds that voted yes and wait for the decision.',
      registers,
      collect() {
        this.set(gauges.inDoubt())
      },
    })
    this.heuristic = new Counter({
      name: 'txmesh_heuristic_outcomes_total',
      help: 'Participants that finished a branch against the coordinator\u2019s decision (an operator\u2019s resolution raced it): heuristic mixed outcomes, by decision and branch outcome.',
      labelNames: ['decision', 'branch'],
      registers,
    })
    this.stepOps = new Counter({
      name: 'txmesh_step_ops_total',
      help: 'Saga compensations and TCC confirm/cancel sends, by op and result (done, failed, stuck).',
      labelNames: ['op', 'result'],
      registers,
    })
    this.answersRefused = new Counter({
      name: 'txmesh_control_answers_refused_total',
      help: 'Control answers (votes, outcomes, acknowledgements) refused because their signature was missing or did not verify: each was taken as a failed call.',
      labelNames: ['reason'],
      registers,
    })
    new Gauge({
      name: 'txmesh_steps_stuck',
      help: 'Saga/TCC steps whose compensation, confirm or cancel failed past its retry budget and waits for an operator.',
      registers,
      collect() {
        this.set(gauges.stuck?.() ?? 0)
      },
    })
    this.fsyncs = new Counter({ name: 'txmesh_log_fsyncs_total', help: 'fsyncs of the durable log.', registers })
    this.leaseRenewals = new Counter({
      name: 'txmesh_store_lease_renewals_total',
      help: 'Lease renewals of Postgres store logs this instance holds (its own and those it took over).',
      registers,
    })
    this.takeovers = new Counter({
      name: 'txmesh_store_takeovers_total',
      help: 'Logs of sibling instances whose lease lapsed: claimed (result=claimed) and finished (result=finished).',
      labelNames: ['result'],
      registers,
    })
    new Gauge({
      name: 'txmesh_subscription_lag',
      help: "Messages of a subscription's stream its consumer has not delivered yet (asked of NATS at scrape).",
      labelNames: ['subscription'],
      registers,
      async collect() {
        for (const v of (await gauges.lag?.()) ?? [])
          if (v.lag !== undefined) this.set({ subscription: v.subscription }, v.lag)
      },
    })
    this.deliveries = new Counter({
      name: 'txmesh_subscription_deliveries_total',
      help: 'Messages delivered to the app by subscription: acked, retried (a failed delivery sent again), dead-lettered.',
      labelNames: ['subscription', 'result'],
      registers,
    })
    this.fenced = new Counter({
      name: 'txmesh_store_fenced_total',
      help: 'Logs this instance held that a sibling took over (its writes to them refused from then on).',
      registers,
    })
    this.batch = new Histogram({
      name: 'txmesh_log_fsync_batch_records',
      help: 'Records made durable by one fsync (group commit).',
      buckets: [1, 2, 4, 8, 16, 32, 64, 128, 256],
      registers,
    })
    this.fsyncSeconds = new Histogram({
      name: 'txmesh_log_fsync_duration_seconds',
      help: 'Duration of one fsync of the durable log.',
      buckets: LATENCY_BUCKETS,
      registers,
    })
    const self = this
    new Gauge({
      name: 'txmesh_route_commit_probability',
      help: 'Estimated probability that a transaction of the route commits: the product of its participants\u2019 recent prepare success rates.',
      labelNames: ['route'],
      registers,
      collect() {
        this.reset()
        for (const [route, services] of self.routeServices) this.set({ route }, self.commitProbability(services))
      },
    })
  }

  stepOp(op: string, result: 'done' | 'failed' | 'stuck'): void {
    this.stepOps.inc({ op, result })
  }

  controlAnswerRefused(reason: 'unsigned' | 'bad-signature'): void {
    this.answersRefused.inc({ reason })
  }

  request(direction: Direction, route: string, status: number, seconds: number): void {
    const dkey = direction + '\u0000' + route
    const key = dkey + '\u0000' + status
    let c = this.requestCounts.get(key)
    if (c === undefined) {
      c = { direction, route, status: String(status), n: 0 }
      this.requestCounts.set(key, c)
    }
    c.n++
    let h = this.durations.get(dkey)
    if (h === undefined) {
      h = { direction, route, buckets: new Float64Array(LATENCY_BUCKETS.length), sum: 0, count: 0 }
      this.durations.set(dkey, h)
    }
    h.sum += seconds
    h.count++
    for (let i = 0; i < LATENCY_BUCKETS.length; i++) {
      if (seconds <= (LATENCY_BUCKETS[i] as number)) {
        h.buckets[i] = (h.buckets[i] as number) + 1
        break
      }
    }
  }

  private requestsMetric(): Metric<string> {
    const self = this
    return {
      name: 'txmesh_proxy_requests_total',
      help: 'Proxied requests by direction, route and response status.',
      type: 'counter',
      aggregator: 'sum',
      get: async () => ({
        name: 'txmesh_proxy_requests_total',
        help: 'Proxied requests by direction, route and response status.',
        type: 'counter' as unknown as MetricType,
        aggregator: 'sum' as const,
        values: [...self.requestCounts.values()].map((c) => ({
          labels: { direction: c.direction, route: c.route, status: c.status },
          value: c.n,
        })),
      }),
    } as unknown as Metric<string>
  }

  private durationMetric(): Metric<string> {
    const self = this
    const name = 'txmesh_proxy_request_duration_seconds'
    const help = 'Time from request head to the end of the response, by direction and route.'
    return {
      name,
      help,
      type: 'histogram',
      aggregator: 'sum',
      get: async () => {
        const values: { metricName: string; labels: Record<string, string | number>; value: number }[] = []
        for (const h of self.durations.values()) {
          const labels = { direction: h.direction, route: h.route }
          let cumulative = 0
          LATENCY_BUCKETS.forEach((le, i) => {
            cumulative += h.buckets[i] as number
            values.push({ metricName: `${name}_bucket`, labels: { ...labels, le }, value: cumulative })
          })
          values.push({ metricName: `${name}_bucket`, labels: { ...labels, le: '+Inf' }, value: h.count })
          values.push({ metricName: `${name}_sum`, labels, value: h.sum })
          values.push({ metricName: `${name}_count`, labels, value: h.count })
        }
        return { name, help, type: 'histogram' as unknown as MetricType, aggregator: 'sum' as const, values }
      },
    } as unknown as Metric<string>
  }

  retry(direction: Direction, route: string): void {
    this.retries.labels(direction, route).inc()
  }

  logSync(records: number, seconds: number): void {
    this.fsyncs.inc()
    this.batch.observe(records)
    this.fsyncSeconds.observe(seconds)
  }

  /** A participant service answered prepare. */
  prepareResult(service: string, yes: boolean): void {
    let w = this.windows.get(service)
    if (w === undefined) {
      if (this.windows.size >= LIMITS.metricsMaxServices) return
      w = new Window()
      this.windows.set(service, w)
    }
    w.record(yes)
  }

  /** The participants of a finished transaction of `route` (what P(commit) multiplies over). */
  routeParticipants(route: string, services: readonly string[]): void {
    let set = this.routeServices.get(route)
    if (set === undefined) {
      if (this.routeServices.size >= LIMITS.metricsMaxRoutes) return
      set = new Set()
      this.routeServices.set(route, set)
    }
    for (const s of services) if (set.size < LIMITS.metricsMaxServices) set.add(s)
  }

  /** P(X) = \u220f P(X\u1d62) over the route's participant services. */
  commitProbability(services: Iterable<string>): number {
    let p = 1
    for (const s of services) p *= this.windows.get(s)?.rate() ?? 1
    return p
  }

  text(): Promise<string> {
    return this.registry.metrics()
  }
}
