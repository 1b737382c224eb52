// Bounds of the event-delivery side (sinks and their queues). They live here rather than in
// src/limits.ts only while that file is being edited elsewhere; each number says why it is that
// number (STYLE.md: limits are named).

export const EVENT_LIMITS = Object.freeze({
  // An event id is the sink's idempotency key (JetStream Nats-Msg-Id, webhook idempotency-key
  // header). Ids are built from transaction and branch ids (~100 chars); 256 leaves room for a
  // prefix and still fits comfortably in one header line.
  maxEventIdChars: 256,
  // Events one DeliveryQueue holds before push() answers false. The outbox keeps every event
  // durably, so the queue is only a window onto it: 10k events of ~1 KiB is ~10 MiB per sink,
  // and at a sink's normal rate (hundreds per second) it is tens of seconds of backlog; past it
  // the outbox stops feeding rather than the process growing without bound.
  maxQueueLength: 10_000,
  // First retry delay after a failed delivery. Short enough that a transient blip (a leader
  // election, one refused connection) costs ~0.1 s of latency.
  backoffBaseMs: 100,
  // Longest wait between two attempts at the same event. Doubling from 100 ms reaches it after
  // 7 failures; 10 s keeps a down sink from being hammered while resuming delivery within ~10 s
  // of the sink coming back.
  backoffCapMs: 10_000,
  // One delivery attempt (connect + send + ack). A sink that has not acknowledged by then is
  // treated as failed and the same event is retried (the idempotency key makes the retry safe).
  // 10 s is above any healthy broker ack or webhook handler and below the backoff cap's scale.
  deliveryTimeoutMs: 10_000,
  // Hard cap for any configured delivery timeout: a minute-long ack is a stuck sink.
  deliveryTimeoutCapMs: 60_000,
  // close() waits this long for an in-flight delivery to settle before giving up on it (its
  // event stays in the outbox and is delivered again after restart). Below the sidecar's drain
  // timeout (LIMITS.drainTimeoutMs, 15 s) so closing sinks never holds up shutdown.
  closeWaitMs: 5_000,
  // NATS: time to open the first connection (TCP + INFO/CONNECT handshake) before connect()
  // fails. The nats.js default is 20 s; a broker on the same network answers in milliseconds.
  natsConnectTimeoutMs: 5_000,
  // NATS: wait between reconnect attempts (nats.js default 2 s, plus its own jitter). Attempts
  // never stop (maxReconnectAttempts -1): the outbox holds events until the broker is back, and
  // 1 s keeps a fleet of sidecars at one attempt per second each while bounding resume latency.
  natsReconnectWaitMs: 1_000,
  // Webhook: TCP (and TLS) connect, then time to the response head, then between body chunks.
  // Receivers are expected to enqueue and answer quickly (GitHub, Stripe: ~10 s); ours answer
  // within the delivery timeout above, which also bounds the whole request.
  webhookConnectTimeoutMs: 5_000,
  // Response bytes read from a webhook (for the error message on a non-2xx answer); the rest is
  // discarded, so a receiver answering with a huge body cannot grow our memory.
  webhookResponseBytes: 4 * 1024,
  // Characters of a webhook's error body quoted in the rejection message (one log line).
  webhookErrorSnippetChars: 200,
})
