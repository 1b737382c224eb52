// Optional TLS for traffic between sidecars (config `tls`). With it on, the ingress and control
// listeners serve HTTPS, and this sidecar's calls to peers (egress calls to `services`
// addresses, control calls, saga compensations) use HTTPS, trusting only `caFile` and
// presenting this sidecar's certificate when the peer asks for one (`requireClientCert`:
// mutual TLS). Every sidecar of a mesh must agree on the switch.
//
// Certificate, key and CA files are watched: a valid new set is loaded into every listener
// (setSecureContext: new connections get it, open ones keep theirs) and into the connector that
// opens new client connections; an invalid set (a certificate that does not match its key,
// unreadable files) keeps the current one and logs one warning.
import {
  connect,
  createSecureContext,
  type SecureContext,
  type Server as TlsServer,
  type TLSSocket,
  type TlsOptions,
} from 'node:tls'
import { isIP } from 'node:net'
import type { TlsSettings } from './config/types.js'
import { Agent, buildConnector, type Connector } from './http-client.js'
import { LIMITS } from './limits.js'
import type { Logger } from './telemetry/logger.js'
import { readTlsMaterial, type TlsMaterial, watchFiles } from './secrets.js'

export class PeerTls {
  private material: TlsMaterial
  private context: SecureContext
  private current: Connector
  private readonly servers = new Set<TlsServer>()
  private stopWatching: (() => void) | undefined
  private settle: NodeJS.Timeout | undefined
  private warned: string | undefined

  constructor(
    readonly settings: TlsSettings,
    material: TlsMaterial,
    private readonly log: Logger,
  ) {
    this.material = material
    this.context = createSecureContext({ cert: material.cert, key: material.key, ca: material.ca })
    this.current = this.build()
  }

  /** Options for https.createServer / tls.createServer: the same handlers, behind TLS. */
  serverOptions(): TlsOptions {
    return {
      cert: this.material.cert,
      key: this.material.key,
      ca: this.material.ca,
      minVersion: 'TLSv1.2',
      // Mutual TLS: only peers with a certificate from the CA get past the handshake.
      requestCert: this.settings.requireClientCert,
      rejectUnauthorized: this.settings.requireClientCert,
    }
  }

  /** Registers a listener whose certificate follows the files. */
  serve(server: TlsServer): void {
    this.servers.add(server)
    // A failed handshake (plain HTTP on the TLS port, a client without a certificate) is the
    // client's problem: nothing to answer, and OpenSSL's reason names no secret.
    server.on('tlsClientError', (err: Error & { code?: string }) =>
      this.log.debug('tls_client_error', { code: err.code, error: err.message }),
    )
  }

  /**
   * undici `connect` option of every pool or agent that reaches peers: a stable function that
   * opens each new connection with the material current at that moment. The peer's certificate
   * is checked against the address connected to (the `services` address or the control
   * address), never against the app's Host header, which undici would otherwise use as the
   * TLS server name.
   */
  readonly connector: Connector = (opts, callback) => {
    const { servername: _fromHost, ...rest } = opts
    this.current(rest, callback)
  }

  /** A raw TLS connection to a peer (the egress's Upgrade tunnels), with the current material. */
  connectSocket(host: string, port: number): TLSSocket {
    return connect({
      host,
      port,
      secureContext: this.context,
      minVersion: 'TLSv1.2',
      ...(isIP(host) === 0 ? { servername: host } : {}),
    })
  }

  /** Starts watching the files (LIMITS.secretFileCheckMs). */
  watch(): void {
    if (this.stopWatching !== undefined) return
    const s = this.settings
    this.stopWatching = watchFiles([s.certFile, s.keyFile, s.caFile], () => {
      // The three files rarely change at the same instant: reload once they have settled.
      clearTimeout(this.settle)
      this.settle = setTimeout(() => this.reload(), LIMITS.tlsReloadSettleMs)
      this.settle.unref()
    })
  }

  /** Re-reads the files now; true when new material is in use. */
  reload(): boolean {
    const m = readTlsMaterial(this.settings)
    if (typeof m === 'string') {
      if (this.warned !== m) this.log.warn('tls_files_invalid', { cert: this.settings.certFile, problem: m })
      this.warned = m
      return false
    }
    this.warned = undefined
    const cur = this.material
    if (cur.cert.equals(m.cert) && cur.key.equals(m.key) && cur.ca.equals(m.ca)) return false
    this.material = m
    this.context = createSecureContext({ cert: m.cert, key: m.key, ca: m.ca })
    this.current = this.build()
    for (const server of this.servers) server.setSecureContext({ cert: m.cert, key: m.key, ca: m.ca })
    this.log.info('tls_reloaded', { cert: this.settings.certFile })
    return true
  }

  close(): void {
    clearTimeout(this.settle)
    this.stopWatching?.()
    this.stopWatching = undefined
  }

  private build(): Connector {
    // A connector of its own per material: its TLS session cache starts empty, so the first
    // connections after a reload do full handshakes with the new certificate.
    return buildConnector({ timeout: LIMITS.connectTimeoutMs, secureContext: this.context, minVersion: 'TLSv1.2' })
  }
}

/**
 * The pool a sidecar reaches its peers with (control calls, saga compensations, TCC
 * confirm/cancel): keep-alive connections per origin, and the mesh certificate when peer TLS is on
 * (plain http:// targets still connect in the clear).
 */
export function peerAgent(tls: PeerTls | undefined): Agent {
  return new Agent({
    connections: LIMITS.poolConnectionsPerOrigin,
    keepAliveTimeout: LIMITS.upstreamKeepAliveMs,
    connect: tls?.connector ?? { timeout: LIMITS.connectTimeoutMs },
  })
}
