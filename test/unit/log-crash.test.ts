// A real child process appends in a loop and is killed with SIGKILL (STYLE.md: processes that must
// crash are real child processes). Every append whose promise resolved before the kill must be
// replayed, across several crash/reopen rounds on the same directory, with small segments so the
// kills land during rollovers and compactions too.

import { spawn } from 'node:child_process'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { pathToFileURL } from 'node:url'
import { afterAll, describe, expect, it } from 'vitest'
import { FileLog } from '../../src/wal/file-log.js'

const root = join(import.meta.dirname, '../..')
const moduleUrl = pathToFileURL(join(root, 'src/wal/file-log.ts')).href

// Runs in the child (plain ESM; tsx loads the TypeScript module). 16 concurrent writers; after
// each resolved append it prints "acked N"; nine transactions in ten are then ended (lazily).
const CHILD = `
import { FileLog } from ${JSON.stringify(moduleUrl)}
const { log, records } = await FileLog.open(process.env.LOG_DIR, { segmentBytes: 32 * 1024 })
process.stdout.write('open ' + records.length + '\\n')
let n = Number(process.env.START)
async function writer() {
  for (;;) {
    const i = n++
    await log.append('tx-' + i, { n: i, pad: 'x'.repeat(i % 64) })
    process.stdout.write('acked ' + i + '\\n')
    if (i % 10 !== 0) log.end('tx-' + i)
  }
}
for (let w = 0; w < 16; w++) writer().catch((err) => { console.error(err); process.exit(2) })
`

interface ChildRun {
  acked: number[]
  opened: number
}

// Starts the child, SIGKILLs it once it has printed `killAfter` acks, and returns what it printed.
function runAndKill(dir: string, start: number, killAfter: number): Promise<ChildRun> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', CHILD], {
      cwd: root,
      env: { ...process.env, LOG_DIR: dir, START: String(start) },
      stdio: ['ignore', 'pipe', 'pipe'],
    })
    const acked: number[] = []
    let opened = -1
    let partial = ''
    let stderr = ''
    let killed = false
    const timer = setTimeout(() => {
      child.kill('SIGKILL')
      reject(new Error(`child did not reach ${killAfter} acks in time (${acked.length}); stderr: ${stderr}`))
    }, 45_000)
    child.stderr.on('data', (d: Buffer) => {
      stderr += d.toString()
    })
    child.stdout.on('data', (d: Buffer) => {
      const lines = (partial + d.toString()).split('\n')
      partial = lines.pop() ?? ''
      for (const line of lines) {
        const [word, num] = line.split(' ')
        if (word === 'acked') acked.push(Number(num))
        else if (word === 'open') opened = Number(num)
      }
      if (!killed && acked.length >= killAfter) {
        killed = true
        child.kill('SIGKILL')
      }
    })
    child.on('error', reject)
    // 'close' fires after stdout is drained: every line the child wrote before the kill is in.
    child.on('close', (code, signal) => {
      clearTimeout(timer)
      if (signal !== 'SIGKILL') reject(new Error(`child exited with ${code ?? signal}; stderr: ${stderr}`))
      else resolve({ acked, opened })
    })
  })
}

describe('FileLog crash safety', () => {
  const dirs: string[] = []
  afterAll(async () => {
    for (const d of dirs) await rm(d, { recursive: true, force: true })
  })

  it('replays every acknowledged append after SIGKILL, across crash/reopen rounds', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'txmesh-log-crash-'))
    dirs.push(dir)
    // Acknowledged and never ended: must be replayed in every later round.
    const mustSurvive = new Set<string>()
    const killPoints = [700, 2_500, 150, 4_000]
    for (const [round, killAfter] of killPoints.entries()) {
      const start = round * 1_000_000
      const run = await runAndKill(dir, start, killAfter)
      expect(run.opened).toBeGreaterThanOrEqual(mustSurvive.size)
      expect(run.acked.length).toBeGreaterThanOrEqual(killAfter)
      for (const i of run.acked) if (i % 10 === 0) mustSurvive.add(`tx-${i}`)

      const { log, records } = await FileLog.open(dir, { segmentBytes: 32 * 1024 })
      const byTx = new Map(records.map((r) => [r.txId, r.body]))
      const missing = [...mustSurvive].filter((t) => !byTx.has(t))
      expect(missing, `round ${round}: acknowledged appends lost`).toEqual([])
      // Nothing replayed that was never appended, and every body is intact.
      for (const r of records) {
        const n = Number(r.txId.slice(3))
        expect(r.body).toEqual({ n, pad: 'x'.repeat(n % 64) })
        expect(Math.floor(n / 1_000_000)).toBeLessThanOrEqual(round) // an id some round handed out
      }
      // Records come back in append order: ids grow within a round, rounds follow each other.
      const order = records.map((r) => Number(r.txId.slice(3)))
      expect(order).toEqual([...order].sort((a, b) => a - b))
      console.log(
        `round ${round}: killed after ${run.acked.length} acks; replayed ${records.length} live (${mustSurvive.size} required), truncated ${log.stats().truncatedBytes} bytes, ${log.stats().segments} segments`,
      )
      await log.close()
    }
  })
})
