/**
 * The one place where internal errors become NBD error numbers (NBD.md section 11).
 * Anything that is not a `StorageError` is a bug; it is reported to the client as EIO, never as
 * success, and the caller logs it.
 */
import { isStorageError, type StorageErrorCode } from '../common/errors.js';
import {
  NBD_EINVAL,
  NBD_EIO,
  NBD_ENOSPC,
  NBD_ENOTSUP,
  NBD_EPERM,
  NBD_ESHUTDOWN,
} from './constants.js';

const ERRNO_BY_CODE: Record<StorageErrorCode, number> = {
  INVALID_ARGUMENT: NBD_EINVAL,
  OUT_OF_RANGE: NBD_EINVAL,
  READ_ONLY: NBD_EPERM,
  NO_SPACE: NBD_ENOSPC,
  IO: NBD_EIO,
  CORRUPT: NBD_EIO,
  NOT_SUPPORTED: NBD_ENOTSUP,
  SHUTTING_DOWN: NBD_ESHUTDOWN,
  NOT_FOUND: NBD_EINVAL,
  ALREADY_EXISTS: NBD_EINVAL,
  BUSY: NBD_EIO,
};

export function nbdErrnoOf(error: unknown): number {
  return isStorageError(error) ? ERRNO_BY_CODE[error.code] : NBD_EIO;
}
