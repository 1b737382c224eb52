// The one authority parser (src/address.ts) and what each of its users makes of the parts.
import { describe, expect, it } from 'vitest'
import { authorityHost, portNumber, splitAuthority } from '../../src/address.js'
import { parseAddress } from '../../src/config/load.js'
import { hostName } from '../../src/proxy/routes.js'
import { coordinatorAllowed } from '../../src/tx/protocol.js'

describe('splitAuthority', () => {
  it('splits names, IPv4 and bracketed IPv6, with and without a port', () => {
    expect(splitAuthority('payments')).toEqual({ host: 'payments', port: undefined, bracketed: false })
    expect(splitAuthority('payments:8080')).toEqual({ host: 'payments', port: '8080', bracketed: false })
    expect(splitAuthority('10.0.0.5:')).toEqual({ host: '10.0.0.5', port: '', bracketed: false })
    expect(splitAuthority('[fd00::5]')).toEqual({ host: 'fd00::5', port: undefined, bracketed: true })
    expect(splitAuthority('[fd00::5]:15010')).toEqual({ host: 'fd00::5', port: '15010', bracketed: true })
    expect(authorityHost(splitAuthority('[::1]:80')!)).toBe('[::1]')
  })

  it('refuses what cannot be an authority', () => {
    for (const bad of ['[fd00::5', '[fd00::5]x', '[fd00::5]x:80', 'fd00::5', 'a:b:c'])
      expect(splitAuthority(bad), bad).toBeUndefined()
  })

  it('reads ports of 1..65535 written as 1-5 digits only', () => {
    expect(portNumber('1')).toBe(1)
    expect(portNumber('65535')).toBe(65535)
    for (const bad of [undefined, '', '0', '65536', '+80', ' 80', '8O', '123456'])
      expect(portNumber(bad)).toBeUndefined()
  })

  it('is what the config, the routes and the coordinator allow-list read addresses with', () => {
    expect(parseAddress('[::1]:9000')).toEqual({ host: '::1', port: 9000 })
    expect(parseAddress('payments:80')).toEqual({ host: 'payments', port: 80 })
    for (const bad of ['payments', ':80', 'payments:0', 'payments:70000', 'fd00::5:80'])
      expect(() => parseAddress(bad), bad).toThrow(/invalid address/)
    expect(hostName('Payments:8080')).toBe('payments')
    expect(hostName('[FD00::5]:80')).toBe('fd00::5')
    expect(coordinatorAllowed(['[::1]:*'], '[::1]:15010')).toBe(true)
    expect(coordinatorAllowed(['127.0.0.0/8:*'], '127.0.0.9:15010')).toBe(true)
    expect(coordinatorAllowed(['127.0.0.0/8:*'], '10.0.0.9:15010')).toBe(false)
    expect(coordinatorAllowed(['127.0.0.1:*'], '127.0.0.1')).toBe(false)
  })
})
