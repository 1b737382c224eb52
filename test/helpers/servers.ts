// Test helpers: real servers on loopback (listen(0)) and real sidecars, in process or as child
// processes of the built CLI.
import type { ChildProcessWithoutNullStreams } from 'node:child_process'
import { readFileSync, writeFileSync } from 'node:fs'
import { createServer, request as httpRequest, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import type { AddressInfo } from 'node:net'
import { join } from 'node:path'
import { parseConfig } from '../../src/config/load.js'
import { silentLogger } from '../../src/telemetry/logger.js'
import { spawnSidecar as spawnProcess } from '../../harness/sidecar.js'
import { tempDir } from '../../harness/temp.js'
import { startSidecar, type Ports, type Sidecar } from '../../src/sidecar.js'

export async function startServer(
  handler: (req: IncomingMessage, res: ServerResponse) => void,
): Promise<{ server: Server; port: number; close: () => Promise<void> }> {
  const server = createServer(handler)
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r))
  const port = (server.address() as AddressInfo).port
  return {
    server,
    port,
    close: () =>
      new Promise<void>((r) => {
        server.closeAllConnections()
        server.close(() => r())
      }),
  }
}

export interface Seen {
  method: string
  url: string
  rawHeaders: string[]
  headers: IncomingMessage['headers']
  bodyBytes: number
  body: string
}

/** Echo app: records every request and answers with JSON describing it. */
export async function startEcho(extra?: (req: IncomingMessage, res: ServerResponse, seen: Seen) => boolean) {
  const seen: Seen[] = []
  const s = await startServer((req, res) => {
    const chunks: Buffer[] = []
    let n = 0
    req.on('data', (c: Buffer) => {
      n += c.length
      if (n <= 1 << 20) chunks.push(c)
    })
    req.on('end', () => {
      const rec: Seen = {
        method: req.method ?? '',
        url: req.url ?? '',
        rawHeaders: req.rawHeaders,
        headers: req.headers,
        bodyBytes: n,
        body: Buffer.concat(chunks).toString(),
      }
      seen.push(rec)
      if (extra?.(req, res, rec)) return
      const text = JSON.stringify(rec)
      res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) })
      res.end(text)
    })
  })
  return { ...s, seen }
}

export function sidecarYaml(service: string, appPort: number, extra = '', storeDir = tempDir('txmesh-store-')): string {
  return [
    `service: ${service}`,
    `store: {dir: ${JSON.stringify(storeDir)}}`,
    `app: {host: 127.0.0.1, port: ${appPort}}`,
    'listeners: {egress: {host: 127.0.0.1, port: 0}, ingress: {host: 127.0.0.1, port: 0}, control: {host: 127.0.0.1, port: 0}, admin: {host: 127.0.0.1, port: 0}}',
    'log: {level: silent}',
    extra,
  ].join('\n')
}

/** `yaml` (from sidecarYaml) with its file store replaced by a Postgres store: `settings` go in `store: {kind: postgres, ...}`. */
export function withPgStore(yaml: string, settings: string): string {
  return yaml
    .split('\n')
    .filter((l) => !l.startsWith('store:'))
    .concat([`store: {kind: postgres, ${settings}}`])
    .join('\n')
}

export async function inProcessSidecar(yaml: string): Promise<Sidecar> {
  return startSidecar(parseConfig(yaml, 'test.yaml'), silentLogger)
}

export interface SidecarProcess {
  child: ChildProcessWithoutNullStreams
  ports: Ports
  stderr: () => string
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>
}

export const MESH_KEY = 'test-mesh-key-0123456789abcdef'

/** Spawns `txmesh sidecar` from dist/ with a config written to a temp file (harness/sidecar.ts). */
export async function spawnSidecar(
  yaml: string,
  args: string[] = [],
  env: Record<string, string> = {},
): Promise<SidecarProcess> {
  const file = join(tempDir('txmesh-test-'), 'txmesh.yaml')
  writeFileSync(file, yaml)
  const s = await spawnProcess({
    configFile: file,
    args,
    env: { ...process.env, TXMESH_MESH_KEY: MESH_KEY, ...env },
    stdin: 'pipe',
    startTimeoutMs: 10_000,
  })
  // stdin, stdout and stderr are all pipes.
  return { child: s.child as ChildProcessWithoutNullStreams, ports: s.ports, stderr: s.stderr, exited: s.exited }
}

export interface RawResponse {
  status: number
  headers: IncomingMessage['headers']
  rawHeaders: string[]
  body: string
}

/** A plain node:http request (allows hop-by-hop headers that fetch/undici refuse to send). */
export function rawRequest(
  port: number,
  opts: { method?: string; path: string; headers?: Record<string, string | string[]>; body?: string | Buffer },
): Promise<RawResponse> {
  return new Promise((resolve, reject) => {
    const req = httpRequest(
      { host: '127.0.0.1', port, method: opts.method ?? 'GET', path: opts.path, headers: opts.headers, agent: false },
      (res) => {
        const chunks: Buffer[] = []
        res.on('data', (c: Buffer) => chunks.push(c))
        res.on('end', () =>
          resolve({
            status: res.statusCode ?? 0,
            headers: res.headers,
            rawHeaders: res.rawHeaders,
            body: Buffer.concat(chunks).toString(),
          }),
        )
        res.on('error', reject)
      },
    )
    req.on('error', reject)
    req.end(opts.body)
  })
}

export function rssOf(pid: number): { rss: number; hwm: number } {
  const text = readFileSync(`/proc/${pid}/status`, 'utf8')
  const kb = (k: string): number => Number(new RegExp(`${k}:\\s+(\\d+)`).exec(text)?.[1] ?? 0) * 1024
  return { rss: kb('VmRSS'), hwm: kb('VmHWM') }
}
