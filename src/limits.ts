// Every bound of txmesh in one place (STYLE.md: limits are named). Each number says why it is
// that number. Config may lower or raise the per-route ones; these are the defaults and caps.

export const LIMITS = Object.freeze({
  // Request head size accepted by every listener. Node's own default is 16 KiB; Envoy's is
  // 60 KiB. 32 KiB leaves room for large cookies and tracing headers while bounding memory per
  // connection. A request over it gets 431 TXM_HEADERS_TOO_LARGE.
  maxHeaderBytes: 32 * 1024,
  // Hard cap a route may set for its header limit (it cannot exceed what the parser accepts).
  maxHeaderBytesCap: 32 * 1024,
  // Default request body cap per route. Bodies stream, so this bounds work, not memory.
  maxBodyBytes: 1024 * 1024 * 1024,
  // Default upstream timeout per attempt chain (Gateway API `timeouts.request`; Istio: off by
  // default, Envoy's route default is 15 s). 30 s suits slow business calls.
  requestTimeoutMs: 30_000,
  // Upper bound of any configured route timeout: a day-long request is a stuck one.
  requestTimeoutCapMs: 3_600_000,
  // Time to establish a TCP connection to an upstream before counting it a connect failure.
  connectTimeoutMs: 5_000,
  // Retries (Istio: 2 attempts by default; Linkerd: budget of 20% + 10/s).
  retryAttempts: 2,
  retryAttemptsCap: 10,
  retryBudgetRatio: 0.2,
  retryBudgetMinPerSecond: 10,
  // The budget window: deposits older than this no longer pay for retries.
  retryBudgetWindowMs: 10_000,
  retryBackoffBaseMs: 25,
  retryBackoffCapMs: 1_000,
  // A request with a body is retried only when its body is small enough to keep in memory for
  // the replay; larger or chunked bodies stream once and are never retried.
  retryBodyBytes: 64 * 1024,
  // Upstream connection pools: connections per origin and distinct origins kept open.
  poolConnectionsPerOrigin: 128,
  maxUpstreamPools: 256,
  // Keep-alive of idle upstream sockets: below the typical 5 s Node server keep-alive so the
  // proxy closes first and never writes on a socket the app is closing.
  upstreamKeepAliveMs: 4_000,
  // Downstream keep-alive and head timeouts (slowloris bound).
  downstreamKeepAliveMs: 65_000,
  downstreamHeadersTimeoutMs: 20_000,
  // How often a listener checks its connections against the head and request timeouts (Node's
  // connectionsCheckingInterval). Node's default, 30 s, let a client that trickles its head hold
  // a connection for up to 50 s instead of 20 (test/fuzz/limits.test.ts); once a second puts the
  // bound at the timeout, for a native scan of the requests still arriving.
  connectionsCheckMs: 1_000,
  // Bound on a request's whole lifetime at the server (Node's requestTimeout). Above the
  // route timeout cap so long uploads can finish.
  downstreamRequestTimeoutMs: 3_600_000,
  // Open client connections per listener: excess connections are refused at accept.
  maxConnectionsPerListener: 10_000,
  // WebSocket / Upgrade tunnels: idle time before both sides are closed.
  tunnelIdleTimeoutMs: 600_000,
  // Sidecar egress listeners one request may pass without an app in between (the txmesh-hops
  // header; a peer's ingress is the last hop before its app and drops the count). A call passes
  // one; egresses chained as each other's proxies pass a few more. Past 8 the egress answers
  // 508 TXM_PROXY_LOOP: this ends the loops no address shows (two sidecars whose service maps
  // point at each other's egress, a name NATed back to this host) after 8 connections instead
  // of ~2000, when X-Forwarded-For outgrew the header limit.
  maxProxyHops: 8,
  // Ingress: rounds of percent-decoding a path gets when it is checked for a disguised hook
  // (`%252e` is `.` after two). An app decodes once, a proxy in front of it maybe once more; a
  // path still changing after 3 is refused (TXM_PATH_AMBIGUOUS) rather than decoded on: each
  // round costs a pass over up to 32 KiB, and nesting is free for a caller to add.
  pathDecodeRounds: 3,
  // SIGTERM drain: how long in-flight requests may take before the sidecar exits anyway.
  drainTimeoutMs: 15_000,
  drainTimeoutCapMs: 300_000,
  // Admin API bodies are small JSON documents.
  adminBodyBytes: 64 * 1024,
  // Time to receive a whole control or admin request (head and body, at most 64 KiB): callers
  // give up long before (controlCallTimeoutMs, cliRequestTimeoutMs), so a request still arriving
  // after 30 s is a stalled or hostile client. Node's default would hold it for 300 s.
  apiRequestTimeoutMs: 30_000,
  // Config file size: a sidecar policy is a few KiB; refuse to parse megabytes of YAML.
  configFileBytes: 1024 * 1024,
  maxRoutes: 1_000,
  // txmesh-context token size (DESIGN.md: <= 1 KiB): ids, one address and a deadline fit in
  // ~250 bytes; the bound stops header stuffing.
  contextBytes: 1024,
  // Contexts a sidecar remembers as verified (src/tx/plane.ts), so the calls of one transaction
  // check its signature once: one per transaction in flight is plenty; ~1 KiB each at most.
  verifiedContexts: 4_096,
  // Control requests carry a signed timestamp; this is how far clocks may disagree.
  controlClockSkewMs: 30_000,
  // Control request/response bodies are small JSON documents.
  controlBodyBytes: 64 * 1024,
  // One control call (prepare, commit, abort, register, outcome) to a peer sidecar.
  controlCallTimeoutMs: 5_000,
  // One app hook call (prepare/commit/abort); a prepare that takes longer votes no.
  hookCallTimeoutMs: 10_000,
  // Batched protocol messages (src/control/batcher.ts): 2PC control calls to one peer sidecar, and
  // hook calls to the app when hooks.batch is set. 64 items of ~150 bytes (a hook item carries
  // its ~400-byte context) stay far under controlBodyBytes both ways.
  batchMaxItems: 64,
  // Exchanges out to one peer at once: one keeps batches largest (measured at 32 transfers in
  // flight: ~11 messages per request with one, ~6 with two, and more transfers per second).
  batchMaxInFlight: 1,
  // A batch answers when its slowest item does (a prepare may wait for the app's running request,
  // up to hookCallTimeoutMs): one out longer than this stops holding the next one back, so a slow
  // transaction delays the others' messages to the same peer by this much at most. Well above a
  // healthy batch's round trip (an app's PREPARE and an fsync, a few ms).
  batchHoldMs: 25,
  // An item of a control batch still working after this long (a prepare waiting for the app) is
  // answered 503 on its own, so its batch answers within the caller's controlCallTimeoutMs.
  batchItemWaitMs: 4_000,
  // A peer that answered /v1/batch with 404 (an older txmesh) is sent one message at a time for
  // this long, then asked again (it may have been upgraded).
  batchReprobeMs: 60_000,
  // Such peers remembered at most; past it the list is forgotten (they are probed again).
  batchUnbatchedPeers: 1_000,
  // Messages waiting for one peer at most (each is a transaction waiting for its answer; at most
  // maxActiveTransactions and maxBranches exist at once): past it they are refused, 503.
  batchMaxQueued: 10_000,
  // Transactions this sidecar coordinates at once, and branches it holds as a participant.
  maxActiveTransactions: 10_000,
  maxBranches: 10_000,
  // Default and largest transaction timeout a client may ask for at begin.
  txTimeoutMs: 30_000,
  txTimeoutCapMs: 3_600_000,
  // A protocol record refused because the log's queue is full is retried this many times, a
  // little later each time (the queue drains at fsync speed, ~0.2 ms per batch).
  logOverloadRetries: 20,
  logOverloadRetryMs: 10,
  // The signed txmesh-enlisted response header lists up to maxParticipants entries of ~70 bytes.
  enlistedBytes: 8 * 1024,
  // Open connections on the control listener (peers keep a pool each).
  maxControlConnections: 4_096,
  // A commit or abort the app cannot finish yet is answered 503 after this long; the
  // coordinator retries it.
  decideWaitMs: 4_000,
  // How long a prepare/commit/abort hook call waits while a request of the same branch still
  // runs in the app (the contract: a hook never overlaps the branch's own request). 8 s, as
  // txmesh/pg queues such a hook: longer than a request blocked briefly on a row lock, shorter
  // than hookCallTimeoutMs. Past it a prepare votes no and a commit/abort is retried.
  hookHoldMs: 8_000,
  // Test crash points that fire just after an answer left (failpointSoon): long enough for the
  // answer to reach a peer on loopback, short enough that nothing else happens first.
  failpointAfterAnswerMs: 200,
  // P(commit) per route uses each participant's last N prepare results: recent enough to
  // follow an incident, large enough that one refusal moves it by 1%.
  metricsPrepareWindow: 100,
  // Label bounds of the metrics (services and routes named in P(commit)).
  metricsMaxServices: 1_000,
  metricsMaxRoutes: 1_000,
  // A prepared branch waiting longer than this is listed as in doubt for operators (the
  // coordinator retries phase 2 for seconds; a minute without a decision needs a human look).
  inDoubtWindowMs: 60_000,
  // YAML aliases expanded when a config is parsed (billion-laughs bound; a policy needs few).
  configMaxAliases: 100,
  // Who resolved a branch by hand, as recorded in the audit record.
  auditActorChars: 128,
  // SSE reconnect delay suggested to dashboard clients.
  adminEventsRetryMs: 2_000,
  // The CLI's wait for one admin call: a sidecar that does not answer in this time is down.
  cliRequestTimeoutMs: 10_000,
  // A commit call with ?wait=acks waits this long for phase-2 acknowledgements before
  // answering (the decision is durable already; the rest finishes in the background).
  commitAckWaitMs: 2_000,
  // A finished transaction stays visible to GET /v1/transactions/{id} for this long.
  finishedTxRetentionMs: 60_000,
  maxFinishedTxRetained: 10_000,
  maxServices: 10_000,
  // Durable log (src/wal/). A segment is the unit of rollover and compaction: 64 MiB replays in
  // well under a second and keeps the file count low (etcd's WAL uses 64 MB segments too).
  logSegmentBytes: 64 * 1024 * 1024,
  // A log record is a decision (participants + outcome), a few hundred bytes; 1 MiB bounds a
  // runaway body and the replay read buffer.
  logMaxRecordBytes: 1024 * 1024,
  // Transaction ids are short (about 30 chars); a record stores their length in one byte.
  logMaxTxIdBytes: 255,
  // Appends waiting for the disk (queued or in the running write + fsync). Past it append rejects
  // with TXM_LOG_OVERLOADED instead of buffering without bound: 16k decisions is seconds of
  // backlog even on a slow disk.
  logMaxQueuedAppends: 16_384,
  // Bytes of those waiting appends, so large bodies cannot pile up either.
  logMaxQueuedBytes: 64 * 1024 * 1024,
  // A lazy record (END) waits at most this long for a durable batch to ride with before it is
  // written without an fsync of its own: short, so a restart rarely replays ended work.
  logLazyFlushMs: 200,
  // Postgres store (src/store/pg-log.ts). Connections of one log: the writer and a spare.
  pgStoreConnections: 2,
  // A connection attempt waits this long: a server that does not answer is down, not slow.
  pgStoreConnectMs: 5_000,
  // A batch (or the open) that failed with a broken connection is sent again for this long, at
  // most pgStoreRetries times, backing off from pgStoreRetryBaseMs to pgStoreRetryMaxMs: a
  // Postgres restart or failover takes seconds; past it the log fails and the sidecar stops.
  pgStoreRetryMs: 60_000,
  pgStoreRetries: 200,
  pgStoreRetryBaseMs: 50,
  pgStoreRetryMaxMs: 2_000,
  // Records in one Postgres transaction at most (the rest go in the next).
  pgStoreBatchRecords: 1_000,
  // flush() waits for the writer at most this many turns (each commits a batch).
  pgStoreFlushTurns: 1_000,
  // Leases (src/store/pg-log.ts). An instance's lease on its log lasts pgLeaseMs (store.leaseMs)
  // and is renewed every third of it; the holder counts it lapsed pgLeaseMarginMs early (its own
  // monotonic clock against Postgres's), and sends no protocol message while it has lapsed.
  pgLeaseMs: 10_000,
  pgLeaseMarginMs: 1_000,
  // A holder whose event loop could not run for pgLeaseStallMs (or a quarter of its lease, if
  // less) was paused or stalled: another process may have claimed its log meanwhile (a restart
  // under the same name claims it at once), so it counts its lease lapsed until a renewal sent
  // after the stall went through (and found the token still its own). Checked every
  // pgLeaseBeatMs.
  pgLeaseStallMs: 500,
  pgLeaseBeatMs: 100,
  // Siblings look for lapsed logs of their service this often, and claim at most this many per look.
  pgLeaseScanMs: 2_000,
  pgLeaseClaimsPerScan: 4,
  // Logs taken over and not yet finished that one instance holds at most.
  pgLeaseTakenLogs: 16,
  // Connections of the takeover's scans, claims and group answers (each taken log has its own).
  pgTakeoverConnections: 1,
  // An instance whose own log a live sibling holds (finishing it) waits this long for it at start.
  pgLeaseOpenWaitMs: 120_000,
  // Kubernetes Leases (store.lease kubernetes, src/store/kube-lease.ts): one API call's connect
  // and answer bound (a renewal every third of the lease must not wait longer than the lease), the
  // connections to the API server, how often the projected service account token is read again
  // (kubelet rotates it well before expiry), updates retried after a 409 at one renewal, Leases
  // whose version this process remembers (its service's instances, bounded), an answer's size.
  k8sApiTimeoutMs: 3_000,
  k8sApiConnections: 2,
  k8sTokenRereadMs: 60_000,
  k8sLeaseConflictRetries: 3,
  k8sLeasesObserved: 1_024,
  k8sApiMaxBodyBytes: 64 * 1024,
  // One compaction copies forward at most this share of a segment of live records; beyond it the
  // oldest segments are mostly live and copying them would only rewrite the same bytes.
  logCompactCarryFraction: 0.5,
  // With compaction by ended fraction on, the current segment is rolled early only once it holds
  // this much, so a quiet log does not churn tiny files.
  logCompactMinBytes: 1024 * 1024,
  // Replay reads segments in chunks of this size (plus one record), not whole files.
  logReadChunkBytes: 4 * 1024 * 1024,
  // Replay: how many ended records its list may hold beyond twice the live ones before the live
  // records are repacked into a fresh arena (a copy of every live frame, so not too often).
  logReplayEndedSlack: 65_536,
  // --- 2PC protocol core (src/tx/coordinator/machine.ts, src/tx/participant/machine.ts) ---
  // Participants (sidecar branches) per transaction. The COMMIT record lists them all and the
  // coordinator fans phase 2 out to each: 64 bounds that record to a few KiB and one decision to
  // 64 in-flight sends. A call tree wider than that is better served by a saga.
  maxParticipants: 64,
  // Phase-2 resends (commit/abort) from the coordinator: capped exponential backoff with full
  // jitter. A 100 ms first retry rides out a pod restart's connection errors without hammering;
  // the 10 s cap means an in-doubt branch hears the outcome within ~10 s of its sidecar's return.
  phase2BackoffBaseMs: 100,
  phase2BackoffCapMs: 10_000,
  // Abort sends per participant before the coordinator forgets the transaction. Presumed abort
  // makes giving up safe: a prepared participant asks for the outcome on its deadline and an
  // absent record answers "aborted"; an unprepared one aborts alone on its deadline. 8 sends
  // put up to ~13 s of backoff between the first and the last: enough to ride out a blip, and
  // the deadline covers longer outages.
  abortSendAttempts: 8,
  // Participant-side retries of the app's commit/abort hooks and of outcome queries, same shape
  // as phase 2. A prepared branch is retried without bound (the app holds locks until it hears
  // the outcome); the cap bounds the wait once the app or the coordinator is back.
  branchRetryBaseMs: 100,
  branchRetryCapMs: 10_000,
  // --- Step transactions: sagas and TCC (src/tx/saga/) ---
  // Steps per saga/tcc transaction: each is a durable record and, on abort, one compensation
  // in sequence; 256 covers long workflows while bounding a recovery's replay and an undo queue.
  maxSteps: 256,
  // Sends of one compensation / confirm / cancel before the step is reported stuck (defaults of
  // config `steps`). 12 sends with 200 ms base and 30 s cap span ~3 minutes: a redeploy of the
  // target fits, a broken endpoint surfaces to operators instead of retrying silently forever.
  stepOpAttempts: 12,
  stepOpBackoffBaseMs: 200,
  stepOpBackoffCapMs: 30_000,
  // One compensation request or confirm/cancel call: an undo that takes longer is a failed
  // attempt (retried), not a reason to hold the queue.
  stepOpTimeoutMs: 10_000,
  // Context signed for a compensation request: it is sent after the transaction's deadline, so
  // it carries its own short validity instead.
  stepOpContextTtlMs: 60_000,
  // Response body buffered to fill a `{response.json.*}` compensation template, and request body
  // read for `{request.json.*}`: compensations key on ids, not on large documents.
  stepTemplateBodyBytes: 64 * 1024,
  // A step's undo path (filled template or txmesh-compensate), as the config schema allows for
  // a template (maxLength 2048): request lines past ~2 KiB are refused by many servers anyway.
  stepPathChars: 2048,
  // Why a step could not be resolved, kept in its record and shown to operators: one line.
  stepReasonChars: 1024,
  // A step's target as a peer reports it (origin or control address: scheme, bracketed IPv6 or
  // a 253-character DNS name, port).
  stepTargetChars: 300,
  // A step operation's HTTP method (a token of capitals: POST, DELETE, ...) and the names of the
  // headers a step operation carries.
  stepMethodChars: 16,
  stepHeaderNameChars: 64,
  // The headers a step operation's template (or a peer's step record) sets, filled, as request
  // head bytes: the target must take them with the context and ids on top (~600 bytes), and
  // Node's default head limit is 16 KiB; 8 KiB leaves room for both.
  stepOpHeaderBytes: 8 * 1024,
  // A service name a peer reports (a step's service, an enlisted participant): a DNS name is at
  // most 253 characters.
  serviceNameChars: 253,
  // Transactional messages (POST /v1/transactions/{id}/messages): they ride in the decision
  // record, so their sizes count as the record stores them (JSON re-serialized from the parsed
  // request, which can be several times larger: 1e20 is stored as 100000000000000000000). 64
  // messages of at most maxMessageBytes, at most maxMessageTotalBytes together, keep the record
  // under logMaxRecordBytes with decisionRecordRestBytes to spare (src/tx/messages.ts asserts it).
  maxMessagesPerTx: 64,
  // A message's key (partitioning/dedup hint for consumers): an id, not a document.
  messageKeyChars: 256,
  // Connect, JetStream API and publish-ack timeout of the NATS sink: a bus that does not answer
  // in 5 s is treated as down (the outbox keeps the events and retries).
  eventSinkTimeoutMs: 5_000,
  // One message as stored (and the request that attaches it): an event, not a document.
  maxMessageBytes: 64 * 1024,
  maxMessageTotalBytes: 512 * 1024,
  // What a decision record holds besides its messages, at most: maxParticipants (64) refs of a
  // service name (253 characters, up to 6 bytes each once JSON-escaped), a control address and a
  // branch id, ~1.9 KiB each and ~120 KiB in all, then the mode and a traceparent.
  decisionRecordRestBytes: 128 * 1024,
  // --- Event bus delivery (src/events/: queues, NATS and webhook sinks) ---
  // An event id is the sink's idempotency key (JetStream Nats-Msg-Id, webhook idempotency-key
  // header). Ids are built from transaction and branch ids (~100 chars); 256 leaves room for a
  // prefix and still fits comfortably in one header line.
  eventIdMaxChars: 256,
  // A sink that keeps failing is logged on its first failure and then every 10th attempt: with
  // the backoff cap that is one line every ~100 s per sink, not one per retry.
  eventFailureLogEvery: 10,
  // Events one DeliveryQueue holds before push() answers false. The outbox keeps every event
  // durably, so the queue is only a window onto it: 10k events of ~1 KiB is ~10 MiB per sink,
  // and at a sink's normal rate (hundreds per second) it is tens of seconds of backlog; past it
  // the outbox stops feeding rather than the process growing without bound.
  eventQueueLength: 10_000,
  // First retry delay after a failed delivery. Short enough that a transient blip (a leader
  // election, one refused connection) costs ~0.1 s of latency.
  eventBackoffBaseMs: 100,
  // Longest wait between two attempts at the same event. Doubling from 100 ms reaches it after
  // 7 failures; 10 s keeps a down sink from being hammered while resuming delivery within ~10 s
  // of the sink coming back.
  eventBackoffCapMs: 10_000,
  // One delivery attempt (connect + send + ack). A sink that has not acknowledged by then is
  // treated as failed and the same event is retried (the idempotency key makes the retry safe).
  // 10 s is above any healthy broker ack or webhook handler and below the backoff cap's scale.
  eventDeliveryTimeoutMs: 10_000,
  // Hard cap for any configured delivery timeout: a minute-long ack is a stuck sink.
  eventDeliveryTimeoutCapMs: 60_000,
  // close() waits this long for an in-flight delivery to settle before giving up on it (its
  // event stays in the outbox and is delivered again after restart). Below the sidecar's drain
  // timeout (drainTimeoutMs, 15 s) so closing sinks never holds up shutdown.
  eventCloseWaitMs: 5_000,
  // NATS: time to open the first connection (TCP + INFO/CONNECT handshake) before connect()
  // fails. The nats.js default is 20 s; a broker on the same network answers in milliseconds.
  natsConnectTimeoutMs: 5_000,
  // Subscriptions (src/events/subscriber.ts), defaults of their consumer settings: a delivery
  // may take 30 s before the server hands the message out again; 5 deliveries then dead-letter;
  // waits of 1 s, 5 s, 30 s between failed deliveries; 16 messages delivered at once.
  subscriptionAckWaitMs: 30_000,
  subscriptionMaxDeliver: 5,
  subscriptionBackoffMs: [1_000, 5_000, 30_000] as readonly number[],
  subscriptionMaxInFlight: 16,
  // Messages the server hands out ahead of the deliveries (max_ack_pending = maxInFlight times
  // this): enough to keep every slot busy, few enough that a restart's redeliveries stay small.
  subscriptionPendingFactor: 4,
  // A delivery's body (the message's payload): NATS's own max_payload default is 1 MiB.
  subscriptionMaxBodyBytes: 1024 * 1024,
  // One delivery's HTTP timeout is the ack wait less this margin (so the ack lands before the
  // server hands the message out again), at least subscriptionMinDeliveryMs; the keepalive of held
  // messages runs every third of the ack wait, at least as often.
  subscriptionAckMarginMs: 500,
  subscriptionMinDeliveryMs: 1_000,
  // Error text kept from an app's answer (dead-letter header, logs), and a message key's length.
  subscriptionErrorChars: 512,
  subscriptionKeyChars: 256,
  // traceparent/tracestate copied from a message to its delivery (W3C: tracestate <= 512).
  subscriptionTraceHeaderChars: 512,
  // Starting the subscriptions while NATS is away: tried again with a wait growing to 10 s, at
  // most this many times (over 2 hours) before the sidecar gives up on them (logged).
  subscriptionStartAttempts: 1_000,
  subscriptionStartBackoffCapMs: 10_000,
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
  // --- Dashboard event feed (src/admin/events.ts, GET /v1/events) ---
  // Recent transaction events kept for Last-Event-ID replay: a reconnecting dashboard (EventSource
  // retries within seconds) misses at most a few hundred events even under load; 1024 small
  // objects are well under a MiB.
  adminEventsRing: 1_024,
  // Concurrent SSE streams on the admin port: a handful of operators' browser tabs. Past it a new
  // stream gets 503 TXM_TX_LIMIT instead of one more long-lived connection and subscriber.
  adminEventStreams: 16,
  // Unsent bytes a slow SSE client may have queued before its stream is cut (it reconnects and
  // replays from Last-Event-ID): a tab in the background must not buffer without bound.
  adminEventStreamBufferBytes: 1024 * 1024,
  // Comment line on an idle SSE stream so proxies and load balancers do not time it out.
  adminEventsHeartbeatMs: 15_000,
  // --- Kubernetes injection (src/k8s/) ---
  // `txmesh inject` input: manifests of a whole app are tens of KiB; 16 MiB covers a large
  // rendered Helm chart while refusing to read a wrong file (a log, an image) into memory.
  manifestBytes: 16 * 1024 * 1024,
  // YAML aliases expanded per manifest document (billion-laughs bound; manifests rarely use any).
  manifestMaxAliases: 100,
  // AdmissionReview body: etcd stores objects of at most 1.5 MiB by default, and an UPDATE review
  // carries object and oldObject; 6 MiB holds both with JSON escaping to spare. Over it: 413.
  admissionBodyBytes: 6 * 1024 * 1024,
  // The API server waits 10 s for a webhook by default (timeoutSeconds, max 30); a request that
  // takes longer than the maximum is not the API server's.
  admissionRequestTimeoutMs: 30_000,
  admissionHeadersTimeoutMs: 10_000,
  // How often the webhook checks its cert/key files for a rotation (cert-manager renews well
  // before expiry, and kubelet updates a mounted Secret within about a minute).
  admissionCertCheckMs: 30_000,
  // --- Health listener (src/admin/health.ts: kubelet probes on the pod IP) ---
  // A probe is a GET with a handful of short headers (User-Agent, Accept, Connection); 8 KiB is
  // far above that and far below the 32 KiB of the proxy listeners, since anyone on the pod
  // network can reach this port.
  healthMaxHeaderBytes: 8 * 1024,
  // Open connections: the kubelet holds at most one per probe kind (readiness, liveness,
  // startup) and closes it; 64 leaves room for a scraper or a curl while bounding sockets.
  healthMaxConnections: 64,
  // Time to send a probe's head, and its whole lifetime: probes time out after 1 s by default
  // (timeoutSeconds), so a client slower than this is not a kubelet.
  healthHeadersTimeoutMs: 5_000,
  healthRequestTimeoutMs: 10_000,
  // --- Event-loop monitor (src/telemetry/loop-monitor.ts, opt-in) ---
  // Sampling period of the delay histogram: 10 ms resolves the 50 ms stall budget of the
  // footprint check five times over; the histogram adds nothing per request.
  loopMonitorResolutionMs: 10,
  // --- Control plane security (src/control/replay.ts, src/tx/keys.ts, src/peer-tls.ts, admin auth) ---
  // Random bytes of a control request's nonce: 128 bits, so two honest requests never share one
  // (birthday bound ~2^64 requests) and an attacker cannot predict the next.
  controlNonceBytes: 16,
  // Transaction ids, branch ids and nonces take their random bytes from one pool of this size,
  // refilled from the CSPRNG when used up (each byte is used once): one call into OpenSSL per
  // pool instead of one per id, as crypto.randomUUID does with its own cache.
  randomPoolBytes: 4_096,
  // Characters of a coordinator log's incarnation id (alphanumeric, ~59 bits): two logs created
  // anywhere in a mesh's life must not share one, or a stranger could answer presumed abort for
  // the other's transactions. Ten fit in a 64-character transaction id with a pod address.
  incarnationChars: 10,
  // Characters of a coordinator process's run tag (the head of the ids it makes): ~36 bits, so two
  // runs of one log share one with odds of 1 in 5e10. Taken from the id's 16 random characters.
  runTagChars: 6,
  // Nonces remembered to refuse replayed control requests: each stays until its timestamp leaves
  // the controlClockSkewMs window (about 30 s). 100k admit a sustained ~3,300 verified control
  // calls per second per sidecar (a 2PC participant gets two: prepare and commit) and cost at
  // most ~10 MB (~95 bytes per entry, measured on Node 20). Past it a request gets 503
  // TXM_CONTROL_OVERLOADED and the caller retries: a request is never accepted unchecked.
  controlReplayCacheEntries: 100_000,
  // Shortest mesh key (HMAC-SHA256 key) and admin token accepted: 16 bytes (128 bits) cannot be
  // guessed or brute-forced offline; shorter strings are typos or placeholders.
  meshKeyMinBytes: 16,
  adminTokenMinBytes: 16,
  // Secret and certificate files (mesh.keyFile, admin.tokenFile, tls.*File) are a few KiB at
  // most (a PEM chain of three certificates is ~5 KiB); refuse to read a wrong, huge file.
  secretFileBytes: 64 * 1024,
  // How often mesh.keyFile and the tls files are checked for a change (fs.watchFile interval).
  // One stat per file per second is free, and a rotated key or certificate is in use within a
  // second or two of the kubelet swapping the mounted Secret (which itself takes up to a minute).
  secretFileCheckMs: 1_000,
  // After one of the tls files changed, wait this long for the others before reloading: a
  // certificate and its key are written one after the other unless the Secret is swapped
  // atomically, and loading the new certificate with the old key would fail.
  tlsReloadSettleMs: 250,
})

export type Limits = typeof LIMITS
