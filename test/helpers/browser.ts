// The Chromium the browser tests drive (playwright-core): the headless build that npm installs
// with the devDependency @sparticuz/chromium (scripts/chromium.mjs), else Debian's
// /usr/bin/chromium, which scripts/test-tools.mjs (npm test's pretest) installs as root when the
// packaged one cannot run on this machine. Not a skip when neither is there: a clear error.
import { existsSync } from 'node:fs'
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
