// Loopback ports and waiting for things, for everything that runs servers and child processes:
// tests, benchmarks, the torture and the demo. One freePort for all of them.
import { connect, createServer } from 'node:net'

/** Ports freePort() handed out in this process: never handed out again (see freePort). */
const handedOut = new Set<number>()

/**
 * A free loopback port below the kernel's ephemeral range (32768+ on Linux). Ports from
 * listen(0) come from that range, so after a process dies its port can be taken at once by
 * some outgoing connection; callers that restart a sidecar on the same port use these instead.
 */
export async function freePort(): Promise<number> {
  for (let i = 0; i < 100; i++) {
    const port = 15_100 + Math.floor(Math.random() * 17_000)
    // A caller often picks several ports before anything binds them (a cluster's sidecars, apps
    // and fault proxies): a port picked twice would then be taken by one and refused to the other.
    if (handedOut.has(port)) continue
    const ok = await new Promise<boolean>((resolve) => {
      const s = createServer()
      s.once('error', () => resolve(false))
      s.listen(port, '127.0.0.1', () => s.close(() => resolve(true)))
    })
    if (ok) {
      handedOut.add(port)
      return port
    }
  }
  throw new Error('no free port found below the ephemeral range')
}

/** Whether 127.0.0.1:port accepts a TCP connection now. */
export function accepts(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = connect({ host: '127.0.0.1', port })
    s.once('connect', () => {
      s.destroy()
      resolve(true)
    })
    s.once('error', () => resolve(false))
  })
}

/** Waits (bounded) until `cond` holds, polling; throws naming what it waited for. */
export async function until(
  what: string,
  cond: () => boolean | Promise<boolean>,
  ms = 10_000,
  everyMs = 25,
): Promise<void> {
  const end = Date.now() + ms
  while (Date.now() < end) {
    if (await cond()) return
    await new Promise((r) => setTimeout(r, everyMs))
  }
  throw new Error(`timed out waiting for ${what}`)
}
