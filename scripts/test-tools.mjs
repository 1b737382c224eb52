#!/usr/bin/env node
// `npm test` runs this first (the `pretest` script): the suite drives real programs that npm does
// not ship, and the test command must set them up by itself on a fresh machine with only Node
// and npm. What each is for:
//   chromium     the dashboard and admin-browser tests (playwright-core drives it): the headless
//                build npm installs with @sparticuz/chromium (scripts/chromium.mjs) when it runs
//                here, else Debian's /usr/bin/chromium
//   nats-server  the event-sink, event and message tests (a real JetStream server)
//   openssl      the peer TLS and secrets tests make their certificates with it
// Found: nothing to do. Missing, as root on Debian: installs the Debian packages, saying so.
// Missing otherwise: stops with the exact command to run. No network is used when all are there.
import { spawnSync } from 'node:child_process'
import { accessSync, constants } from 'node:fs'
import { delimiter, join } from 'node:path'
import { packagedChromium } from './chromium.mjs'

/** program -> where the tests look for it besides PATH, and the Debian package that has it. */
const TOOLS = [
  { program: 'chromium', paths: ['/usr/bin/chromium'], pkg: 'chromium', for: 'the dashboard and admin-browser tests' },
  {
    program: 'nats-server',
    paths: ['/usr/sbin/nats-server', '/usr/bin/nats-server'],
    pkg: 'nats-server',
    for: 'the event tests',
  },
  { program: 'openssl', paths: ['/usr/bin/openssl'], pkg: 'openssl', for: 'the TLS tests' },
]

function executable(file) {
  try {
    accessSync(file, constants.X_OK)
    return true
  } catch {
    return false
  }
}

function found(tool) {
  if (tool.paths.some(executable)) return true
  return (process.env.PATH ?? '').split(delimiter).some((dir) => dir !== '' && executable(join(dir, tool.program)))
}

// The packaged Chromium first: nothing to install when it runs (the browser tests prefer it).
const packaged = await packagedChromium()
if ('error' in packaged) process.stderr.write(`txmesh tests: ${packaged.error}; trying Debian's chromium\n`)
const needed = 'error' in packaged ? TOOLS : TOOLS.filter((t) => t.program !== 'chromium')
const missing = needed.filter((t) => !found(t))
if (missing.length === 0) process.exit(0)

const pkgs = missing.map((t) => t.pkg)
const command = `apt-get update && apt-get install -y --no-install-recommends ${pkgs.join(' ')}`
for (const t of missing) process.stderr.write(`txmesh tests: ${t.program} is missing (${t.for})\n`)
const root = typeof process.getuid === 'function' && process.getuid() === 0
const hasApt = executable('/usr/bin/apt-get')
if (!root || !hasApt) {
  process.stderr.write(
    hasApt
      ? `txmesh tests: run as root, then npm test again:\n  sudo ${command}\n`
      : `txmesh tests: install ${pkgs.join(', ')} with this system's package manager (on Debian: ${command}), then npm test again\n`,
  )
  process.exit(1)
}
process.stderr.write(`txmesh tests: installing Debian packages ${pkgs.join(' ')}\n`)
const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' }
for (const args of [
  ['update', '-qq'],
  ['install', '-y', '-qq', '--no-install-recommends', ...pkgs],
]) {
  const r = spawnSync('apt-get', args, { stdio: ['ignore', 'ignore', 'inherit'], env })
  if (r.status !== 0) {
    process.stderr.write(
      `txmesh tests: apt-get ${args.join(' ')} failed (exit ${r.status ?? r.signal}); install them by hand:\n  ${command}\n`,
    )
    process.exit(1)
  }
}
const still = missing.filter((t) => !found(t))
if (still.length > 0) {
  process.stderr.write(`txmesh tests: still missing after the install: ${still.map((t) => t.program).join(', ')}\n`)
  process.exit(1)
}
process.stderr.write(`txmesh tests: installed ${pkgs.join(' ')}\n`)
