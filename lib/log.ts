import { LOG_LEVELS, type LogLevel } from './config';

export type LogFields = Readonly<Record<string, unknown>>;

export interface Logger {
  debug(event: string, fields?: LogFields): void;
  info(event: string, fields?: LogFields): void;
  warn(event: string, fields?: LogFields): void;
  error(event: string, fields?: LogFields): void;
  /** Logs `event` at most once per `key` (e.g. one line per outage, per forged document). */
  once(level: Exclude<LogLevel, 'silent'>, key: string, event: string, fields?: LogFields): void;
  /** Forgets a `once` key, so the next occurrence is logged again (e.g. when an outage ends). */
  reset(key: string): void;
}

export type LogSink = (line: string, level: Exclude<LogLevel, 'silent'>) => void;

const defaultSink: LogSink = (line, level) => {
  (level === 'error' || level === 'warn' ? process.stderr : process.stdout).write(line + '\n');
};

/** One JSON line per event: `{"t":..., "level":..., "event":..., ...fields}`. */
export function createLogger(level: LogLevel, base: LogFields = {}, sink: LogSink = defaultSink): Logger {
  const min = LOG_LEVELS.indexOf(level);
  const seen = new Set<string>();
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
      if (seen.has(key)) return;
      seen.add(key);
      write(lvl, event, fields);
    },
    reset: (key) => void seen.delete(key),
  };
}

function errorReplacer(_key: string, value: unknown): unknown {
  return value instanceof Error ? { name: value.name, message: value.message } : value;
}
