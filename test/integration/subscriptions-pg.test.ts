// Effects once in the subscriber's database: 1,000 messages delivered by a real sidecar process
// from a real NATS JetStream to a real app process that applies each through txm.inbox on a real
// Postgres. The app is SIGKILLed at random points while half of them are delivered, and its
// sidecar while the other half are: every message's effect is in the database exactly once
// (the effects table has no unique key, so a twice-applied effect would show), and none is lost.
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process'
import { join } from 'node:path'
import { createInterface } from 'node:readline'
import { jetstream, jetstreamManager } from '@nats-io/jetstream'
import { connect, type NatsConnection } from '@nats-io/transport-node'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { startNats, type NatsServer } from '../../harness/nats.js'
import { freePort, until } from '../../harness/ports.js'
import { tempDir } from '../../harness/temp.js'
import { usePgDatabase } from '../helpers/pg.js'
import { sidecarYaml, spawnSidecar, type SidecarProcess } from '../helpers/servers.js'

const APP = join(import.meta.dirname, '../fixtures/inbox-app.ts')
const MESSAGES = 1_000
const KILLS = 4
const store = usePgDatabase('inbox')
let nats: NatsServer
let nc: NatsConnection
const children: ChildProcessWithoutNullStreams[] = []
const sidecars: SidecarProcess[] = []

beforeAll(async () => {
  nats = await startNats()
  nc = await connect({ servers: nats.url })
  await (await jetstreamManager(nc)).streams.add({ name: 'INB', subjects: ['inb.>'] })
})
afterAll(async () => {
  for (const c of children) c.kill('SIGKILL')
  for (const s of sidecars) s.child.kill('SIGKILL')
  await nc.close()
  await nats.stop()
})

async function startApp(port: number): Promise<ChildProcessWithoutNullStreams> {
  const child = spawn(process.execPath, ['--import', 'tsx', APP], {
    env: {
      ...process.env,
      DATABASE_URL: store.url,
      SERVICE: 'ledger',
      SIDECAR_ADMIN: 'http://127.0.0.1:9',
      PORT: String(port),
    },
    stdio: 'pipe',
  })
  children.push(child)
  let err = ''
  child.stderr.on('data', (c: Buffer) => (err += c.toString()))
  const exited = new Promise((r) => child.once('exit', r))
  await new Promise<string>((resolve, reject) => {
    createInterface({ input: child.stdout }).once('line', resolve)
    void exited.then(() => reject(new Error(`app exited: ${err}`)))
  })
  return child
}

async function startSidecar(appPort: number): Promise<SidecarProcess> {
  const yaml = sidecarYaml(
    'ledger',
    appPort,
    [
      `events: {nats: {servers: ["${nats.url}"], stream: INB, topics: ["inb.>"]}}`,
      'subscriptions:',
      '  - {name: ledger, subjects: ["inb.>"], route: {path: /apply}, consumer: {ackWaitMs: 2000, maxDeliver: 100, backoffMs: [100, 300]}, ordering: {maxInFlight: 8}}',
    ].join('\n'),
    tempDir(),
  )
  const sc = await spawnSidecar(yaml, ['--control-port', String(await freePort())])
  sidecars.push(sc)
  return sc
}

async function publish(from: number, to: number): Promise<void> {
  const js = jetstream(nc)
  for (let n = from; n < to; n++)
    await js.publish('inb.entry', JSON.stringify({ tx: `tx${n}`, topic: 'inb.entry', payload: { n } }), {
      msgID: `tx${n}:m0`,
    })
}

const applied = async (): Promise<{ rows: number; distinct: number; inbox: number }> => {
  const [e] = await store.sql<{ rows: string; distinct: string }>(
    'SELECT count(*) AS rows, count(DISTINCT message_id) AS distinct FROM effects',
  )
  const [i] = await store.sql<{ n: string }>('SELECT count(*) AS n FROM txmesh_inbox')
  return { rows: Number(e?.rows), distinct: Number(e?.distinct), inbox: Number(i?.n) }
}

const pause = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms))

describe('a subscriber applies each message once through txm.inbox', () => {
  it('with its app, and separately its sidecar, SIGKILLed at random points during delivery of 1,000 messages', async () => {
    const appPort = await freePort()
    let app = await startApp(appPort)
    let sidecar = await startSidecar(appPort)
    let appKills = 0
    let sidecarKills = 0
    // The app killed while the first half is delivered.
    const firstHalf = publish(0, MESSAGES / 2)
    for (let k = 0; k < KILLS; k++) {
      await pause(150 + Math.floor(Math.random() * 400))
      app.kill('SIGKILL')
      appKills++
      await pause(Math.floor(Math.random() * 300))
      app = await startApp(appPort)
    }
    await firstHalf
    await until('the first half applied', async () => (await applied()).distinct >= MESSAGES / 2, 60_000)
    // Its sidecar killed while the second half is delivered.
    const secondHalf = publish(MESSAGES / 2, MESSAGES)
    for (let k = 0; k < KILLS; k++) {
      await pause(150 + Math.floor(Math.random() * 400))
      sidecar.child.kill('SIGKILL')
      await sidecar.exited
      sidecarKills++
      sidecar = await startSidecar(appPort)
    }
    await secondHalf
    await until('every message applied', async () => (await applied()).distinct === MESSAGES, 90_000)
    // Give redeliveries still due (ack waits of killed sidecars) the time to come and be skipped.
    await pause(3_000)
    expect({ ...(await applied()), appKills, sidecarKills }).toEqual({
      rows: MESSAGES,
      distinct: MESSAGES,
      inbox: MESSAGES,
      appKills: KILLS,
      sidecarKills: KILLS,
    })
    const [missing] = await store.sql<{ n: string }>(
      `SELECT count(*) AS n FROM generate_series(0, ${MESSAGES - 1}) g(n) WHERE NOT EXISTS (SELECT 1 FROM effects e WHERE e.n = g.n)`,
    )
    expect(Number(missing?.n)).toBe(0)
    // Messages delivered again after their effect committed (the kills' doing) were skipped.
    const [skipped] = await store.sql<{ n: string }>('SELECT count(*) AS n FROM skipped')
    expect(Number(skipped?.n)).toBeGreaterThan(0)
    const jsm = await jetstreamManager(nc)
    await until(
      'the consumer acknowledged everything',
      async () => {
        const info = await jsm.consumers.info('INB', 'ledger-ledger')
        return info.num_ack_pending === 0 && info.num_pending === 0
      },
      20_000,
    )
  }, 240_000)
})
