/**
 * A fault-injecting wrapper around any `NandDevice`, seeded so that every run replays exactly.
 *
 * Fault model, in words:
 *   - Program failure (rate `programFailureRate` per program call, or planned with
 *     `failNextProgram`): the call fails with `StorageError` code `IO` whose cause is a
 *     `NandFault` of kind 'program'. Nothing of it reaches the inner device: the block's pages and
 *     write pointer are as before the call. The block itself is not marked bad; retiring it is the
 *     FTL's decision (`markBad`), as is relocating its live data, which stays readable.
 *   - Erase failure (`eraseFailureRate`, `failNextErase`): the same, kind 'erase'; the block keeps
 *     its data, erase count and write pointer.
 *   - Read failure (`readFailureRate`, `failNextRead`): kind 'read', transient: a retry may
 *     succeed, and the stored data is intact.
 *   - Bit flip (`bitFlipRate` per page read, `flipBitOnNextRead`): one random bit of that page is
 *     inverted in the buffer returned to the caller only. The stored data does not change, so a
 *     re-read usually returns the right bytes; checksums in page headers must catch the flip.
 *   - Crash (`crash()`, only over a `MemoryNand`): unsynced programs and erases are lost, and the
 *     last unsynced page may be torn; see `memory-nand.ts`. Randomness for the tear comes from this
 *     wrapper's generator unless the caller gives its own.
 * Faults are only injected into calls that are valid: misuse is still `INVALID_ARGUMENT`, checked
 * first. Every valid call draws from the generator in the same way whatever the rates are, so the
 * same seed and the same sequence of calls give the same faults. `seed` is kept on the object:
 * print it with any failure so that the run can be replayed.
 */
import { StorageError } from '../common/errors.js';
import { assert } from '../common/assert.js';
import { MemoryNand, type CrashOptions } from './memory-nand.js';
import type { NandBlockInfo, NandCounters, NandDevice, NandFaultKind, NandGeometry } from './nand-device.js';
import { NandFault, nandFaultError } from './nand-device.js';
import { validateErase, validateProgram, validateRead } from './nand-device-base.js';
import { SeededRandom, randomSeed } from './seeded-random.js';

export interface FaultRates {
  /** Probability that a program call fails. */
  programFailureRate: number;
  /** Probability that an erase call fails. */
  eraseFailureRate: number;
  /** Probability that a read call fails. */
  readFailureRate: number;
  /** Probability, per page read, that one bit of it comes back inverted. */
  bitFlipRate: number;
}

export interface FaultyNandOptions extends Partial<FaultRates> {
  /** Seed of the generator (a u32); a random one is chosen, and kept in `seed`, when absent. */
  seed?: number;
}

export interface InjectedFaultCounts {
  programFailures: number;
  eraseFailures: number;
  readFailures: number;
  bitFlips: number;
}

type PlannedKind = NandFaultKind | 'bitFlip';

interface PlannedFault {
  kind: PlannedKind;
  /** Matches any erase block when undefined. */
  eraseBlockIndex: number | undefined;
}

/** Planned faults waiting at once; more means a runaway test. */
const MAX_PLANNED_FAULTS = 1024;

export class FaultyNand implements NandDevice {
  readonly seed: number;
  /** Current rates; a simulation may change them, e.g. to zero while it checks recovery. */
  readonly rates: FaultRates;
  readonly injected: InjectedFaultCounts = { programFailures: 0, eraseFailures: 0, readFailures: 0, bitFlips: 0 };
  private readonly random: SeededRandom;
  private readonly planned: PlannedFault[] = [];

  constructor(readonly inner: NandDevice, options: FaultyNandOptions = {}, random?: SeededRandom) {
    this.random = random ?? new SeededRandom(options.seed ?? randomSeed());
    this.seed = this.random.seed;
    this.rates = {
      programFailureRate: checkRate('programFailureRate', options.programFailureRate),
      eraseFailureRate: checkRate('eraseFailureRate', options.eraseFailureRate),
      readFailureRate: checkRate('readFailureRate', options.readFailureRate),
      bitFlipRate: checkRate('bitFlipRate', options.bitFlipRate),
    };
  }

  get geometry(): NandGeometry {
    return this.inner.geometry;
  }

  get counters(): Readonly<NandCounters> {
    return this.inner.counters;
  }

  /** Makes the next program (of `eraseBlockIndex`, or of any block) fail. */
  failNextProgram(eraseBlockIndex?: number): void {
    this.plan('program', eraseBlockIndex);
  }

  failNextErase(eraseBlockIndex?: number): void {
    this.plan('erase', eraseBlockIndex);
  }

  failNextRead(eraseBlockIndex?: number): void {
    this.plan('read', eraseBlockIndex);
  }

  /** Inverts one random bit of the first page returned by the next read (of that block). */
  flipBitOnNextRead(eraseBlockIndex?: number): void {
    this.plan('bitFlip', eraseBlockIndex);
  }

  async readPages(eraseBlockIndex: number, firstPageIndex: number, pageCount: number): Promise<Buffer> {
    validateRead(this.geometry, eraseBlockIndex, firstPageIndex, pageCount);
    if (this.decide('read', eraseBlockIndex, this.rates.readFailureRate)) {
      this.injected.readFailures += 1;
      throw nandFaultError(new NandFault('read', eraseBlockIndex, firstPageIndex));
    }
    const data = await this.inner.readPages(eraseBlockIndex, firstPageIndex, pageCount);
    this.flipBits(eraseBlockIndex, data);
    return data;
  }

  readPagesSync(eraseBlockIndex: number, firstPageIndex: number, pageCount: number, target?: Buffer): Buffer {
    validateRead(this.geometry, eraseBlockIndex, firstPageIndex, pageCount);
    if (this.decide('read', eraseBlockIndex, this.rates.readFailureRate)) {
      this.injected.readFailures += 1;
      throw nandFaultError(new NandFault('read', eraseBlockIndex, firstPageIndex));
    }
    const data = this.inner.readPagesSync(eraseBlockIndex, firstPageIndex, pageCount, target);
    this.flipBits(eraseBlockIndex, data);
    return data;
  }

  /** Never a view: injected read faults and bit flips need a copy to act on. */
  viewPagesSync(): Buffer | null {
    return null;
  }

  /** Never mapped, for the same reason. */
  get mappedImage(): null {
    return null;
  }

  mapPagesSync(): number {
    return -1;
  }

  noteMappedRead(): void {}

  get preferAsyncReads(): boolean {
    return this.inner.preferAsyncReads;
  }

  async programPages(eraseBlockIndex: number, firstPageIndex: number, data: Buffer): Promise<void> {
    validateProgram(this.geometry, this.inner.blockInfo(eraseBlockIndex), eraseBlockIndex, firstPageIndex, data);
    if (this.decide('program', eraseBlockIndex, this.rates.programFailureRate)) {
      this.injected.programFailures += 1;
      throw nandFaultError(new NandFault('program', eraseBlockIndex, firstPageIndex));
    }
    await this.inner.programPages(eraseBlockIndex, firstPageIndex, data);
  }

  /** Not a place for injected faults: it repairs a host error, which the inner device raised. */
  reprogramPages(eraseBlockIndex: number, firstPageIndex: number, data: Buffer): Promise<void> {
    return this.inner.reprogramPages(eraseBlockIndex, firstPageIndex, data);
  }

  async eraseBlock(eraseBlockIndex: number): Promise<void> {
    validateErase(this.geometry, this.inner.blockInfo(eraseBlockIndex), eraseBlockIndex);
    if (this.decide('erase', eraseBlockIndex, this.rates.eraseFailureRate)) {
      this.injected.eraseFailures += 1;
      throw nandFaultError(new NandFault('erase', eraseBlockIndex));
    }
    await this.inner.eraseBlock(eraseBlockIndex);
  }

  sync(): Promise<void> {
    return this.inner.sync();
  }

  blockInfo(eraseBlockIndex: number): NandBlockInfo {
    return this.inner.blockInfo(eraseBlockIndex);
  }

  markBad(eraseBlockIndex: number): void {
    this.inner.markBad(eraseBlockIndex);
  }

  close(): Promise<void> {
    return this.inner.close();
  }

  /**
   * Crashes the inner `MemoryNand` and returns a wrapper over what survived, with the same rates
   * and the same generator (so one seed covers a whole simulation); planned faults are dropped.
   */
  crash(options: CrashOptions = {}): FaultyNand {
    if (!(this.inner instanceof MemoryNand)) {
      throw StorageError.notSupported('FaultyNand can only simulate a crash over a MemoryNand');
    }
    const survivor = this.inner.crash({ ...options, random: options.random ?? (() => this.random.next()) });
    const next = new FaultyNand(survivor, { ...this.rates }, this.random);
    Object.assign(next.injected, this.injected);
    return next;
  }

  private plan(kind: PlannedKind, eraseBlockIndex: number | undefined): void {
    assert(this.planned.length < MAX_PLANNED_FAULTS, 'too many planned NAND faults');
    this.planned.push({ kind, eraseBlockIndex });
  }

  /** Takes the first planned fault of `kind` that matches the block, if any. */
  private takePlanned(kind: PlannedKind, eraseBlockIndex: number): boolean {
    const index = this.planned.findIndex(
      (fault) => fault.kind === kind && (fault.eraseBlockIndex === undefined || fault.eraseBlockIndex === eraseBlockIndex),
    );
    if (index < 0) return false;
    this.planned.splice(index, 1);
    return true;
  }

  /** One draw per valid call, whether or not a planned fault decides it. */
  private decide(kind: NandFaultKind, eraseBlockIndex: number, rate: number): boolean {
    const draw = this.random.next();
    return this.takePlanned(kind, eraseBlockIndex) || draw < rate;
  }

  /** One draw per page, plus one for the bit position of each page that flips. */
  private flipBits(eraseBlockIndex: number, data: Buffer): void {
    const { pageBytes } = this.geometry;
    const plannedFirstPage = this.takePlanned('bitFlip', eraseBlockIndex);
    for (let pageStart = 0; pageStart < data.length; pageStart += pageBytes) {
      const planned = plannedFirstPage && pageStart === 0;
      if (!(this.random.next() < this.rates.bitFlipRate) && !planned) continue;
      const bitIndex = this.random.nextInt(pageBytes * 8);
      data[pageStart + (bitIndex >> 3)]! ^= 1 << (bitIndex & 7);
      this.injected.bitFlips += 1;
    }
  }
}

function checkRate(name: string, rate: number | undefined): number {
  const value = rate ?? 0;
  if (!(value >= 0 && value <= 1)) throw StorageError.invalidArgument(`${name} ${rate} is not allowed: use a probability from 0 to 1`);
  return value;
}
