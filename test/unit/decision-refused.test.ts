// A decision record the log refuses before writing anything (here: over a small record limit)
// fails that commit alone, with a coded error, and the transaction aborts: the process carries
// on (vitest fails a test that calls process.exit) and the next commit is written. A real
// FileLog on disk; the transactions have no participants, so no control call is made.
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterEach, describe, expect, it } from 'vitest'
import { localIo } from '../../src/tx/io.js'
import { TxmeshError } from '../../src/errors.js'
import { silentLogger } from '../../src/telemetry/logger.js'
import { FileLog } from '../../src/wal/file-log.js'
import type { ControlClient } from '../../src/control/client.js'
import { CoordinatorDriver } from '../../src/tx/coordinator/driver.js'
import { staticKeys } from '../../src/tx/keys.js'
import { SagaDriver } from '../../src/tx/saga/driver.js'

const dirs: string[] = []
const logs: FileLog[] = []
afterEach(async () => {
  for (const l of logs.splice(0)) await l.close().catch(() => undefined)
  for (const d of dirs.splice(0)) await rm(d, { recursive: true, force: true })
})

async function smallLog(): Promise<FileLog> {
  const dir = await mkdtemp(join(tmpdir(), 'txmesh-refused-'))
  dirs.push(dir)
  const { log } = await FileLog.open(dir, { logger: silentLogger, maxRecordBytes: 2_048 })
  logs.push(log)
  return log
}

const keys = staticKeys([Buffer.alloc(32, 7)])
const noControl = {} as ControlClient
const big = { topic: 'orders.big', payload: 'x'.repeat(4_000) }
const small = { topic: 'orders.small', payload: { id: 1 } }

describe('a decision record refused before it is written', () => {
  it('2pc: fails that commit with TXM_LOG_RECORD_TOO_LARGE, aborts the transaction, and commits the next one', async () => {
    const log = await smallLog()
    const c = new CoordinatorDriver({
      io: localIo({ log, control: noControl }),
      self: '127.0.0.1:1',
      incarnation: 'inc0000001',
      run: '',
      keys,
      logger: silentLogger,
    })
    const tx = c.begin('2pc', 30_000)
    if (tx instanceof TxmeshError) throw tx
    expect(c.attach(tx.id, big)).toBe(1)
    const r = await c.commit(tx.id)
    expect(r).toBeInstanceOf(TxmeshError)
    expect((r as TxmeshError).code).toBe('TXM_LOG_RECORD_TOO_LARGE')
    expect(c.view(tx.id)).toMatchObject({ status: 'aborted' })
    expect(c.view(tx.id)?.reason).toMatch(/decision record could not be logged/)
    expect(c.outcomeFor(tx.id)).toBe('aborted')
    expect(log.stats().appends).toBe(0)

    const next = c.begin('2pc', 30_000)
    if (next instanceof TxmeshError) throw next
    expect(c.attach(next.id, small)).toBe(1)
    expect(await c.commit(next.id)).toMatchObject({ outcome: 'committed' })
    expect(log.stats().appends).toBe(1)
    c.close()
  })

  it('saga: fails that commit with TXM_LOG_RECORD_TOO_LARGE, aborts the transaction, and commits the next one', async () => {
    const log = await smallLog()
    const s = new SagaDriver({
      io: localIo({ log, control: noControl }),
      self: '127.0.0.1:1',
      incarnation: 'inc0000001',
      run: '',
      keys,
      logger: silentLogger,
      policy: { attempts: 1, backoffBaseMs: 1, backoffCapMs: 1 },
      targets: { origins: new Set(), controls: [] },
    })
    const tx = s.begin('saga', 30_000)
    if (tx instanceof TxmeshError) throw tx
    expect(s.attach(tx.id, big)).toBe(1)
    const r = await s.commit(tx.id)
    expect((r as TxmeshError).code).toBe('TXM_LOG_RECORD_TOO_LARGE')
    expect(s.view(tx.id)).toMatchObject({ status: 'aborted' })
    expect(s.outcomeFor(tx.id)).toBe('aborted')

    const next = s.begin('saga', 30_000)
    if (next instanceof TxmeshError) throw next
    expect(s.attach(next.id, small)).toBe(1)
    expect(await s.commit(next.id)).toMatchObject({ outcome: 'committed' })
    await s.close()
  })
})
