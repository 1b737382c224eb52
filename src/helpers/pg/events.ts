// Observability is a hook, not a print (STYLE.md): the helper reports what it did through
// `onEvent`, one structured object per notable step; the app logs or counts them as it likes.

export type TxmeshPgEventName =
  | 'branch_opened'
  | 'branch_prepared'
  | 'branch_read_only'
  | 'branch_committed'
  | 'branch_aborted'
  | 'branch_failed'
  | 'branch_expired'
  | 'handler_error'
  | 'recover_committed'
  | 'recover_aborted'
  | 'recover_in_doubt'
  | 'recover_error'

export interface TxmeshPgEvent {
  readonly event: TxmeshPgEventName
  readonly gid?: string
  readonly code?: string
  readonly message?: string
}

export type Emit = (e: TxmeshPgEvent) => void
