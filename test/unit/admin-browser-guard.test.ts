// The admin API's Host, Origin and media type rules (src/admin/browser-guard.ts) on their own,
// for what the loopback-only integration tests cannot reach: a listener on a pod address.
// test/integration/admin-browser.test.ts covers them end to end, in Chromium too.
import type { IncomingMessage } from 'node:http'
import { describe, expect, it } from 'vitest'
import { hostOrOriginRefusal, isLoopbackHost, mediaTypeRefusal } from '../../src/admin/browser-guard.js'

const none = { allowedHosts: [], allowedOrigins: [] }
const req = (headers: Record<string, string>, localAddress = '127.0.0.1', method = 'GET'): IncomingMessage =>
  ({ headers, method, socket: { localAddress } }) as unknown as IncomingMessage
const code = (e: { code: string } | undefined): string | undefined => e?.code

describe('admin browser guard', () => {
  it('knows the loopback names and addresses, and nothing that only looks like them', () => {
    for (const h of ['localhost', '127.0.0.1', '127.255.255.254', '[::1]', '[::ffff:127.0.0.1]'])
      expect(isLoopbackHost(h), h).toBe(true)
    for (const h of [
      'localhost.example',
      '127.0.0.1.example',
      '127.0.0.256',
      '128.0.0.1',
      '[::2]',
      '::1',
      '127.0.0.1]',
      '[127.0.0.1',
      '0.0.0.0',
      '127.1',
    ])
      expect(isLoopbackHost(h), h).toBe(false)
  })

  it("accepts the listener's own address as Host (a listener on the pod IP), and no other address", () => {
    expect(hostOrOriginRefusal(req({ host: '10.0.0.5:15000' }, '10.0.0.5'), none)).toBeUndefined()
    expect(hostOrOriginRefusal(req({ host: '10.0.0.5:15000' }, '::ffff:10.0.0.5'), none)).toBeUndefined()
    expect(hostOrOriginRefusal(req({ host: '[fd00::5]:15000' }, 'fd00::5'), none)).toBeUndefined()
    expect(code(hostOrOriginRefusal(req({ host: '10.0.0.6:15000' }, '10.0.0.5'), none))).toBe('TXM_ADMIN_HOST_REFUSED')
    // Same-origin from that address.
    expect(
      hostOrOriginRefusal(req({ host: '10.0.0.5:15000', origin: 'http://10.0.0.5:15000' }, '10.0.0.5'), none),
    ).toBeUndefined()
  })

  it('matches allowedHosts by name (any port) or name:port, case-insensitively', () => {
    const p = { allowedHosts: ['admin.internal', 'ops.example.com:8443'], allowedOrigins: [] }
    expect(hostOrOriginRefusal(req({ host: 'Admin.Internal:1234' }), p)).toBeUndefined()
    expect(hostOrOriginRefusal(req({ host: 'ops.example.com:8443' }), p)).toBeUndefined()
    expect(code(hostOrOriginRefusal(req({ host: 'ops.example.com:443' }), p))).toBe('TXM_ADMIN_HOST_REFUSED')
    expect(code(hostOrOriginRefusal(req({ host: 'x.admin.internal' }), p))).toBe('TXM_ADMIN_HOST_REFUSED')
  })

  it('refuses what Sec-Fetch-Site says another site made, but a link followed and allowedOrigins', () => {
    const p = { allowedHosts: [], allowedOrigins: ['https://portal.example.com'] }
    expect(
      code(
        hostOrOriginRefusal(
          req({ host: '127.0.0.1:15000', 'sec-fetch-site': 'cross-site', 'sec-fetch-mode': 'no-cors' }),
          p,
        ),
      ),
    ).toBe('TXM_ADMIN_ORIGIN_REFUSED')
    expect(
      code(
        hostOrOriginRefusal(
          req({ host: '127.0.0.1:15000', 'sec-fetch-site': 'same-site', 'sec-fetch-mode': 'cors' }),
          p,
        ),
      ),
    ).toBe('TXM_ADMIN_ORIGIN_REFUSED')
    expect(
      code(
        hostOrOriginRefusal(
          req(
            { host: '127.0.0.1:15000', 'sec-fetch-site': 'cross-site', 'sec-fetch-mode': 'navigate' },
            '127.0.0.1',
            'POST',
          ),
          p,
        ),
      ),
    ).toBe('TXM_ADMIN_ORIGIN_REFUSED')
    expect(
      hostOrOriginRefusal(
        req({ host: '127.0.0.1:15000', 'sec-fetch-site': 'cross-site', 'sec-fetch-mode': 'navigate' }),
        p,
      ),
    ).toBeUndefined()
    expect(
      hostOrOriginRefusal(
        req(
          {
            host: '127.0.0.1:15000',
            'sec-fetch-site': 'cross-site',
            'sec-fetch-mode': 'cors',
            origin: 'https://portal.example.com',
          },
          '127.0.0.1',
          'POST',
        ),
        p,
      ),
    ).toBeUndefined()
    for (const site of ['same-origin', 'none'])
      expect(
        hostOrOriginRefusal(req({ host: '127.0.0.1:15000', 'sec-fetch-site': site, 'sec-fetch-mode': 'cors' }), p),
        site,
      ).toBeUndefined()
  })

  it('needs a JSON type for a body, and for a declared type on a method other than GET and HEAD', () => {
    const r = (method: string, headers: Record<string, string>): string | undefined =>
      code(mediaTypeRefusal(req(headers, '127.0.0.1', method)))
    expect(r('POST', { 'content-length': '2', 'content-type': 'Application/JSON; charset=utf-8' })).toBeUndefined()
    expect(r('POST', { 'content-length': '2' })).toBe('TXM_UNSUPPORTED_MEDIA_TYPE')
    expect(r('POST', { 'transfer-encoding': 'chunked', 'content-type': 'text/plain' })).toBe(
      'TXM_UNSUPPORTED_MEDIA_TYPE',
    )
    expect(r('POST', { 'content-length': '0' })).toBeUndefined()
    expect(r('POST', {})).toBeUndefined()
    expect(r('DELETE', { 'content-type': 'application/x-www-form-urlencoded' })).toBe('TXM_UNSUPPORTED_MEDIA_TYPE')
    expect(r('GET', { 'content-type': 'text/plain' })).toBeUndefined()
    expect(r('GET', { 'content-length': '3' })).toBe('TXM_UNSUPPORTED_MEDIA_TYPE')
  })
})
