// The contract between the outbox (which decides what to send) and the sinks (which send it),
// and the messages a transaction carries to it.

/** A message attached to a transaction (POST /v1/transactions/{id}/messages). */
export interface TxMessage {
  readonly topic: string
  readonly payload: unknown
  readonly key?: string
}

export interface BusEvent {
  /** Idempotency key: a sink that sees the same id twice keeps one copy. <= LIMITS.eventIdMaxChars. */
  readonly id: string
  /** Where the event goes, e.g. `txmesh.events.<service>` (see subjectToken in nats.ts). */
  readonly subject: string
  readonly payload: Readonly<Record<string, unknown>>
  /** Message headers a sink that has them sends (NATS: the publisher's traceparent). */
  readonly headers?: Readonly<Record<string, string>>
}

export interface Sink {
  readonly name: string
  /** Resolves once the sink acknowledged the event; rejects (retryable) otherwise. */
  deliver(e: BusEvent): Promise<void>
  close(): Promise<void>
}
