// Summarizes V8 CPU profiles (node --cpu-prof; BENCH_TX_CPU_PROFILE=DIR of the tx benchmark):
// self time per function and per source file, heaviest first, and total time per top-level
// caller chain entry ("inclusive" time of txmesh's own functions).
//
//   npx tsx bench/cpuprofile-top.ts FILE.cpuprofile [more files] [--top N]
import { readFileSync } from 'node:fs'
import { basename } from 'node:path'
import { parseArgs } from 'node:util'

interface CallFrame {
  functionName: string
  url: string
  lineNumber: number
}
interface ProfileNode {
  id: number
  callFrame: CallFrame
  children?: number[]
}
interface Profile {
  nodes: ProfileNode[]
  startTime: number
  endTime: number
  samples: number[]
  timeDeltas: number[]
}

function isProfile(v: unknown): v is Profile {
  const o = v as Record<string, unknown> | null
  return (
    typeof o === 'object' &&
    o !== null &&
    Array.isArray(o.nodes) &&
    Array.isArray(o.samples) &&
    Array.isArray(o.timeDeltas)
  )
}

function where(f: CallFrame): string {
  const file =
    f.url === '' ? '' : f.url.replace(/^file:\/\//, '').replace(/^.*\/(node_modules\/|src\/|dist\/|bench\/)/, '$1')
  return file === '' ? '' : `${file}:${f.lineNumber + 1}`
}

function label(f: CallFrame): string {
  const name = f.functionName === '' ? '(anonymous)' : f.functionName
  const w = where(f)
  return w === '' ? name : `${name} ${w}`
}

function top(map: Map<string, number>, n: number, totalUs: number): string[] {
  return [...map]
    .sort((a, b) => b[1] - a[1])
    .slice(0, n)
    .map(
      ([k, us]) => `${(us / 1000).toFixed(0).padStart(8)} ms ${((100 * us) / totalUs).toFixed(1).padStart(5)}%  ${k}`,
    )
}

function summarize(file: string, n: number): void {
  const p: unknown = JSON.parse(readFileSync(file, 'utf8'))
  if (!isProfile(p)) throw new Error(`${file} is not a V8 CPU profile`)
  const byId = new Map<number, ProfileNode>(p.nodes.map((x) => [x.id, x]))
  const parent = new Map<number, number>()
  for (const x of p.nodes) for (const c of x.children ?? []) parent.set(c, x.id)
  const selfUs = new Map<number, number>()
  for (let i = 0; i < p.samples.length; i++) {
    const id = p.samples[i] as number
    selfUs.set(id, (selfUs.get(id) ?? 0) + (p.timeDeltas[i] ?? 0))
  }
  let total = 0
  let idle = 0
  const byFn = new Map<string, number>()
  const byFile = new Map<string, number>()
  const inclusive = new Map<string, number>()
  for (const [id, us] of selfUs) {
    const node = byId.get(id)
    if (node === undefined) continue
    const f = node.callFrame
    total += us
    if (f.functionName === '(idle)') {
      idle += us
      continue
    }
    byFn.set(label(f), (byFn.get(label(f)) ?? 0) + us)
    const w = where(f).replace(/:\d+$/, '') || `(${f.functionName})`
    byFile.set(w, (byFile.get(w) ?? 0) + us)
    // Inclusive time of every function on the stack (counted once per sample and function).
    const seen = new Set<string>()
    for (let cur: number | undefined = id; cur !== undefined; cur = parent.get(cur)) {
      const cf = byId.get(cur)?.callFrame
      if (cf === undefined) break
      const l = label(cf)
      if (seen.has(l)) continue
      seen.add(l)
      inclusive.set(l, (inclusive.get(l) ?? 0) + us)
    }
  }
  const busy = total - idle
  process.stdout.write(
    `\n== ${basename(file)}: ${(busy / 1000).toFixed(0)} ms busy of ${(total / 1000).toFixed(0)} ms sampled\n`,
  )
  process.stdout.write('-- self time by function\n' + top(byFn, n, busy).join('\n') + '\n')
  process.stdout.write('-- self time by file\n' + top(byFile, n, busy).join('\n') + '\n')
  const own = new Map([...inclusive].filter(([k]) => / (src|dist)\//.test(k)))
  process.stdout.write('-- inclusive time, txmesh functions\n' + top(own, n, busy).join('\n') + '\n')
}

const { values, positionals } = parseArgs({
  options: { top: { type: 'string', default: '25' } },
  allowPositionals: true,
  strict: true,
})
const n = Number(values.top)
if (positionals.length === 0) {
  process.stderr.write('usage: npx tsx bench/cpuprofile-top.ts FILE.cpuprofile [...] [--top N]\n')
  process.exitCode = 2
} else {
  for (const f of positionals) summarize(f, n)
}
