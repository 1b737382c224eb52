// A participant app for transaction tests: keeps the work of each branch staged in memory and
// applies it on the commit hook, drops it on abort (what the Postgres helper does with a real
// database). Can call other services through its sidecar, forwarding the context it received.
import type { IncomingMessage, ServerResponse } from 'node:http'
import { ProxyAgent, request } from 'undici'
import { afterAll, afterEach } from 'vitest'
import { startServer, type SidecarProcess } from './servers.js'

export interface TxApp {
  port: number
  /** Committed writes. */
  committed: string[]
  /** hook calls in order: "prepare:<tx>", "commit:<tx>", "abort:<tx>" */
  hooks: string[]
  /** Vote for the next prepares: 200 yes, 204 read-only, 409 no. */
  vote: number
  /** Egress of this app's sidecar, for nested calls. */
  egress: number | undefined
  /** Nested calls made after the response (`?later=<service>`) that finished: their statuses. */
  later: number[]
  /** Status answered for commit/abort hooks instead of 200 (a non-2xx commit applies nothing). */
  answer: Partial<Record<'commit' | 'abort', number>>
  /** Delay before a hook answers (an app slow to prepare, say). */
  hookDelayMs: Partial<Record<'prepare' | 'commit' | 'abort', number>>
  /** Timestamped record: "hook:<hook>:<tx>" when a hook arrives, "start:<tx>"/"end:<tx>" around business calls. */
  timeline: { what: string; at: number }[]
  close(): Promise<void>
}

export async function startTxApp(name: string): Promise<TxApp> {
  const staged = new Map<string, string[]>()
  let agent: ProxyAgent | undefined
  const app: TxApp = {
    port: 0,
    committed: [],
    hooks: [],
    vote: 200,
    egress: undefined,
    later: [],
    answer: {},
    hookDelayMs: {},
    timeline: [],
    close: async () => {
      await agent?.close()
      await s.close()
    },
  }
  const s = await startServer((req: IncomingMessage, res: ServerResponse) => {
    const url = req.url ?? '/'
    const tx = req.headers['txmesh-tx-id'] as string | undefined
    const branch = req.headers['txmesh-branch-id'] as string | undefined
    const key = `${tx}:${branch}`
    req.resume()
    req.on('end', () => {
      if (url.startsWith('/.well-known/txmesh/')) {
        const hook = url.slice('/.well-known/txmesh/'.length) as 'prepare' | 'commit' | 'abort'
        app.hooks.push(`${hook}:${tx}`)
        app.timeline.push({ what: `hook:${hook}:${tx}`, at: Date.now() })
        const answer = (): void => {
          if (hook === 'prepare') {
            if (app.vote !== 200) staged.delete(key)
            return void res.writeHead(app.vote).end()
          }
          const status = app.answer[hook] ?? 200
          if (status < 200 || status > 299) return void res.writeHead(status).end()
          if (hook === 'commit') app.committed.push(...(staged.get(key) ?? []))
          staged.delete(key)
          res.writeHead(200).end()
        }
        const delay = app.hookDelayMs[hook]
        if (delay === undefined) return answer()
        return void setTimeout(answer, delay)
      }
      if (url.startsWith('/reset')) return void req.socket.destroy()
      // Business call: /write/<value>[?then=<service>[&times=N]]
      const [path, query] = url.split('?')
      const value = decodeURIComponent((path ?? '').replace('/write/', ''))
      if (tx !== undefined) staged.set(key, [...(staged.get(key) ?? []), `${name}:${value}`])
      else app.committed.push(`${name}:${value}`)
      const params = new URLSearchParams(query ?? '')
      const hold = params.get('hold')
      if (hold !== null) {
        // A request that takes a while in the app (blocked on a lock, say): answered after `hold` ms.
        app.timeline.push({ what: `start:${tx}`, at: Date.now() })
        setTimeout(() => {
          app.timeline.push({ what: `end:${tx}`, at: Date.now() })
          res.end(JSON.stringify({ service: name, tx, branch }))
        }, Number(hold))
        return
      }
      const then = params.get('then')
      const later = params.get('later')
      const nested = (service: string) => {
        agent ??= new ProxyAgent({ uri: `http://127.0.0.1:${app.egress}`, proxyTunnel: false })
        return request(`http://${service}/write/${encodeURIComponent(value)}`, {
          dispatcher: agent,
          method: 'POST',
          // Forward the context, and the trace context as an OTel-instrumented app would.
          headers: {
            'txmesh-context': req.headers['txmesh-context'] as string,
            ...(req.headers.traceparent === undefined ? {} : { traceparent: req.headers.traceparent }),
          },
        })
      }
      if (later !== null) {
        // Answer first, call afterwards: the enlistment cannot ride on the response.
        res.end(JSON.stringify({ service: name, tx, branch }))
        void nested(later).then(
          async (r) => {
            await r.body.dump()
            app.later.push(r.statusCode)
          },
          () => app.later.push(0),
        )
        return
      }
      if (then === null || app.egress === undefined) return void res.end(JSON.stringify({ service: name, tx, branch }))
      const times = Number(params.get('times') ?? 1)
      const chain = async () => {
        for (let i = 1; i < times; i++) await (await nested(then)).body.dump()
        return nested(then)
      }
      chain().then(
        async (r) => {
          const text = await r.body.text()
          res.writeHead(r.statusCode, { 'content-type': 'application/json' }).end(text)
        },
        (err: unknown) => res.writeHead(500).end(String(err)),
      )
    })
  })
  app.port = s.port
  return app
}

/**
 * What a test file starts and must stop: its sidecar processes are SIGKILLed and its closers run
 * after each test; its apps are closed after the file. Call once at the top of the file.
 */
export function stopAfterTests(): { procs: SidecarProcess[]; apps: TxApp[]; closers: (() => Promise<void>)[] } {
  const t = { procs: [] as SidecarProcess[], apps: [] as TxApp[], closers: [] as (() => Promise<void>)[] }
  afterEach(async () => {
    for (const p of t.procs.splice(0)) if (p.child.exitCode === null) p.child.kill('SIGKILL')
    await Promise.all(t.closers.splice(0).map((c) => c()))
  })
  afterAll(async () => {
    await Promise.all(t.apps.splice(0).map((a) => a.close()))
  })
  return t
}
