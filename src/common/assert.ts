/**
 * Assertions catch programmer errors and crash: they are never used for bad input, a full array or
 * an I/O failure, which are `StorageError`s.
 */
export class AssertionError extends Error {
  override name = 'AssertionError';
}

export function assert(condition: unknown, message = 'assertion failed'): asserts condition {
  if (!condition) throw new AssertionError(message);
}

/**
 * For assertions whose message is built from values: `if (!condition) fail(\`...\`)` builds the
 * message only when the assertion fails (as an argument of `assert` it is built on every call,
 * which cost a number-to-string conversion per block on the write path).
 */
export function fail(message: string): never {
  throw new AssertionError(message);
}

export function unreachable(value: never, message = 'unreachable'): never {
  throw new AssertionError(`${message}: ${String(value)}`);
}
