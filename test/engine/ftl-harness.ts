/**
 * A harness for FTL scenario tests driven through the real array (volume → chunk table → FTL →
 * NAND), over memory NAND (optionally wrapped in `FaultyNand`) and the memory metadata store.
 *
 * What it owns: a plain in-memory model of the volume (one version number per logical block;
 * contents are derived from the seed, the lba and the version, so the model costs 4 bytes a block
 * and every block ever written is unique), a seeded generator for the workload, and a logger that
 * records warnings and errors so that tests can assert the engine logged nothing alarming.
 *
 * Every run takes a seed: `PSTORAGE_SEED` if set (to replay a failure), otherwise a fresh random
 * one. Tests print it with `t.log` and put it in every assertion message.
 */
import type { ExecutionContext } from 'ava';
import { concatReadExtents } from '../../src/common/block-device.js';
import { StorageError } from '../../src/common/errors.js';
import type { Logger } from '../../src/common/log.js';
import { MemoryMetaStore } from '../../src/meta/memory-store.js';
import { FaultyNand, type FaultyNandOptions } from '../../src/nand/faulty-nand.js';
import { MemoryNand } from '../../src/nand/memory-nand.js';
import type { NandGeometry } from '../../src/nand/nand-device.js';
import { SeededRandom, randomSeed } from '../../src/nand/seeded-random.js';
import type { FtlOptions } from '../../src/ftl/ftl.js';
import { FlashArray } from '../../src/volume/flash-array.js';
import type { HostSpaceOptions } from '../../src/volume/host-space.js';
import type { Volume } from '../../src/volume/volume.js';

export const LBA_BYTES = 4096;
/** Stream bytes one unique, incompressible 4 KiB logical block costs: record header + payload. */
export const RECORD_BYTES = LBA_BYTES + 16;

export const SMALL_GEOMETRY: NandGeometry = { pageBytes: 4096, pagesPerEraseBlock: 16, eraseBlockCount: 64, enduranceCycles: 3000 };

/**
 * The seed for this run: `PSTORAGE_SEED` replays a failure; otherwise `fixedSeed` if given (for a
 * `test.failing` repro that must fail on every run), otherwise a fresh random one.
 */
export function seedFor(t: ExecutionContext, fixedSeed?: number): number {
  const fromEnv = process.env.PSTORAGE_SEED;
  const seed = fromEnv !== undefined && fromEnv !== '' ? Number(fromEnv) >>> 0 : (fixedSeed ?? randomSeed());
  t.log(`seed ${seed} (replay with PSTORAGE_SEED=${seed})`);
  return seed;
}

export interface LogLine {
  level: 'warn' | 'error';
  msg: string;
  fields: Record<string, unknown> | undefined;
}

/** A logger that keeps warnings and errors (and drops the rest). */
export function recordingLogger(lines: LogLine[] = []): Logger & { lines: LogLine[] } {
  const logger = {
    lines,
    debug() {},
    info() {},
    warn(msg: string, fields?: Record<string, unknown>) {
      lines.push({ level: 'warn' as const, msg, fields });
    },
    error(msg: string, fields?: Record<string, unknown>) {
      lines.push({ level: 'error' as const, msg, fields });
    },
    child() {
      return logger;
    },
  };
  return logger;
}

export interface HarnessOptions {
  geometry?: Partial<NandGeometry>;
  ftl?: Partial<FtlOptions>;
  /** Wrap the memory NAND in a FaultyNand with these rates (seeded from the run's seed). */
  faults?: FaultyNandOptions;
  cacheBytes?: number;
  /** Volume size; defaults to twice the usable bytes, so the array (not the volume) is the limit. */
  volumeBytes?: number;
  /** The host file system's space as the array sees it (see host-space.ts). */
  hostSpace?: HostSpaceOptions;
}

export class Harness {
  /** Version of each logical block: 0 = reads as zeroes (never written, or trimmed). */
  readonly versions: Uint32Array;
  readonly random: SeededRandom;
  private nextVersion = 1;

  private constructor(
    readonly seed: number,
    readonly array: FlashArray,
    readonly volume: Volume,
    readonly nand: MemoryNand | FaultyNand,
    readonly meta: MemoryMetaStore,
    readonly logger: Logger & { lines: LogLine[] },
    private readonly options: HarnessOptions,
  ) {
    this.versions = new Uint32Array(volume.sizeBytes / LBA_BYTES);
    this.random = new SeededRandom(seed);
  }

  static async create(seed: number, options: HarnessOptions = {}): Promise<Harness> {
    const geometry: NandGeometry = { ...SMALL_GEOMETRY, ...options.geometry };
    const memory = new MemoryNand(geometry);
    const nand = options.faults ? new FaultyNand(memory, { seed: (seed ^ 0x5a5a5a5a) >>> 0, ...options.faults }) : memory;
    const logger = recordingLogger();
    const meta = new MemoryMetaStore();
    const array = await FlashArray.assemble('unused', meta, nand, logger, arrayOptions(options), true);
    const volumeBytes = options.volumeBytes ?? Math.ceil((2 * array.ftl.usableBytes) / LBA_BYTES) * LBA_BYTES;
    const volume = await array.createVolume('v', volumeBytes);
    return new Harness(seed, array, volume, nand, meta, logger, options);
  }

  /**
   * Power loss: the NAND and the metadata store keep only what was synced (no torn page, no
   * unsynced metadata batch survives), and the array is assembled again from them. The old array
   * is abandoned, not closed; its write-back timer is stopped so it cannot touch the dead store.
   * The model is carried over: blocks written since the last flush must be re-checked by the caller.
   */
  async crashAndReopen(): Promise<Harness> {
    this.array.abandon(); // its timers (background commit, host-space recovery) stop
    const nand = this.nand.crash();
    const meta = this.meta.crash();
    const logger = recordingLogger();
    const array = await FlashArray.assemble('unused', meta, nand, logger, arrayOptions(this.options), false);
    const volume = array.volumes.get('v');
    if (volume === undefined) throw new Error('volume v is gone after the crash');
    const reopened = new Harness(this.seed, array, volume, nand, meta, logger, this.options);
    reopened.versions.set(this.versions);
    reopened.nextVersion = this.nextVersion;
    return reopened;
  }

  get lbaCount(): number {
    return this.versions.length;
  }

  /** Logical blocks the array can hold: usable bytes over the cost of one unique block. */
  get capacityLbas(): number {
    return Math.floor(this.array.ftl.usableBytes / RECORD_BYTES);
  }

  /** Writes `count` logical blocks at `lba`, each with fresh unique content; updates the model on success only. */
  async write(lba: number, count = 1): Promise<void> {
    const versions: number[] = [];
    const data = Buffer.allocUnsafe(count * LBA_BYTES);
    for (let i = 0; i < count; i++) {
      const version = this.nextVersion++;
      versions.push(version);
      fillBlock(data.subarray(i * LBA_BYTES, (i + 1) * LBA_BYTES), this.seed, lba + i, version);
    }
    await this.volume.write(lba * LBA_BYTES, data, { fua: false });
    versions.forEach((version, i) => (this.versions[lba + i] = version));
  }

  async trim(lba: number, count = 1): Promise<void> {
    await this.volume.trim(lba * LBA_BYTES, count * LBA_BYTES, { fua: false });
    this.versions.fill(0, lba, lba + count);
  }

  /**
   * Runs `count` operations produced by `next()` with up to `queueDepth` in flight, never two on
   * the same logical block at once (so the model stays exact), as an NBD client would.
   */
  async drive(count: number, queueDepth: number, next: () => { lba: number; count: number; op?: 'write' | 'trim' }): Promise<void> {
    const busy = new Set<number>();
    const inflight = new Set<Promise<void>>();
    let failure: unknown = null;
    for (let i = 0; i < count && failure === null; i++) {
      let pick = next();
      for (let tries = 0; tries < 64 && overlaps(busy, pick.lba, pick.count); tries++) pick = next();
      if (overlaps(busy, pick.lba, pick.count)) {
        await Promise.race(inflight);
        i -= 1;
        continue;
      }
      for (let k = 0; k < pick.count; k++) busy.add(pick.lba + k);
      const run = (pick.op === 'trim' ? this.trim(pick.lba, pick.count) : this.write(pick.lba, pick.count))
        .catch((error: unknown) => {
          failure ??= error;
        })
        .finally(() => {
          for (let k = 0; k < pick.count; k++) busy.delete(pick.lba + k);
          inflight.delete(run);
        });
      inflight.add(run);
      if (inflight.size >= queueDepth) await Promise.race(inflight);
    }
    await Promise.all(inflight);
    if (failure !== null) throw failure;
  }

  expected(lba: number): Buffer {
    const block = Buffer.alloc(LBA_BYTES);
    const version = this.versions[lba]!;
    if (version !== 0) fillBlock(block, this.seed, lba, version);
    return block;
  }

  /**
   * Reads back `first..first+count-1` and returns a description of every block that differs or
   * cannot be read (a failed range read is retried block by block to say which ones).
   */
  async mismatches(first = 0, count = this.lbaCount, stepLbas = 64): Promise<string[]> {
    const problems: string[] = [];
    for (let lba = first; lba < first + count && problems.length < 20; lba += stepLbas) {
      const n = Math.min(stepLbas, first + count - lba);
      let data: Buffer;
      try {
        data = concatReadExtents(await this.volume.read(lba * LBA_BYTES, n * LBA_BYTES), n * LBA_BYTES);
      } catch (error) {
        if (n === 1) problems.push(`lba ${lba}: expected version ${this.versions[lba]}, read failed with ${codeOf(error)}: ${(error as Error).message}`);
        else for (let i = 0; i < n && problems.length < 20; i++) problems.push(...(await this.mismatches(lba + i, 1, 1)));
        continue;
      }
      for (let i = 0; i < n; i++) {
        const got = data.subarray(i * LBA_BYTES, (i + 1) * LBA_BYTES);
        if (!got.equals(this.expected(lba + i))) problems.push(`lba ${lba + i}: expected version ${this.versions[lba + i]}, found ${describeBlock(got, this.seed)}`);
        if (problems.length >= 20) return problems;
      }
    }
    return problems;
  }

  /** Blocks still mapped in the model. */
  get liveLbas(): number {
    let live = 0;
    for (const version of this.versions) if (version !== 0) live += 1;
    return live;
  }

  /** `stats().flash`, typed loosely. */
  flash(): Record<string, number> {
    return this.array.stats().flash as Record<string, number>;
  }

  /** Warnings and errors the engine logged, as text. */
  logged(level: 'warn' | 'error'): string[] {
    return this.logger.lines.filter((line) => line.level === level).map((line) => `${line.msg} ${JSON.stringify(line.fields ?? {})}`);
  }

  /** Waits for background GC to end (GC is one shared promise). */
  async quiesce(): Promise<void> {
    await this.array.ftl.runGc();
  }

  async close(): Promise<void> {
    await this.array.close();
  }
}

function arrayOptions(options: HarnessOptions) {
  return { cacheBytes: options.cacheBytes ?? 4 * 1024 * 1024, ftl: { ...options.ftl }, hostSpace: options.hostSpace };
}

function overlaps(busy: Set<number>, lba: number, count: number): boolean {
  for (let k = 0; k < count; k++) if (busy.has(lba + k)) return true;
  return false;
}

/**
 * Unique content for (seed, lba, version): a 16-byte tag (magic, seed, lba, version) followed by
 * xorshift32 output seeded from the tag, so it is incompressible and a misplaced block says whose
 * it is.
 */
export function fillBlock(target: Buffer, seed: number, lba: number, version: number): void {
  target.writeUInt32BE(0x74657374, 0); // "test"
  target.writeUInt32BE(seed >>> 0, 4);
  target.writeUInt32BE(lba >>> 0, 8);
  target.writeUInt32BE(version >>> 0, 12);
  let x = (Math.imul(seed ^ 0x9e3779b9, 0x85ebca6b) ^ Math.imul(lba + 1, 0xc2b2ae35) ^ Math.imul(version, 0x27d4eb2f)) >>> 0 || 1;
  for (let at = 16; at < LBA_BYTES; at += 4) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    target.writeUInt32LE(x >>> 0, at);
  }
}

function describeBlock(block: Buffer, seed: number): string {
  if (block.every((byte) => byte === 0)) return 'zeroes';
  if (block.readUInt32BE(0) !== 0x74657374) return 'unknown bytes';
  const tag = `lba ${block.readUInt32BE(8)} version ${block.readUInt32BE(12)}`;
  const clean = Buffer.alloc(LBA_BYTES);
  fillBlock(clean, block.readUInt32BE(4), block.readUInt32BE(8), block.readUInt32BE(12));
  const intact = clean.equals(block) ? '' : ' (damaged)';
  return `${tag}${block.readUInt32BE(4) === seed ? '' : ' of another seed'}${intact}`;
}

/** The StorageError code of `error`, or a description of what else it was. */
export function codeOf(error: unknown): string {
  if (error instanceof StorageError) return error.code;
  return `not a StorageError: ${error instanceof Error ? `${error.name}: ${error.message}` : String(error)}`;
}

/**
 * Principal branch of the Lambert W function on [-1/e, 0) ∪ [0, ∞), by Halley iteration.
 * Used only to print the textbook greedy-GC write amplification next to the measured one.
 */
export function lambertW0(x: number): number {
  if (x < -1 / Math.E) return NaN;
  let w = x < 1 ? (x > -0.3 ? x * (1 - x) : -1 + Math.sqrt(2 * (1 + Math.E * x))) : Math.log(x);
  for (let i = 0; i < 100; i++) {
    const ew = Math.exp(w);
    const f = w * ew - x;
    const step = f / (ew * (w + 1) - ((w + 2) * f) / (2 * w + 2));
    w -= step;
    if (Math.abs(step) < 1e-12) break;
  }
  return w;
}

/** Greedy GC under uniform random overwrite: WA = α / (α + W0(−α e^−α)), α = physical / live. */
export function greedyTheoryWa(alpha: number): number {
  return alpha / (alpha + lambertW0(-alpha * Math.exp(-alpha)));
}
