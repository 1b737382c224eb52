// The Dockerfile, without a Docker engine: its build stage's steps (npm ci, build, prune) run in a
// temporary directory standing for the build stage's /app, the runtime stage's COPY --from lines
// fill a second one standing for the image's /app, and the image's ENTRYPOINT + CMD start from
// there with the config "volume" at a third path. So the test proves that the files the image
// gets are enough to run the sidecar (and the other commands), and nothing from the repo leaks in.
//
// What it cannot run: RUN lines that install system packages (apt-get) or set up users and
// directories as root; they are skipped and listed. USER, WORKDIR, ENTRYPOINT and CMD are
// checked against the Kubernetes contract (src/k8s/constants.ts, src/runtime.ts).
import { spawn, spawnSync, type ChildProcess } from 'node:child_process'
import {
  cpSync,
  existsSync,
  lstatSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from 'node:fs'
import { tmpdir } from 'node:os'
import { dirname, join, posix, relative } from 'node:path'
import { createInterface } from 'node:readline'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { CONFIG_DIR, CONFIG_FILE, STORE_DIR, TXMESH_GID, TXMESH_UID } from '../../src/k8s/constants.js'
import { SIDECAR_NODE_FLAGS } from '../../src/runtime.js'

const root = join(import.meta.dirname, '../..')
const BUILD_TIMEOUT_MS = 300_000 // npm ci of the whole lockfile (from the npm cache when warm) + tsc, on 2 cores
const START_TIMEOUT_MS = 20_000 // the sidecar prints its listening line well under a second after start

// ---- a small Dockerfile parser ----

interface Instruction {
  readonly op: string
  readonly args: string
  readonly line: number
}
interface Stage {
  readonly from: string
  readonly name: string | undefined
  readonly instructions: Instruction[]
}

function parseDockerfile(text: string): Stage[] {
  const stages: Stage[] = []
  const lines = text.split('\n')
  for (let i = 0; i < lines.length; i++) {
    const start = i
    let l = (lines[i] ?? '').trim()
    if (l === '' || l.startsWith('#')) continue
    // Continuations: a trailing backslash joins the next line; comment lines inside are dropped.
    while (l.endsWith('\\') && i + 1 < lines.length) {
      i++
      const next = (lines[i] ?? '').trim()
      l = l.slice(0, -1).trimEnd() + (next.startsWith('#') ? ' \\' : ' ' + next)
    }
    const m = /^([A-Za-z]+)\s+(.*)$/s.exec(l)
    if (m === null) throw new Error(`Dockerfile:${start + 1}: cannot parse "${l}"`)
    const op = (m[1] as string).toUpperCase()
    const args = (m[2] as string).trim()
    if (op === 'FROM') {
      const f = /^(\S+)(?:\s+AS\s+(\S+))?$/i.exec(args)
      if (f === null) throw new Error(`Dockerfile:${start + 1}: FROM "${args}"`)
      stages.push({ from: f[1] as string, name: f[2], instructions: [] })
      continue
    }
    const stage = stages.at(-1)
    if (stage === undefined) throw new Error(`Dockerfile:${start + 1}: ${op} before FROM`)
    // Anything else would change what the image is in ways this test does not simulate.
    if (!['WORKDIR', 'COPY', 'RUN', 'ENV', 'USER', 'VOLUME', 'EXPOSE', 'ENTRYPOINT', 'CMD', 'LABEL'].includes(op)) {
      throw new Error(`Dockerfile:${start + 1}: ${op} is not simulated by this test; extend it`)
    }
    stage.instructions.push({ op, args, line: start + 1 })
  }
  return stages
}

const last = (stage: Stage, op: string): Instruction | undefined => stage.instructions.filter((i) => i.op === op).at(-1)
function execForm(i: Instruction | undefined, what: string): string[] {
  if (i === undefined) throw new Error(`no ${what}`)
  if (!i.args.startsWith('['))
    throw new Error(`Dockerfile:${i.line}: ${what} must be exec form (JSON), so signals reach node`)
  return JSON.parse(i.args) as string[]
}
function envOf(stage: Stage): Record<string, string> {
  const env: Record<string, string> = {}
  for (const i of stage.instructions.filter((x) => x.op === 'ENV')) {
    for (const kv of i.args.split(/\s+/)) {
      const eq = kv.indexOf('=')
      if (eq <= 0) throw new Error(`Dockerfile:${i.line}: use ENV KEY=VALUE`)
      env[kv.slice(0, eq)] = kv.slice(eq + 1)
    }
  }
  return env
}

// ---- .dockerignore (Docker's rules, for the patterns we use: *, ?, **, !, directories) ----

function dockerignore(text: string): (path: string) => boolean {
  const rules = text
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l !== '' && !l.startsWith('#'))
    .map((l) => {
      const negate = l.startsWith('!')
      const pattern = posix
        .normalize((negate ? l.slice(1) : l).trim())
        .replace(/^\/+/, '')
        .replace(/\/+$/, '')
      let re = ''
      for (let i = 0; i < pattern.length; i++) {
        const c = pattern[i] as string
        if (c === '*' && pattern[i + 1] === '*') {
          i++
          if (pattern[i + 1] === '/') {
            i++
            re += '(?:.*/)?'
          } else re += '.*'
        } else if (c === '*') re += '[^/]*'
        else if (c === '?') re += '[^/]'
        else re += c.replace(/[.+^${}()|[\]\\]/g, '\\$&')
      }
      return { negate, re: new RegExp(`^${re}$`) }
    })
  return (path: string): boolean => {
    // A pattern that matches a directory excludes everything below it.
    const parts = path.split('/')
    const prefixes = parts.map((_, i) => parts.slice(0, i + 1).join('/'))
    let ignored = false
    for (const r of rules) if (prefixes.some((p) => r.re.test(p))) ignored = !r.negate
    return ignored
  }
}

// ---- simulating the stages ----

/** Where a stage's image path lives on this machine: only WORKDIR (/app) is simulated. */
function mapper(stage: Stage, dir: string): (p: string) => string {
  const workdir = last(stage, 'WORKDIR')?.args ?? '/'
  return (p) => {
    const abs = posix.resolve(workdir, p)
    if (abs !== workdir && !abs.startsWith(workdir + '/'))
      throw new Error(`${abs} is outside WORKDIR ${workdir}; the test maps only WORKDIR`)
    return join(dir, posix.relative(workdir, abs))
  }
}

function copyArgs(i: Instruction): { from: string | undefined; sources: string[]; dest: string } {
  const words = i.args.split(/\s+/)
  let from: string | undefined
  while (words[0]?.startsWith('--')) {
    const flag = words.shift() as string
    if (flag.startsWith('--from=')) from = flag.slice('--from='.length)
    else if (!/^--(chown|chmod|link)(=|$)/.test(flag))
      throw new Error(`Dockerfile:${i.line}: COPY ${flag} not simulated`)
  }
  const dest = words.pop()
  if (dest === undefined || words.length === 0)
    throw new Error(`Dockerfile:${i.line}: COPY needs sources and a destination`)
  return { from, sources: words, dest }
}

function filesUnder(dir: string, rel: string): string[] {
  const abs = join(dir, rel)
  if (!lstatSync(abs).isDirectory()) return [rel]
  return readdirSync(abs).flatMap((n) => filesUnder(dir, rel === '' ? n : `${rel}/${n}`))
}

/** COPY from the build context: the repo, through .dockerignore (an excluded source is an error, as in Docker). */
function copyFromContext(sources: string[], dest: string, ignored: (p: string) => boolean): string[] {
  const copied: string[] = []
  const intoDir = dest.endsWith('/') || sources.length > 1
  for (const src of sources) {
    const rel = posix.normalize(src).replace(/^\.\/|\/$/g, '')
    if (!existsSync(join(root, rel)) || ignored(rel))
      throw new Error(`COPY ${src}: not in the build context (or excluded by .dockerignore)`)
    const isDir = lstatSync(join(root, rel)).isDirectory()
    for (const f of filesUnder(root, rel)) {
      if (ignored(f)) continue
      const target = isDir ? join(dest, relative(rel, f)) : intoDir ? join(dest, posix.basename(f)) : dest
      mkdirSync(dirname(target), { recursive: true })
      cpSync(join(root, f), target)
      copied.push(f)
    }
  }
  return copied
}

const isSystemSetup = (cmd: string): boolean => /\bapt-get\b/.test(cmd)

// ---- the test ----

const dockerfile = readFileSync(join(root, 'Dockerfile'), 'utf8')
const stages = parseDockerfile(dockerfile)
const ignored = dockerignore(readFileSync(join(root, '.dockerignore'), 'utf8'))
const runtime = stages.at(-1) as Stage
const buildStage = stages.find((s) => s.name === 'build')

describe('Dockerfile and .dockerignore, as written', () => {
  it('is a multi-stage build: a build stage, then a runtime stage on the same Node major', () => {
    expect(stages).toHaveLength(2)
    expect(buildStage).toBeDefined()
    expect(buildStage?.from).toMatch(/^node:24-slim$/)
    expect(runtime.from).toMatch(/^(node:24-slim|gcr\.io\/distroless\/nodejs24-debian12)(@sha256:[0-9a-f]{64})?$/)
    const runs = (buildStage?.instructions ?? []).filter((i) => i.op === 'RUN').map((i) => i.args)
    expect(runs[0]).toMatch(/^npm ci\b/)
    expect(runs).toContain('npm run build')
    expect(runs.at(-1)).toMatch(/^npm prune --omit=dev\b/)
  })

  it('runs as uid/gid 10001 in /app with the contract entrypoint and command', () => {
    const user = last(runtime, 'USER')?.args
    expect(user).toBe(`${TXMESH_UID}:${TXMESH_GID}`)
    expect(last(runtime, 'USER')?.line, 'USER is the last word on who runs').toBeGreaterThan(
      Math.max(...runtime.instructions.filter((i) => i.op === 'RUN').map((i) => i.line)),
    )
    expect(last(runtime, 'WORKDIR')?.args).toBe('/app')
    expect(execForm(last(runtime, 'ENTRYPOINT'), 'ENTRYPOINT')).toEqual([
      'node',
      ...SIDECAR_NODE_FLAGS,
      '/app/dist/cli/index.js',
    ])
    expect(execForm(last(runtime, 'CMD'), 'CMD')).toEqual(['sidecar', '--config', CONFIG_FILE])
    expect(JSON.parse(last(runtime, 'VOLUME')?.args ?? '[]')).toEqual([STORE_DIR])
  })

  it('the runtime image has iptables, for the txmesh-init container that runs the same image', () => {
    const setup = runtime.instructions
      .filter((i) => i.op === 'RUN')
      .map((i) => i.args)
      .join('\n')
    expect(setup).toMatch(/apt-get install -y --no-install-recommends iptables\b/)
    expect(setup).toMatch(/rm -rf \/var\/lib\/apt\/lists/)
    expect(setup).toContain(`useradd --uid ${TXMESH_UID} --gid ${TXMESH_GID}`)
    expect(setup).toMatch(new RegExp(`chown ${TXMESH_UID}:${TXMESH_GID} ${STORE_DIR}\\b`))
  })

  it('.dockerignore keeps dependencies, build output, git, test artifacts and bench output out of the context', () => {
    for (const p of [
      'node_modules/yaml/package.json',
      'dist/cli/index.js',
      '.git/HEAD',
      'test/artifacts/dashboard.png',
      'bench/results/x.json',
      'src/x/y.log',
      'txmesh-data/orders/seg-1',
    ]) {
      expect(ignored(p), p).toBe(true)
    }
    for (const p of [
      'package.json',
      'package-lock.json',
      'tsconfig.json',
      'tsconfig.build.json',
      'src/cli/index.ts',
      'config/txmesh.schema.json',
    ]) {
      expect(ignored(p), p).toBe(false)
    }
  })
})

describe('Dockerfile, built and started without Docker', () => {
  const tmp = mkdtempSync(join(tmpdir(), 'txmesh-dockerfile-'))
  const buildDir = join(tmp, 'build-app') // the build stage's /app
  const imageDir = join(tmp, 'image-app') // the runtime image's /app
  const configDir = join(tmp, 'etc-txmesh') // the ConfigMap volume at /etc/txmesh
  const storeDir = join(tmp, 'var-lib-txmesh') // the txmesh-log volume at /var/lib/txmesh
  const skipped: string[] = []
  const contextFiles: string[] = []
  let child: ChildProcess | undefined

  beforeAll(() => {
    for (const d of [buildDir, imageDir, configDir, storeDir]) mkdirSync(d, { recursive: true })
    if (buildStage === undefined) throw new Error('no build stage')
    const dirs = new Map<string, string>([['build', buildDir]])
    for (const stage of stages) {
      const dir = stage === runtime ? imageDir : (dirs.get(stage.name ?? '') ?? buildDir)
      const map = mapper(stage, dir)
      // The builder's environment, not the test runner's (vitest sets NODE_ENV, which npm reads).
      // Where npm finds packages is kept (a CI mirror or cache), nothing else.
      const npm = Object.fromEntries(
        ['npm_config_cache', 'npm_config_registry'].flatMap((k) =>
          process.env[k] === undefined ? [] : [[k, process.env[k]]],
        ),
      )
      const env = {
        PATH: process.env.PATH ?? '',
        HOME: process.env.HOME ?? tmp,
        ...npm,
        ...envOf(stage),
        npm_config_update_notifier: 'false',
      }
      for (const i of stage.instructions) {
        if (i.op === 'COPY') {
          const { from, sources, dest } = copyArgs(i)
          if (from === undefined) {
            contextFiles.push(...copyFromContext(sources, map(dest) + (dest.endsWith('/') ? '/' : ''), ignored))
          } else {
            const source = stages.find((s) => s.name === from)
            if (source === undefined) throw new Error(`Dockerfile:${i.line}: no stage ${from}`)
            const srcMap = mapper(source, dirs.get(from) ?? buildDir)
            for (const s of sources) {
              // verbatimSymlinks: node_modules/.bin links stay relative, as COPY keeps them.
              cpSync(srcMap(s), map(dest), { recursive: true, verbatimSymlinks: true })
            }
          }
        } else if (i.op === 'RUN') {
          if (isSystemSetup(i.args)) {
            skipped.push(
              `Dockerfile:${i.line} (system packages and users; needs root and apt): ${i.args.slice(0, 60)}...`,
            )
            continue
          }
          // --prefer-offline: use the npm cache when it has the package (it is the same lockfile).
          const cmd = i.args.replace(/^npm ci\b/, 'npm ci --prefer-offline')
          const r = spawnSync('sh', ['-c', cmd], { cwd: map('.'), env, encoding: 'utf8', timeout: BUILD_TIMEOUT_MS })
          if (r.status !== 0)
            throw new Error(
              `Dockerfile:${i.line} "${cmd}" exited ${String(r.status)}:\n${r.stdout.slice(-2000)}\n${r.stderr.slice(-4000)}`,
            )
        }
      }
    }
    if (skipped.length > 0) console.info(`not simulated:\n  ${skipped.join('\n  ')}`)
  }, BUILD_TIMEOUT_MS)

  afterAll(() => {
    child?.kill('SIGKILL')
    if (process.env.TXMESH_KEEP_DOCKERFILE_TEST !== '1') rmSync(tmp, { recursive: true, force: true })
  })

  it('sends the builder only package*.json, tsconfig*.json, src/ and config/', () => {
    expect(contextFiles).toContain('package-lock.json')
    expect(contextFiles).toContain('src/cli/index.ts')
    const tops = new Set(contextFiles.map((f) => f.split('/')[0]))
    expect([...tops].sort()).toEqual([
      'config',
      'package-lock.json',
      'package.json',
      'src',
      'tsconfig.build.json',
      'tsconfig.json',
    ])
  })

  it('skips only the apt-get line, and says so', () => {
    expect(skipped).toHaveLength(1)
    expect(skipped[0]).toContain('apt-get')
  })

  it('the image holds the built CLI, the config schema and production dependencies only', () => {
    expect(existsSync(join(imageDir, 'dist/cli/index.js'))).toBe(true)
    expect(existsSync(join(imageDir, 'config/txmesh.schema.json'))).toBe(true) // the config validator reads it at run time
    expect(readdirSync(imageDir).sort()).toEqual(['config', 'dist', 'node_modules', 'package.json'])
    const pkg = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')) as {
      dependencies: Record<string, string>
      devDependencies: Record<string, string>
    }
    for (const dep of Object.keys(pkg.dependencies))
      expect(existsSync(join(imageDir, 'node_modules', dep, 'package.json')), dep).toBe(true)
    expect(existsSync(join(imageDir, 'node_modules/vitest')), 'vitest').toBe(false)
    // Every package the lockfile marks dev-only is gone, not just the direct devDependencies.
    const lock = JSON.parse(readFileSync(join(root, 'package-lock.json'), 'utf8')) as {
      packages: Record<string, { dev?: boolean }>
    }
    const devOnly = Object.entries(lock.packages)
      .filter(([p, v]) => p !== '' && v.dev === true)
      .map(([p]) => p)
    expect(devOnly.length).toBeGreaterThan(Object.keys(pkg.devDependencies).length)
    const left = devOnly.filter((p) => existsSync(join(imageDir, p)))
    expect(left).toEqual([])
  })

  it('nothing above the image directory can supply modules (the image is all it has)', () => {
    for (let d = dirname(imageDir); ; d = dirname(d)) {
      expect(existsSync(join(d, 'node_modules')), `${d}/node_modules`).toBe(false)
      if (dirname(d) === d) break
    }
  })

  it('ENTRYPOINT + CMD start the sidecar: it prints its listening line and answers /healthz; SIGTERM exits 0', async () => {
    // The config a ConfigMap would mount; listeners on loopback, ports picked by the flags.
    writeFileSync(
      join(configDir, 'txmesh.yaml'),
      [
        'listeners: {egress: {host: 127.0.0.1}, ingress: {host: 127.0.0.1}, control: {host: 127.0.0.1}, admin: {host: 127.0.0.1}, health: {host: 127.0.0.1}}',
        `store: {dir: ${JSON.stringify(STORE_DIR)}}`,
        'log: {level: warn}',
      ].join('\n'),
    )
    const toHost = (a: string): string =>
      a.startsWith('/app/')
        ? join(imageDir, a.slice('/app/'.length))
        : a.startsWith(CONFIG_DIR + '/')
          ? join(configDir, a.slice(CONFIG_DIR.length + 1))
          : a
    const [node, ...entry] = execForm(last(runtime, 'ENTRYPOINT'), 'ENTRYPOINT')
    expect(node).toBe('node')
    const argv = [...entry, ...execForm(last(runtime, 'CMD'), 'CMD')].map(toHost)
    const ports = [
      '--app-port',
      '1',
      '--egress-port',
      '0',
      '--ingress-port',
      '0',
      '--control-port',
      '0',
      '--admin-port',
      '0',
      '--health-port',
      '0',
    ]
    child = spawn(process.execPath, [...argv, ...ports], {
      cwd: imageDir,
      stdio: ['ignore', 'pipe', 'pipe'],
      // What the injector gives the sidecar (the store dir is the volume, here a temp dir).
      env: {
        PATH: process.env.PATH ?? '',
        ...envOf(runtime),
        TXMESH_SERVICE: 'orders',
        TXMESH_STORE_DIR: storeDir,
        TXMESH_MESH_KEY: 'dockerfile-test-mesh-key-0123456789',
      },
    })
    let stderr = ''
    child.stderr?.on('data', (c: Buffer) => (stderr += c.toString()))
    const proc = child
    const line = await new Promise<string>((resolve, reject) => {
      const t = setTimeout(
        () => reject(new Error(`no listening line after ${START_TIMEOUT_MS} ms; stderr:\n${stderr}`)),
        START_TIMEOUT_MS,
      )
      createInterface({ input: proc.stdout! }).once('line', (l) => {
        clearTimeout(t)
        resolve(l)
      })
      proc.once('exit', (code) => reject(new Error(`sidecar exited ${String(code)}; stderr:\n${stderr}`)))
    })
    const listening = JSON.parse(line) as { event: string; service: string; ports: Record<string, number> }
    expect(listening.event).toBe('listening')
    expect(listening.service).toBe('orders')
    const admin = listening.ports.admin
    expect(admin).toBeGreaterThan(0)
    const health = await fetch(`http://127.0.0.1:${String(admin)}/healthz`)
    expect(health.status).toBe(200)
    await health.body?.cancel()
    if (listening.ports.health !== undefined) {
      const probe = await fetch(`http://127.0.0.1:${String(listening.ports.health)}/healthz`)
      expect(probe.status).toBe(200)
      await probe.body?.cancel()
    }
    // The log went to the volume, and no runtime-flag warning: the ENTRYPOINT passes them.
    expect(readdirSync(storeDir).length).toBeGreaterThan(0)
    expect(stderr).not.toContain('runtime_flags_missing')
    const code = await new Promise<number | null>((resolve) => {
      proc.once('exit', (c) => resolve(c))
      proc.kill('SIGTERM')
    })
    expect(code).toBe(0)
    child = undefined
  })

  it('the image also runs the demo app and the injector (their dependencies survived the prune)', () => {
    const [, ...entry] = execForm(last(runtime, 'ENTRYPOINT'), 'ENTRYPOINT')
    const cli = entry.map((a) => (a.startsWith('/app/') ? join(imageDir, a.slice(5)) : a))
    const env = { PATH: process.env.PATH ?? '', ...envOf(runtime) }
    const demo = spawnSync(process.execPath, [...cli, 'demo-app', '--help'], {
      cwd: imageDir,
      env,
      encoding: 'utf8',
      timeout: 20_000,
    })
    expect(demo.stderr).toBe('')
    expect(demo.status).toBe(0)
    expect(demo.stdout).toContain('--service orders|payments|inventory')
    const help = spawnSync(process.execPath, [...cli, 'help'], {
      cwd: imageDir,
      env,
      encoding: 'utf8',
      timeout: 20_000,
    })
    if (!help.stdout.includes('inject')) return // the injector is not built yet
    const deployment = readFileSync(join(root, 'deploy/examples/shop/orders.yaml'), 'utf8')
    const injected = spawnSync(process.execPath, [...cli, 'inject'], {
      cwd: imageDir,
      env,
      input: deployment,
      encoding: 'utf8',
      timeout: 20_000,
    })
    expect(injected.stderr).toBe('')
    expect(injected.status).toBe(0)
    expect(injected.stdout).toContain('name: txmesh-proxy')
  })
})
