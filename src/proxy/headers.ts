// Header rewriting for both directions of the proxy (RFC 9110 §7.6.1). Works on the flat
// [name, value, name, value] arrays Node and undici hand us, in one pass, without building
// header objects: this runs on every proxied request.

import { contextFromBaggage } from '../tx/protocol.js'
import { parseHops } from './loop.js'

// Hop-by-hop headers: meaningful for one connection only, never forwarded. `proxy-*` are
// matched by prefix below. `expect` is answered by the sidecar itself (100-continue).
const HOP_BY_HOP = new Set([
  'connection',
  'keep-alive',
  'te',
  'trailer',
  'transfer-encoding',
  'upgrade',
  'proxy-connection',
  'proxy-authenticate',
  'proxy-authorization',
])

/** What the request head told us, gathered while filtering. */
export interface RequestHeadFacts {
  host: string | undefined
  contentLength: number | undefined
  chunked: boolean
  expectContinue: boolean
  /** Bytes of the header block as received (names + values + separators). */
  headerBytes: number
  /** txmesh-context token, or the txmesh entry of W3C baggage. */
  context: string | undefined
  /** txmesh-hops: sidecar listeners passed so far (src/proxy/loop.ts); 0 when absent. */
  hops: number
}

export function newFacts(expectContinue: boolean): RequestHeadFacts {
  return {
    host: undefined,
    contentLength: undefined,
    chunked: false,
    expectContinue,
    headerBytes: 0,
    context: undefined,
    hops: 0,
  }
}

function connectionTokens(raw: readonly string[]): Set<string> | undefined {
  let tokens: Set<string> | undefined
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i] as string
    if (name.length === 10 && name.toLowerCase() === 'connection') {
      for (const t of (raw[i + 1] as string).split(',')) {
        const tok = t.trim().toLowerCase()
        if (tok !== '' && tok !== 'close' && tok !== 'keep-alive') (tokens ??= new Set()).add(tok)
      }
    }
  }
  return tokens
}

function dropped(lower: string, named: Set<string> | undefined): boolean {
  return HOP_BY_HOP.has(lower) || lower.startsWith('proxy-') || (named !== undefined && named.has(lower))
}

/**
 * Filters a request's raw headers for forwarding. Drops hop-by-hop headers, headers named in
 * `Connection`, `Expect`, `Host` (returned in facts; the caller decides the forwarded Host) and
 * the forwarding headers it rewrites; appends X-Forwarded-For and sets X-Forwarded-Proto.
 */
export function forwardRequestHeaders(
  raw: readonly string[],
  clientAddress: string | undefined,
  facts: RequestHeadFacts,
): string[] {
  const named = connectionTokens(raw)
  const out: string[] = []
  let xff: string | undefined
  let xfp: string | undefined
  let bytes = 0
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i] as string
    const value = raw[i + 1] as string
    bytes += name.length + value.length + 4
    const lower = name.toLowerCase()
    switch (lower) {
      case 'host':
        facts.host = value
        continue
      case 'content-length':
        facts.contentLength = Number(value)
        out.push(name, value)
        continue
      case 'transfer-encoding':
        if (value.toLowerCase().includes('chunked')) facts.chunked = true
        continue
      case 'expect':
        if (value.toLowerCase() === '100-continue') facts.expectContinue = true
        continue
      case 'x-forwarded-for':
        xff = xff === undefined ? value : `${xff}, ${value}`
        continue
      case 'x-forwarded-proto':
        xfp ??= value
        continue
      case 'txmesh-context':
        facts.context = value
        break
      case 'baggage':
        // A cheap test first; contextFromBaggage reads the entry exactly (`txmesh = v` with the spaces
        // W3C baggage allows too).
        if (facts.context === undefined && value.includes('txmesh')) facts.context = contextFromBaggage(value)
        break
      // Set by the sidecar for its own app only; never trusted from outside.
      case 'txmesh-tx-id':
      case 'txmesh-branch-id':
      case 'txmesh-op':
        continue
      // Counted here, set again by the egress (one more), never passed to an app.
      case 'txmesh-hops':
        facts.hops = parseHops(value, facts.hops)
        continue
    }
    if (dropped(lower, named)) continue
    out.push(name, value)
  }
  facts.headerBytes = bytes
  if (clientAddress !== undefined) xff = xff === undefined ? clientAddress : `${xff}, ${clientAddress}`
  if (xff !== undefined) out.push('x-forwarded-for', xff)
  out.push('x-forwarded-proto', xfp ?? 'http')
  return out
}

/**
 * Filters an upstream response's raw headers (Buffers from undici, strings from node:http) into
 * a flat string array for `res.writeHead`. Drops hop-by-hop headers and those named in
 * `Connection`.
 */
export function forwardResponseHeaders(raw: readonly (Buffer | string)[]): string[] {
  const strs: string[] = new Array<string>(raw.length)
  for (let i = 0; i < raw.length; i++) {
    const h = raw[i] as Buffer | string
    strs[i] = typeof h === 'string' ? h : h.toString('latin1')
  }
  const named = connectionTokens(strs)
  const out: string[] = []
  for (let i = 0; i < strs.length; i += 2) {
    const name = strs[i] as string
    if (dropped(name.toLowerCase(), named)) continue
    out.push(name, strs[i + 1] as string)
  }
  return out
}

/**
 * Headers for an Upgrade (WebSocket) request forwarded as a raw tunnel: hop-by-hop headers go,
 * except the `Connection: upgrade` / `Upgrade` pair that the tunnel exists for.
 */
export function upgradeRequestHeaders(raw: readonly string[], clientAddress: string | undefined): string[] {
  const facts = newFacts(false)
  let upgrade: string | undefined
  for (let i = 0; i < raw.length; i += 2) {
    if ((raw[i] as string).toLowerCase() === 'upgrade') upgrade = raw[i + 1] as string
  }
  const out = forwardRequestHeaders(raw, clientAddress, facts)
  if (facts.host !== undefined) out.unshift('host', facts.host)
  if (upgrade !== undefined) out.push('connection', 'upgrade', 'upgrade', upgrade)
  return out
}
