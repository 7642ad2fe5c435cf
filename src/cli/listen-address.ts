/** Parsing of `--listen HOST:PORT` values, with messages that say what is accepted. */

export interface TcpAddress {
  host: string;
  port: number;
}

export const DEFAULT_LISTEN = '127.0.0.1:10809';

/** `HOST:PORT`, `[IPv6]:PORT`, or `none` (no TCP listener). */
export function parseListen(text: string, option = '--listen'): TcpAddress | null {
  if (text === 'none' || text === 'off') return null;
  const match = /^(?:\[([^\]]+)\]|([^:]+)):(\d{1,5})$/.exec(text.trim());
  const port = match ? Number(match[3]) : NaN;
  if (!match || port > 65535) {
    throw new RangeError(`invalid ${option} "${text}": use HOST:PORT (e.g. 127.0.0.1:10809), [IPv6]:PORT, or "none"`);
  }
  return { host: match[1] ?? match[2]!, port };
}
