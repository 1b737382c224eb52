// The Lease client of store.lease kubernetes (src/store/kube-lease.ts) against an API server that
// serves Leases as the Kubernetes API documents them (test/helpers/kube-api.ts): optimistic
// concurrency decides between two claimers, lapse is judged on the observer's own clock, a
// holder whose Lease names another holder at renewal is told so, and a wrong token or an API
// server that is away is an error the caller retries, never a lease taken.
import { writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { KubeApiError, KubeLeases, leaseName } from '../../src/store/kube-lease.js'
import { silentLogger } from '../../src/telemetry/logger.js'
import { startKubeApi, type KubeApi } from '../helpers/kube-api.js'

let api: KubeApi
const clients: KubeLeases[] = []
const client = (env: Record<string, string> = api.env): KubeLeases => {
  const c = KubeLeases.inCluster(silentLogger, env)
  clients.push(c)
  return c
}

beforeAll(async () => {
  api = await startKubeApi('txmesh-shop')
})
afterAll(async () => {
  await Promise.all(clients.map((c) => c.close()))
  await api.close()
})

describe('Kubernetes Leases for the shared store', () => {
  it('names each log by a DNS-1123 name unique to its id', () => {
    const a = leaseName('orders/orders-7d9f-abc')
    const b = leaseName('Orders/orders_7d9f_abc')
    expect(a).toMatch(/^[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?$/)
    expect(b).toMatch(/^[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?$/)
    expect(a).not.toBe(b)
    expect(leaseName(`s/${'x'.repeat(300)}`).length).toBeLessThanOrEqual(253)
  })

  it('creates the Lease for its first holder; a sibling sees it held, and lapsed only after the lease length unchanged on its own clock', async () => {
    const holder = client()
    const sibling = client()
    expect(await holder.acquire('orders/a', 'a', 1_000)).toBe(true)
    const lease = api.leases.get(leaseName('orders/a'))
    expect(lease?.spec).toMatchObject({ holderIdentity: 'a', leaseDurationSeconds: 1, leaseTransitions: 0 })
    expect(lease?.metadata.namespace).toBe('txmesh-shop')
    // First sight: not lapsed, whatever renewTime says; nor claimable.
    expect(await sibling.lapsed('orders/a')).toBe(false)
    expect(await sibling.acquire('orders/a', 'b', 1_000)).toBe(false)
    // A renewal moves the version on: the sibling's wait starts again.
    await new Promise((r) => setTimeout(r, 700))
    expect(await holder.renew('orders/a', 'a', 1_000)).toBe('renewed')
    await new Promise((r) => setTimeout(r, 700))
    // Seen first now (a new version): counted from here, not from the renewal.
    expect(await sibling.lapsed('orders/a')).toBe(false)
    await new Promise((r) => setTimeout(r, 1_100))
    expect(await sibling.lapsed('orders/a')).toBe(true)
    expect(await sibling.acquire('orders/a', 'b', 1_000)).toBe(true)
    expect(api.leases.get(leaseName('orders/a'))?.spec).toMatchObject({ holderIdentity: 'b', leaseTransitions: 1 })
    // The old holder's next renewal finds another holder: lost, and it changes nothing.
    expect(await holder.renew('orders/a', 'a', 1_000)).toBe('lost')
    expect(api.holders.get(leaseName('orders/a'))).toEqual(['a', 'b'])
  })

  it('two siblings claiming one lapsed Lease at once: exactly one wins', async () => {
    const first = client()
    expect(await first.acquire('orders/race', 'dead', 1_000)).toBe(true)
    const [b, c] = [client(), client()]
    await Promise.all([b.lapsed('orders/race'), c.lapsed('orders/race')])
    await new Promise((r) => setTimeout(r, 1_100))
    const won = await Promise.all([b.acquire('orders/race', 'b', 1_000), c.acquire('orders/race', 'c', 1_000)])
    expect(won.filter(Boolean)).toHaveLength(1)
    expect(api.leases.get(leaseName('orders/race'))?.spec.holderIdentity).toBe(won[0] === true ? 'b' : 'c')
  })

  it('released, a Lease is free at once for its own instance; a release by one that no longer holds it changes nothing', async () => {
    const a = client()
    const b = client()
    expect(await a.acquire('orders/rel', 'a', 5_000)).toBe(true)
    await b.release('orders/rel', 'b')
    expect(api.leases.get(leaseName('orders/rel'))?.spec.holderIdentity).toBe('a')
    await a.release('orders/rel', 'a')
    expect(api.leases.get(leaseName('orders/rel'))?.spec.holderIdentity).toBeNull()
    expect(await b.lapsed('orders/rel')).toBe(true)
    expect(await b.acquire('orders/rel', 'b', 5_000)).toBe(true)
  })

  it('a Lease deleted under its holder (kubectl delete lease) is not lapsed to a sibling until missing for a lease on its clock; the holder creates it again at its next renewal', async () => {
    const holder = client()
    const sibling = client()
    expect(await holder.acquire('orders/del', 'a', 1_000)).toBe(true)
    expect(api.deleteLease(leaseName('orders/del'))).toBe(true)
    // First sight of it missing: not lapsed, not for a while.
    expect(await sibling.lapsed('orders/del', 1_000)).toBe(false)
    await new Promise((r) => setTimeout(r, 500))
    expect(await sibling.lapsed('orders/del', 1_000)).toBe(false)
    expect(await holder.renew('orders/del', 'a', 1_000)).toBe('renewed')
    expect(api.leases.get(leaseName('orders/del'))?.spec.holderIdentity).toBe('a')
    expect(await sibling.lapsed('orders/del', 1_000)).toBe(false)
    // Missing for a lease on the sibling's clock: lapsed; the sibling creating it first wins, and the
    // old holder's renewal finds it lost.
    expect(api.deleteLease(leaseName('orders/del'))).toBe(true)
    expect(await sibling.lapsed('orders/del', 1_000)).toBe(false)
    await new Promise((r) => setTimeout(r, 1_100))
    expect(await sibling.lapsed('orders/del', 1_000)).toBe(true)
    expect(await sibling.acquire('orders/del', 'b', 1_000)).toBe(true)
    expect(await holder.renew('orders/del', 'a', 1_000)).toBe('lost')
    expect(api.leases.get(leaseName('orders/del'))?.spec.holderIdentity).toBe('b')
  })

  it('a wrong token, or an API server that is away, is a KubeApiError: nothing is taken', async () => {
    const wrongDir = join(api.env.TXMESH_K8S_SERVICEACCOUNT_DIR as string, '..', `sa-wrong-${process.pid}`)
    const { mkdirSync, copyFileSync } = await import('node:fs')
    mkdirSync(wrongDir, { recursive: true })
    copyFileSync(join(api.env.TXMESH_K8S_SERVICEACCOUNT_DIR as string, 'ca.crt'), join(wrongDir, 'ca.crt'))
    writeFileSync(join(wrongDir, 'token'), 'not-the-token')
    writeFileSync(join(wrongDir, 'namespace'), 'txmesh-shop')
    const wrong = client({ ...api.env, TXMESH_K8S_SERVICEACCOUNT_DIR: wrongDir })
    await expect(wrong.acquire('orders/w', 'w', 1_000)).rejects.toThrow(/answered 401/)
    expect(api.leases.has(leaseName('orders/w'))).toBe(false)
    const ok = client()
    expect(await ok.acquire('orders/w', 'w', 1_000)).toBe(true)
    api.unavailable = true
    try {
      await expect(ok.renew('orders/w', 'w', 1_000)).rejects.toBeInstanceOf(KubeApiError)
    } finally {
      api.unavailable = false
    }
    expect(await ok.renew('orders/w', 'w', 1_000)).toBe('renewed')
  })

  it('outside a cluster (no KUBERNETES_SERVICE_HOST) says so', () => {
    expect(() => KubeLeases.inCluster(silentLogger, {})).toThrow(/KUBERNETES_SERVICE_HOST is not set/)
  })
})
