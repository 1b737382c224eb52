// A man in the middle on plain HTTP between two real processes: an HTTP proxy on loopback that
// forwards each request as it came (method, path, headers, body) to one target port and may
// rewrite the answer's body before passing it back (headers kept, content-length fixed), or cut
// the request (the connection is destroyed). What an attacker on the path of unencrypted control
// traffic can do; the sidecar that advertises the proxy's port is reached only through it.
import { request as httpRequest, type IncomingMessage, type ServerResponse } from 'node:http'
import { startServer } from './servers.js'

export interface MitmRequest {
  readonly method: string
  readonly path: string
  readonly body: string
}

export interface HttpMitmOptions {
  readonly targetPort: number
  /** The body to hand back instead of `body`, or undefined to pass the answer untouched. */
  rewrite?: (req: MitmRequest, status: number, body: string) => string | undefined
  /** True: the request is not forwarded and its connection is destroyed. */
  cut?: (req: MitmRequest) => boolean
}

export interface HttpMitm {
  readonly port: number
  /** Answers whose body was rewritten, and requests cut. */
  readonly stats: { rewritten: number; cut: number; forwarded: number }
  options: HttpMitmOptions
  close(): Promise<void>
}

export async function startHttpMitm(options: HttpMitmOptions): Promise<HttpMitm> {
  const stats = { rewritten: 0, cut: 0, forwarded: 0 }
  const mitm = { options }
  const s = await startServer((req: IncomingMessage, res: ServerResponse) => {
    const chunks: Buffer[] = []
    req.on('data', (c: Buffer) => chunks.push(c))
    req.on('end', () => {
      const body = Buffer.concat(chunks)
      const seen: MitmRequest = { method: req.method ?? 'GET', path: req.url ?? '/', body: body.toString() }
      if (mitm.options.cut?.(seen) === true) {
        stats.cut++
        return void req.socket.destroy()
      }
      const up = httpRequest(
        {
          host: '127.0.0.1',
          port: mitm.options.targetPort,
          method: seen.method,
          path: seen.path,
          headers: req.headers,
          agent: false,
        },
        (answer) => {
          const got: Buffer[] = []
          answer.on('data', (c: Buffer) => got.push(c))
          answer.on('end', () => {
            stats.forwarded++
            const text = Buffer.concat(got).toString()
            const replaced = mitm.options.rewrite?.(seen, answer.statusCode ?? 0, text)
            if (replaced !== undefined && replaced !== text) stats.rewritten++
            const out = replaced ?? text
            const headers = { ...answer.headers, 'content-length': String(Buffer.byteLength(out)) }
            delete headers['transfer-encoding']
            res.writeHead(answer.statusCode ?? 502, headers).end(out)
          })
          answer.on('error', () => res.socket?.destroy())
        },
      )
      up.on('error', () => res.socket?.destroy())
      up.end(body)
    })
  })
  return {
    port: s.port,
    stats,
    get options() {
      return mitm.options
    },
    set options(o: HttpMitmOptions) {
      mitm.options = o
    },
    close: () => s.close(),
  }
}
