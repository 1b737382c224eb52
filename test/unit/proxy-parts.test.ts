import { describe, expect, it } from 'vitest'
import { parseConfig } from '../../src/config/load.js'
import { forwardRequestHeaders, forwardResponseHeaders, newFacts } from '../../src/proxy/headers.js'
import { RetryBudget, backoffMs, methodRetryable } from '../../src/proxy/retry.js'
import { matchRoute, prefixMatches } from '../../src/proxy/routes.js'
import { LIMITS } from '../../src/limits.js'

const facts = () => newFacts(false)

describe('header filtering', () => {
  it('drops every hop-by-hop header, Connection-named ones and Expect, keeps end-to-end ones', () => {
    const f = facts()
    const out = forwardRequestHeaders(
      [
        'Host',
        'a',
        'Connection',
        'Keep-Alive, X-Foo',
        'X-Foo',
        '1',
        'Keep-Alive',
        't=1',
        'TE',
        'trailers',
        'Trailer',
        'x',
        'Transfer-Encoding',
        'chunked',
        'Upgrade',
        'h2c',
        'Proxy-Authorization',
        'p',
        'Proxy-Bar',
        'b',
        'Expect',
        '100-continue',
        'Accept',
        '*/*',
      ],
      '10.1.1.1',
      f,
    )
    expect(out).toEqual(['Accept', '*/*', 'x-forwarded-for', '10.1.1.1', 'x-forwarded-proto', 'http'])
    expect(f).toMatchObject({ host: 'a', chunked: true, expectContinue: true })
  })

  it('appends to an existing X-Forwarded-For and keeps X-Forwarded-Proto', () => {
    const out = forwardRequestHeaders(['X-Forwarded-For', '1.1.1.1', 'X-Forwarded-Proto', 'https'], '2.2.2.2', facts())
    expect(out).toEqual(['x-forwarded-for', '1.1.1.1, 2.2.2.2', 'x-forwarded-proto', 'https'])
  })

  it('filters response headers named in Connection', () => {
    const raw = ['Connection', 'x-a', 'X-A', '1', 'Content-Type', 'text/plain', 'Transfer-Encoding', 'chunked'].map(
      (s) => Buffer.from(s),
    )
    expect(forwardResponseHeaders(raw)).toEqual(['Content-Type', 'text/plain'])
  })
})

describe('routes', () => {
  const cfg = parseConfig(
    `service: s
routes:
  - {name: a, match: {host: pay, pathPrefix: /v1, methods: [POST]}}
  - {name: b, match: {direction: ingress, pathPrefix: /v1/}}
`,
    'r.yaml',
  )
  it('matches by host, path prefix on segment boundaries and methods; first match wins', () => {
    expect(matchRoute(cfg, 'egress', 'pay', '/v1/x', 'POST').name).toBe('a')
    expect(matchRoute(cfg, 'egress', 'pay', '/v1', 'POST').name).toBe('a')
    expect(matchRoute(cfg, 'egress', 'pay', '/v10', 'POST').name).toBe('default')
    expect(matchRoute(cfg, 'egress', 'pay', '/v1/x', 'GET').name).toBe('default')
    expect(matchRoute(cfg, 'ingress', 'other', '/v1/x?q', 'GET').name).toBe('b')
    expect(matchRoute(cfg, 'egress', 'other', '/v1/x', 'GET').name).toBe('default')
  })
  it('compares prefixes on the path only', () => {
    expect(prefixMatches('/a', '/a?x=/b')).toBe(true)
    expect(prefixMatches('/a', '/ab')).toBe(false)
  })
})

describe('retries', () => {
  it('retries only idempotent methods unless opted in', () => {
    const p = {
      attempts: 2,
      on: new Set<'502'>(['502']),
      nonIdempotent: false,
      budgetRatio: 0.2,
      budgetMinPerSecond: 0,
    }
    expect(methodRetryable('GET', p)).toBe(true)
    expect(methodRetryable('PUT', p)).toBe(true)
    expect(methodRetryable('POST', p)).toBe(false)
    expect(methodRetryable('PATCH', p)).toBe(false)
    expect(methodRetryable('POST', { ...p, nonIdempotent: true })).toBe(true)
    expect(methodRetryable('GET', { ...p, attempts: 0 })).toBe(false)
  })

  it('keeps retries within the budget ratio and refills over the window', () => {
    let now = 0
    const b = new RetryBudget(0.2, 0, () => now, 10_000)
    for (let i = 0; i < 10; i++) b.deposit()
    expect(b.tryWithdraw()).toBe(true)
    expect(b.tryWithdraw()).toBe(true)
    expect(b.tryWithdraw()).toBe(false)
    now = 20_000
    expect(b.tryWithdraw()).toBe(false)
    for (let i = 0; i < 5; i++) b.deposit()
    expect(b.tryWithdraw()).toBe(true)
  })

  it('backs off exponentially with jitter, capped', () => {
    expect(backoffMs(1, () => 0.999)).toBeLessThan(LIMITS.retryBackoffBaseMs * 2)
    expect(backoffMs(30, () => 0.999)).toBeLessThanOrEqual(LIMITS.retryBackoffCapMs)
    expect(backoffMs(3, () => 0)).toBe(0)
  })
})

describe('transaction ids', () => {
  it('are alphanumeric before the coordinator part, never start with "-", and name their coordinator and log incarnation', async () => {
    const { newTxId, newBranchId, coordinatorOfTx, incarnationOfTx, newIncarnation } =
      await import('../../src/tx/protocol.js')
    const inc = newIncarnation()
    expect(inc).toMatch(/^[A-Za-z0-9]{10}$/)
    const seen = new Set<string>()
    // 2000 × 18 random bytes: the pool (LIMITS.randomPoolBytes) is refilled several times, and no
    // id repeats across a refill.
    for (let i = 0; i < 2000; i++) {
      const id = newTxId('127.0.0.1:15010', inc)
      expect(id).toMatch(/^[A-Za-z0-9]{16}_[A-Za-z0-9]{10}_[A-Za-z0-9_-]+$/)
      expect(coordinatorOfTx(id)).toBe('127.0.0.1:15010')
      expect(incarnationOfTx(id)).toBe(inc)
      const branch = newBranchId()
      expect(branch).toMatch(/^[A-Za-z0-9]{8}$/)
      seen.add(id).add(branch)
    }
    // An address too long for the id leaves it out; the incarnation stays.
    const long = newTxId(`${'a'.repeat(60)}.example:15010`, inc)
    expect(incarnationOfTx(long)).toBe(inc)
    expect(coordinatorOfTx(long)).toBeUndefined()
    // Ids made before incarnations name their coordinator but no incarnation: in doubt.
    const legacy = `abcdefghijklmnop_${Buffer.from('127.0.0.1:15010').toString('base64url')}`
    expect(incarnationOfTx(legacy)).toBeUndefined()
    expect(coordinatorOfTx(legacy)).toBe('127.0.0.1:15010')
    expect(seen.size).toBe(4000)
  })
})
