// A TCP proxy on loopback that injects network faults between two real processes (the bank
// torture puts one in front of each participant sidecar's ingress and control listeners).
// Modes, switchable at any time:
//   pass     bytes flow both ways untouched
//   delay    every chunk, in either direction, is held `ms` before it is written (order kept)
//   drop     connections are destroyed mid-stream: each connection forwards a random number of
//            bytes in one direction (the request or the response) and is then reset on both
//            sides; connections already open when the mode flips are cut at their next chunk
//   refuse   the listener is closed (new connects get ECONNREFUSED) and open connections are
//            reset
// The random choices of `drop` come from the `random` function the caller passes (seeded), so a
// proxy adds no unseeded randomness of its own (the byte boundaries still depend on timing).
import { Socket, createServer, type Server } from 'node:net'

export type FaultMode =
  | { readonly kind: 'pass' }
  | { readonly kind: 'delay'; readonly ms: number }
  | { readonly kind: 'drop' }
  | { readonly kind: 'refuse' }

export interface FaultProxyOptions {
  /** Loopback port to listen on (0 picks one). A fixed port keeps working across refuse/pass. */
  readonly port: number
  /** The upstream port, or a function choosing it per connection (a balancer over instances). */
  readonly targetPort: number | (() => number)
  readonly targetHost?: string
  /** Uniform in [0, 1): drives drop's direction and byte budget. */
  readonly random: () => number
}

export interface FaultProxyStats {
  connections: number
  /** Connections reset by `drop`, or by `refuse` when it began. */
  dropped: number
  /** Chunks held by `delay`. */
  delayedChunks: number
  /** Bytes received from clients (requests), whatever became of them. */
  requestBytes: number
}

export interface FaultProxy {
  readonly port: number
  readonly mode: FaultMode
  readonly stats: Readonly<FaultProxyStats>
  setMode(mode: FaultMode): Promise<void>
  close(): Promise<void>
}

const HOST = '127.0.0.1'
// drop: bytes a connection may still carry in the chosen direction before it is cut. An HTTP head
// with a txmesh context is about 0.5-1.5 KiB and a control answer a few hundred bytes, so budgets
// up to 1.5 KiB cut requests before, inside and after their head, and responses likewise.
const DROP_MAX_BYTES = 1_536
// Connections a proxy tracks at most: the sidecars pool a handful per origin; far more means a
// leak in the proxy, which must fail loudly rather than grow.
const MAX_CONNECTIONS = 4_096

interface Pair {
  readonly client: Socket
  readonly upstream: Socket
  /** drop budget: direction and bytes left; undefined while the connection is not doomed. */
  doom: { toUpstream: boolean; left: number } | undefined
  /** delay: when the last held chunk of each direction is due (keeps order per direction). */
  dueUp: number
  dueDown: number
}

export async function startFaultProxy(o: FaultProxyOptions): Promise<FaultProxy> {
  const targetHost = o.targetHost ?? HOST
  const pairs = new Set<Pair>()
  const stats: FaultProxyStats = { connections: 0, dropped: 0, delayedChunks: 0, requestBytes: 0 }
  let mode: FaultMode = { kind: 'pass' }
  let server: Server | undefined
  let port = o.port
  let closed = false

  const reset = (p: Pair): void => {
    if (!pairs.delete(p)) return
    p.client.resetAndDestroy()
    p.upstream.resetAndDestroy()
  }

  const doom = (p: Pair): void => {
    p.doom ??= { toUpstream: o.random() < 0.5, left: Math.floor(o.random() * DROP_MAX_BYTES) }
  }

  const pipe = (p: Pair, from: Socket, to: Socket, toUpstream: boolean): void => {
    from.on('data', (chunk: Buffer) => {
      if (!pairs.has(p)) return
      if (toUpstream) stats.requestBytes += chunk.length
      if (mode.kind === 'drop') doom(p)
      let data = chunk
      if (p.doom !== undefined && p.doom.toUpstream === toUpstream) {
        if (p.doom.left <= 0) {
          stats.dropped++
          return reset(p)
        }
        if (data.length > p.doom.left) data = data.subarray(0, p.doom.left)
        p.doom.left -= data.length
      }
      const cut = p.doom !== undefined && p.doom.toUpstream === toUpstream && p.doom.left <= 0
      if (mode.kind === 'delay') {
        stats.delayedChunks++
        const now = Date.now()
        const due = Math.max(now + mode.ms, toUpstream ? p.dueUp : p.dueDown)
        if (toUpstream) p.dueUp = due
        else p.dueDown = due
        // Backpressure while held: the reader pauses until the chunk is written.
        from.pause()
        setTimeout(() => {
          if (!pairs.has(p)) return
          to.write(data)
          from.resume()
          if (cut) {
            stats.dropped++
            reset(p)
          }
        }, due - now)
        return
      }
      if (!to.write(data)) {
        from.pause()
        to.once('drain', () => from.resume())
      }
      if (cut) {
        stats.dropped++
        reset(p)
      }
    })
    from.on('end', () => {
      if (pairs.has(p)) to.end()
    })
  }

  const onConnection = (client: Socket): void => {
    if (mode.kind === 'refuse' || pairs.size >= MAX_CONNECTIONS) {
      client.resetAndDestroy()
      return
    }
    stats.connections++
    const upstream = new Socket()
    const p: Pair = { client, upstream, doom: undefined, dueUp: 0, dueDown: 0 }
    pairs.add(p)
    const gone = (): void => {
      if (!pairs.delete(p)) return
      client.destroy()
      upstream.destroy()
    }
    client.on('error', gone)
    upstream.on('error', gone)
    client.on('close', gone)
    upstream.on('close', gone)
    if (mode.kind === 'drop') doom(p)
    client.setNoDelay(true)
    upstream.setNoDelay(true)
    pipe(p, client, upstream, true)
    pipe(p, upstream, client, false)
    upstream.connect(typeof o.targetPort === 'number' ? o.targetPort : o.targetPort(), targetHost)
  }

  const listen = async (): Promise<void> => {
    const s = createServer({ pauseOnConnect: false }, onConnection)
    await new Promise<void>((resolve, reject) => {
      s.once('error', reject)
      s.listen(port, HOST, () => {
        s.off('error', reject)
        resolve()
      })
    })
    const addr = s.address()
    if (typeof addr === 'object' && addr !== null) port = addr.port
    server = s
  }

  const unlisten = async (): Promise<void> => {
    const s = server
    server = undefined
    if (s !== undefined) await new Promise<void>((r) => s.close(() => r()))
  }

  await listen()

  return {
    get port() {
      return port
    },
    get mode() {
      return mode
    },
    stats,
    async setMode(next: FaultMode): Promise<void> {
      if (closed) return
      const before = mode
      mode = next
      if (next.kind === 'refuse') {
        for (const p of [...pairs]) {
          stats.dropped++
          reset(p)
        }
        await unlisten()
      } else if (before.kind === 'refuse') {
        await listen()
      }
      if (next.kind === 'drop') for (const p of pairs) doom(p)
      if (next.kind !== 'drop') {
        // Connections doomed while dropping but not cut yet carry on untouched.
        for (const p of pairs) p.doom = undefined
      }
    },
    async close(): Promise<void> {
      closed = true
      for (const p of [...pairs]) reset(p)
      await unlisten()
    },
  }
}
