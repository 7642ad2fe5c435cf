/**
 * Fingerprints for deduplication: 8 bytes per 4 KiB logical block.
 *
 * The default is xxHash64 keyed with a random 64-bit secret drawn when the array is created
 * (kept in the format record): about 0.7 µs per block here, against 4.3 µs for SHA-256 through
 * node:crypto. It is not cryptographic and 64 bits do collide now and then, so a fingerprint
 * match is only a candidate: the write path shares a stored chunk only after comparing it with the
 * new block byte for byte (dm-vdo does the same with its non-cryptographic MurmurHash3). A block
 * crafted to collide with another tenant's block can therefore neither read nor corrupt it, and
 * the key keeps the fingerprints in the data directory from confirming guesses of block contents.
 *
 * Tests inject other functions (even ones that collide on purpose); only their first 8 bytes are
 * kept, and every match is verified the same way.
 */
import { xxh64 } from '@node-rs/xxhash';
import { randomBytes } from 'node:crypto';

export const FINGERPRINT_BYTES = 8;

export interface FingerprintFunction {
  (block: Buffer): Buffer;
  /** Informational: every match is verified byte for byte whatever this says. */
  readonly cryptographic: boolean;
}

/** The keyed xxHash64 of a block, big-endian. */
export function keyedFingerprint(key: bigint): FingerprintFunction {
  return Object.assign(
    (block: Buffer) => {
      const out = Buffer.allocUnsafe(FINGERPRINT_BYTES);
      out.writeBigUInt64BE(xxh64(block, key), 0);
      return out;
    },
    { cryptographic: false, key },
  );
}

/** A fresh fingerprint key for a new array. */
export function newFingerprintKey(): bigint {
  return randomBytes(8).readBigUInt64BE(0);
}

/** The key of a keyed fingerprint function, or null for an injected one. */
export function fingerprintKeyOf(fingerprint: FingerprintFunction): bigint | null {
  const key = (fingerprint as { key?: unknown }).key;
  return typeof key === 'bigint' ? key : null;
}
