/**
 * Shared plumbing for the data-reduction tests (test/reduce/): deterministic logical-block
 * contents of every kind the write path treats differently (incompressible, text-like and
 * compressible, zero, repeated 1/2/4/8-byte words, "almost a pattern"), in-memory arrays built
 * like the engine's model test does, a byte-exact model of a volume, and the seed convention.
 *
 * Every generator is a pure function of its arguments, so a logged seed or id replays a failure.
 */
import { createCipheriv, createHash } from 'node:crypto';
import type { ExecutionContext } from 'ava';
import { concatReadExtents } from '../../src/common/block-device.js';
import { silentLogger } from '../../src/common/log.js';
import { MemoryMetaStore } from '../../src/meta/memory-store.js';
import { MemoryNand } from '../../src/nand/memory-nand.js';
import type { NandGeometry } from '../../src/nand/nand-device.js';
import { auditArray } from '../../src/volume/audit.js';
import { FlashArray, type ArrayOptions } from '../../src/volume/flash-array.js';
import type { Volume } from '../../src/volume/volume.js';

export const LBA_BYTES = 4096;
export const KiB = 1024;
export const MiB = 1024 * KiB;
export const GiB = 1024 * MiB;

/** A small NAND for property tests: 64 erase blocks of 16 pages of 4 KiB (4 MiB). */
export const SMALL_GEOMETRY: NandGeometry = { pageBytes: 4096, pagesPerEraseBlock: 16, eraseBlockCount: 64, enduranceCycles: 100000 };

/**
 * The seed of a randomized test: `PSTORAGE_REDUCE_SEED` if set (to replay), else time-based. It
 * is logged with the rerun command, so every failure can be replayed.
 */
export function testSeed(t: ExecutionContext, salt = 0): number {
  const fromEnv = process.env.PSTORAGE_REDUCE_SEED;
  const seed = fromEnv !== undefined ? Number(fromEnv) : (Date.now() + salt) % 2 ** 31;
  t.log(`seed ${seed} (rerun with PSTORAGE_REDUCE_SEED=${seed})`);
  return seed;
}

// ---- Block contents ---------------------------------------------------------------------------

/** `lengthBytes` pseudo-random (incompressible) bytes: AES-128-CTR keyed by the seed. */
export function seededBytes(lengthBytes: number, seed: number | string): Buffer {
  const key = createHash('sha256').update(`pstorage reduce ${seed}`).digest().subarray(0, 16);
  const cipher = createCipheriv('aes-128-ctr', key, Buffer.alloc(16));
  const out = Buffer.allocUnsafe(lengthBytes);
  const zeroes = Buffer.alloc(Math.min(lengthBytes, 4 * MiB));
  for (let at = 0; at < lengthBytes; at += zeroes.length) {
    cipher.update(zeroes.subarray(0, Math.min(zeroes.length, lengthBytes - at))).copy(out, at);
  }
  return out;
}

/** One incompressible 4 KiB block, distinct for every id. */
export function randomBlock(id: number): Buffer {
  return seededBytes(LBA_BYTES, `random block ${id}`);
}

const LEVELS = ['INFO ', 'DEBUG', 'WARN '];
const PATHS = ['/api/v1/items', '/api/v1/users', '/static/app.js', '/healthz', '/api/v2/orders'];

/**
 * One text-like 4 KiB block (web-server log lines), distinct for every id. LZ4 compresses it to
 * about 1.1 KiB and zstd to about 0.7 KiB.
 */
export function textBlock(id: number): Buffer {
  let x = (Math.imul(id, 2654435761) + 12345) >>> 0 || 1;
  const next = () => {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    return x;
  };
  let text = `block ${id}\n`;
  let ms = (id % 1_000_000) * 1000;
  while (text.length < LBA_BYTES) {
    ms += next() % 500;
    const clock = `${pad(Math.floor(ms / 60000) % 60, 2)}:${pad(Math.floor(ms / 1000) % 60, 2)}.${pad(ms % 1000, 3)}`;
    text += `2024-05-01T12:${clock}Z ${LEVELS[next() % 3]} http request method=GET path=${PATHS[next() % 5]}/${next() % 1000} status=200 bytes=${next() % 65536}\n`;
  }
  return Buffer.from(text.slice(0, LBA_BYTES), 'latin1');
}

function pad(value: number, width: number): string {
  return String(value).padStart(width, '0');
}

/** A block of one repeated word of `wordBytes` (1, 2, 4 or 8) bytes taken from `seed`. */
export function patternBlock(wordBytes: 1 | 2 | 4 | 8, seed: number, lengthBytes = LBA_BYTES): Buffer {
  const word = seededBytes(wordBytes, `pattern ${wordBytes} ${seed}`);
  return Buffer.alloc(lengthBytes, word);
}

/** A pattern block with one byte changed: it must not be taken for a pattern. */
export function nearPatternBlock(wordBytes: 1 | 2 | 4 | 8, seed: number, position: number): Buffer {
  const block = patternBlock(wordBytes, seed);
  const at = position % LBA_BYTES;
  block[at] = block[at]! ^ 0x5a;
  return block;
}

/** The kinds of logical block the write path handles differently. */
export type BlockKind = 'random' | 'text' | 'zero' | 'pattern1' | 'pattern2' | 'pattern4' | 'pattern8' | 'near-pattern';
export const BLOCK_KINDS: readonly BlockKind[] = ['random', 'text', 'zero', 'pattern1', 'pattern2', 'pattern4', 'pattern8', 'near-pattern'];

export interface BlockSpec {
  kind: BlockKind;
  /** Equal specs give equal blocks: a small id range gives many duplicates. */
  id: number;
}

export function blockFor(spec: BlockSpec): Buffer {
  switch (spec.kind) {
    case 'random':
      return randomBlock(spec.id);
    case 'text':
      return textBlock(spec.id);
    case 'zero':
      return Buffer.alloc(LBA_BYTES);
    case 'pattern1':
      return patternBlock(1, spec.id);
    case 'pattern2':
      return patternBlock(2, spec.id);
    case 'pattern4':
      return patternBlock(4, spec.id);
    case 'pattern8':
      return patternBlock(8, spec.id);
    case 'near-pattern':
      return nearPatternBlock(8, spec.id, spec.id * 797);
  }
}

// ---- Arrays and volumes -----------------------------------------------------------------------

export interface MemoryArray {
  array: FlashArray;
  nand: MemoryNand;
  meta: MemoryMetaStore;
}

/**
 * A fresh in-memory array (memory NAND + memory metadata store, silent logger), closed when the
 * test ends so that no background work (timers, reduction workers) outlives it.
 */
export async function memoryArray(t: ExecutionContext, geometry: NandGeometry, options: ArrayOptions = {}): Promise<MemoryArray> {
  const nand = new MemoryNand(geometry);
  const meta = new MemoryMetaStore();
  const array = await FlashArray.assemble('memory', meta, nand, silentLogger, options, true);
  t.teardown(() => array.close().catch(() => undefined));
  return { array, nand, meta };
}

/** Reads `lengthBytes` at `offsetBytes` into one buffer (holes as zeroes). */
export async function readBytes(volume: Volume, offsetBytes: number, lengthBytes: number): Promise<Buffer> {
  return concatReadExtents(await volume.read(offsetBytes, lengthBytes), lengthBytes);
}

/** Fails with the audit's first problems unless it is clean. */
export async function expectCleanAudit(t: ExecutionContext, array: FlashArray, label = ''): Promise<void> {
  const report = await auditArray(array);
  t.true(report.ok, `audit ${label} found ${report.problems.length} problem(s):\n${report.problems.slice(0, 10).join('\n')}`);
}

/** The stats fields these tests read. */
export interface ReductionStats {
  physicalBytes: number;
  logicalBytes: number;
  nandBytesWritten: number;
  dataReductionRatio: number;
  reduction: { liveChunks: number; dedupHits: number; patternBlocks: number; compressionRatio: number };
}

export function statsOf(array: FlashArray): ReductionStats {
  return array.stats() as unknown as ReductionStats;
}

/**
 * A byte-exact model of a volume's first `sizeBytes`: what every read must return. It also
 * records per logical block the full content, so tests can count distinct stored contents.
 */
export class VolumeModel {
  readonly bytes: Buffer;
  constructor(readonly sizeBytes: number) {
    this.bytes = Buffer.alloc(sizeBytes);
  }
  write(offsetBytes: number, data: Buffer): void {
    data.copy(this.bytes, offsetBytes);
  }
  zero(offsetBytes: number, lengthBytes: number): void {
    this.bytes.fill(0, offsetBytes, offsetBytes + lengthBytes);
  }
  block(lba: number): Buffer {
    return this.bytes.subarray(lba * LBA_BYTES, (lba + 1) * LBA_BYTES);
  }
  get blocks(): number {
    return this.sizeBytes / LBA_BYTES;
  }
}

/** Compares a whole volume with its model; on a difference, names the first logical block that differs. */
export async function expectSameAsModel(t: ExecutionContext, volume: Volume, model: VolumeModel, label: string): Promise<boolean> {
  const actual = await readBytes(volume, 0, model.sizeBytes);
  if (actual.equals(model.bytes)) {
    t.pass();
    return true;
  }
  for (let lba = 0; lba < model.blocks; lba++) {
    const got = actual.subarray(lba * LBA_BYTES, (lba + 1) * LBA_BYTES);
    if (!got.equals(model.block(lba))) {
      t.fail(`${label}: lba ${lba} differs from the model (first differing byte ${firstDifference(got, model.block(lba))})`);
      return false;
    }
  }
  return false;
}

export function firstDifference(a: Buffer, b: Buffer): number {
  for (let i = 0; i < Math.min(a.length, b.length); i++) if (a[i] !== b[i]) return i;
  return a.length === b.length ? -1 : Math.min(a.length, b.length);
}
