// The coordinator log's incarnation (DESIGN.md "Coordinator identity"): an id made once, when the
// log is created, and kept in the log itself as a record that is never ended (so compaction
// carries it forward). Transaction ids carry it (src/tx/protocol.ts newTxId). Presumed abort,
// "no record means aborted", holds only in the log that would hold the record: a sidecar whose
// log is a different one (a new pod at a reused IP address, a wiped emptyDir, a log older than
// this rule) answers "unknown coordinator" for ids that are not of its incarnation, and the
// branches asking stay prepared and in doubt instead of rolling back committed work.
import type { LogEntry, TxLog } from '../store/types.js'
import { isIncarnation, newIncarnation } from '../tx/protocol.js'
import { INCARNATION_KEY, body, decodeRecord } from '../tx/records.js'

export { INCARNATION_KEY }

/**
 * The incarnation found among the replayed records, or a new one made durable before it is
 * returned (no id may carry it before the log can vouch for it).
 */
export async function logIncarnation(
  log: TxLog,
  records: readonly LogEntry[],
  /** Makes the id (the simulation's is seeded) and tells the time of the record. */
  make: { readonly id: () => string; readonly now: () => number } = { id: () => newIncarnation(), now: Date.now },
): Promise<{ id: string; created: boolean }> {
  for (const r of records) {
    if (r.txId !== INCARNATION_KEY) continue
    const d = decodeRecord(r.txId, r.body)
    if (d?.kind === 'incarnation' && isIncarnation(d.record.id)) return { id: d.record.id, created: false }
  }
  const id = make.id()
  await log.append(INCARNATION_KEY, body({ type: 'incarnation', id, at: new Date(make.now()).toISOString() }))
  return { id, created: true }
}
