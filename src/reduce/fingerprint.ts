/**
 * Fingerprints for deduplication.
 *
 * The default is SHA-256: a collision between two different blocks is not a practical concern,
 * so a hit is shared without reading the old chunk back. Any other function (tests inject one
 * that collides on purpose) is not trusted: the dedup path then compares the candidate chunk byte
 * for byte before sharing it, so a crafted collision can neither read nor corrupt another block.
 */
import { createHash } from 'node:crypto';

export const FINGERPRINT_BYTES = 32;

export interface FingerprintFunction {
  (block: Buffer): Buffer;
  /** True only for a cryptographic hash; otherwise every hit is verified byte for byte. */
  readonly cryptographic: boolean;
}

export const sha256Fingerprint: FingerprintFunction = Object.assign((block: Buffer) => createHash('sha256').update(block).digest(), { cryptographic: true });
