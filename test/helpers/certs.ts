// Test PKI made with the openssl command line: a CA and leaf certificates for 127.0.0.1 and
// localhost (serverAuth and clientAuth, so one certificate serves a sidecar both ways).
import { execFileSync } from 'node:child_process'
import { readFileSync, renameSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { tempDir } from '../../harness/temp.js'

export interface Leaf {
  readonly certFile: string
  readonly keyFile: string
  /** Serial number as Node's getPeerCertificate() shows it (upper-case hex). */
  readonly serial: string
}

export interface TestPki {
  readonly dir: string
  readonly caFile: string
  /** Issues a new leaf for 127.0.0.1/localhost with the given serial (hex). */
  issue(name: string, serialHex: string): Leaf
}

function openssl(args: string[], cwd: string): void {
  execFileSync('openssl', args, { cwd, stdio: 'pipe' })
}

export function makePki(caName = 'txmesh-test-ca'): TestPki {
  const dir = tempDir('txmesh-pki-')
  openssl(
    [
      'req',
      '-x509',
      '-newkey',
      'ec',
      '-pkeyopt',
      'ec_paramgen_curve:prime256v1',
      '-nodes',
      '-keyout',
      'ca.key',
      '-out',
      'ca.pem',
      '-days',
      '2',
      '-subj',
      `/CN=${caName}`,
      '-addext',
      'basicConstraints=critical,CA:TRUE',
      '-addext',
      'keyUsage=critical,keyCertSign,cRLSign',
    ],
    dir,
  )
  writeFileSync(
    join(dir, 'leaf.ext'),
    'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n',
  )
  return {
    dir,
    caFile: join(dir, 'ca.pem'),
    issue(name, serialHex) {
      openssl(
        [
          'req',
          '-newkey',
          'ec',
          '-pkeyopt',
          'ec_paramgen_curve:prime256v1',
          '-nodes',
          '-keyout',
          `${name}.key`,
          '-out',
          `${name}.csr`,
          '-subj',
          `/CN=${name}`,
        ],
        dir,
      )
      openssl(
        [
          'x509',
          '-req',
          '-in',
          `${name}.csr`,
          '-CA',
          'ca.pem',
          '-CAkey',
          'ca.key',
          '-set_serial',
          `0x${serialHex}`,
          '-days',
          '2',
          '-out',
          `${name}.pem`,
          '-extfile',
          'leaf.ext',
        ],
        dir,
      )
      return { certFile: join(dir, `${name}.pem`), keyFile: join(dir, `${name}.key`), serial: serialHex.toUpperCase() }
    },
  }
}

/** Replaces `dst` with the content of `src` atomically (as a Secret volume swap does). */
export function replaceFile(src: string, dst: string): void {
  const tmp = `${dst}.tmp-${process.pid}`
  writeFileSync(tmp, readFileSync(src))
  renameSync(tmp, dst)
}

/** The base64 lines of a PEM (its body, without the BEGIN/END lines). */
export function pemBodyLines(pem: string): string[] {
  return pem.split('\n').filter((l) => l !== '' && !l.startsWith('-----'))
}
