// Transactional messages are bounded as the decision record stores them, not as the request
// carried them: a real sidecar process on a real NATS JetStream. JSON numbers such as 1e20 are
// 4 bytes in a request and 21 once re-serialized (100000000000000000000), so messages that fit
// every bound by request bytes used to make a decision record over the log's 1 MiB record limit,
// and the coordinator exited (70) at commit although nothing had been written.
import { request } from 'undici'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { readStream, startNats, type NatsServer } from '../../harness/nats.js'
import { freePort, until } from '../../harness/ports.js'
import { tempDir } from '../../harness/temp.js'
import { sidecarYaml, spawnSidecar } from '../helpers/servers.js'
import { stopAfterTests } from '../helpers/tx-app.js'

const { procs } = stopAfterTests()
let nats: NatsServer

beforeAll(async () => {
  nats = await startNats()
})
afterAll(async () => {
  await nats.stop()
})

async function post(
  port: number,
  path: string,
  body?: string,
): Promise<{ status: number; code: string | undefined; body: Record<string, unknown> }> {
  const r = await request(`http://127.0.0.1:${port}${path}`, {
    method: 'POST',
    ...(body === undefined ? {} : { headers: { 'content-type': 'application/json' }, body }),
  })
  return {
    status: r.statusCode,
    code: r.headers['x-txmesh-error'] as string | undefined,
    body: (await r.body.json()) as Record<string, unknown>,
  }
}

/** A message request of about `requestBytes` bytes whose payload is a list of 1e20s. */
function numbersMessage(requestBytes: number): string {
  const n = Math.floor((requestBytes - 40) / 5)
  return `{"topic":"orders.big","payload":[${Array.from({ length: n }, () => '1e20').join(',')}]}`
}

describe('transactional messages bounded as the decision record stores them', () => {
  it('refuses with 413 TXM_MESSAGE_TOO_LARGE the messages that would not fit the decision record, and the sidecar keeps serving', async () => {
    const sc = await spawnSidecar(
      sidecarYaml(
        'shop',
        1,
        `events: {nats: {servers: ["${nats.url}"], stream: SIZES, topics: ["orders.>"]}}`,
        tempDir(),
      ),
      ['--control-port', String(await freePort())],
    )
    procs.push(sc)
    const begin = async (): Promise<string> => {
      const r = await post(sc.ports.admin, '/v1/transactions', JSON.stringify({ mode: '2pc', timeoutMs: 30_000 }))
      expect(r.status).toBe(201)
      return r.body.id as string
    }

    const id = await begin()
    // One message of 60 KiB by request bytes (under the 64 KiB per message) that is ~4.4 times
    // larger stored.
    const one = await post(sc.ports.admin, `/v1/transactions/${id}/messages`, numbersMessage(60 * 1024))
    // 24 messages of 12 KiB each: 288 KiB of requests (under the 512 KiB per transaction), but
    // ~1.2 MiB stored, over the log's record limit.
    const many: { status: number; code: string | undefined }[] = []
    for (let i = 0; i < 24; i++)
      many.push(await post(sc.ports.admin, `/v1/transactions/${id}/messages`, numbersMessage(12 * 1024)))
    // The commit answers (it used to kill the process) and the process lives on.
    const commit = await post(sc.ports.admin, `/v1/transactions/${id}/commit`).catch(async (err: unknown) => {
      throw new Error(
        `the commit got no answer (${String(err)}); the sidecar exited with ${JSON.stringify(await sc.exited)}`,
      )
    })
    expect(commit.status).toBe(200)
    expect(commit.body.outcome).toBe('committed')
    expect(sc.child.exitCode).toBeNull()

    expect(one).toMatchObject({ status: 413, code: 'TXM_MESSAGE_TOO_LARGE' })
    const accepted = many.filter((r) => r.status === 201).length
    // As many as fit the 512 KiB stored (each ~53 KiB), then every further one is refused.
    expect(accepted).toBeGreaterThanOrEqual(8)
    expect(accepted).toBeLessThan(24)
    expect(many.slice(0, accepted).every((r) => r.status === 201)).toBe(true)
    expect(many.slice(accepted).every((r) => r.status === 413 && r.code === 'TXM_MESSAGE_TOO_LARGE')).toBe(true)

    // The next transaction is served as usual, and the accepted messages reach the bus.
    const next = await begin()
    expect(
      (
        await post(
          sc.ports.admin,
          `/v1/transactions/${next}/messages`,
          JSON.stringify({ topic: 'orders.small', payload: { id: 1 } }),
        )
      ).status,
    ).toBe(201)
    expect((await post(sc.ports.admin, `/v1/transactions/${next}/commit`)).body.outcome).toBe('committed')
    await until(
      'the accepted messages on the bus',
      async () =>
        (await readStream(nats.url, 'SIZES').catch(() => [])).filter((s) => s.subject === 'orders.big').length ===
        accepted,
    )
    expect(sc.child.exitCode).toBeNull()
  })
})
