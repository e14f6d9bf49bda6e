import { LOG_LEVELS, type LogLevel } from './config';

export type LogFields = Readonly<Record<string, unknown>>;

export interface Logger {
  debug(event: string, fields?: LogFields): void;
  info(event: string, fields?: LogFields): void;
  warn(event: string, fields?: LogFields): void;
  error(event: string, fields?: LogFields): void;
  /**
   * Logs `event` at most once per `key` per time window (ONCE_WINDOW_MS): a repeated problem is
   * one line a minute, with how many were left out since (`suppressed`), and a problem that comes
   * back later is logged again. Keys must come from a bounded set; the table is capped anyway.
   */
  once(level: Exclude<LogLevel, 'silent'>, key: string, event: string, fields?: LogFields): void;
  /** Forgets a `once` key, so the next occurrence is logged at once (e.g. when an outage ends). */
  reset(key: string): void;
}

export type LogSink = (line: string, level: Exclude<LogLevel, 'silent'>) => void;

/** `once` logs a key again after this long. */
export const ONCE_WINDOW_MS = 60_000;
/** `once` remembers at most this many keys (the least recently logged go first). */
export const ONCE_MAX_KEYS = 1000;

const defaultSink: LogSink = (line, level) => {
  (level === 'error' || level === 'warn' ? process.stderr : process.stdout).write(line + '\n');
};

export interface LoggerOptions {
  readonly onceWindowMs?: number;
  readonly onceMaxKeys?: number;
  readonly now?: () => number;
}

/** One JSON line per event: `{"t":..., "level":..., "event":..., ...fields}`. */
export function createLogger(level: LogLevel, base: LogFields = {}, sink: LogSink = defaultSink, options: LoggerOptions = {}): Logger {
  const min = LOG_LEVELS.indexOf(level);
  const windowMs = options.onceWindowMs ?? ONCE_WINDOW_MS;
  const maxKeys = options.onceMaxKeys ?? ONCE_MAX_KEYS;
  const now = options.now ?? Date.now;
  /** Key → when it was last logged and how many were left out since; in order of last logging. */
  const seen = new Map<string, { at: number; suppressed: number }>();
  const write = (lvl: Exclude<LogLevel, 'silent'>, event: string, fields?: LogFields): void => {
    if (LOG_LEVELS.indexOf(lvl) < min) return;
    sink(JSON.stringify({ t: new Date().toISOString(), level: lvl, event, ...base, ...fields }, errorReplacer), lvl);
  };
  return {
    debug: (e, f) => write('debug', e, f),
    info: (e, f) => write('info', e, f),
    warn: (e, f) => write('warn', e, f),
    error: (e, f) => write('error', e, f),
    once(lvl, key, event, fields) {
      const t = now();
      const prev = seen.get(key);
      if (prev && t - prev.at < windowMs) {
        prev.suppressed++;
        return;
      }
      seen.delete(key);
      seen.set(key, { at: t, suppressed: 0 });
      if (seen.size > maxKeys) {
        const oldest = seen.keys().next().value;
        if (oldest !== undefined) seen.delete(oldest);
      }
      write(lvl, event, prev && prev.suppressed > 0 ? { ...fields, suppressed: prev.suppressed } : fields);
    },
    reset: (key) => void seen.delete(key),
  };
}

function errorReplacer(_key: string, value: unknown): unknown {
  return value instanceof Error ? { name: value.name, message: value.message } : value;
}
