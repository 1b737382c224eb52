// The headless Chromium that the npm package @sparticuz/chromium ships (a devDependency): its
// binary and the NSS libraries it links (libnss3, libnspr4, libexpat), unpacked once into the
// temp dir. The browser tests prefer it (test/helpers/browser.ts); where it cannot run,
// scripts/test-tools.mjs falls back to Debian's chromium package.
import { spawnSync } from 'node:child_process'

const ENV_KEYS = ['AWS_EXECUTION_ENV', 'LD_LIBRARY_PATH', 'FONTCONFIG_PATH', 'HOME']

/**
 * `{ executablePath, env }` to launch the packaged Chromium with (env: the whole environment plus
 * the library and font paths it needs), or `{ error }` saying why it cannot run here.
 */
export async function packagedChromium() {
  const saved = Object.fromEntries(ENV_KEYS.map((k) => [k, process.env[k]]))
  // The package unpacks the NSS libraries (bin/al2023.tar.br) and points LD_LIBRARY_PATH at them
  // only where it believes it runs on Amazon Linux 2023, which it reads from AWS_EXECUTION_ENV;
  // the binary needs them on any system without libnss3. process.env is restored after.
  process.env.AWS_EXECUTION_ENV = 'AWS_Lambda_nodejs20.x'
  try {
    const { default: chromium } = await import('@sparticuz/chromium')
    const executablePath = await chromium.executablePath()
    const env = { ...saved, ...process.env }
    delete env.AWS_EXECUTION_ENV
    if (saved.AWS_EXECUTION_ENV !== undefined) env.AWS_EXECUTION_ENV = saved.AWS_EXECUTION_ENV
    const r = spawnSync(executablePath, ['--headless', '--no-sandbox', '--version'], {
      env,
      encoding: 'utf8',
      timeout: 30_000,
    })
    if (r.status !== 0)
      return {
        error: `${executablePath} --version failed (${r.status ?? r.signal}): ${(r.stderr ?? '').trim().slice(0, 300)}`,
      }
    return { executablePath, env, version: r.stdout.trim() }
  } catch (err) {
    return { error: `the packaged Chromium could not be unpacked: ${err instanceof Error ? err.message : String(err)}` }
  } finally {
    for (const k of ENV_KEYS) {
      if (saved[k] === undefined) delete process.env[k]
      else process.env[k] = saved[k]
    }
  }
}
