// Result types of the benchmark and their plain-text rendering (an aligned table, the ratios and
// the PASS/MISS lines against the targets).
import type { LoadResult } from './load.js'

export type TargetName = 'direct' | 'txmesh' | 'http-proxy' | 'nginx'

export interface Sample {
  readonly load: LoadResult
  readonly proxyCpuUsPerReq: number | undefined
  readonly appCpuUsPerReq: number | undefined
  readonly proxyRssMb: number | undefined
  /** /proc/stat over the run: busy % of the load generator's CPUs and of the app + proxy CPUs. */
  readonly loadCpuBusyPct: number | undefined
  readonly targetCpuBusyPct: number | undefined
  /** Hypervisor steal over all CPUs, %. */
  readonly stealPct: number | undefined
}

/** One target at one concurrency; figures are medians over rounds, counts are sums. */
export interface Row {
  readonly target: TargetName
  readonly label: string
  readonly connections: number
  /** Why the target has no figures (e.g. "nginx not found"). */
  readonly note: string | undefined
  readonly rps: number | undefined
  readonly p50Us: number | undefined
  readonly p99Us: number | undefined
  /** p50 minus the direct p50 at the same concurrency. */
  readonly addedP50Us: number | undefined
  readonly proxyCpuUsPerReq: number | undefined
  readonly appCpuUsPerReq: number | undefined
  readonly proxyRssMb: number | undefined
  readonly loadCpuBusyPct: number | undefined
  readonly targetCpuBusyPct: number | undefined
  readonly stealPct: number | undefined
  readonly requests: number
  readonly non2xx: number
  readonly errors: number
  readonly samples: readonly Sample[]
}

export interface Check {
  readonly name: string
  readonly value: number | undefined
  readonly goal: string
  /** undefined: not measurable in this run, or informational. */
  readonly pass: boolean | undefined
}

export interface Report {
  readonly date: string
  readonly node: string
  readonly layout: Readonly<Record<string, string>>
  readonly loadGenerator: { readonly name: string; readonly detail: string; readonly latencyResolutionUs: number }
  readonly seconds: number
  readonly warmupSeconds: number
  readonly rounds: number
  readonly connections: readonly number[]
  readonly probes: Readonly<Record<string, string>>
  readonly rows: readonly Row[]
  readonly checks: readonly Check[]
  /** Non-empty stderr / error-log tails of the processes under test, by name. */
  readonly childOutput: Readonly<Record<string, string>>
}

const DASH = '—'

function us(v: number | undefined, signed = false): string {
  if (v === undefined) return DASH
  const sign = signed && v > 0 ? '+' : ''
  if (Math.abs(v) >= 10_000) return `${sign}${(v / 1000).toFixed(1)}ms`
  if (Math.abs(v) >= 1_000) return `${sign}${(v / 1000).toFixed(2)}ms`
  return `${sign}${Math.round(v)}µs`
}

function num(v: number | undefined, digits = 0): string {
  return v === undefined ? DASH : v.toFixed(digits)
}

type Align = 'l' | 'r'

/**
 * Aligned columns. A row shorter than the header (a note) does not count for the widths and its
 * last cell runs on unpadded.
 */
function table(header: readonly string[], align: readonly Align[], body: readonly (readonly string[])[]): string {
  const full = body.filter((r) => r.length >= header.length)
  const widths = header.map((h, i) => Math.max(h.length, ...full.map((r) => (r[i] ?? '').length)))
  const line = (cells: readonly string[]): string =>
    cells
      .map((c, i) => {
        if (cells.length < header.length && i === cells.length - 1) return c
        const w = widths[i] ?? 0
        return align[i] === 'r' ? c.padStart(w) : c.padEnd(w)
      })
      .join('  ')
      .trimEnd()
  const rule = widths.map((w) => '-'.repeat(w)).join('  ')
  return [line(header), rule, ...body.map(line)].join('\n')
}

export function printReport(r: Report): void {
  const header = [
    'target',
    'conc',
    'rps',
    'p50',
    'p99',
    'added p50',
    'proxy CPU/req',
    'app CPU/req',
    'proxy RSS',
    'non-2xx',
    'errors',
    'requests',
    'load CPU',
    'app+proxy CPU',
    'steal',
  ]
  const align: Align[] = header.map((_, i) => (i === 0 ? 'l' : 'r'))
  const pct = (v: number | undefined): string => (v === undefined ? DASH : `${Math.round(v)}%`)
  const body: string[][] = []
  let lastC: number | undefined
  for (const row of r.rows) {
    if (lastC !== undefined && row.connections !== lastC) body.push(header.map(() => ''))
    lastC = row.connections
    if (row.note !== undefined) {
      body.push([row.target, String(row.connections), `  ${row.note}`])
      continue
    }
    const proxy = row.target !== 'direct'
    body.push([
      row.target,
      String(row.connections),
      num(row.rps),
      us(row.p50Us),
      us(row.p99Us),
      proxy ? us(row.addedP50Us, true) : '',
      proxy ? (row.proxyCpuUsPerReq === undefined ? DASH : `${num(row.proxyCpuUsPerReq, 1)}µs`) : '',
      row.appCpuUsPerReq === undefined ? DASH : `${num(row.appCpuUsPerReq, 1)}µs`,
      proxy && row.proxyRssMb !== undefined ? `${num(row.proxyRssMb, 1)}MB` : '',
      String(row.non2xx),
      String(row.errors),
      String(row.requests),
      pct(row.loadCpuBusyPct),
      pct(row.targetCpuBusyPct),
      pct(row.stealPct),
    ])
  }
  const out: string[] = [table(header, align, body), '']

  const labels = new Map<string, string>()
  for (const row of r.rows) labels.set(row.target, row.label)
  out.push('targets: ' + [...labels].map(([k, v]) => `${k} = ${v}`).join('; '))
  const badProbes = Object.entries(r.probes).filter(([, v]) => v !== 'ok' && v !== 'skipped')
  for (const [k, v] of badProbes) out.push(`probe ${k}: ${v}`)
  const broken = r.rows.filter((row) => row.non2xx > 0 || row.errors > 0)
  for (const row of broken) {
    out.push(
      `WARNING: ${row.target} c=${row.connections}: ${row.non2xx} non-2xx responses, ${row.errors} socket errors`,
    )
  }
  for (const row of r.rows.filter((x) => x.stealPct !== undefined && x.stealPct > 5)) {
    out.push(
      `WARNING: ${row.target} c=${row.connections}: hypervisor steal ${Math.round(row.stealPct ?? 0)}%, figures are unreliable`,
    )
  }
  for (const [name, tail] of Object.entries(r.childOutput)) {
    const lines = tail.split('\n')
    out.push(
      `output of ${name} (${lines.length} line(s), last 5):`,
      ...lines.slice(-5).map((l) => `  ${l.slice(0, 300)}`),
    )
  }
  if (r.loadGenerator.latencyResolutionUs > 1) {
    out.push(`note: ${r.loadGenerator.name} latencies have ${r.loadGenerator.latencyResolutionUs} µs resolution`)
  }
  out.push('')

  const checkRows = r.checks.map((c) => [
    c.name,
    c.value === undefined ? 'n/a' : c.value.toFixed(2),
    c.goal,
    c.goal === 'info' ? '' : c.pass === undefined ? 'n/a' : c.pass ? 'PASS' : 'MISS',
  ])
  out.push(table(['ratio (same run)', 'value', 'target', 'result'], ['l', 'r', 'l', 'l'], checkRows))
  process.stdout.write(out.join('\n') + '\n')
}
