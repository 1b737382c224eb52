// Structured logging: one JSON line per notable event on stderr (STYLE.md: observability is a
// hook, not a print). Stdout is reserved for machine-readable output such as the start-up line.

export type LogLevel = 'debug' | 'info' | 'warn' | 'error' | 'silent'
const ORDER: Record<LogLevel, number> = { debug: 10, info: 20, warn: 30, error: 40, silent: 100 }

export interface Logger {
  debug(event: string, fields?: Record<string, unknown>): void
  info(event: string, fields?: Record<string, unknown>): void
  warn(event: string, fields?: Record<string, unknown>): void
  error(event: string, fields?: Record<string, unknown>): void
}

export function createLogger(
  level: LogLevel,
  base: Record<string, unknown> = {},
  out: NodeJS.WritableStream = process.stderr,
): Logger {
  const min = ORDER[level]
  const emit = (lvl: LogLevel, event: string, fields?: Record<string, unknown>): void => {
    if (ORDER[lvl] < min) return
    out.write(JSON.stringify({ time: new Date().toISOString(), level: lvl, event, ...base, ...fields }) + '\n')
  }
  return {
    debug: (e, f) => emit('debug', e, f),
    info: (e, f) => emit('info', e, f),
    warn: (e, f) => emit('warn', e, f),
    error: (e, f) => emit('error', e, f),
  }
}

export const silentLogger: Logger = createLogger('silent')
