// A sidecar started without a mesh key proxies, but every transaction call is refused with
// TXM_MESH_KEY_MISSING: it says so once at start, on stderr, with how to set a key.
import { request } from 'undici'
import { afterEach, describe, expect, it } from 'vitest'
import { sidecarYaml, spawnSidecar, startEcho, type SidecarProcess } from '../helpers/servers.js'

const running: SidecarProcess[] = []
afterEach(() => {
  for (const p of running.splice(0)) if (p.child.exitCode === null) p.child.kill('SIGKILL')
})

interface LogLine {
  level: string
  event: string
  message?: string
  hint?: string
}

function logLines(stderr: string): LogLine[] {
  return stderr
    .split('\n')
    .filter((l) => l.startsWith('{'))
    .map((l) => JSON.parse(l) as LogLine)
}

/** The log lines once stderr holds `event` (a line written before the start-up line may arrive after it), or after 2 s. */
async function logAfter(p: SidecarProcess, event: string): Promise<LogLine[]> {
  for (let i = 0; i < 100 && !p.stderr().includes(`"event":"${event}"`); i++)
    await new Promise((r) => setTimeout(r, 20))
  return logLines(p.stderr())
}

/** Begins a transaction on the admin API; the status and the error code it answered. */
async function begin(adminPort: number): Promise<{ status: number; code: string | undefined }> {
  const res = await request(`http://127.0.0.1:${adminPort}/v1/transactions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ mode: '2pc' }),
  })
  const body = (await res.body.json()) as { error?: { code?: string } }
  return { status: res.statusCode, code: body.error?.code }
}

describe('sidecar without a mesh key', () => {
  it('warns once at start that transactions and the control listener are off, and how to set a key', async () => {
    const app = await startEcho()
    try {
      // An empty variable counts as unset (spawnSidecar sets TXMESH_MESH_KEY otherwise).
      const p = await spawnSidecar(sidecarYaml('orders', app.port), [], {
        TXMESH_MESH_KEY: '',
        TXMESH_LOG_LEVEL: 'info',
      })
      running.push(p)
      expect(await begin(p.ports.admin)).toEqual({ status: 503, code: 'TXM_MESH_KEY_MISSING' })
      const warnings = (await logAfter(p, 'mesh_key_missing')).filter((l) => l.event === 'mesh_key_missing')
      expect(warnings).toHaveLength(1)
      const [w] = warnings
      expect(w?.level).toBe('warn')
      expect(w?.message).toMatch(/transactions and the control listener are off/)
      expect(w?.hint).toMatch(/TXMESH_MESH_KEY\b/)
      expect(w?.hint).toMatch(/TXMESH_MESH_KEY_FILE/)
      expect(w?.hint).toMatch(/mesh\.keyFile/)
    } finally {
      await app.close()
    }
  })

  it('does not warn when a mesh key is set, and begins transactions', async () => {
    const app = await startEcho()
    try {
      const p = await spawnSidecar(sidecarYaml('orders', app.port), [], { TXMESH_LOG_LEVEL: 'info' })
      running.push(p)
      expect(await begin(p.ports.admin)).toEqual({ status: 201, code: undefined })
      // log_incarnation is logged at start, after the point where the warning would be.
      const events = (await logAfter(p, 'log_incarnation')).map((l) => l.event)
      expect(events).toContain('log_incarnation')
      expect(events).not.toContain('mesh_key_missing')
    } finally {
      await app.close()
    }
  })
})
