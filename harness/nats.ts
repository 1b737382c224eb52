// A real nats-server (Debian's package; npm test installs it when missing: scripts/test-tools.mjs) with JetStream and a file store in a
// temp dir, on a fixed free port so that restart() brings it back where clients reconnect.
import { spawn, type ChildProcess } from 'node:child_process'
import { existsSync, rmSync } from 'node:fs'
import { jetstream, jetstreamManager } from '@nats-io/jetstream'
import { connect, type NatsConnection } from '@nats-io/transport-node'
import { accepts, freePort, until } from './ports.js'
import { tempDir } from './temp.js'

export interface NatsServer {
  url: string
  port: number
  /** Kills the server (SIGKILL) and removes its store dir. */
  stop(): Promise<void>
  /**
   * Kills the server (SIGKILL, a crash: nothing is flushed on purpose), runs `whileDown` if
   * given, then starts it again on the same port and store dir and waits until it is ready.
   */
  restart(whileDown?: () => Promise<void> | void): Promise<void>
}

// Debian installs it to /usr/sbin, which is not on a non-root user's PATH.
const NATS_SERVER = existsSync('/usr/sbin/nats-server') ? '/usr/sbin/nats-server' : 'nats-server'
const READY_TIMEOUT_MS = 15_000

export async function startNats(): Promise<NatsServer> {
  const port = await freePort()
  const storeDir = tempDir('txmesh-nats-')
  let child: ChildProcess | null = null
  let log = ''

  const launch = async (): Promise<void> => {
    log = ''
    const c = spawn(NATS_SERVER, ['-js', '-sd', storeDir, '-a', '127.0.0.1', '-p', String(port)], {
      stdio: ['ignore', 'pipe', 'pipe'],
    })
    child = c
    c.stdout?.on('data', (b: Buffer) => (log += b.toString()))
    c.stderr?.on('data', (b: Buffer) => (log += b.toString()))
    let failed: Error | null = null
    c.once('error', (err) => (failed = err))
    // "Server is ready" is logged after JetStream has recovered its store and the client
    // listener is open; the TCP probe confirms the port answers.
    await until(
      `nats-server on port ${port} to be ready`,
      async () => {
        if (failed !== null) throw new Error(`cannot run ${NATS_SERVER}: ${String(failed)}`)
        if (c.exitCode !== null) throw new Error(`nats-server exited with ${c.exitCode}: ${log}`)
        return log.includes('Server is ready') && (await accepts(port))
      },
      READY_TIMEOUT_MS,
      25,
    )
  }

  const kill = async (): Promise<void> => {
    const c = child
    child = null
    if (c === null || c.exitCode !== null || c.signalCode !== null) return
    const exited = new Promise<void>((r) => c.once('exit', () => r()))
    c.kill('SIGKILL')
    await exited
  }

  await launch()
  return {
    url: `nats://127.0.0.1:${port}`,
    port,
    async stop() {
      await kill()
      rmSync(storeDir, { recursive: true, force: true })
    },
    async restart(whileDown) {
      await kill()
      await whileDown?.()
      await launch()
    },
  }
}

export interface Stored {
  subject: string
  seq: number
  msgId: string | undefined
  payload: unknown
}

/**
 * Reads every message of `stream` back through an ordered JetStream consumer, on a connection
 * of its own (so a read after a server restart does not depend on another client's reconnect).
 */
export async function readStream(url: string, stream: string): Promise<Stored[]> {
  const nc = await connect({ servers: url, timeout: 5_000 })
  try {
    return await readWith(nc, stream)
  } finally {
    await nc.close()
  }
}

export async function readWith(nc: NatsConnection, stream: string): Promise<Stored[]> {
  const jsm = await jetstreamManager(nc)
  const total = (await jsm.streams.info(stream)).state.messages
  const consumer = await jetstream(nc).consumers.get(stream)
  const out: Stored[] = []
  while (out.length < total) {
    const batch = await consumer.fetch({ max_messages: total - out.length, expires: 2_000 })
    let got = 0
    for await (const m of batch) {
      out.push({ subject: m.subject, seq: m.seq, msgId: m.headers?.get('Nats-Msg-Id'), payload: m.json() })
      got++
    }
    if (got === 0) throw new Error(`stream ${stream} holds ${total} messages but only ${out.length} were read`)
  }
  return out
}

/** Deletes a stream if it exists (a stream's subjects cannot overlap another's). */
export async function deleteStream(url: string, stream: string): Promise<void> {
  const nc = await connect({ servers: url, timeout: 5_000 })
  try {
    const jsm = await jetstreamManager(nc)
    await jsm.streams.delete(stream).catch(() => false)
  } finally {
    await nc.close()
  }
}
