// Mesh key rotation across two running sidecars, through mesh.keyFile reloads (no restart):
// transactions run both ways (each sidecar coordinates one and takes part in the other's), so
// contexts, enlistment headers and control calls are signed and verified in both directions
// at every step of the rotation.
import { renameSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { request } from 'undici'
import { describe, expect, it } from 'vitest'
import { keyId } from '../../src/secrets.js'
import { signContext, signControl, verifyContext, verifyEnlisted } from '../../src/tx/protocol.js'
import { freePort, until } from '../../harness/ports.js'
import { tempDir } from '../../harness/temp.js'
import { rawRequest, sidecarYaml, spawnSidecar, type SidecarProcess } from '../helpers/servers.js'
import { startTxApp, stopAfterTests, type TxApp } from '../helpers/tx-app.js'

const { procs, apps } = stopAfterTests()

const K1 = 'k1-rotation-test-key-0123456789'
const K2 = 'k2-rotation-test-key-9876543210'
const ids = (...keys: string[]): string => JSON.stringify(keys.map((k) => keyId(Buffer.from(k))))

/** Writes the key file as a Secret volume update does: a new file renamed over the old one. */
function writeKeys(file: string, content: string): void {
  writeFileSync(`${file}.tmp`, content)
  renameSync(`${file}.tmp`, file)
}

interface Node {
  name: string
  app: TxApp
  sc: SidecarProcess
  keyFile: string
  ingress: number
  control: number
}

describe('mesh key rotation', () => {
  it('rotates K1 -> K2 across two sidecars by rewriting mesh.keyFile, then refuses K1; an invalid key file keeps the keys', async () => {
    const ports = {
      payments: { ingress: await freePort(), control: await freePort() },
      orders: { ingress: await freePort(), control: await freePort() },
    }
    const start = async (name: 'payments' | 'orders', peer: 'payments' | 'orders'): Promise<Node> => {
      const app = await startTxApp(name)
      apps.push(app)
      const keyFile = join(tempDir('txmesh-keys-'), 'mesh-key')
      writeKeys(keyFile, `${K1}\n`)
      const extra = `services:\n  ${peer}: {address: "127.0.0.1:${ports[peer].ingress}"}\nmesh: {keyFile: ${JSON.stringify(keyFile)}}\n`
      // TXMESH_MESH_KEY empty counts as unset: the keys come from the file.
      const sc = await spawnSidecar(
        sidecarYaml(name, app.port, extra),
        ['--ingress-port', String(ports[name].ingress), '--control-port', String(ports[name].control)],
        {
          TXMESH_MESH_KEY: '',
          TXMESH_LOG_LEVEL: 'info',
        },
      )
      procs.push(sc)
      app.egress = sc.ports.egress
      return { name, app, sc, keyFile, ingress: ports[name].ingress, control: ports[name].control }
    }
    const A = await start('payments', 'orders')
    const B = await start('orders', 'payments')
    const pids = [A.sc.child.pid, B.sc.child.pid]

    /** A transaction coordinated by `from` with work at `to`, committed; returns its context. */
    let n = 0
    const commitVia = async (from: Node, to: Node): Promise<string> => {
      const value = `${from.name[0]}${to.name[0]}${++n}`
      const r = await request(`http://127.0.0.1:${from.sc.ports.admin}/v1/transactions`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: '{"timeoutMs":10000}',
      })
      const tx = (await r.body.json()) as { id: string; context: string }
      const call = await rawRequest(from.sc.ports.egress, {
        method: 'POST',
        path: `http://${to.name}/write/${value}`,
        headers: { 'txmesh-context': tx.context },
      })
      expect(call.status, `${from.name} -> ${to.name}: ${call.body}`).toBe(200)
      const done = (await (
        await request(`http://127.0.0.1:${from.sc.ports.admin}/v1/transactions/${tx.id}/commit?wait=acks`, {
          method: 'POST',
        })
      ).body.json()) as { outcome: string }
      expect(done.outcome, `${from.name} -> ${to.name}`).toBe('committed')
      expect(to.app.committed).toContain(`${to.name}:${value}`)
      return tx.context
    }
    /** Both directions: each sidecar coordinates one transaction and takes part in the other. */
    const commitBothWays = async (): Promise<{ fromA: string; fromB: string }> => ({
      fromA: await commitVia(A, B),
      fromB: await commitVia(B, A),
    })

    /** How `node` treats a context and a control call signed with `key`, and which key signs its enlistment header. */
    let p = 0
    const probe = async (node: Node, key: string) => {
      const id = `probe${++p}`
      const ctx = signContext(Buffer.from(key), {
        id,
        mode: '2pc',
        coordinator: `127.0.0.1:${A.control}`,
        deadline: Date.now() + 1_000,
        parent: undefined,
      })
      const r = await rawRequest(node.ingress, {
        method: 'POST',
        path: `/write/${id}`,
        headers: { host: node.name, 'txmesh-context': ctx },
      })
      const enlisted = r.headers['txmesh-enlisted'] as string | undefined
      const path = `/v1/tx/${id}/outcome`
      const c = await request(`http://127.0.0.1:${node.control}${path}`, {
        headers: { 'txmesh-auth': signControl(Buffer.from(key), Date.now(), 'GET', path, '') },
      })
      await c.body.dump()
      return {
        context: r.status === 200 ? 'accepted' : `${r.status} ${String(r.headers['x-txmesh-error'])}`,
        control: c.statusCode === 200 ? 'accepted' : `${c.statusCode} ${String(c.headers['x-txmesh-error'])}`,
        enlistedWith:
          enlisted === undefined
            ? undefined
            : [K1, K2].filter((k) => !(verifyEnlisted([Buffer.from(k)], enlisted, id) instanceof Error)),
      }
    }
    const reloaded = (node: Node, ...keys: string[]) =>
      until(
        `${node.name} loads ${keys.length} keys`,
        () =>
          node.sc.stderr().includes(`"event":"mesh_keys_reloaded"`) &&
          node.sc.stderr().includes(`"keys":${ids(...keys)}`),
      )
    const rotate = async (node: Node, ...keys: string[]) => {
      writeKeys(node.keyFile, keys.join(','))
      await reloaded(node, ...keys)
    }
    const accepted = { context: 'accepted', control: 'accepted' }

    // Both on [K1]: K2 means nothing yet.
    await commitBothWays()
    expect(await probe(B, K1)).toEqual({ ...accepted, enlistedWith: [K1] })
    expect(await probe(B, K2)).toMatchObject({
      context: '401 TXM_CONTEXT_FORGED',
      control: '401 TXM_CONTROL_UNAUTHORIZED',
    })

    // 1. Every sidecar learns K2 while still signing with K1: [K1,K2].
    await rotate(B, K1, K2)
    await rotate(A, K1, K2)
    await commitBothWays()
    expect(await probe(B, K2)).toEqual({ ...accepted, enlistedWith: [K1] })

    // 2. B moves to [K2,K1]: it accepts contexts and control calls signed with either key and
    //    signs with K2 (its enlistment header verifies with K2 only).
    await rotate(B, K2, K1)
    expect(await probe(B, K1)).toEqual({ ...accepted, enlistedWith: [K2] })
    expect(await probe(B, K2)).toEqual({ ...accepted, enlistedWith: [K2] })
    let contexts = await commitBothWays()
    expect(verifyContext([Buffer.from(K2)], contexts.fromB, Date.now(), ['*'])).not.toBeInstanceOf(Error)
    expect(verifyContext([Buffer.from(K1)], contexts.fromA, Date.now(), ['*'])).not.toBeInstanceOf(Error)

    // 3. A moves to [K2,K1]: both sign with K2 now.
    await rotate(A, K2, K1)
    contexts = await commitBothWays()
    expect(verifyContext([Buffer.from(K2)], contexts.fromA, Date.now(), ['*'])).not.toBeInstanceOf(Error)

    // 4. Both drop K1: [K2]. K1-signed contexts and control calls are refused with their codes.
    await rotate(B, K2)
    await rotate(A, K2)
    await commitBothWays()
    expect(await probe(B, K1)).toMatchObject({
      context: '401 TXM_CONTEXT_FORGED',
      control: '401 TXM_CONTROL_UNAUTHORIZED',
    })
    expect(await probe(A, K1)).toMatchObject({
      context: '401 TXM_CONTEXT_FORGED',
      control: '401 TXM_CONTROL_UNAUTHORIZED',
    })
    expect(await probe(B, K2)).toEqual({ ...accepted, enlistedWith: [K2] })

    // An invalid key file (empty, then a key under 16 bytes) keeps the current keys and logs one
    // warning for each bad content, naming the problem and never the content.
    const warnings = () =>
      B.sc
        .stderr()
        .split('\n')
        .filter((l) => l.includes('"event":"mesh_key_file_invalid"'))
    writeKeys(B.keyFile, '')
    await until('a warning for the empty file', () => warnings().length === 1)
    writeKeys(B.keyFile, 'too-short-key')
    await until('a warning for the short key', () => warnings().length === 2)
    await new Promise((r) => setTimeout(r, 2_500))
    expect(warnings()).toHaveLength(2)
    expect(warnings()[0]).toContain('holds no key')
    expect(warnings()[1]).toContain('shorter than 16 bytes')
    expect(B.sc.stderr()).not.toContain('too-short-key')
    expect(await probe(B, K2)).toEqual({ ...accepted, enlistedWith: [K2] })
    await commitBothWays()

    // No restart at any point, and no key in any log line.
    expect([A.sc.child.pid, B.sc.child.pid]).toEqual(pids)
    expect([A.sc.child.exitCode, B.sc.child.exitCode]).toEqual([null, null])
    for (const node of [A, B]) for (const k of [K1, K2]) expect(node.sc.stderr()).not.toContain(k)
  }, 60_000)
})
