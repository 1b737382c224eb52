// The Chromium the browser tests drive (playwright-core): the headless build that npm installs
// with the devDependency @sparticuz/chromium (scripts/chromium.mjs), else Debian's
// /usr/bin/chromium, which scripts/test-tools.mjs (npm test's pretest) installs as root when the
// packaged one cannot run on this machine. Not a skip when neither is there: a clear error.
import { existsSync } from 'node:fs'
import { chromium, type Browser } from 'playwright-core'
import { packagedChromium } from '../../scripts/chromium.mjs'

export interface TestChromium {
  readonly executablePath: string
  /** The environment to launch it with (the packaged build's library path), or the test's own. */
  readonly env?: Record<string, string>
}

const DEBIAN_CHROMIUM = '/usr/bin/chromium'
let found: Promise<TestChromium> | undefined

async function find(): Promise<TestChromium> {
  const packaged = await packagedChromium()
  if (!('error' in packaged)) return { executablePath: packaged.executablePath, env: packaged.env }
  if (existsSync(DEBIAN_CHROMIUM)) return { executablePath: DEBIAN_CHROMIUM }
  throw new Error(
    `no Chromium for the browser tests: ${packaged.error}; and ${DEBIAN_CHROMIUM} is missing (npm test installs Debian's chromium as root: scripts/test-tools.mjs)`,
  )
}

/** Where the browser tests' Chromium is and how to launch it (found once per test file). */
export function testChromium(): Promise<TestChromium> {
  found ??= find()
  return found
}

/**
 * Launches the test Chromium headless, with a fresh temporary profile and nothing that reaches
 * beyond loopback (no background networking, updates, sync or QUIC); `extraArgs` are added.
 */
export async function launchTestChromium(extraArgs: readonly string[] = []): Promise<Browser> {
  const { executablePath, env } = await testChromium()
  return chromium.launch({
    executablePath,
    ...(env === undefined ? {} : { env }),
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
      ...extraArgs,
    ],
  })
}
