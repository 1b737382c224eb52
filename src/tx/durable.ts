// Durable appends for the protocol drivers. A full append queue (LogOverloadedError) rejects
// before anything is written, so retrying is safe; a failed write or fsync (LogFailedError) may
// or may not have reached the disk, so the caller must stop and let recovery decide.
import { LogOverloadedError } from '../errors.js'
import { LIMITS } from '../limits.js'
import type { TxLog } from '../store/types.js'
import { body, type WrittenRecord } from './records.js'
import { sleep, type Timers } from './io.js'

export async function appendDurable(
  io: { readonly log: TxLog; readonly timers: Timers },
  key: string,
  record: WrittenRecord,
): Promise<void> {
  for (let attempt = 0; ; attempt++) {
    try {
      await io.log.append(key, body(record))
      return
    } catch (err) {
      if (!(err instanceof LogOverloadedError) || attempt >= LIMITS.logOverloadRetries) throw err
      await sleep(io.timers, LIMITS.logOverloadRetryMs * (attempt + 1))
    }
  }
}
