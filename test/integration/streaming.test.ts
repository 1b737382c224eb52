import { request as httpRequest } from 'node:http'
import { Readable } from 'node:stream'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { rssOf, sidecarYaml, spawnSidecar, startServer, type SidecarProcess } from '../helpers/servers.js'

const SIZE = 200 * 1024 * 1024
const CHUNK = Buffer.alloc(64 * 1024, 'x')
const MB = 1024 * 1024

function generator(total: number): Readable {
  let left = total
  return new Readable({
    read() {
      if (left <= 0) return void this.push(null)
      const n = Math.min(left, CHUNK.length)
      left -= n
      this.push(n === CHUNK.length ? CHUNK : CHUNK.subarray(0, n))
    },
  })
}

describe('streaming through the sidecar with bounded memory', () => {
  let app: Awaited<ReturnType<typeof startServer>>
  let sc: SidecarProcess
  let baseline: number

  beforeAll(async () => {
    app = await startServer((req, res) => {
      if (req.url === '/download') {
        res.writeHead(200, { 'content-length': SIZE })
        generator(SIZE).pipe(res)
        return
      }
      let n = 0
      req.on('data', (c: Buffer) => (n += c.length))
      req.on('end', () => res.end(String(n)))
    })
    sc = await spawnSidecar(sidecarYaml('orders', app.port))
    // Warm the process up (JIT, pools) before the baseline is taken.
    for (let i = 0; i < 20; i++)
      await send('POST', 'http://127.0.0.1:' + app.port + '/upload', generator(64 * 1024), false)
    baseline = rssOf(sc.child.pid as number).rss
  })
  afterAll(async () => {
    sc.child.kill('SIGKILL')
    await app.close()
  })

  function send(
    method: string,
    url: string,
    body: Readable | undefined,
    chunked: boolean,
  ): Promise<{ status: number; bytes: number; text: string }> {
    return new Promise((resolve, reject) => {
      const headers: Record<string, string> = chunked ? { 'transfer-encoding': 'chunked' } : {}
      const req = httpRequest(
        { host: '127.0.0.1', port: sc.ports.egress, method, path: url, headers, agent: false },
        (res) => {
          let bytes = 0
          let text = ''
          res.on('data', (c: Buffer) => {
            bytes += c.length
            if (text.length < 64) text += c.toString()
          })
          res.on('end', () => resolve({ status: res.statusCode ?? 0, bytes, text }))
          res.on('error', reject)
        },
      )
      req.on('error', reject)
      if (body) body.pipe(req)
      else req.end()
    })
  }

  it('uploads 200 MB (chunked) with the sidecar RSS growing less than 50 MB', async () => {
    const r = await send('POST', `http://127.0.0.1:${app.port}/upload`, generator(SIZE), true)
    expect(r.status).toBe(200)
    expect(Number(r.text)).toBe(SIZE)
    const { hwm } = rssOf(sc.child.pid as number)
    console.log(`rss growth ${((hwm - baseline) / MB).toFixed(1)} MB`)
    expect((hwm - baseline) / MB).toBeLessThan(50)
  })

  it('downloads 200 MB with the sidecar RSS growing less than 50 MB', async () => {
    const r = await send('GET', `http://127.0.0.1:${app.port}/download`, undefined, false)
    expect(r.status).toBe(200)
    expect(r.bytes).toBe(SIZE)
    const { hwm } = rssOf(sc.child.pid as number)
    console.log(`rss growth ${((hwm - baseline) / MB).toFixed(1)} MB`)
    expect((hwm - baseline) / MB).toBeLessThan(50)
  })
})
