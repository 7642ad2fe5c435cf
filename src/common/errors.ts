/**
 * The one error type of pstorage.
 *
 * Operating errors (bad input, a full array, an I/O failure, a checksum mismatch) are expected
 * and travel as `StorageError` with a stable string code; the original error, if any, is kept as
 * `cause`. Programmer errors are assertion failures (see `assert.ts`) and crash the process.
 * The mapping from a code to an NBD error number lives in exactly one place:
 * `src/protocol/errno.ts`.
 */

export type StorageErrorCode =
  | 'INVALID_ARGUMENT'
  | 'OUT_OF_RANGE'
  | 'READ_ONLY'
  | 'NO_SPACE'
  | 'IO'
  | 'CORRUPT'
  | 'NOT_SUPPORTED'
  | 'SHUTTING_DOWN'
  | 'NOT_FOUND'
  | 'ALREADY_EXISTS'
  | 'BUSY';

export class StorageError extends Error {
  readonly code: StorageErrorCode;
  /**
   * NO_SPACE because the file system under the data directory is full, not the array: the array
   * then stops taking data until there is room again (volume/host-space.ts).
   */
  readonly hostFull: boolean;

  constructor(code: StorageErrorCode, message: string, options?: { cause?: unknown; hostFull?: boolean }) {
    super(message, options);
    this.name = 'StorageError';
    this.code = code;
    this.hostFull = options?.hostFull === true && code === 'NO_SPACE';
  }

  static invalidArgument(message: string, cause?: unknown): StorageError {
    return new StorageError('INVALID_ARGUMENT', message, { cause });
  }
  static outOfRange(message: string): StorageError {
    return new StorageError('OUT_OF_RANGE', message);
  }
  static readOnly(message: string): StorageError {
    return new StorageError('READ_ONLY', message);
  }
  static noSpace(message: string, cause?: unknown): StorageError {
    return new StorageError('NO_SPACE', message, { cause });
  }
  /** NO_SPACE of the host file system (see `hostFull`). */
  static hostFull(message: string, cause?: unknown): StorageError {
    return new StorageError('NO_SPACE', message, { cause, hostFull: true });
  }
  static io(message: string, cause?: unknown): StorageError {
    return new StorageError('IO', message, { cause });
  }
  static corrupt(message: string, cause?: unknown): StorageError {
    return new StorageError('CORRUPT', message, { cause });
  }
  static notSupported(message: string): StorageError {
    return new StorageError('NOT_SUPPORTED', message);
  }
  static shuttingDown(message = 'the array is shutting down'): StorageError {
    return new StorageError('SHUTTING_DOWN', message);
  }
  static notFound(message: string): StorageError {
    return new StorageError('NOT_FOUND', message);
  }
  static alreadyExists(message: string): StorageError {
    return new StorageError('ALREADY_EXISTS', message);
  }
  static busy(message: string): StorageError {
    return new StorageError('BUSY', message);
  }
}

export function isStorageError(error: unknown): error is StorageError {
  return error instanceof StorageError;
}

/** True for a NO_SPACE of the host file system (see `StorageError.hostFull`). */
export function isHostFull(error: unknown): error is StorageError {
  return error instanceof StorageError && error.hostFull;
}

/**
 * Turns anything thrown by Node's `fs` into a `StorageError`, keeping the original as `cause`.
 * ENOSPC/EDQUOT/EFBIG mean the host file system is full (`hostFull`); everything else is an I/O
 * failure.
 */
export function fromSystemError(error: unknown, what: string): StorageError {
  if (error instanceof StorageError) return error;
  const code = (error as NodeJS.ErrnoException | undefined)?.code;
  if (code === 'ENOSPC' || code === 'EDQUOT' || code === 'EFBIG') {
    return StorageError.hostFull(`${what}: no space left on the host file system`, error);
  }
  const detail = error instanceof Error ? error.message : String(error);
  return StorageError.io(`${what}: ${detail}`, error);
}
