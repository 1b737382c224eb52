// `txmesh tx list | show ID | resolve ID --commit|--abort | retry ID` against a sidecar's admin port.
// Tables for people, --json for scripts. Exit 0 on success, 1 when the sidecar refused. The admin
// token, when the sidecar has one: --token-file FILE, --token TOKEN or TXMESH_ADMIN_TOKEN (a
// file keeps it out of the process list and shell history).
import { readFileSync } from 'node:fs'
import { parseArgs } from 'node:util'
import { request } from 'undici'
import { LIMITS } from '../limits.js'
import { UsageError } from './usage.js'

export interface Answer {
  status: number
  body: Record<string, unknown>
}

export async function callAdmin(
  base: string,
  method: 'GET' | 'POST',
  path: string,
  body?: unknown,
  token?: string,
): Promise<Answer> {
  const res = await request(`${base}${path}`, {
    method,
    headers: {
      'content-type': 'application/json',
      ...(token === undefined ? {} : { authorization: `Bearer ${token}` }),
    },
    ...(body === undefined ? {} : { body: JSON.stringify(body) }),
    headersTimeout: LIMITS.cliRequestTimeoutMs,
    bodyTimeout: LIMITS.cliRequestTimeoutMs,
  })
  const text = await res.body.text()
  return { status: res.statusCode, body: text === '' ? {} : (JSON.parse(text) as Record<string, unknown>) }
}

/** Aligned columns: the header row, then one row per item. */
export function table(headers: string[], rows: string[][]): string {
  const widths = headers.map((h, i) => Math.max(h.length, ...rows.map((r) => String(r[i] ?? '').length)))
  const line = (cells: string[]): string =>
    cells
      .map((c, i) => String(c).padEnd(widths[i] ?? 0))
      .join('  ')
      .trimEnd()
  return [line(headers), ...rows.map(line)].join('\n') + '\n'
}

function age(ms: unknown): string {
  const n = typeof ms === 'number' ? ms : 0
  return n < 1000 ? `${n}ms` : n < 120_000 ? `${Math.round(n / 1000)}s` : `${Math.round(n / 60_000)}m`
}

export function printJson(text: string): number {
  process.stdout.write(text + '\n')
  return 0
}

export function fail(a: Answer): number {
  const e = a.body.error as { code?: string; message?: string } | undefined
  process.stderr.write(`txmesh: ${e?.code ?? `HTTP ${a.status}`}: ${e?.message ?? 'request failed'}\n`)
  return 1
}

type Step = { id: string; service: string; target: string; status: string; attempts: number; lastError?: string }
/** 2PC transactions list participants; saga/tcc ones list steps (and how many are stuck). */
type Tx = {
  id: string
  status: string
  mode: string
  deadline: string
  participants?: { service: string; branch: string; vote?: string; acknowledged: boolean; heuristic?: string }[]
  steps?: Step[]
  stuck?: number
  /** Postgres store: the instance coordinating it, and the sibling's log it was taken over from. */
  owner?: string
  takenFrom?: string
}
type Br = { tx: string; branch: string; status: string; coordinator: string; ageMs: number; inDoubt: boolean }

/** --token-file > --token > TXMESH_ADMIN_TOKEN; an empty value counts as unset. */
export function adminToken(flag: string | undefined, file: string | undefined): string | undefined {
  if (file !== undefined) {
    let text: string
    try {
      text = readFileSync(file, 'utf8').trim()
    } catch (err) {
      throw new UsageError(`--token-file ${file}: cannot read: ${(err as NodeJS.ErrnoException).code ?? 'error'}`)
    }
    if (text === '') throw new UsageError(`--token-file ${file} is empty`)
    return text
  }
  const v = flag ?? process.env.TXMESH_ADMIN_TOKEN
  return v === undefined || v === '' ? undefined : v
}

export async function txCommand(argv: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    options: {
      admin: { type: 'string' },
      json: { type: 'boolean', default: false },
      commit: { type: 'boolean', default: false },
      abort: { type: 'boolean', default: false },
      by: { type: 'string' },
      force: { type: 'boolean', default: false },
      token: { type: 'string' },
      'token-file': { type: 'string' },
    },
    strict: true,
  })
  const base = (values.admin ?? process.env.TXMESH_ADMIN ?? 'http://127.0.0.1:15000').replace(/\/$/, '')
  const [sub, id] = positionals
  const token = adminToken(values.token, values['token-file'])
  const call = (b: string, method: 'GET' | 'POST', path: string, body?: unknown): Promise<Answer> =>
    callAdmin(b, method, path, body, token)
  const out = (s: string): boolean => process.stdout.write(s)
  switch (sub) {
    case 'list': {
      const t = await call(base, 'GET', '/v1/transactions')
      if (t.status !== 200) return fail(t)
      const b = await call(base, 'GET', '/v1/branches')
      if (b.status !== 200) return fail(b)
      const txs = t.body.transactions as Tx[]
      const branches = b.body.branches as Br[]
      if (values.json) return printJson(JSON.stringify({ transactions: txs, branches }))
      const mixed = txs.filter((x) => x.status === 'heuristic-mixed').length
      out(
        `transactions coordinated here (${txs.length}${mixed > 0 ? `, ${mixed} HEURISTIC-MIXED: a branch finished against the decision` : ''})\n`,
      )
      const members = (x: Tx): string =>
        x.steps === undefined
          ? String(x.participants?.length ?? 0)
          : `${x.steps.length} steps${x.stuck ? `, ${x.stuck} stuck` : ''}`
      const status = (x: Tx): string =>
        x.status === 'heuristic-mixed'
          ? `heuristic-mixed! (${(x.participants ?? [])
              .filter((p) => p.heuristic !== undefined)
              .map((p) => `${p.service} ${p.heuristic}`)
              .join(', ')})`
          : x.status
      out(
        txs.some((x) => x.owner !== undefined)
          ? table(
              ['ID', 'STATUS', 'MODE', 'PARTICIPANTS', 'DEADLINE', 'OWNER'],
              txs.map((x) => [
                x.id,
                status(x),
                x.mode,
                members(x),
                x.deadline,
                `${x.owner ?? '-'}${x.takenFrom === undefined ? '' : ` (taken over from ${x.takenFrom})`}`,
              ]),
            )
          : table(
              ['ID', 'STATUS', 'MODE', 'PARTICIPANTS', 'DEADLINE'],
              txs.map((x) => [x.id, status(x), x.mode, members(x), x.deadline]),
            ),
      )
      out(`\nbranches held here (${branches.length}, ${branches.filter((x) => x.inDoubt).length} in doubt)\n`)
      out(
        table(
          ['TX', 'BRANCH', 'STATUS', 'AGE', 'IN-DOUBT', 'COORDINATOR'],
          branches.map((x) => [x.tx, x.branch, x.status, age(x.ageMs), x.inDoubt ? 'yes' : 'no', x.coordinator]),
        ),
      )
      return 0
    }
    case 'show': {
      if (id === undefined) throw new UsageError('tx show needs a transaction id')
      const t = await call(base, 'GET', `/v1/transactions/${encodeURIComponent(id)}`)
      if (t.status === 200) {
        const x = t.body as unknown as Tx
        if (values.json) return printJson(JSON.stringify(x))
        out(`transaction ${x.id}\nstatus    ${x.status}\nmode      ${x.mode}\ndeadline  ${x.deadline}\n\n`)
        if (x.steps !== undefined) {
          out(
            table(
              ['STEP', 'SERVICE', 'STATUS', 'ATTEMPTS', 'LAST ERROR'],
              x.steps.map((p) => [p.id, p.service, p.status, String(p.attempts), p.lastError ?? '-']),
            ),
          )
          if ((x.stuck ?? 0) > 0) out(`\n${String(x.stuck)} stuck: fix the cause, then run: txmesh tx retry ${x.id}\n`)
          return 0
        }
        out(
          table(
            ['SERVICE', 'BRANCH', 'VOTE', 'ACKNOWLEDGED', 'HEURISTIC'],
            (x.participants ?? []).map((p) => [
              p.service,
              p.branch,
              p.vote ?? '-',
              p.acknowledged ? 'yes' : 'no',
              p.heuristic ?? '-',
            ]),
          ),
        )
        return 0
      }
      // Not coordinated here: maybe a branch held here.
      const b = await call(base, 'GET', '/v1/branches')
      const mine = b.status === 200 ? (b.body.branches as Br[]).find((x) => x.tx === id) : undefined
      if (mine === undefined) return fail(t)
      if (values.json) return printJson(JSON.stringify(mine))
      out(
        `branch ${mine.branch} of transaction ${mine.tx}\nstatus       ${mine.status}\nage          ${age(mine.ageMs)}\nin doubt     ${mine.inDoubt ? 'yes' : 'no'}\ncoordinator  ${mine.coordinator}\n`,
      )
      return 0
    }
    case 'resolve': {
      if (id === undefined) throw new UsageError('tx resolve needs a transaction id')
      if (values.commit === values.abort)
        throw new UsageError(
          'tx resolve needs exactly one of --commit or --abort (and --force for a branch not in doubt)',
        )
      const outcome = values.commit ? 'committed' : 'aborted'
      const r = await call(base, 'POST', `/v1/branches/${encodeURIComponent(id)}/resolve`, {
        outcome,
        by: values.by ?? process.env.USER ?? 'operator',
        ...(values.force ? { force: true } : {}),
      })
      if (r.status !== 200) return fail(r)
      if (values.json) return printJson(JSON.stringify(r.body))
      const forced = r.body.forced === true ? ', forced: a heuristic decision, the branch was not in doubt' : ''
      out(`resolved branch ${String(r.body.branch)} of transaction ${id}: ${outcome} (audited in the log${forced})\n`)
      return 0
    }
    case 'retry': {
      if (id === undefined) throw new UsageError('tx retry needs a transaction id')
      const r = await call(base, 'POST', `/v1/transactions/${encodeURIComponent(id)}/retry`)
      if (r.status !== 200) return fail(r)
      if (values.json) return printJson(JSON.stringify(r.body))
      out(`retrying ${String(r.body.retried)} stuck step(s) of transaction ${id}\n`)
      return 0
    }
    default:
      throw new UsageError('tx takes list, show ID, resolve ID --commit|--abort or retry ID')
  }
}
