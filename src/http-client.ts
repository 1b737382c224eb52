// The sidecar's HTTP client: undici's Pool and Agent and its `request`, loaded without the rest
// of undici. undici's index also loads fetch, WebSocket, EventSource, the mock agents and cache
// stores, which the sidecar never uses: importing it costs about 6 MB of heap and 2.5 MB of
// resident code per process, a tenth of an idle sidecar's RSS (issue 8's footprint budget).
//
// The paths below are undici's own files, as undici's index.js requires them; undici has no
// `exports` map, so they are reachable, but they are internals: the version is pinned exactly
// in package-lock.json and test/unit/http-client.test.ts fails if an upgrade moves them. Apps
// and tools (txmesh/pg, the CLI's tx commands) keep importing 'undici' itself.
import { createRequire } from 'node:module'
import type * as Undici from 'undici'

const require = createRequire(import.meta.url)

type DispatcherClass = { prototype: object }
const DispatcherBase = require('undici/lib/dispatcher/dispatcher.js') as DispatcherClass
// What undici's index does: Dispatcher.prototype gains request/stream/pipeline/upgrade/connect.
// Idempotent, and the same functions when something in the process loads the full index too.
Object.assign(DispatcherBase.prototype, require('undici/lib/api/index.js') as object)

export const Pool = require('undici/lib/dispatcher/pool.js') as typeof Undici.Pool
export type Pool = Undici.Pool
export const Agent = require('undici/lib/dispatcher/agent.js') as typeof Undici.Agent
export type Agent = Undici.Agent
const { getGlobalDispatcher } = require('undici/lib/global.js') as { getGlobalDispatcher: () => Undici.Dispatcher }
// The connector undici's pools build from their `connect` options (already loaded by pool.js):
// peer TLS (src/peer-tls.ts) builds its own so each new connection uses the current certificate.
export const buildConnector = require('undici/lib/core/connect.js') as typeof Undici.buildConnector
export type Connector = Undici.buildConnector.connector

export type { Dispatcher } from 'undici'
type RequestOptions = Omit<Undici.Dispatcher.RequestOptions, 'origin' | 'path' | 'method'> & {
  method?: Undici.Dispatcher.HttpMethod
  dispatcher?: Undici.Dispatcher
}

/** undici's top-level `request(url, opts)`: the URL split into origin and path, as undici does. */
export function request(url: string | URL, opts: RequestOptions = {}): Promise<Undici.Dispatcher.ResponseData> {
  const u = new URL(url)
  const { dispatcher = getGlobalDispatcher(), ...rest } = opts
  return dispatcher.request({
    ...rest,
    origin: u.origin,
    path: u.search ? `${u.pathname}${u.search}` : u.pathname,
    method: opts.method ?? (opts.body !== undefined && opts.body !== null ? 'PUT' : 'GET'),
  })
}

/** What `exchange` got back: the status and the body, or `undefined` for a body over the limit. */
export interface Exchanged {
  readonly status: number
  readonly text: string | undefined
  /** The value of the response header `ExchangeOptions.header` (the first one), if asked for and sent. */
  readonly header?: string | undefined
}

export interface ExchangeOptions {
  readonly path: string
  readonly method: Undici.Dispatcher.HttpMethod
  /** Flat [name, value, ...] list. */
  readonly headers: string[]
  readonly body?: string
  /** Time to the response head, and between body chunks. */
  readonly timeoutMs: number
  /** Body bytes read at most; past it the connection is dropped and `text` is undefined. */
  readonly limit: number
  /** A response header to hand back (lower case), e.g. a control answer's signature. */
  readonly header?: string
}

/**
 * One small request/response on `dispatcher` (a Pool or Agent; `origin` picks the pool of an
 * Agent), through undici's `dispatch` with a handler object, as the proxy forwards: no stream,
 * no promise per chunk. For the 2PC control calls and app hook calls, several per transaction.
 * Rejects on a transport failure (the error keeps undici's `code`).
 */
export function exchange(dispatcher: Undici.Dispatcher, origin: string, o: ExchangeOptions): Promise<Exchanged> {
  return new Promise((resolve, reject) => {
    dispatcher.dispatch(
      {
        origin,
        path: o.path,
        method: o.method,
        headers: o.headers,
        body: o.body ?? null,
        headersTimeout: o.timeoutMs,
        bodyTimeout: o.timeoutMs,
      },
      new ExchangeHandler(o.limit, o.header, resolve, reject),
    )
  })
}

class ExchangeHandler {
  private status = 0
  private header: string | undefined
  private readonly chunks: Buffer[] = []
  private size = 0
  private over = false
  private abort: ((err?: Error) => void) | undefined

  constructor(
    private readonly limit: number,
    private readonly wanted: string | undefined,
    private readonly resolve: (e: Exchanged) => void,
    private readonly reject: (err: Error) => void,
  ) {}

  onConnect(abort: (err?: Error) => void): void {
    this.abort = abort
  }

  onHeaders(status: number, raw: Buffer[] | null): boolean {
    this.status = status
    if (this.wanted !== undefined && raw !== null) {
      for (let i = 0; i + 1 < raw.length; i += 2) {
        if ((raw[i] as Buffer).toString('latin1').toLowerCase() === this.wanted) {
          this.header = (raw[i + 1] as Buffer).toString('latin1')
          break
        }
      }
    }
    return true
  }

  onData(chunk: Buffer): boolean {
    this.size += chunk.length
    if (this.size > this.limit) {
      this.over = true
      this.abort?.(new Error(`response body over ${this.limit} bytes`))
      return false
    }
    this.chunks.push(chunk)
    return true
  }

  onComplete(): void {
    this.resolve({
      status: this.status,
      text: Buffer.concat(this.chunks, this.size).toString('utf8'),
      header: this.header,
    })
  }

  onError(err: Error): void {
    if (this.over) this.resolve({ status: this.status, text: undefined, header: this.header })
    else this.reject(err)
  }
}
