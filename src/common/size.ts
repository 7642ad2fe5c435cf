/** Parsing and printing byte sizes with binary suffixes (K = 1024). */

const SUFFIX_SHIFT: Record<string, bigint> = { '': 0n, K: 10n, M: 20n, G: 30n, T: 40n, P: 50n };

/**
 * Parses `16G`, `512M`, `4096`, `1.5T`, `10GiB` into a byte count. Throws a `RangeError` whose
 * message says what is accepted.
 */
export function parseSizeBytes(text: string): number {
  const match = /^\s*(\d+(?:\.\d+)?)\s*([KMGTP]?)(?:i?B)?\s*$/i.exec(text);
  if (!match) {
    throw new RangeError(`invalid size "${text}": use a number of bytes with an optional K, M, G or T suffix, e.g. 16G`);
  }
  const [, digits, suffix] = match;
  const shift = Number(SUFFIX_SHIFT[suffix!.toUpperCase()]!);
  const bytes = Math.round(Number(digits) * 2 ** shift);
  if (!Number.isSafeInteger(bytes) || bytes <= 0) {
    throw new RangeError(`invalid size "${text}": must be greater than zero and below 8 PiB`);
  }
  return bytes;
}

export function formatBytes(bytes: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];
  let value = bytes;
  let unit = 0;
  while (Math.abs(value) >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  const digits = unit === 0 || Number.isInteger(value) ? 0 : value < 10 ? 2 : 1;
  return `${value.toFixed(digits)} ${units[unit]}`;
}

export const KiB = 1024;
export const MiB = 1024 * KiB;
export const GiB = 1024 * MiB;
