/**
 * The keys of an encrypted array: the data-encryption key (DEK), wrapped by a key-encryption key
 * (KEK) that the operator holds in a key file (`--key-file FILE` or PSTORAGE_KEY_FILE).
 *
 * What it owns: the `encryption` field of the format record (catalog-copy.ts) and the pure
 * functions that make, check and rewrap it. No I/O but reading the key file.
 *
 * - DEK: 64 random bytes made when the array is created, the AES-256-XTS key of every record
 *   (ftl/record-cipher.ts). It never changes, so rotating the KEK re-encrypts no data.
 * - KEK: HKDF-SHA256 of the key file's bytes (at least 32 bytes of secret, e.g.
 *   `openssl rand -out FILE 32`) with a random 16-byte salt stored in the record, info "pstorage kek".
 * - Wrap: AES-256-GCM of the DEK under the KEK, with a random 12-byte nonce stored beside it and
 *   the record's cipher names as additional data. A GCM tag that fails means the wrong key file
 *   (or a damaged record): `unwrapDek` throws INVALID_ARGUMENT saying so, before anything is written.
 * - Fingerprint key: for an encrypted array the dedup fingerprints (keyed XXH64, reduce/fingerprint.ts)
 *   must not let someone holding only the data directory test a guess of a block's content, so
 *   their key is not stored: it is HKDF-SHA256 of the DEK (info "pstorage fingerprint key"), and
 *   the format record's `fingerprintKey` is empty. Record checksums of an encrypted array are over
 *   ciphertext and use the public default seed, so they tell nothing about the fingerprint key.
 *
 * On-disk format (JSON, in the format record of LevelDB's 'super' sublevel and in catalog.json):
 *   { cipher: "aes-256-xts", keyWrap: "aes-256-gcm", kdf: "hkdf-sha256", salt, nonce, wrappedKey, tag }
 * (hex strings). Rotation writes a new salt, nonce and wrapped key; the DEK stays.
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import { StorageError } from '../common/errors.js';
import path from 'node:path';
import { DEFAULT_CHECKSUM_SEED } from '../ftl/page-format.js';
import { DEK_BYTES, RECORD_CIPHER_NAME, RecordCipher } from '../ftl/record-cipher.js';
import { CATALOG_COPY_NAME, decodeCatalogCopy, type FormatRecord } from './catalog-copy.js';

export interface EncryptionRecord {
  cipher: typeof RECORD_CIPHER_NAME;
  keyWrap: 'aes-256-gcm';
  kdf: 'hkdf-sha256';
  salt: string;
  nonce: string;
  wrappedKey: string;
  tag: string;
}

export const MIN_KEY_FILE_BYTES = 32;

/** The secret in a key file, checked for length. */
export function readKeyFile(file: string): Buffer {
  let bytes: Buffer;
  try {
    bytes = fs.readFileSync(file);
  } catch (error) {
    throw StorageError.invalidArgument(`cannot read the key file ${file}: ${(error as Error).message}`, error);
  }
  if (bytes.length < MIN_KEY_FILE_BYTES) {
    throw StorageError.invalidArgument(`the key file ${file} holds ${bytes.length} bytes; it needs at least ${MIN_KEY_FILE_BYTES} bytes of secret (make one with "openssl rand -out FILE 32")`);
  }
  return bytes;
}

/** A new DEK and its record wrapped under `keyFileBytes`. */
export function newEncryption(keyFileBytes: Buffer): { record: EncryptionRecord; dek: Buffer } {
  let dek = crypto.randomBytes(DEK_BYTES);
  while (dek.subarray(0, 32).equals(dek.subarray(32))) dek = crypto.randomBytes(DEK_BYTES); // XTS refuses equal halves
  return { record: wrapDek(dek, keyFileBytes), dek };
}

/** The record of `dek` wrapped under `keyFileBytes`, with a fresh salt and nonce. */
export function wrapDek(dek: Buffer, keyFileBytes: Buffer): EncryptionRecord {
  const salt = crypto.randomBytes(16);
  const nonce = crypto.randomBytes(12);
  const cipher = crypto.createCipheriv('aes-256-gcm', kekOf(keyFileBytes, salt), nonce);
  cipher.setAAD(WRAP_AAD);
  const wrapped = Buffer.concat([cipher.update(dek), cipher.final()]);
  return { cipher: RECORD_CIPHER_NAME, keyWrap: 'aes-256-gcm', kdf: 'hkdf-sha256', salt: salt.toString('hex'), nonce: nonce.toString('hex'), wrappedKey: wrapped.toString('hex'), tag: cipher.getAuthTag().toString('hex') };
}

/** The DEK, or INVALID_ARGUMENT when `keyFileBytes` is not the key the record was wrapped with. */
export function unwrapDek(record: EncryptionRecord, keyFileBytes: Buffer, where: string): Buffer {
  if (record.cipher !== RECORD_CIPHER_NAME || record.keyWrap !== 'aes-256-gcm' || record.kdf !== 'hkdf-sha256') {
    throw StorageError.notSupported(`${where} is encrypted with ${record.cipher}/${record.keyWrap}/${record.kdf}, which this pstorage does not know`);
  }
  try {
    const decipher = crypto.createDecipheriv('aes-256-gcm', kekOf(keyFileBytes, Buffer.from(record.salt, 'hex')), Buffer.from(record.nonce, 'hex'));
    decipher.setAAD(WRAP_AAD);
    decipher.setAuthTag(Buffer.from(record.tag, 'hex'));
    const dek = Buffer.concat([decipher.update(Buffer.from(record.wrappedKey, 'hex')), decipher.final()]);
    if (dek.length !== DEK_BYTES) throw new Error('wrapped key of the wrong length');
    return dek;
  } catch (error) {
    throw StorageError.invalidArgument(`wrong key: the key file does not unlock the encrypted array in ${where} (nothing was changed); pass the key file the array was created or last rotated with`, error);
  }
}

/** The fingerprint key (hex, 16 digits) of an encrypted array: never stored, derived from the DEK. */
export function fingerprintKeyFromDek(dek: Buffer): string {
  return Buffer.from(crypto.hkdfSync('sha256', dek, Buffer.alloc(0), 'pstorage fingerprint key', 8)).toString('hex');
}

function kekOf(keyFileBytes: Buffer, salt: Buffer): Buffer {
  return Buffer.from(crypto.hkdfSync('sha256', keyFileBytes, salt, 'pstorage kek', 32));
}

const WRAP_AAD = Buffer.from('pstorage dek aes-256-xts aes-256-gcm');

/**
 * The array's secrets: the key of its fingerprints, the seed of its record checksums and its record
 * cipher. A plain array's key is in its format record and seeds both; an encrypted array's is
 * derived from its DEK, and its record checksums (over ciphertext) use the public default seed.
 */
export function unlockArray(format: FormatRecord, keyFileBytes: Buffer | undefined, dataDir: string): { fingerprintKey: bigint; recordSeed: bigint; cipher: RecordCipher | null } {
  if (!keyFileFits(format, keyFileBytes, dataDir)) {
    const key = BigInt(`0x${format.fingerprintKey}`);
    return { fingerprintKey: key, recordSeed: key, cipher: null };
  }
  const dek = unwrapDek(format.encryption!, keyFileBytes!, dataDir);
  return { fingerprintKey: BigInt(`0x${fingerprintKeyFromDek(dek)}`), recordSeed: DEFAULT_CHECKSUM_SEED, cipher: new RecordCipher(dek) };
}

/**
 * `unlockArray`'s checks against the catalog copy's format record, before LevelDB is opened (which
 * writes its log), so that a missing or wrong key leaves the data directory exactly as it was.
 * Without a readable copy the checks wait for LevelDB's record.
 */
export function checkKeyAgainstCopy(dataDir: string, keyFileBytes: Buffer | undefined): void {
  let format: FormatRecord;
  try {
    format = decodeCatalogCopy(fs.readFileSync(path.join(dataDir, CATALOG_COPY_NAME)), CATALOG_COPY_NAME).format;
  } catch {
    return;
  }
  if (!keyFileFits(format, keyFileBytes, dataDir)) return;
  // While a rotation is in flight the copy holds both records (key-rotation.ts); LevelDB decides.
  if (format.previousEncryption !== undefined) {
    try {
      unwrapDek(format.previousEncryption, keyFileBytes!, dataDir);
      return;
    } catch {
      // Not the old key: it must be the new one.
    }
  }
  unwrapDek(format.encryption!, keyFileBytes!, dataDir);
}

/**
 * True for an encrypted array given a key file, false for a plain one given none; a key file is
 * refused for a plain array and required for an encrypted one.
 */
function keyFileFits(format: FormatRecord, keyFileBytes: Buffer | undefined, dataDir: string): boolean {
  if (format.encryption === undefined) {
    if (keyFileBytes !== undefined) {
      throw StorageError.invalidArgument(`the array in ${dataDir} is not encrypted, but a key file was given (--key-file or PSTORAGE_KEY_FILE); encryption is chosen when an array is created: drop the key file to open this one`);
    }
    return false;
  }
  if (keyFileBytes === undefined) throw StorageError.invalidArgument(`the array in ${dataDir} is encrypted: pass its key file with --key-file FILE (or PSTORAGE_KEY_FILE); nothing was changed`);
  return true;
}
