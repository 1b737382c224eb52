// Every bound of the Postgres participant helper, in one place (STYLE.md: limits are named).
// The helper runs inside the app, not the sidecar, so it has its own table instead of
// src/limits.ts. Options may change the ones marked "default"; the others are fixed.

export const PG_HELPER_LIMITS = Object.freeze({
  // Postgres' GIDSIZE is 200 bytes including the terminating NUL, so PREPARE TRANSACTION takes
  // at most 199 bytes of identifier. A longer gid is refused before it reaches the server.
  maxGidBytes: 199,
  // txmesh-tx-id / txmesh-branch-id: [A-Za-z0-9_-]{1,64} is the contract with the sidecar.
  maxIdLength: 64,
  // Service name inside the gid. DNS labels are at most 63; 100 leaves room for dotted names
  // while most of them still fit the gid with two 64-character ids (4 + 100 + 1 + 64 + 1 + 64
  // is 234 > 199: ids near the maximum with a long service are refused per request, clearly).
  maxServiceLength: 100,
  // Characters of a malformed id or op quoted back in an error message (the rest is cut).
  echoChars: 80,

  // default maxOpen: branches holding a checked-out connection (open, not yet prepared). Each
  // one pins a pool connection and its row locks until prepare/abort; 64 is a busy service's
  // concurrency and still far below Postgres' default max_connections (100).
  defaultMaxOpen: 64,
  maxOpenCap: 10_000,
  // default idleTimeoutMs: a branch idle this long without prepare/abort is rolled back (its
  // coordinator is gone or forgot it). A minute is well beyond a transaction's normal gap
  // between its last business call and prepare, and short enough not to hold locks for long.
  defaultIdleTimeoutMs: 60_000,
  maxIdleTimeoutMs: 24 * 3_600_000,
  // default recoverIntervalMs: how often the helper resolves, on its own, prepared rows of its
  // service older than this interval. recover() at start cannot see a row prepared later whose
  // sidecar then lost the branch (killed while the app ran PREPARE TRANSACTION, before PREPARED
  // was logged) and whose coordinator's abort never arrived (its sends are bounded, and a
  // restarted coordinator forgets an abort): nobody else would ever finish that row, and it holds
  // its row locks. 30 s is well past a normal prepare-to-commit gap, and one cheap query when
  // nothing is left over. 0 turns the sweep off.
  defaultRecoverIntervalMs: 30_000,
  maxRecoverIntervalMs: 24 * 3_600_000,

  // Requests of one branch run one at a time on its single connection; more than this many
  // waiting behind the running one is a caller bug or a storm: 503 TXM_PG_BRANCH_BUSY.
  maxQueuedPerBranch: 32,
  // How long a business request waits for its turn on its branch before 503 TXM_PG_BRANCH_BUSY.
  requestQueueWaitMs: 30_000,
  // How long prepare/commit/abort wait for a running business request of the same branch. The
  // sidecar only runs prepare after the responses came back, so a long wait means a stuck
  // handler: prepare then votes no, commit/abort answer 503 (retried).
  hookWaitMs: 10_000,
  // Waiting for a pool connection (pg's own default is to wait forever).
  connectTimeoutMs: 5_000,
  // close(): how long to wait for a running request before its connection is destroyed (which
  // makes Postgres roll its transaction back).
  closeWaitMs: 5_000,

  // The batch hook ({hookPrefix}/batch): hook calls per request and the body's size. The sidecar
  // sends at most 64 items (its LIMITS.batchMaxItems) of ~500 bytes (ids and the context).
  maxBatchItems: 64,
  maxBatchBodyBytes: 64 * 1024,
  // The batch body must arrive within this (the sidecar sends it at once); an item still working
  // after batchItemWaitMs is answered 503 on its own, below the sidecar's 10 s hook timeout.
  batchReadMs: 5_000,
  batchItemWaitMs: 8_000,

  // Finished branches remembered, so a late request of a prepared/failed branch is refused
  // instead of silently starting a new transaction, and a repeated prepare answers the same.
  // Ids are unique; the oldest are forgotten first.
  maxTombstones: 10_000,

  // recover(): outcome calls to the local sidecar's admin API.
  recoverAttempts: 3, // per prepared row; the sidecar is local, so 3 covers a restart blip
  recoverCallTimeoutMs: 2_000, // a local call; slower means the sidecar is not ready
  recoverBackoffBaseMs: 100,
  recoverBackoffCapMs: 1_000,
  maxOutcomeBodyBytes: 16 * 1024, // the answer is a tiny JSON object

  // barrier(): attempts at creating txmesh_barrier. Sessions creating it at once make all but one
  // fail (23505 on pg_type's index, or 42P07) after the winner committed, so a second attempt
  // finds the table; 3 leaves room for a blip without looping on a real failure (privileges).
  barrierCreateAttempts: 3,

  // inbox(): a message id's length (a txmesh id is `<64-char tx id>:m<index>`), and the JSON of
  // fn's answer kept for redeliveries (larger ones are not kept: a redelivery answers null).
  inboxIdChars: 200,
  inboxAnswerChars: 64 * 1024,
})
