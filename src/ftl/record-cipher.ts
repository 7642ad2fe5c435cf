/**
 * Encryption at rest of chunk records: AES-256-XTS (IEEE 1619) over each record's stored bytes
 * (after compression), with the tweak = the chunk id (u64 little-endian, zero-padded to 16 bytes).
 *
 * What it owns: the data-encryption key (DEK, 64 bytes: two AES-256 keys, as XTS needs) in memory,
 * and the transform of one record, or of a batch of records read by the native copyRecords path.
 * The record header (chunk id, stored bytes, checksum) stays in clear: it is metadata, not content.
 *
 * Why XTS, and why the chunk id as its tweak:
 * - No ciphertext expansion: a record's stored bytes are as long encrypted as in clear, so packing,
 *   compression and dedup ratios are those of a plain array, to the byte (no nonce or tag stored).
 * - The tweak does not depend on the physical address: GC relocation copies the ciphertext as it
 *   is (FTL `parseBlock` hands GC the records undecrypted, and `append('gc', ...)` does not encrypt)
 *   and nothing is re-encrypted. A chunk id names one chunk for its life; the chunk table moves it.
 * - Chunk ids are allocated once, in order, and persisted by each commit. After a crash, ids handed
 *   out after the last commit are handed out again, so a tweak can be reused for other content.
 *   In XTS that reveals at most which 16-byte blocks at the same position in the two records are
 *   equal (a deterministic wide-block-ish cipher per 16 bytes); with a stream mode (CTR, or GCM
 *   with the chunk id as nonce) the same reuse would give away the XOR of the two plaintexts, and
 *   GCM's authentication key too. This is why a nonce-based mode is not used per record.
 * - Integrity is not XTS's job here: the record checksum (page-format.ts) is computed over the
 *   ciphertext for encrypted arrays, so the native batch read verifies before decrypting, and a
 *   torn or misdirected page fails the checksum and is an EIO, exactly as on a plain array. Every
 *   tool that checks records without decrypting (audit, repair's scan) keeps working without the key.
 *   (An attacker who can write the data directory can swap whole records of the same chunk id and
 *   length only; XTS gives no authentication, as for any disk encryption of this kind.)
 * - XTS needs at least 16 bytes. A stored record is a 4 KiB raw block or a compressed one that
 *   saves at least 256 bytes; codec.ts stores a block raw rather than as fewer than
 *   `MIN_STORED_BYTES` (16) compressed bytes, for every array, so plain and encrypted arrays make
 *   the same choice and store the same bytes (and such a block, one LZ4 can shrink under 16 bytes,
 *   is all but always a pattern block stored in the map instead).
 *
 * Speed: where the CPU has VAES and AVX-512 (this machine kind's AMD EPYC does), the addon runs
 * its own XTS over the hardware AES instructions four blocks at a time (native/nand-map/xts_vaes.c,
 * held to OpenSSL's and Node's bytes by test/engine/encryption.test.ts); elsewhere it keys one
 * OpenSSL EVP context per direction (and per thread) once and re-sets only the tweak per record
 * (0.8 µs per 4 KiB here when the machine is quiet, 2 µs when busy; 5-6 GB/s: OpenSSL 3.0's
 * AES-NI XTS, one block per instruction, which is most of that, the call a fifth of it);
 * Node's crypto module costs about 14 µs per record (a cipher object per record), and is the
 * fallback where the addon lacks `xtsBuffer` (test/engine/encryption.test.ts compares the two byte
 * for byte). Reads decrypt the records of a native read plan in one call (`decryptRows`: a 128 KiB
 * read is 32 records: about 20 µs of AES, and 8 µs less of calls than record by record). Decrypting
 * large batches on a libuv pool thread instead was tried: on these 2-vCPU machines, where fio and
 * the server already fill both, it cost more CPU per request (the hand-off) and was slower.
 */
import crypto from 'node:crypto';
import { nandMap } from '../common/native.js';
import { StorageError } from '../common/errors.js';

export const RECORD_CIPHER_NAME = 'aes-256-xts';
export const DEK_BYTES = 64;
/** XTS's smallest input. */
export const MIN_STORED_BYTES = 16;

type XtsBuffer = (key: Buffer, encrypt: boolean, data: Uint8Array, chunkId: number) => void;
type XtsImplementation = (use?: 'vaes' | 'openssl') => 'vaes' | 'openssl';
type XtsRecords = (key: Buffer, encrypt: boolean, plan: Float64Array, count: number, destinations: ReadonlyArray<Buffer | undefined>) => void;
/** The addon's XTS functions (native/nand-map/index.d.ts), each null where the built addon predates it. */
const xtsNative = nandMap as { xtsBuffer?: unknown; xtsRecords?: unknown; xtsImplementation?: unknown } | null;
const nativeXts: XtsBuffer | null = typeof xtsNative?.xtsBuffer === 'function' ? (xtsNative.xtsBuffer as XtsBuffer) : null;
const nativeXtsRecords: XtsRecords | null = typeof xtsNative?.xtsRecords === 'function' ? (xtsNative.xtsRecords as XtsRecords) : null;
const nativeXtsImplementation: XtsImplementation | null = typeof xtsNative?.xtsImplementation === 'function' ? (xtsNative.xtsImplementation as XtsImplementation) : null;

/**
 * Which implementation the addon's XTS uses: 'vaes' (native/nand-map/xts_vaes.c, where the CPU has
 * VAES and AVX-512) or 'openssl'; null without the addon. `use` switches (tests compare the two).
 */
export function xtsImplementation(use?: 'vaes' | 'openssl'): 'vaes' | 'openssl' | null {
  if (nativeXts === null) return null;
  if (nativeXtsImplementation === null) return 'openssl';
  return use === undefined ? nativeXtsImplementation() : nativeXtsImplementation(use);
}

/**
 * A row of a native read plan (record-reader.ts, and ROW_* in native/nand-map/nand_map.c): the
 * fields `decryptRows` reads. Its destination is `destinations[row's destination index]`, exactly
 * the record's stored bytes long.
 */
export const PLAN_FIELDS = 5;
const ROW_CHUNK = 3;
const ROW_DESTINATION = 4;

export class RecordCipher {
  private readonly tweak = Buffer.alloc(16);

  constructor(
    private readonly key: Buffer,
    /** Tests force the JavaScript path. */
    private readonly useNative = nativeXts !== null,
  ) {
    if (key.length !== DEK_BYTES) throw StorageError.invalidArgument(`the data-encryption key must be ${DEK_BYTES} bytes`);
    if (key.subarray(0, 32).equals(key.subarray(32))) throw StorageError.invalidArgument('the two halves of an XTS key must differ');
  }

  /** Encrypts `data` (at least 16 bytes) in place. */
  encrypt(data: Uint8Array, chunkId: number): void {
    if (this.useNative) nativeXts!(this.key, true, data, chunkId);
    else this.inJs(true, data, chunkId);
  }

  /** Decrypts `data` (at least 16 bytes) in place. */
  decrypt(data: Uint8Array, chunkId: number): void {
    if (this.useNative) nativeXts!(this.key, false, data, chunkId);
    else this.inJs(false, data, chunkId);
  }

  /**
   * Decrypts in place the destinations of the first `rows` rows of a read plan, in one native call
   * (or record by record where the addon lacks it).
   */
  decryptRows(plan: Float64Array, rows: number, destinations: ReadonlyArray<Buffer | undefined>): void {
    if (rows === 0) return;
    if (this.useNative && nativeXtsRecords !== null) {
      nativeXtsRecords(this.key, false, plan, rows, destinations);
      return;
    }
    for (let row = 0; row < rows; row++) this.decrypt(destinations[plan[row * PLAN_FIELDS + ROW_DESTINATION]!]!, plan[row * PLAN_FIELDS + ROW_CHUNK]!);
  }

  private inJs(encrypt: boolean, data: Uint8Array, chunkId: number): void {
    if (data.length < MIN_STORED_BYTES) throw new RangeError('AES-XTS needs at least 16 bytes');
    this.tweak.fill(0);
    this.tweak.writeBigUInt64LE(BigInt(chunkId));
    const cipher = encrypt ? crypto.createCipheriv('aes-256-xts', this.key, this.tweak) : crypto.createDecipheriv('aes-256-xts', this.key, this.tweak);
    const out = cipher.update(data);
    cipher.final();
    out.copy(data);
  }
}
