/**
 * Concise structured logs: one JSON object per line on stderr, so that people can read them and
 * programs (tests, log shippers) can parse them. `PSTORAGE_LOG=debug|info|warn|error|silent`.
 * Logging never fails the caller: see `safeLineWriter`.
 */
import fs from 'node:fs';

export type LogLevel = 'debug' | 'info' | 'warn' | 'error';
const LEVEL_RANK: Record<LogLevel | 'silent', number> = { debug: 10, info: 20, warn: 30, error: 40, silent: 99 };

export interface Logger {
  debug(msg: string, fields?: Record<string, unknown>): void;
  info(msg: string, fields?: Record<string, unknown>): void;
  warn(msg: string, fields?: Record<string, unknown>): void;
  error(msg: string, fields?: Record<string, unknown>): void;
  child(fields: Record<string, unknown>): Logger;
}

function thresholdFromEnv(): number {
  const wanted = (process.env.PSTORAGE_LOG ?? 'info').toLowerCase() as LogLevel | 'silent';
  return LEVEL_RANK[wanted] ?? LEVEL_RANK.info;
}

/** The process's log: stderr, through `fdLineWriter`. */
const stderrLines = fdLineWriter(2);

export function createLogger(base: Record<string, unknown> = {}, write: (line: string) => void = stderrLines): Logger {
  const threshold = thresholdFromEnv();
  const emit = (level: LogLevel, msg: string, fields?: Record<string, unknown>): void => {
    if (LEVEL_RANK[level] < threshold) return;
    const record: Record<string, unknown> = { time: new Date().toISOString(), level, msg, ...base, ...fields };
    write(JSON.stringify(record, (_key, value) => (typeof value === 'bigint' ? value.toString() : value)) + '\n');
  };
  return {
    debug: (msg, fields) => emit('debug', msg, fields),
    info: (msg, fields) => emit('info', msg, fields),
    warn: (msg, fields) => emit('warn', msg, fields),
    error: (msg, fields) => emit('error', msg, fields),
    child: (fields) => createLogger({ ...base, ...fields }, write),
  };
}

export const silentLogger: Logger = {
  debug() {},
  info() {},
  warn() {},
  error() {},
  child() {
    return silentLogger;
  },
};

/**
 * A line writer that never throws and never takes the process down: a line it cannot write (the
 * file system under the log is full, the pipe's reader has gone) is dropped and counted, and the
 * first line written after that is preceded by one warning saying how many were dropped and why.
 */
export function safeLineWriter(write: (line: string) => void): (line: string) => void {
  let dropped = 0;
  let reason = '';
  return (line) => {
    try {
      if (dropped > 0) {
        const notice = { time: new Date().toISOString(), level: 'warn', msg: `${dropped} log line(s) could not be written and were dropped`, dropped, reason };
        write(JSON.stringify(notice) + '\n');
        dropped = 0;
      }
      write(line);
    } catch (error) {
      dropped += 1;
      reason = (error as NodeJS.ErrnoException).code ?? (error as Error).message;
    }
  };
}

/**
 * Writes to a file descriptor synchronously (as Node writes stdout and stderr to files and pipes
 * on Linux), without Node's stream, whose write throws on ENOSPC (and then keeps every later line
 * in memory) and emits an 'error' for a closed pipe that nothing handles.
 */
export function fdLineWriter(fd: number): (line: string) => void {
  return safeLineWriter((line) => {
    const bytes = Buffer.from(line);
    for (let done = 0; done < bytes.length; ) done += fs.writeSync(fd, bytes, done, bytes.length - done);
  });
}
