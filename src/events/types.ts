// The contract between the outbox (which decides what to send) and the sinks (which send it).

export interface BusEvent {
  /** Idempotency key: a sink that sees the same id twice keeps one copy. <= LIMITS.eventIdMaxChars. */
  readonly id: string
  /** Where the event goes, e.g. `txmesh.events.<service>` (see subjectToken in nats.ts). */
  readonly subject: string
  readonly payload: Readonly<Record<string, unknown>>
}

export interface Sink {
  readonly name: string
  /** Resolves once the sink acknowledged the event; rejects (retryable) otherwise. */
  deliver(e: BusEvent): Promise<void>
  close(): Promise<void>
}
