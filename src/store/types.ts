// What the protocol drivers, the outbox and the incarnation record need of a durable store of
// records, whichever engine holds them: the embedded file log (src/wal/file-log.ts, the default)
// or, shared by the sibling instances of a service, Postgres. Records are keyed (a transaction id
// or one of the keys in src/tx/records.ts) and a key's records are dropped together by end().
/** One live record: its key and its JSON body. */
export interface LogEntry {
  readonly txId: string
  /** JSON. */
  readonly body: Readonly<Record<string, unknown>>
}

export interface TxLog {
  /** Resolves once the record is durable; rejects with a coded error otherwise (src/tx/durable.ts). */
  append(key: string, body: Record<string, unknown>): Promise<void>
  /** Written with the next durable batch, or on its own soon after; never waited for. */
  appendLazy(key: string, body: Record<string, unknown>): void
  /** Every record of `key` is finished with: replay no longer returns them. Lazy. */
  end(key: string): void
  /** Resolves once everything appended so far (lazy records and ends too) is written. */
  flush(): Promise<void>
  close(): Promise<void>
  /** Counters for the admin API and metrics; each store adds its own to these. */
  stats(): LogStats
}

export interface LogStats {
  /** Records appended by callers (append + appendLazy). */
  readonly appends: number
  readonly ends: number
  /** Appends waiting to be written. */
  readonly pending: number
  /** Records read at open and how long it took, and the transactions live after it. */
  readonly replayedRecords: number
  readonly replayMs: number
  readonly liveTransactions: number
}

/** A store opened: its log and the live records replay found, in append order. */
export interface OpenedLog<L extends TxLog = TxLog> {
  readonly log: L
  readonly records: LogEntry[]
}
