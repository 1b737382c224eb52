import { spawnSync } from 'node:child_process'
import { mkdtempSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { describe, expect, it } from 'vitest'
import { parseConfig, loadConfigFile } from '../../src/config/load.js'
import { ConfigInvalidError } from '../../src/errors.js'
import { CLI } from '../helpers/servers.js'

function problems(yaml: string): string[] {
  try {
    parseConfig(yaml, 'p.yaml')
  } catch (err) {
    if (err instanceof ConfigInvalidError) return err.message.split('\n')
    throw err
  }
  throw new Error('config was accepted')
}

describe('config', () => {
  it('accepts the documented example and fills defaults', () => {
    const cfg = loadConfigFile(join(import.meta.dirname, '../../config/example.yaml'))
    expect(cfg.service).toBe('orders')
    expect(cfg.services.get('payments')).toEqual({ host: '127.0.0.1', port: 9001 })
    expect(cfg.routes[0]?.timeoutMs).toBe(5000)
    expect(cfg.routes[1]?.retries.attempts).toBe(3)
    expect(cfg.routes[1]?.maxBodyBytes).toBe(cfg.defaultRoute.maxBodyBytes)
    expect(Object.isFrozen(cfg)).toBe(true)
    expect(Object.isFrozen(cfg.routes[0])).toBe(true)
  })

  it('names file:line:col of an unknown key', () => {
    expect(problems('service: a\nlisteners:\n  egres: {port: 1}\n')).toEqual(['p.yaml:3:3: listeners: unknown key "egres"'])
  })

  it('names file:line:col of a wrong type, an out-of-range value and a bad enum', () => {
    expect(problems('service: a\napp:\n  port: "80"\nroutes:\n  - timeoutMs: -1\n    match: {methods: [GOT]}\n')).toEqual([
      'p.yaml:3:9: app.port: must be integer',
      'p.yaml:5:16: routes.0.timeoutMs: must be >= 1',
      'p.yaml:6:23: routes.0.match.methods.0: must be one of "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE"',
    ])
  })

  it('reports a missing required key and YAML syntax errors with positions', () => {
    expect(problems('app: {port: 1}\n')).toEqual(['p.yaml:1:1: config: missing required key "service"'])
    expect(problems('service: a\nroutes: [\n')[0]).toMatch(/^p\.yaml:3:1: /)
    expect(problems('service: a\nservice: b\n')[0]).toMatch(/^p\.yaml:2:1: Map keys must be unique/)
  })

  it('rejects a service address that is not host:port', () => {
    expect(problems('service: a\nservices:\n  pay: {address: "nope"}\n')[0]).toMatch(/^p\.yaml:3:18: services\.pay\.address/)
  })

  it('txmesh validate exits 0 on a good file and 1 with positions on a bad one', () => {
    const good = spawnSync(process.execPath, [CLI, 'validate', join(import.meta.dirname, '../../config/example.yaml')], { encoding: 'utf8' })
    expect(good.status).toBe(0)
    expect(good.stdout).toContain('ok')
    const dir = mkdtempSync(join(tmpdir(), 'txmesh-cfg-'))
    const bad = join(dir, 'bad.yaml')
    writeFileSync(bad, 'service: a\nroutes:\n  - name: r\n    retries: {attempts: 99}\n')
    const out = spawnSync(process.execPath, [CLI, 'validate', bad], { encoding: 'utf8' })
    expect(out.status).toBe(1)
    expect(out.stderr.trim()).toBe(`${bad}:4:25: routes.0.retries.attempts: must be <= 10`)
    const missing = spawnSync(process.execPath, [CLI, 'validate', join(dir, 'absent.yaml')], { encoding: 'utf8' })
    expect(missing.status).toBe(1)
    expect(missing.stderr).toContain('cannot read')
  })
})

describe('runtime flags', () => {
  it('the txmesh bin shebang passes the same Node flags the spawners use', async () => {
    const { readFileSync } = await import('node:fs')
    const { SIDECAR_NODE_FLAGS } = await import('../../src/runtime.js')
    const shebang = readFileSync(join(import.meta.dirname, '../../src/cli/index.ts'), 'utf8').split('\n')[0]
    expect(shebang).toBe(`#!/usr/bin/env -S node ${SIDECAR_NODE_FLAGS.join(' ')}`)
  })
})
