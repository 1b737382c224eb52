import { spawnSync } from 'node:child_process'
import { mkdtempSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { describe, expect, it } from 'vitest'
import {
  parseConfig,
  loadConfigFile,
  overridesFrom,
  withOverrides,
  type ConfigOverrides,
} from '../../src/config/load.js'
import { ConfigInvalidError } from '../../src/errors.js'
import { coordinatorAllowed } from '../../src/tx/protocol.js'
import { CLI } from '../../harness/sidecar.js'

function problems(yaml: string, overrides: ConfigOverrides = {}): string[] {
  try {
    parseConfig(yaml, 'p.yaml', overrides)
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
    expect(coordinatorAllowed(cfg.mesh.coordinators, '10.244.0.9:15010')).toBe(true)
    expect(cfg.listeners.health).toBeUndefined()
  })

  it('names file:line:col of an unknown key', () => {
    expect(problems('service: a\nlisteners:\n  egres: {port: 1}\n')).toEqual([
      'p.yaml:3:3: listeners: unknown key "egres"',
    ])
  })

  it('names file:line:col of a wrong type, an out-of-range value and a bad enum', () => {
    expect(
      problems('service: a\napp:\n  port: "80"\nroutes:\n  - timeoutMs: -1\n    match: {methods: [GOT]}\n'),
    ).toEqual([
      'p.yaml:3:9: app.port: must be integer',
      'p.yaml:5:16: routes.0.timeoutMs: must be >= 1',
      'p.yaml:6:23: routes.0.match.methods.0: must be one of "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE"',
    ])
  })

  it('reports a missing required key and YAML syntax errors with positions', () => {
    expect(problems('app: {port: 1}\n')).toEqual([
      'p.yaml:1:1: config: missing required key "service" (or give --service NAME or TXMESH_SERVICE)',
    ])
    expect(problems('service: a\nroutes: [\n')[0]).toMatch(/^p\.yaml:3:1: /)
    expect(problems('service: a\nservice: b\n')[0]).toMatch(/^p\.yaml:2:1: Map keys must be unique/)
  })

  it('store.kind postgres takes its connection string from exactly one of url, urlEnv, urlFile, with positions', () => {
    const dir = mkdtempSync(join(tmpdir(), 'txmesh-cfg-'))
    const file = join(dir, 'pg-url')
    writeFileSync(file, 'postgres://u:p@127.0.0.1:5432/store\n')
    const pgOf = (yaml: string) => parseConfig(`service: orders\n${yaml}`, 'p.yaml').storePostgres
    expect(pgOf('store: {kind: postgres, url: "postgres://127.0.0.1/db", instance: orders-0}\n')).toEqual({
      url: 'postgres://127.0.0.1/db',
      schema: 'txmesh',
      instance: 'orders-0',
      leaseMs: 10_000,
      lease: 'row',
    })
    expect(
      pgOf(`store: {kind: postgres, urlFile: ${JSON.stringify(file)}, schema: coord, instance: a, leaseMs: 3000}\n`),
    ).toEqual({
      url: 'postgres://u:p@127.0.0.1:5432/store',
      schema: 'coord',
      instance: 'a',
      leaseMs: 3_000,
      lease: 'row',
    })
    expect(pgOf('store: {kind: postgres, url: "postgres://h/d", instance: a, lease: kubernetes}\n')?.lease).toBe(
      'kubernetes',
    )
    expect(problems('service: a\nstore: {kind: postgres, url: "postgres://h/d",\n  lease: etcd}\n')[0]).toMatch(
      /^p\.yaml:3:\d+: .*lease/,
    )
    expect(problems('service: a\nstore: {lease: kubernetes}\n')[0]).toMatch(
      /store\.lease: only for store\.kind postgres/,
    )
    expect(problems('service: a\nstore: {kind: postgres, url: "postgres://h/d", leaseMs: 10}\n')[0]).toMatch(
      /^p\.yaml:2:\d+: .*leaseMs/,
    )
    expect(problems('service: a\nstore: {leaseMs: 5000}\n')[0]).toMatch(/store\.leaseMs: only for store\.kind postgres/)
    process.env.TXMESH_TEST_PG_URL = 'postgres://127.0.0.1/x'
    expect(pgOf('store: {kind: postgres, urlEnv: TXMESH_TEST_PG_URL, instance: a}\n')?.url).toBe(
      'postgres://127.0.0.1/x',
    )
    delete process.env.TXMESH_TEST_PG_URL
    // The injector's txmesh.io/store-secret: TXMESH_STORE_URL selects the Postgres store over the
    // file's (shared ConfigMap) store dir; TXMESH_STORE_GROUP names the group.
    process.env.TXMESH_STORE_URL = 'postgres://127.0.0.1/shop'
    process.env.TXMESH_STORE_GROUP = 'orders-txmesh.shop.svc:15010'
    process.env.TXMESH_STORE_LEASE = 'kubernetes'
    try {
      expect(pgOf('store: {dir: /var/lib/txmesh}\n')).toMatchObject({
        url: 'postgres://127.0.0.1/shop',
        group: 'orders-txmesh.shop.svc:15010',
        leaseMs: 10_000,
        lease: 'kubernetes',
      })
      process.env.TXMESH_STORE_LEASE = 'etcd'
      expect(problems('service: a\nstore: {dir: /x}\n')[0]).toMatch(
        /store\.lease: "etcd" is neither row nor kubernetes/,
      )
      delete process.env.TXMESH_STORE_LEASE
      process.env.TXMESH_STORE_GROUP = 'not an address'
      expect(problems('service: a\nstore: {dir: /x}\n')[0]).toMatch(/store\.group: "not an address" is not a host:port/)
    } finally {
      delete process.env.TXMESH_STORE_URL
      delete process.env.TXMESH_STORE_GROUP
      delete process.env.TXMESH_STORE_LEASE
    }
    expect(pgOf('store: {dir: /tmp/x}\n')).toBeUndefined()
    expect(problems('service: a\nstore: {kind: postgres}\n')[0]).toMatch(
      /^p\.yaml:2:\d+: store: kind postgres needs exactly one of url, urlEnv, urlFile \(got none\)/,
    )
    expect(problems('service: a\nstore: {kind: postgres, url: "postgres://h/d", urlEnv: X}\n')[0]).toMatch(
      /got url, urlEnv/,
    )
    expect(problems('service: a\nstore: {kind: postgres, urlEnv: TXMESH_TEST_PG_UNSET}\n')[0]).toMatch(
      /^p\.yaml:2:\d+: store\.urlEnv: the variable TXMESH_TEST_PG_UNSET is not set/,
    )
    expect(problems('service: a\nstore: {url: "postgres://h/d"}\n')[0]).toMatch(
      /^p\.yaml:2:\d+: store\.url: only for store\.kind postgres/,
    )
    expect(problems('service: a\nstore: {kind: postgres, url: "postgres://h/d", dir: /x}\n')[0]).toMatch(
      /store\.dir: the postgres store keeps no files/,
    )
    expect(problems('service: a\nstore: {kind: postgres, url: "mysql://h/d"}\n')[0]).toMatch(
      /^p\.yaml:2:\d+: .*store\.url/,
    )
    expect(
      problems(`service: a\nstore: {kind: postgres, urlFile: ${JSON.stringify(join(dir, 'missing'))}}\n`)[0],
    ).toMatch(/store\.urlFile: cannot read: ENOENT/)
  })

  it('rejects a service address that is not host:port', () => {
    expect(problems('service: a\nservices:\n  pay: {address: "nope"}\n')[0]).toMatch(
      /^p\.yaml:3:18: services\.pay\.address/,
    )
  })

  it('refuses step templates whose headers can only be refused by the HTTP client, at the key or the value', () => {
    const route = (headers: string) =>
      `service: a\nroutes:\n  - name: r\n    compensation:\n      path: /undo\n      headers:\n${headers}`
    expect(problems(route('        x-note: "caf\\u20ac {request.json.note}"\n'))).toEqual([
      'p.yaml:7:17: routes.0.compensation.headers.x-note: header x-note would carry U+20AC: CR, LF, NUL, other control characters and characters beyond latin1 are not allowed in a header value',
    ])
    expect(problems(route('        x-a: "one\\r\\ntwo"\n'))[0]).toMatch(
      /^p\.yaml:7:14: routes\.0\.compensation\.headers\.x-a: header x-a would carry U\+000D/,
    )
    expect(problems(route('        Transfer-Encoding: chunked\n'))).toEqual([
      "p.yaml:7:9: routes.0.compensation.headers.Transfer-Encoding: header transfer-encoding cannot be set on a step's request (the HTTP client frames the connection itself)",
    ])
    expect(
      problems('service: a\nroutes:\n  - tcc: {cancel: {path: /c, headers: {expect: 100-continue}}}\n')[0],
    ).toMatch(/^p\.yaml:3:40: routes\.0\.tcc\.cancel\.headers\.expect: /)
    // Placeholders fill values at run time (checked then); latin1 text and HTAB are fine.
    const cfg = parseConfig(
      route('        x-note: "caf\u00e9\\t{request.json.note}"\n        x-id: "{step.id}"\n'),
      'p.yaml',
    )
    expect(cfg.routes[0]?.compensation?.headers).toEqual({
      'x-note': 'caf\u00e9\t{request.json.note}',
      'x-id': '{step.id}',
    })
  })

  it('txmesh validate exits 0 on a good file and 1 with positions on a bad one', () => {
    const good = spawnSync(
      process.execPath,
      [CLI, 'validate', join(import.meta.dirname, '../../config/example.yaml')],
      { encoding: 'utf8' },
    )
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

describe('settings from flags and the environment (Kubernetes: one ConfigMap, per-pod env)', () => {
  const env = { TXMESH_SERVICE: 'from-env', TXMESH_STORE_DIR: '/env/store', TXMESH_ADVERTISE: '10.1.2.3:15010' }

  it('takes each setting from its flag over its variable, and ignores an empty variable', () => {
    expect(overridesFrom({}, env)).toEqual({
      service: { value: 'from-env', from: 'TXMESH_SERVICE' },
      storeDir: { value: '/env/store', from: 'TXMESH_STORE_DIR' },
      advertise: { value: '10.1.2.3:15010', from: 'TXMESH_ADVERTISE' },
    })
    expect(overridesFrom({ service: 'from-flag', storeDir: '/flag/store', advertise: '10.9.9.9:1' }, env)).toEqual({
      service: { value: 'from-flag', from: '--service' },
      storeDir: { value: '/flag/store', from: '--store-dir' },
      advertise: { value: '10.9.9.9:1', from: '--advertise' },
    })
    expect(overridesFrom({}, { TXMESH_SERVICE: '', TXMESH_STORE_DIR: '' })).toEqual({})
  })

  it('lets a file without service run when the flag or variable names it, and that name wins over the file', () => {
    const cfg = parseConfig('log: {level: silent}\n', 'p.yaml', overridesFrom({}, env))
    expect(cfg.service).toBe('from-env')
    expect(parseConfig('service: in-file\n', 'p.yaml', overridesFrom({}, env)).service).toBe('from-env')
    expect(parseConfig('service: in-file\n', 'p.yaml', overridesFrom({ service: 'flag' }, env)).service).toBe('flag')
    expect(parseConfig('service: in-file\n', 'p.yaml').service).toBe('in-file')
  })

  it('checks a service name from outside the file with the same rule as the file, naming where it came from', () => {
    expect(problems('log: {level: silent}\n', overridesFrom({}, { TXMESH_SERVICE: 'Orders_1' }))).toEqual([
      `p.yaml:0:0: TXMESH_SERVICE: "Orders_1" is not a service name (lowercase letters, digits, '-' and '.', at most 63, starting and ending with a letter or digit)`,
    ])
    expect(problems('service: ok\n', overridesFrom({ service: 'x'.repeat(64) }, {}))[0]).toMatch(
      /^p\.yaml:0:0: --service: "x{64}" is not a service name/,
    )
    expect(problemsOrEmpty('service: ok\n', { service: 'a-b.c' })).toEqual([])
  })

  it('keeps app.port 8080 by default and takes it from --app-port when the file has no app', () => {
    const cfg = parseConfig('service: a\n', 'p.yaml')
    expect(cfg.app).toEqual({ host: '127.0.0.1', port: 8080 })
    expect(withOverrides(cfg, { app: 3000 }).app).toEqual({ host: '127.0.0.1', port: 3000 })
  })

  it('takes the store dir from --store-dir over TXMESH_STORE_DIR over store.dir over the default', () => {
    const yaml = 'service: a\nstore: {dir: /file/store}\n'
    expect(parseConfig('service: a\n', 'p.yaml').storeDir).toBe('txmesh-data/a')
    expect(parseConfig(yaml, 'p.yaml').storeDir).toBe('/file/store')
    expect(parseConfig(yaml, 'p.yaml', overridesFrom({}, env)).storeDir).toBe('/env/store')
    expect(parseConfig(yaml, 'p.yaml', overridesFrom({ storeDir: '/flag/store' }, env)).storeDir).toBe('/flag/store')
    expect(parseConfig('log: {level: silent}\n', 'p.yaml', overridesFrom({}, { TXMESH_SERVICE: 'svc' })).storeDir).toBe(
      'txmesh-data/svc',
    )
    expect(problems('service: a\n', overridesFrom({ storeDir: '' }, {}))).toEqual([
      'p.yaml:0:0: --store-dir: the store directory must not be empty',
    ])
  })

  it('takes store.sync (dsync, datasync, fsync) and refuses anything else at its position', () => {
    expect(parseConfig('service: a\n', 'p.yaml').storeSync).toBeUndefined()
    for (const v of ['dsync', 'datasync', 'fsync'] as const)
      expect(parseConfig(`service: a\nstore: {sync: ${v}}\n`, 'p.yaml').storeSync).toBe(v)
    const bad = problems('service: a\nstore:\n  sync: osync\n')
    expect(bad).toHaveLength(1)
    expect(bad[0]).toMatch(/^p\.yaml:3:9: store\.sync: /)
  })

  it('takes the advertised control address from --advertise or TXMESH_ADVERTISE over mesh.advertise', () => {
    const yaml = 'service: a\nmesh: {advertise: "file-host:15010"}\n'
    expect(parseConfig(yaml, 'p.yaml').mesh.advertise).toBe('file-host:15010')
    expect(parseConfig('service: a\n', 'p.yaml').mesh.advertise).toBeUndefined()
    expect(parseConfig(yaml, 'p.yaml', overridesFrom({}, env)).mesh.advertise).toBe('10.1.2.3:15010')
    expect(parseConfig(yaml, 'p.yaml', overridesFrom({ advertise: 'pod.ns.svc:15010' }, env)).mesh.advertise).toBe(
      'pod.ns.svc:15010',
    )
    // $(POD_IP):15010 in an IPv6 cluster.
    expect(
      parseConfig('service: a\n', 'p.yaml', overridesFrom({}, { TXMESH_ADVERTISE: 'fd00::5:15010' })).mesh.advertise,
    ).toBe('[fd00::5]:15010')
    expect(
      parseConfig('service: a\n', 'p.yaml', overridesFrom({}, { TXMESH_ADVERTISE: '[fd00::5]:15010' })).mesh.advertise,
    ).toBe('[fd00::5]:15010')
  })

  it('refuses an advertised address that is not host:port, with a clear message', () => {
    for (const bad of [
      '10.1.2.3',
      '10.1.2.3:',
      ':15010',
      '10.1.2.3:99999',
      '10.1.2.3:0',
      'http://10.1.2.3:15010',
      'a b:1',
    ]) {
      expect(problems('service: a\n', overridesFrom({}, { TXMESH_ADVERTISE: bad }))).toEqual([
        `p.yaml:0:0: TXMESH_ADVERTISE: "${bad}" is not host:port (e.g. 10.1.2.3:15010, [fd00::1]:15010)`,
      ])
    }
    expect(problems('service: a\nmesh:\n  advertise: "h:70000"\n')).toEqual([
      'p.yaml:3:14: mesh.advertise: "h:70000" is not host:port with a port 1-65535',
    ])
  })
})

/** The problems of a config that may be valid (empty list when it is). */
function problemsOrEmpty(yaml: string, flags: Parameters<typeof overridesFrom>[0]): string[] {
  try {
    parseConfig(yaml, 'p.yaml', overridesFrom(flags, {}))
    return []
  } catch (err) {
    if (err instanceof ConfigInvalidError) return err.message.split('\n')
    throw err
  }
}

describe('health listener config', () => {
  it('is disabled unless listeners.health or a health port is given', () => {
    expect(parseConfig('service: a\n', 'p.yaml').listeners.health).toBeUndefined()
    expect(parseConfig('service: a\nlisteners: {health: {}}\n', 'p.yaml').listeners.health).toEqual({
      host: '0.0.0.0',
      port: 15021,
    })
    expect(
      parseConfig('service: a\nlisteners: {health: {host: 127.0.0.1, port: 0}}\n', 'p.yaml').listeners.health,
    ).toEqual({ host: '127.0.0.1', port: 0 })
  })

  it('--health-port enables it on 0.0.0.0, or on the host the file names', () => {
    expect(withOverrides(parseConfig('service: a\n', 'p.yaml'), { health: 15021 }).listeners.health).toEqual({
      host: '0.0.0.0',
      port: 15021,
    })
    expect(
      withOverrides(parseConfig('service: a\nlisteners: {health: {host: 10.0.0.1, port: 1}}\n', 'p.yaml'), {
        health: 0,
      }).listeners.health,
    ).toEqual({ host: '10.0.0.1', port: 0 })
    expect(withOverrides(parseConfig('service: a\n', 'p.yaml'), { admin: 1 }).listeners.health).toBeUndefined()
  })

  it('names file:line:col of a bad health port', () => {
    expect(problems('service: a\nlisteners:\n  health: {port: 70000}\n')).toEqual([
      'p.yaml:3:18: listeners.health.port: must be <= 65535',
    ])
  })
})

describe('coordinator allow-list', () => {
  const allow = (entries: string[]): readonly string[] =>
    parseConfig(`service: a\nmesh:\n  coordinators: ${JSON.stringify(entries)}\n`, 'p.yaml').mesh.coordinators

  it('keeps exact host:port, host:* and * entries', () => {
    const list = allow(['orders:15010', 'payments:*', '[::1]:15010'])
    expect(coordinatorAllowed(list, 'orders:15010')).toBe(true)
    expect(coordinatorAllowed(list, 'orders:15011')).toBe(false)
    expect(coordinatorAllowed(list, 'payments:1')).toBe(true)
    expect(coordinatorAllowed(list, '[::1]:15010')).toBe(true)
    expect(coordinatorAllowed(list, 'shipping:15010')).toBe(false)
    expect(coordinatorAllowed(allow(['*']), 'anything:1')).toBe(true)
    // The default: loopback only.
    const dflt = parseConfig('service: a\n', 'p.yaml').mesh.coordinators
    expect(coordinatorAllowed(dflt, '127.0.0.1:15010')).toBe(true)
    expect(coordinatorAllowed(dflt, '10.0.0.1:15010')).toBe(false)
  })

  it('matches an IPv4 network on one port or on every port', () => {
    const list = allow(['10.0.0.0/8:15010', '192.168.1.0/24:*'])
    expect(coordinatorAllowed(list, '10.244.3.7:15010')).toBe(true)
    expect(coordinatorAllowed(list, '10.0.0.0:15010')).toBe(true)
    expect(coordinatorAllowed(list, '10.244.3.7:15011')).toBe(false) // port mismatch
    expect(coordinatorAllowed(list, '11.0.0.1:15010')).toBe(false) // outside
    expect(coordinatorAllowed(list, '192.168.1.200:1')).toBe(true)
    expect(coordinatorAllowed(list, '192.168.2.1:1')).toBe(false)
    expect(coordinatorAllowed(list, 'orders.default.svc:15010')).toBe(false) // a name is never in a network
    expect(coordinatorAllowed(allow(['0.0.0.0/0:15010']), '203.0.113.9:15010')).toBe(true)
    expect(coordinatorAllowed(allow(['10.1.2.3/32:15010']), '10.1.2.4:15010')).toBe(false)
  })

  it('matches an IPv6 network written in brackets', () => {
    const list = allow(['[fd00::/8]:*', '[2001:db8::/32]:15010'])
    expect(coordinatorAllowed(list, '[fd00::5]:15010')).toBe(true)
    expect(coordinatorAllowed(list, '[fdff:1:2::9]:1')).toBe(true)
    expect(coordinatorAllowed(list, '[fe80::1]:15010')).toBe(false)
    expect(coordinatorAllowed(list, '[2001:db8:1::1]:15010')).toBe(true)
    expect(coordinatorAllowed(list, '[2001:db8:1::1]:15011')).toBe(false)
    expect(coordinatorAllowed(list, '[2001:db9::1]:15010')).toBe(false)
    expect(coordinatorAllowed(list, '10.0.0.1:15010')).toBe(false)
  })

  it('refuses a bad network with file:line:col', () => {
    expect(
      problems(
        'service: a\nmesh:\n  coordinators:\n    - "10.0.0.0/8:*"\n    - "10.0.0.300/8:*"\n    - "10.0.0.0/33:15010"\n    - "[fd00::/129]:*"\n    - "[10.0.0.0/8]:*"\n    - "foo/8:*"\n    - "h:99999"\n',
      ),
    ).toEqual([
      'p.yaml:5:7: mesh.coordinators.1: "10.0.0.300/8:*": 10.0.0.300 is not an IPv4 address',
      'p.yaml:6:7: mesh.coordinators.2: "10.0.0.0/33:15010": prefix /33 is longer than 32 bits',
      'p.yaml:7:7: mesh.coordinators.3: "[fd00::/129]:*": prefix /129 is longer than 128 bits',
      'p.yaml:8:7: mesh.coordinators.4: "[10.0.0.0/8]:*": 10.0.0.0 is not an IPv6 address',
      'p.yaml:9:7: mesh.coordinators.5: "foo/8:*": foo is not an IPv4 address',
      'p.yaml:10:7: mesh.coordinators.6: "h:99999": port 99999 is over 65535',
    ])
    // An unbracketed IPv6 network does not pass the schema.
    expect(problems('service: a\nmesh: {coordinators: ["fd00::/8:*"]}\n')[0]).toMatch(
      /^p\.yaml:2:23: mesh\.coordinators\.0: must match pattern/,
    )
  })
})

describe('control plane security config (admin token, tls, key file)', () => {
  const withEnv = <T>(vars: Record<string, string | undefined>, fn: () => T): T => {
    const saved = Object.fromEntries(Object.keys(vars).map((k) => [k, process.env[k]]))
    for (const [k, v] of Object.entries(vars))
      if (v === undefined) delete process.env[k]
      else process.env[k] = v
    try {
      return fn()
    } finally {
      for (const [k, v] of Object.entries(saved))
        if (v === undefined) delete process.env[k]
        else process.env[k] = v
    }
  }
  const file = (content: string): string => {
    const p = join(mkdtempSync(join(tmpdir(), 'txmesh-secret-')), 'secret')
    writeFileSync(p, content)
    return p
  }
  const TOKEN = 'admin-token-0123456789abcdef'

  it('refuses an admin listener off loopback without a token, at the host key', () => {
    withEnv({ TXMESH_ADMIN_TOKEN: undefined }, () => {
      expect(problems('service: a\nlisteners:\n  admin: {host: 0.0.0.0, port: 15000}\n')).toEqual([
        'p.yaml:3:17: listeners.admin.host: 0.0.0.0 is not a loopback address, so the admin API needs a token: set admin.tokenEnv (default TXMESH_ADMIN_TOKEN) or admin.tokenFile',
      ])
      // Loopback in any spelling needs none.
      for (const host of ['127.0.0.1', '127.0.0.2', 'localhost', '"::1"'])
        expect(parseConfig(`service: a\nlisteners: {admin: {host: ${host}}}\n`, 'p.yaml').admin.token).toBeUndefined()
    })
  })

  it('takes the token from TXMESH_ADMIN_TOKEN, a named variable or a file, at least 16 bytes', () => {
    withEnv({ TXMESH_ADMIN_TOKEN: TOKEN, MY_TOKEN: undefined }, () => {
      expect(parseConfig('service: a\nlisteners: {admin: {host: 0.0.0.0}}\n', 'p.yaml').admin.token?.toString()).toBe(
        TOKEN,
      )
      // Allowed on loopback too.
      expect(parseConfig('service: a\n', 'p.yaml').admin.token?.toString()).toBe(TOKEN)
      expect(problems('service: a\nadmin: {tokenEnv: MY_TOKEN}\n')).toEqual([
        'p.yaml:2:19: admin.tokenEnv: the variable MY_TOKEN is not set',
      ])
    })
    withEnv({ TXMESH_ADMIN_TOKEN: 'short', MY_TOKEN: `  ${TOKEN}\n` }, () => {
      expect(problems('service: a\n')).toEqual(['p.yaml:0:0: TXMESH_ADMIN_TOKEN: the token is shorter than 16 bytes'])
      expect(parseConfig('service: a\nadmin: {tokenEnv: MY_TOKEN}\n', 'p.yaml').admin.token?.toString()).toBe(TOKEN)
    })
    withEnv({ TXMESH_ADMIN_TOKEN: undefined }, () => {
      expect(
        parseConfig(
          `service: a\nadmin: {tokenFile: ${JSON.stringify(file(`${TOKEN}\n`))}}\n`,
          'p.yaml',
        ).admin.token?.toString(),
      ).toBe(TOKEN)
      const short = problems(`service: a\nadmin:\n  tokenFile: ${JSON.stringify(file('0123456789'))}\n`)
      expect(short).toEqual(['p.yaml:3:14: admin.tokenFile: the token is shorter than 16 bytes'])
      expect(short.join()).not.toContain('0123456789')
      expect(problems('service: a\nadmin: {tokenFile: /nonexistent/token}\n')).toEqual([
        'p.yaml:2:20: admin.tokenFile: cannot read: ENOENT',
      ])
      expect(problems(`service: a\nadmin: {tokenEnv: X, tokenFile: ${JSON.stringify(file(TOKEN))}}\n`)).toEqual([
        'p.yaml:2:33: admin: give tokenEnv or tokenFile, not both',
      ])
    })
  })

  it('reads mesh keys from mesh.keyFile (watched) and refuses an empty or short one at its position', () => {
    withEnv({ TXMESH_MESH_KEY: undefined }, () => {
      const good = file('key-one-0123456789abcdef,key-two-0123456789abcdef\n')
      const cfg = parseConfig(`service: a\nmesh: {keyFile: ${JSON.stringify(good)}}\n`, 'p.yaml')
      expect(cfg.mesh.keys.map(String)).toEqual(['key-one-0123456789abcdef', 'key-two-0123456789abcdef'])
      expect(cfg.mesh.keyFile).toBe(good)
      expect(problems(`service: a\nmesh:\n  keyFile: ${JSON.stringify(file(' \n'))}\n`)).toEqual([
        'p.yaml:3:12: mesh.keyFile: holds no key',
      ])
      expect(
        problems(`service: a\nmesh:\n  keyFile: ${JSON.stringify(file('key-one-0123456789abcdef,tiny'))}\n`),
      ).toEqual(['p.yaml:3:12: mesh.keyFile: key 2 is shorter than 16 bytes'])
    })
    // TXMESH_MESH_KEY_FILE (what the Kubernetes injector sets) wins over mesh.keyFile, and is watched.
    withEnv({ TXMESH_MESH_KEY: undefined, TXMESH_MESH_KEY_FILE: undefined }, () => {
      const mounted = file('mounted-key-0123456789abcdef\n')
      process.env.TXMESH_MESH_KEY_FILE = mounted
      const cfg = parseConfig(
        `service: a\nmesh: {keyFile: ${JSON.stringify(file('key-one-0123456789abcdef'))}}\n`,
        'p.yaml',
      )
      expect(cfg.mesh.keys.map(String)).toEqual(['mounted-key-0123456789abcdef'])
      expect(cfg.mesh.keyFile).toBe(mounted)
      expect(parseConfig('service: a\n', 'p.yaml').mesh.keyFile).toBe(mounted)
      process.env.TXMESH_MESH_KEY_FILE = '/nonexistent/mesh-key'
      expect(problems('service: a\n')).toEqual(['p.yaml:0:0: TXMESH_MESH_KEY_FILE: cannot read: ENOENT'])
      // A key put in the variable by mistake is not quoted back.
      process.env.TXMESH_MESH_KEY_FILE = 'key-by-mistake-0123456789abcdef'
      expect(problems('service: a\n').join()).not.toContain('key-by-mistake')
      // Empty counts as unset.
      process.env.TXMESH_MESH_KEY_FILE = ''
      expect(parseConfig('service: a\n', 'p.yaml').mesh.keys).toEqual([])
    })
    // The variable wins, and then the file is not watched.
    withEnv({ TXMESH_MESH_KEY: 'env-key-0123456789abcdef', TXMESH_MESH_KEY_FILE: undefined }, () => {
      const cfg = parseConfig(
        `service: a\nmesh: {keyFile: ${JSON.stringify(file('key-one-0123456789abcdef'))}}\n`,
        'p.yaml',
      )
      expect(cfg.mesh.keys.map(String)).toEqual(['env-key-0123456789abcdef'])
      expect(cfg.mesh.keyFile).toBeUndefined()
    })
  })

  it('checks the tls files at load: all three readable, and the key matching the certificate', () => {
    expect(problems('service: a\ntls: {certFile: /nonexistent/c.pem, keyFile: k, caFile: ca}\n')).toEqual([
      'p.yaml:2:6: tls: cannot read /nonexistent/c.pem: ENOENT',
    ])
    expect(problems('service: a\ntls: {certFile: c}\n')).toEqual([
      'p.yaml:2:6: tls: missing required key "keyFile"',
      'p.yaml:2:6: tls: missing required key "caFile"',
    ])
    const junk = file('not a pem')
    expect(
      problems(
        `service: a\ntls: {certFile: ${JSON.stringify(junk)}, keyFile: ${JSON.stringify(junk)}, caFile: ${JSON.stringify(junk)}}\n`,
      )[0],
    ).toMatch(/^p\.yaml:2:6: tls: the certificate, key and CA do not load together: /)
    const cfg = parseConfig(
      'service: a\nservices:\n  pay: {address: "10.0.0.1:80", tls: false}\n  orders: {address: "10.0.0.2:15006"}\n',
      'p.yaml',
    )
    expect(cfg.tls).toBeUndefined()
    expect([...cfg.servicesWithoutTls]).toEqual(['pay'])
  })
})

describe('config: subscriptions', () => {
  const NATS =
    'events: {nats: {servers: ["nats://127.0.0.1:4222"], stream: SHOP, topics: ["orders.>", "payments.*"]}}\n'
  it('fills the defaults of a subscription on the sidecar stream', () => {
    const cfg = parseConfig(
      `service: order-history\n${NATS}subscriptions:\n  - {name: orders, subjects: ["orders.created"], route: {path: /events/orders}}\n`,
      'p.yaml',
    )
    expect(cfg.subscriptions).toEqual([
      {
        name: 'orders',
        stream: 'SHOP',
        subjects: ['orders.created'],
        route: { method: 'POST', path: '/events/orders' },
        consumer: {
          durable: 'order-history-orders',
          deliver: 'all',
          ackWaitMs: 30_000,
          maxDeliver: 5,
          backoffMs: [1_000, 5_000, 30_000],
        },
        ordering: { by: 'none', maxInFlight: 16 },
        deadLetter: { subject: 'txmesh.deadletter.order-history.orders' },
      },
    ])
    const full = parseConfig(
      `service: h\n${NATS}subscriptions:\n  - name: all\n    stream: SHOP\n    subjects: ["orders.>", "payments.done"]\n    route: {method: PUT, path: /e}\n    consumer: {durable: h-all, deliver: {fromSequence: 42}, ackWaitMs: 5000, maxDeliver: 3, backoffMs: [200]}\n    ordering: {by: key, maxInFlight: 4}\n    deadLetter: {subject: dlq.h}\n`,
      'p.yaml',
    ).subscriptions[0]
    expect(full).toMatchObject({
      route: { method: 'PUT' },
      consumer: { durable: 'h-all', deliver: { fromSequence: 42 }, ackWaitMs: 5000, maxDeliver: 3, backoffMs: [200] },
      ordering: { by: 'key', maxInFlight: 4 },
      deadLetter: { subject: 'dlq.h' },
    })
  })

  it('refuses an unknown stream, a subject outside the stream, a missing route, and subscriptions without NATS, with file:line:col', () => {
    const sub = (s: string): string => `service: h\n${NATS}subscriptions:\n  - ${s}\n`
    expect(problems(sub('{name: a, stream: OTHER, subjects: ["orders.x"], route: {path: /e}}'))[0]).toMatch(
      /^p\.yaml:4:\d+: subscriptions\.0\.stream: unknown stream "OTHER" \(this sidecar's is events\.nats\.stream "SHOP"\)/,
    )
    expect(problems(sub('{name: a, subjects: ["orders.x", "billing.>"], route: {path: /e}}'))[0]).toMatch(
      /^p\.yaml:4:\d+: subscriptions\.0\.subjects\.1: "billing\.>" is outside the stream's subjects/,
    )
    // payments.* covers one token only.
    expect(problems(sub('{name: a, subjects: ["payments.a.b"], route: {path: /e}}'))[0]).toMatch(/outside the stream/)
    expect(problems(sub('{name: a, subjects: ["payments.>"], route: {path: /e}}'))[0]).toMatch(/outside the stream/)
    expect(problems(sub('{name: a, subjects: ["orders.x"]}'))[0]).toMatch(/^p\.yaml:4:\d+: .*route/)
    expect(
      problems(sub('{name: a, subjects: ["orders.>"], route: {path: /e}, deadLetter: {subject: orders.dead}}'))[0],
    ).toMatch(/deadLetter\.subject: "orders\.dead" is among the subscription's own subjects/)
    expect(
      problems(
        `service: h\n${NATS}subscriptions:\n  - {name: a, subjects: ["orders.x"], route: {path: /e}}\n  - {name: a, subjects: ["orders.y"], route: {path: /f}}\n`,
      )[0],
    ).toMatch(/^p\.yaml:5:\d+: subscriptions\.1\.name: "a" is used twice/)
    expect(problems('service: h\nsubscriptions:\n  - {name: a, subjects: ["x"], route: {path: /e}}\n')[0]).toMatch(
      /^p\.yaml:3:\d+: subscriptions: need events\.nats/,
    )
    expect(
      problems(
        sub('{name: a, subjects: ["orders.x"], route: {path: /e}, consumer: {deliver: {fromTime: yesterday}}}'),
      )[0],
    ).toMatch(/^p\.yaml:4:\d+: .*deliver/)
  })
})
