// Fuzzing the YAML config loader (src/config/load.ts parseConfig): mutated real configs, YAML
// generated over the schema's keys, alias bombs, and secret-file keys naming files that are not
// files. Every input gives a frozen config or a ConfigInvalidError whose problems all name
// fuzz.yaml:line:col (line >= 0) — never another exception, never a hang.
import { execFileSync } from 'node:child_process'
import { mkdirSync, readFileSync, symlinkSync, truncateSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import fc from 'fast-check'
import { stringify } from 'yaml'
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest'
import { parseConfig } from '../../src/config/load.js'
import type { SidecarConfig } from '../../src/config/types.js'
import { ConfigInvalidError } from '../../src/errors.js'
import { LIMITS } from '../../src/limits.js'
import { tempDir } from '../../harness/temp.js'
import { sidecarYaml } from '../helpers/servers.js'
import { fuzzParams, fuzzRuns, fuzzTimeout, mutated } from './fuzz.js'

const FILE = 'fuzz.yaml'
const root = join(import.meta.dirname, '../..')
const EXAMPLE = readFileSync(join(root, 'config/example.yaml'), 'utf8')
// A parse that takes longer than this is a hang in the making (super-linear input handling).
const SLOW_MS = 2_000

beforeAll(() => {
  // Keys and tokens come from the file under test, not from whoever runs the tests.
  vi.stubEnv('TXMESH_MESH_KEY', '')
  vi.stubEnv('TXMESH_ADMIN_TOKEN', '')
})
afterAll(() => {
  vi.unstubAllEnvs()
})

function expectDeepFrozen(o: unknown, path = 'config'): void {
  if (o === null || typeof o !== 'object' || ArrayBuffer.isView(o)) return
  expect(Object.isFrozen(o), `${path} is not frozen`).toBe(true)
  if (o instanceof Map || o instanceof Set) return
  for (const [k, v] of Object.entries(o)) expectDeepFrozen(v, `${path}.${k}`)
}

/** parseConfig's contract on any text: a frozen config, or problems that all carry positions. */
function check(text: string): SidecarConfig | ConfigInvalidError {
  const started = performance.now()
  let out: SidecarConfig | ConfigInvalidError
  try {
    out = parseConfig(text, FILE)
  } catch (err) {
    if (!(err instanceof ConfigInvalidError))
      throw new Error(`parseConfig threw ${String(err)} on ${JSON.stringify(text.slice(0, 300))}`, { cause: err })
    out = err
  }
  const ms = performance.now() - started
  expect(ms, `parseConfig took ${Math.round(ms)} ms on ${JSON.stringify(text.slice(0, 300))}`).toBeLessThan(SLOW_MS)
  if (out instanceof ConfigInvalidError) {
    expect(out.problems.length, 'ConfigInvalidError without problems').toBeGreaterThan(0)
    const lines = text.split(/\r\n|\r|\n/).length
    for (const p of out.problems) {
      expect(p.file).toBe(FILE)
      expect(
        Number.isInteger(p.line) && p.line >= 0 && p.line <= lines + 1,
        `line ${p.line} of ${lines}: ${p.message}`,
      ).toBe(true)
      expect(Number.isInteger(p.col) && p.col >= 0, `col ${p.col}: ${p.message}`).toBe(true)
      expect(p.message.length).toBeGreaterThan(0)
    }
    expect(out.status).toBe(500)
    expect(out.code).toBe('TXM_CONFIG_INVALID')
  } else {
    expectDeepFrozen(out)
  }
  return out
}

const KEYS = [
  'service',
  'app',
  'listeners',
  'egress',
  'ingress',
  'control',
  'admin',
  'health',
  'host',
  'port',
  'services',
  'address',
  'tls',
  'defaults',
  'routes',
  'name',
  'match',
  'direction',
  'pathPrefix',
  'methods',
  'timeoutMs',
  'maxHeaderBytes',
  'maxBodyBytes',
  'retries',
  'attempts',
  'on',
  'nonIdempotent',
  'budgetRatio',
  'budgetMinPerSecond',
  'drainTimeoutMs',
  'log',
  'level',
  'mesh',
  'keyEnv',
  'keyFile',
  'coordinators',
  'advertise',
  'tokenEnv',
  'tokenFile',
  'certFile',
  'caFile',
  'requireClientCert',
  'store',
  'dir',
  'hooks',
  'prepare',
  'commit',
  'abort',
  'steps',
  'events',
  'nats',
  'servers',
  'stream',
  'topics',
  'webhooks',
  'url',
  'ui',
  'traceUrl',
  'transaction',
  'mode',
  'compensation',
  'tcc',
  'confirm',
  'cancel',
  'nonTransactionalTarget',
  'method',
  'path',
  'body',
  'headers',
  'backoffBaseMs',
  'backoffCapMs',
  '__proto__',
  'constructor',
  'toString',
]
const SCALARS = [
  'orders',
  'payments',
  '127.0.0.1',
  '0.0.0.0',
  '::1',
  'localhost',
  '127.0.0.1:9001',
  '[::1]:1',
  'host:99999',
  ':80',
  '0',
  '-1',
  '65535',
  '65536',
  '1e400',
  '0x1F',
  '0o17',
  '.nan',
  '-.inf',
  '~',
  'null',
  'true',
  'yes',
  'on',
  'egress',
  'both',
  'GET',
  'POST',
  '/',
  '/pay',
  '*',
  '10.0.0.0/8:15010',
  '[fd00::/8]:*',
  '999.1.1.1/33:1',
  'connect-failure',
  '"503"',
  '2pc',
  'saga',
  'tcc',
  'required',
  'fail',
  'debug',
  'silent',
  'http://127.0.0.1:1/x',
  'nats://127.0.0.1:4222',
  '{response.json.id}',
  '{request.json.a.b}',
  '{tx.id}',
  '{nope}',
  '/dev/null',
  '/nonexistent/file',
  '\u0000',
  '\ud800',
]
const YAML_SYNTAX = [
  '&a ',
  '*a',
  '<<: *a',
  '!!str ',
  '!!int ',
  '!!binary ',
  '!!set ',
  '!!omap ',
  '!custom ',
  '? ',
  '--- ',
  '...',
  '%YAML 1.1\n',
  '%TAG ! tag:x,2000:\n',
  '|-\n  ',
  '>\n  ',
  '- ',
  ': ',
  '{',
  '}',
  '[',
  ']',
  '"\\u0000"',
  "'",
  '#',
]

/** Trees over the schema's keys and values (half of them land inside the schema's shape). */
const tree = fc.letrec((tie) => ({
  node: fc.oneof(
    { depthSize: 'small', withCrossShrink: true },
    fc.constantFrom<unknown>(...SCALARS),
    fc.oneof(fc.integer(), fc.double(), fc.boolean(), fc.constant(null), fc.string({ maxLength: 20 })),
    fc.array(tie('node'), { maxLength: 4 }),
    fc.dictionary(fc.constantFrom(...KEYS), tie('node'), { maxKeys: 6 }),
  ),
})).node

const documents = fc.oneof(
  tree.map((t) => stringify(t)),
  tree.map((t) => JSON.stringify(t) ?? ''),
  fc.dictionary(fc.constantFrom(...KEYS), tree, { maxKeys: 10 }).map((t) => stringify({ service: 'orders', ...t })),
)

describe('fuzz: YAML config', () => {
  const RUNS = fuzzRuns(800)

  it(
    'mutated real configs give a frozen config or positioned problems',
    () => {
      const bases = [
        EXAMPLE,
        sidecarYaml(
          'orders',
          8080,
          'routes:\n  - name: r\n    match: {pathPrefix: /x, methods: [GET]}\n    timeoutMs: 5\n',
          '/tmp/txmesh-fuzz-store',
        ),
      ]
      let accepted = 0
      fc.assert(
        fc.property(mutated(bases, [...KEYS.map((k) => `${k}: `), ...SCALARS, ...YAML_SYNTAX], 8), (text) => {
          if (!(check(text) instanceof ConfigInvalidError)) accepted++
        }),
        fuzzParams(RUNS * 3),
      )
      // The mutations keep some configs valid: the accepting path is exercised too.
      expect(accepted).toBeGreaterThan(0)
    },
    fuzzTimeout(RUNS * 3, 10),
  )

  it(
    'YAML generated over the schema keys, raw or mutated, gives a frozen config or positioned problems',
    () => {
      fc.assert(
        fc.property(
          documents,
          fc.array(fc.tuple(fc.nat(), fc.constantFrom(...YAML_SYNTAX, ...SCALARS)), { maxLength: 3 }),
          (text, splices) => {
            check(text)
            // The same document with YAML syntax spliced in at arbitrary places.
            check(
              splices.reduce((s, [at, w]) => s.slice(0, at % (s.length + 1)) + w + s.slice(at % (s.length + 1)), text),
            )
          },
        ),
        fuzzParams(RUNS * 2),
      )
    },
    fuzzTimeout(RUNS * 2, 20),
  )

  it(
    'arbitrary text never throws anything but ConfigInvalidError',
    () => {
      const text = fc.oneof(
        fc.string({ unit: 'binary', maxLength: 400 }),
        fc.string({ unit: fc.constantFrom(...YAML_SYNTAX, ...SCALARS, ' ', '\n', '  ', 'a'), maxLength: 60 }),
      )
      fc.assert(
        fc.property(text, (t) => void check(t)),
        fuzzParams(RUNS * 2),
      )
    },
    fuzzTimeout(RUNS * 2, 10),
  )

  it(
    'alias bombs are refused within the alias bound, quickly',
    () => {
      const bomb = fc.record({
        levels: fc.integer({ min: 1, max: 14 }),
        width: fc.integer({ min: 2, max: 12 }),
        where: fc.constantFrom('service', 'routes', 'mesh.coordinators', 'unknown'),
      })
      fc.assert(
        fc.property(bomb, ({ levels, width, where }) => {
          const lines = ['a0: &a0 "lol"']
          for (let i = 1; i <= levels; i++)
            lines.push(`a${i}: &a${i} [${Array.from({ length: width }, () => `*a${i - 1}`).join(', ')}]`)
          const root = `*a${levels}`
          const use =
            where === 'service'
              ? `service: ${root}`
              : where === 'routes'
                ? `routes: ${root}`
                : where === 'mesh.coordinators'
                  ? `mesh: {coordinators: ${root}}`
                  : `x: ${root}`
          const out = check(`${lines.join('\n')}\n${use}\n`)
          expect(out).toBeInstanceOf(ConfigInvalidError)
          // Past the bound the expansion itself is what is refused.
          if (levels * width > LIMITS.configMaxAliases) expect((out as ConfigInvalidError).message).toMatch(/alias/i)
        }),
        fuzzParams(Math.max(50, Math.ceil(RUNS / 4))),
      )
    },
    fuzzTimeout(RUNS, 50),
  )

  it(
    'secret and certificate keys naming devices, FIFOs, directories or huge files are problems at their key, not hangs',
    () => {
      const dir = tempDir('txmesh-fuzz-files-')
      const fifo = join(dir, 'fifo')
      execFileSync('mkfifo', [fifo])
      const huge = join(dir, 'huge')
      writeFileSync(huge, '')
      truncateSync(huge, 64 * 1024 * 1024)
      const subdir = join(dir, 'd')
      mkdirSync(subdir)
      const loop = join(dir, 'loop')
      symlinkSync(loop, loop)
      const empty = join(dir, 'empty')
      writeFileSync(empty, '')
      const paths = [
        '/dev/zero',
        '/dev/urandom',
        '/dev/null',
        '/dev/stdin',
        '/proc/self/mem',
        fifo,
        huge,
        subdir,
        loop,
        empty,
        join(dir, 'missing'),
      ]
      const placements = [
        (p: string) => `mesh: {keyEnv: TXMESH_FUZZ_UNSET, keyFile: ${JSON.stringify(p)}}`,
        (p: string) => `admin: {tokenFile: ${JSON.stringify(p)}}`,
        (p: string) =>
          `tls: {certFile: ${JSON.stringify(p)}, keyFile: ${JSON.stringify(p)}, caFile: ${JSON.stringify(p)}}`,
      ]
      fc.assert(
        fc.property(fc.constantFrom(...paths), fc.constantFrom(...placements), (path, place) => {
          const out = check(`service: orders\n${place(path)}\n`)
          expect(out).toBeInstanceOf(ConfigInvalidError)
          // The problem points at the key on line 2, and never quotes file content.
          const problems = (out as ConfigInvalidError).problems
          expect(problems.some((p) => p.line === 2)).toBe(true)
        }),
        fuzzParams(Math.max(100, Math.ceil(RUNS / 10))),
      )
    },
    fuzzTimeout(RUNS, 20),
  )
})
