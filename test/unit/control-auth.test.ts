// Control-plane security parts in isolation: the txmesh-auth signature with its nonce, the
// signature of control answers,
// bounded replay cache, mesh key parsing and the live key ring, secret comparison.
import { describe, expect, it } from 'vitest'
import { ReplayCache } from '../../src/control/replay.js'
import { LIMITS } from '../../src/limits.js'
import { keyId, sameSecret } from '../../src/secrets.js'
import { KeyRing, parseMeshKeys } from '../../src/tx/keys.js'
import { newControlNonce, signAnswer, signControl, verifyAnswer, verifyControl } from '../../src/tx/protocol.js'

const K1 = Buffer.from('k1-0123456789abcdef-rotation')
const K2 = Buffer.from('k2-0123456789abcdef-rotation')

describe('control request signature', () => {
  const now = 1_700_000_000_000
  it('is <ts>.<nonce>.<mac> with a fresh 128-bit nonce per call', () => {
    const a = signControl(K1, now, 'POST', '/v1/tx/t/commit', '{"branch":"b"}')
    const b = signControl(K1, now, 'POST', '/v1/tx/t/commit', '{"branch":"b"}')
    const [ts, nonce, mac] = a.split('.')
    expect(ts).toBe(String(now))
    expect(Buffer.from(nonce as string, 'base64url')).toHaveLength(LIMITS.controlNonceBytes)
    expect(Buffer.from(mac as string, 'base64url')).toHaveLength(32)
    expect(a).not.toBe(b)
    expect(new Set(Array.from({ length: 1000 }, newControlNonce)).size).toBe(1000)
  })

  it('verifies with any configured key and returns the nonce and timestamp', () => {
    const h = signControl(K2, now, 'GET', '/v1/tx/t/outcome', '', 'AAAAAAAAAAAAAAAAAAAAAA')
    expect(verifyControl([K1, K2], h, now + 1000, 'GET', '/v1/tx/t/outcome', '')).toEqual({
      ok: true,
      ts: now,
      nonce: 'AAAAAAAAAAAAAAAAAAAAAA',
    })
    expect(verifyControl([K1], h, now, 'GET', '/v1/tx/t/outcome', '')).toEqual({ ok: false, reason: 'signature' })
  })

  it('refuses a changed method, path, body, nonce or timestamp, a stale or future timestamp, and other shapes', () => {
    const h = signControl(K1, now, 'POST', '/v1/tx/t/commit', '{"branch":"b"}')
    const v = (
      header: string | undefined,
      method = 'POST',
      path = '/v1/tx/t/commit',
      body = '{"branch":"b"}',
      at = now,
    ) => verifyControl([K1], header, at, method, path, body)
    expect(v(h).ok).toBe(true)
    expect(v(h, 'GET')).toEqual({ ok: false, reason: 'signature' })
    expect(v(h, 'POST', '/v1/tx/t/abort')).toEqual({ ok: false, reason: 'signature' })
    expect(v(h, 'POST', '/v1/tx/t/commit', '{"branch":"c"}')).toEqual({ ok: false, reason: 'signature' })
    const [ts, nonce, mac] = h.split('.') as [string, string, string]
    expect(v(`${ts}.${nonce.slice(0, -1)}${nonce.endsWith('A') ? 'B' : 'A'}.${mac}`)).toEqual({
      ok: false,
      reason: 'signature',
    })
    expect(v(`${Number(ts) + 1}.${nonce}.${mac}`)).toEqual({ ok: false, reason: 'signature' })
    expect(v(h, 'POST', '/v1/tx/t/commit', '{"branch":"b"}', now + LIMITS.controlClockSkewMs + 1)).toEqual({
      ok: false,
      reason: 'stale',
    })
    expect(v(h, 'POST', '/v1/tx/t/commit', '{"branch":"b"}', now - LIMITS.controlClockSkewMs - 1)).toEqual({
      ok: false,
      reason: 'stale',
    })
    expect(v(undefined)).toEqual({ ok: false, reason: 'missing' })
    // The format before nonces (<ts>.<mac>) and junk are malformed.
    expect(v(`${ts}.${mac}`)).toEqual({ ok: false, reason: 'malformed' })
    expect(v('x'.repeat(5000))).toEqual({ ok: false, reason: 'malformed' })
    expect(v(`${ts}.${nonce}.${mac}.x`)).toEqual({ ok: false, reason: 'malformed' })
  })
})

describe('control answer signature', () => {
  const now = 1_700_000_000_000
  const req = signControl(K1, now, 'POST', '/v1/tx/t/prepare', '{"branch":"b"}')
  const body = '{"id":"t","branch":"b","vote":"prepared"}'
  const at = '10.0.0.5:15010'

  it('is a 32-byte mac that verifies with any configured key for the request, address, status and body it was made for', () => {
    const a = signAnswer(K2, at, req, 200, body)
    expect(a).toMatch(/^[A-Za-z0-9_-]{43}$/)
    expect(verifyAnswer([K1, K2], a, at, req, 200, body)).toBe('ok')
    expect(verifyAnswer([K1], a, at, req, 200, body)).toBe('signature')
  })

  it('refuses another request, address, status or body, a missing header and other shapes', () => {
    const a = signAnswer(K1, at, req, 200, body)
    const other = signControl(K1, now, 'POST', '/v1/tx/t/prepare', '{"branch":"b"}')
    expect(verifyAnswer([K1], a, at, other, 200, body)).toBe('signature')
    expect(verifyAnswer([K1], a, '10.0.0.6:15010', req, 200, body)).toBe('signature')
    expect(verifyAnswer([K1], a, at, req, 201, body)).toBe('signature')
    expect(verifyAnswer([K1], a, at, req, 200, body.replace('prepared', 'refused'))).toBe('signature')
    expect(verifyAnswer([K1], undefined, at, req, 200, body)).toBe('missing')
    for (const bad of ['', 'x', `${a}=`, `${a}A`, a.slice(1), `${a.slice(0, -1)}.`])
      expect(verifyAnswer([K1], bad, at, req, 200, body), bad).toBe('signature')
  })

  it('cannot stand for a request signature, nor a request signature for it', () => {
    // Request macs are over "<ts>\n...", answer macs over "answer\n...": the same key never makes one from the other's input.
    const mac = req.split('.')[2] as string
    expect(verifyAnswer([K1], mac, at, req, 200, body)).toBe('signature')
    const a = signAnswer(K1, at, req, 200, body)
    const [ts, nonce] = req.split('.') as [string, string]
    expect(verifyControl([K1], `${ts}.${nonce}.${a}`, now, 'POST', '/v1/tx/t/prepare', '{"branch":"b"}')).toEqual({
      ok: false,
      reason: 'signature',
    })
  })
})

describe('replay cache', () => {
  const W = 30_000
  it('accepts a nonce once within the window, and forgets it once its timestamp left the window', () => {
    const c = new ReplayCache(0, 10, W)
    expect(c.check('n1', 1_000, 1_000)).toBe('fresh')
    expect(c.check('n1', 1_000, 5_000)).toBe('replay')
    expect(c.check('n1', 1_000, 1_000 + W)).toBe('replay')
    // Past ts + window the timestamp check refuses it; the cache may drop it.
    expect(c.check('n2', 40_000, 1_001 + W)).toBe('fresh')
    expect(c.size).toBe(1)
  })

  it('refuses (never accepts unchecked) when full of unexpired nonces, and accepts again once they expire', () => {
    const c = new ReplayCache(0, 3, W)
    expect(['a', 'b', 'c'].map((n) => c.check(n, 1_000, 1_000))).toEqual(['fresh', 'fresh', 'fresh'])
    expect(c.check('d', 1_000, 2_000)).toBe('full')
    // A replay is still a replay when full.
    expect(c.check('a', 1_000, 2_000)).toBe('replay')
    expect(c.size).toBe(3)
    expect(c.check('d', 40_000, 1_000 + W + 1)).toBe('fresh')
    expect(c.size).toBe(1)
  })

  it('keeps expiries in order when timestamps arrive out of order (a nonce is kept at least until ts + window)', () => {
    const c = new ReplayCache(0, 10, W)
    expect(c.check('late', 20_000, 10_000)).toBe('fresh') // signed by a clock 10 s ahead
    expect(c.check('early', 5_000, 10_000)).toBe('fresh')
    expect(c.check('late', 20_000, 20_000 + W)).toBe('replay')
    expect(c.check('early', 5_000, 20_000 + W)).toBe('replay')
  })

  it('refuses requests signed before the cache existed (a restart forgot their nonces)', () => {
    const c = new ReplayCache(100_000, 10, W)
    expect(c.check('x', 99_999, 100_001)).toBe('before-start')
    expect(c.check('x', 100_000, 100_001)).toBe('fresh')
  })

  it('is bounded by LIMITS.controlReplayCacheEntries by default', () => {
    const c = new ReplayCache(0)
    for (let i = 0; i < LIMITS.controlReplayCacheEntries; i++) c.check(`n${i}`, 1, 1)
    expect(c.check('one-more', 1, 1)).toBe('full')
    expect(c.size).toBe(LIMITS.controlReplayCacheEntries)
  })
})

describe('mesh keys', () => {
  it('parses comma-separated keys of at least 16 bytes, and says what is wrong without quoting a key', () => {
    expect(parseMeshKeys(` ${K2.toString()} ,${K1.toString()},\n`)).toEqual([K2, K1])
    expect(parseMeshKeys(' ,\n')).toBe('holds no key')
    const short = parseMeshKeys(`${K1.toString()},short-key`)
    expect(short).toBe('key 2 is shorter than 16 bytes')
    expect(String(short)).not.toContain('short-key')
  })

  it('signs with the first key and verifies with all; replace() swaps them in place', () => {
    const ring = new KeyRing([K1])
    expect(ring.signing).toBe(K1)
    expect(ring.replace([K2, K1])).toBe(true)
    expect(ring.signing.equals(K2)).toBe(true)
    expect(ring.verifying.map(String)).toEqual([K2, K1].map(String))
    expect(ring.replace([Buffer.from(K2), Buffer.from(K1)])).toBe(false)
    expect(ring.ids()).toEqual([keyId(K2), keyId(K1)])
    expect(ring.ids().join()).not.toContain(K2.toString('hex').slice(0, 8))
  })

  it('compares presented secrets in constant time whatever their length', () => {
    const token = Buffer.from('admin-token-0123456789')
    expect(sameSecret('admin-token-0123456789', token)).toBe(true)
    expect(sameSecret('admin-token-012345678', token)).toBe(false)
    expect(sameSecret('', token)).toBe(false)
    expect(sameSecret('x'.repeat(10_000), token)).toBe(false)
  })
})
