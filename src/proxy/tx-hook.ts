// The transaction side as the listeners see it (TxHook, src/proxy/types.ts): the egress and
// ingress parts over one cache of verified contexts, or, without a mesh key, a hook that refuses
// every context.
import { MeshKeyMissingError, type TxmeshError } from '../errors.js'
import type { RoutePolicy } from '../config/types.js'
import { ContextCache, type TxParts } from '../tx/plane.js'
import type { TxContext } from '../tx/protocol.js'
import type { Span } from '../telemetry/tracing.js'
import { EgressTx } from './egress/tx.js'
import { IngressTx } from './ingress/tx.js'
import type { EgressCall, ResponseHook, TxHook } from './types.js'

export class DisabledTxPlane implements TxHook {
  private refuse(): TxmeshError {
    return new MeshKeyMissingError(
      'a transaction reached a sidecar without a mesh key (TXMESH_MESH_KEY, TXMESH_MESH_KEY_FILE or mesh.keyFile)',
    )
  }
  egress(): TxmeshError {
    return this.refuse()
  }
  ingress(): TxmeshError {
    return this.refuse()
  }
  implicit(): TxmeshError {
    return this.refuse()
  }
  stepHook(): TxmeshError {
    return this.refuse()
  }
}

export class ActiveTxPlane implements TxHook {
  private readonly contexts: ContextCache
  private readonly out: EgressTx
  private readonly in: IngressTx

  constructor(d: TxParts) {
    this.contexts = new ContextCache(d)
    this.out = new EgressTx(d, this.contexts)
    this.in = new IngressTx(d, this.contexts)
  }

  verify(token: string): TxContext | TxmeshError {
    return this.contexts.verify(token)
  }

  egress(token: string, route: RoutePolicy, call: EgressCall): ResponseHook | TxmeshError | undefined {
    return this.out.egress(token, route, call)
  }

  ingress(token: string, route: RoutePolicy, headers: string[]): ResponseHook | TxmeshError | undefined {
    return this.in.ingress(token, route, headers)
  }

  implicit(route: RoutePolicy, headers: string[], trace?: Span): ResponseHook | TxmeshError {
    return this.in.implicit(route, headers, trace)
  }

  stepHook(token: string, op: 'cancel'): TxmeshError | undefined {
    return this.in.stepHook(token, op)
  }
}
