/**
 * What the array does when the file system under its data directory fills up (ENOSPC), and how it
 * gets back on its feet by itself when space returns.
 *
 * States:
 *   - `ok`: writes are taken as usual. The metadata reserve (meta/space-reserve.ts) is held.
 *   - `full`: entered the first time a write to the data directory fails with NO_SPACE: a NAND
 *     program (the FTL keeps the data and stalls the program, see ftl.ts), the NAND sync, or a
 *     metadata batch (the store then stops writes until reopened, see meta-store.ts). From then on
 *     new data is refused with NO_SPACE (NBD ENOSPC) before anything is changed (`refusing`, which
 *     the write path reads once per request); TRIM, and WRITE_ZEROES that unmaps, still work, since
 *     they only free space. A FLUSH fails while anything acknowledged is not durable, and succeeds
 *     otherwise. The reserve is deleted at once, so that LevelDB has room for its own background
 *     work, and GC is paused (its relocations would only stall).
 *
 * Recovery (`full` → `ok`), tried every `pollMs` while full, in this order, each step only when
 * statfs shows room for it, so a full file system costs one statfs a poll and no failing I/O:
 *   1. stalled NAND programs are written again in place (room for them and `META_HEADROOM_BYTES`:
 *      the deleted reserve usually gives it, so what was acknowledged becomes durable at once,
 *      and a FLUSH succeeds again, even if the file system stays full);
 *   2. a stopped metadata store is reopened (room for `META_HEADROOM_BYTES`);
 *   3. full erase blocks that TRIM emptied are queued for erasing, and a commit makes everything
 *      acknowledged durable (and then erases them, which gives their space back: a TRIM from the
 *      client is a way out when nothing else on the file system can be deleted);
 *   4. the reserve is taken back, once there is room for it and as much again (`resumeMargin`),
 *      and the state is `ok`: the array takes writes again.
 * A step that fails backs off (doubling, up to `MAX_BACKOFF_MS`). Close runs steps 1 to 3 once
 * more, so that a shutdown still makes acknowledged writes durable if it can; if it cannot, it
 * fails and says what was not saved.
 *
 * Logging: one error line when the state becomes `full`, at most one warning every
 * `STILL_FULL_LOG_MS` while it lasts, one line when it ends. The failures in between (every
 * refused write, every failed FLUSH or background commit) are counted in `stats()`, not logged.
 */
import fs from 'node:fs';
import { StorageError, isHostFull } from '../common/errors.js';
import type { Logger } from '../common/log.js';
import { SpaceReserve, fileSystemSpace, reserveBytesFor, type FileSystemSpace } from '../meta/space-reserve.js';
import type { FlashArray } from './flash-array.js';

const MiB = 1024 * 1024;
/** Room LevelDB needs to reopen (replaying its log into a table) and to take a commit or two. */
const META_HEADROOM_BYTES = 4 * MiB;
const DEFAULT_POLL_MS = 250;
const MAX_BACKOFF_MS = 5000;
const STILL_FULL_LOG_MS = 60_000;
/** While `ok` without a reserve (no room for it at open), how often to look for room for it. */
const RESERVE_RETRY_MS = 10_000;

export interface HostSpaceOptions {
  /** Reads the host file system's space (tests inject one); default statfs of the data directory. */
  space?: () => Promise<FileSystemSpace | null>;
  /** The metadata reserve in bytes (0: none); default `reserveBytesFor` the file system's size. */
  reserveBytes?: number;
  /** How often the space is looked at while full (default 250 ms). */
  pollMs?: number;
}

export type HostSpaceState = 'ok' | 'full';

export class HostSpace {
  state: HostSpaceState = 'ok';
  /** While true, the write path refuses new data with `refusal` (see the design note). */
  refusing = false;
  /** Times the state became `full`; failures counted while it was. */
  readonly counters = { faults: 0, failures: 0, refusedWrites: 0, retriedBytes: 0, reclaimedEraseBlocks: 0, recoveries: 0 };
  private refusal: StorageError = StorageError.hostFull('the host file system is full');
  private fullSinceMs = 0;
  private lastLoggedMs = 0;
  private lastError = '';
  private readonly reserve: SpaceReserve | null;
  private reserveTargetBytes: number;
  private readonly pollMs: number;
  private readonly readSpace: () => Promise<FileSystemSpace | null>;
  /** The data directory, for a synchronous statfs; null when the space is injected or there is none. */
  private readonly statfsDirectory: string | null;
  private lastSpace: FileSystemSpace | null = null;
  private timer: NodeJS.Timeout | null = null;
  /** The reserve's deletion, started when the state became `full`. */
  private releasing: Promise<void> = Promise.resolve();
  private attempt: Promise<void> | null = null;
  private backoffMs: number;
  private nextAttemptMs = 0;
  /** The commit of step 3 is done for this fault (only TRIM-emptied blocks call for another). */
  private committed = false;
  private stopped = false;
  /** The last unexpected recovery failure logged (each different one is logged once). */
  private lastWarning = '';

  constructor(
    private readonly array: FlashArray,
    private readonly logger: Logger,
    options: HostSpaceOptions = {},
  ) {
    const hasDirectory = fs.existsSync(array.dataDir);
    this.reserve = hasDirectory && options.reserveBytes !== 0 ? new SpaceReserve(array.dataDir) : null;
    this.reserveTargetBytes = options.reserveBytes ?? 0;
    this.readSpace = options.space ?? (hasDirectory ? () => fileSystemSpace(array.dataDir) : async () => null);
    this.statfsDirectory = options.space === undefined && hasDirectory ? array.dataDir : null;
    this.pollMs = options.pollMs ?? DEFAULT_POLL_MS;
    this.backoffMs = this.pollMs;
  }

  /** At open: sizes and takes the reserve (a warning, not a failure, when there is no room for it). */
  async start(): Promise<void> {
    let space: FileSystemSpace | null;
    try {
      space = await this.sample();
    } catch (error) {
      this.logger.warn('cannot read the free space of the host file system; no metadata reserve', { error: (error as Error).message });
      return;
    }
    if (this.reserve === null || space === null) return;
    if (this.reserveTargetBytes === 0) this.reserveTargetBytes = reserveBytesFor(space.totalBytes);
    const held = await this.reserve.load();
    if (held + space.availableBytes >= this.reserveTargetBytes && (await this.reserve.hold(this.reserveTargetBytes))) return;
    this.logger.warn('no room to set aside a metadata reserve on the host file system; it is taken when there is', { wantedBytes: this.reserveTargetBytes, availableBytes: space.availableBytes });
    this.schedule(RESERVE_RETRY_MS);
  }

  /** Counts a write refused while full and returns the error for it. */
  refuse(): StorageError {
    this.counters.refusedWrites += 1;
    return this.refusal;
  }

  /** A write to the data directory failed with NO_SPACE: enter `full`, or count it. */
  noteNoSpace(error: StorageError): void {
    this.lastError = error.message;
    // Something acknowledged is not durable (again): step 3 must commit.
    this.committed = false;
    if (this.state === 'full') {
      this.counters.failures += 1;
      return;
    }
    this.state = 'full';
    this.refusing = true;
    // Erased blocks kept on the host for reuse are space to give back first.
    void this.array.nand.releaseWarm?.().catch(() => undefined);
    this.refusal = StorageError.hostFull(`the host file system under ${this.array.dataDir} is full: new data is refused until there is room again (${error.message})`, error);
    this.counters.faults += 1;
    this.fullSinceMs = Date.now();
    this.lastLoggedMs = this.fullSinceMs;
    this.backoffMs = this.pollMs;
    this.nextAttemptMs = 0;
    this.array.ftl.gcPaused = true;
    this.sampleSync();
    this.logger.error('host file system full: new writes fail with ENOSPC until space returns; flushed data is safe', {
      dataDir: this.array.dataDir,
      error: error.message,
      availableBytes: this.lastSpace?.availableBytes ?? null,
      stalledBytes: this.array.ftl.stalledBytes,
      reserveBytes: this.reserve?.heldBytes ?? 0,
    });
    // The reserve is for exactly this: LevelDB's own work must not fail next.
    this.releasing = (this.reserve?.release() ?? Promise.resolve()).catch((failure: unknown) => this.logger.warn('could not delete the metadata reserve', { error: (failure as Error).message }));
    this.cancelTimer(); // a slower look for room for the reserve may be pending
    this.schedule(this.pollMs);
  }

  /** The figures for `pstorage stats` (with a fresh statfs). */
  stats(): Record<string, unknown> {
    this.sampleSync();
    return {
      state: this.state,
      fullForMs: this.state === 'full' ? Date.now() - this.fullSinceMs : 0,
      totalBytes: this.lastSpace?.totalBytes ?? null,
      availableBytes: this.lastSpace?.availableBytes ?? null,
      reserveBytes: this.reserve?.heldBytes ?? 0,
      reserveTargetBytes: this.reserveTargetBytes,
      stalledBytes: this.array.ftl.stalledBytes,
      metadataWritesStopped: this.array.meta.writeError !== null,
      lastError: this.state === 'full' ? this.lastError : null,
      ...this.counters,
    };
  }

  /** Reads the space now (stats call it so that the figures are current). */
  async sample(): Promise<FileSystemSpace | null> {
    this.lastSpace = await this.readSpace();
    return this.lastSpace;
  }

  /** A statfs now, synchronously, for `stats()` (the data directory's own file system). */
  sampleSync(): void {
    if (this.statfsDirectory === null) return;
    try {
      const stats = fs.statfsSync(this.statfsDirectory);
      this.lastSpace = { totalBytes: stats.blocks * stats.bsize, availableBytes: stats.bavail * stats.bsize };
    } catch {
      // Keep the last sample.
    }
  }

  /**
   * At close, while full: the recovery steps with only the room the data needs, the reserve
   * being spent already. Throws NO_SPACE, saying what would be lost, when they cannot be made.
   */
  async beforeClose(): Promise<void> {
    this.stop();
    if (this.attempt !== null) await this.attempt;
    if (this.state !== 'full') return;
    let cause: unknown = this.refusal;
    try {
      if (await this.recoverData()) return;
    } catch (error) {
      cause = error;
    }
    const stalled = this.array.ftl.stalledBytes;
    throw StorageError.hostFull(
      `the host file system under ${this.array.dataDir} is full, so ${stalled > 0 ? `${stalled} bytes of acknowledged writes that were never flushed` : 'the last metadata changes'} could not be made durable: ` +
        'data flushed before is safe; free space there and start again',
      cause,
    );
  }

  /** Stops polling (close, or a simulated crash). */
  stop(): void {
    this.stopped = true;
    this.cancelTimer();
  }

  private cancelTimer(): void {
    if (this.timer !== null) clearTimeout(this.timer);
    this.timer = null;
  }

  private schedule(delayMs: number): void {
    if (this.stopped || this.timer !== null) return;
    this.timer = setTimeout(() => {
      this.timer = null;
      this.attempt = this.poll().finally(() => {
        this.attempt = null;
      });
    }, delayMs);
    this.timer.unref();
  }

  private async poll(): Promise<void> {
    if (this.stopped) return;
    if (this.state === 'ok') {
      await this.takeMissingReserve();
      return;
    }
    try {
      const recovered = await this.tryRecover();
      if (recovered) {
        this.resume();
        return;
      }
    } catch (error) {
      const message = (error as Error).message;
      if (!isHostFull(error) && message !== this.lastWarning) this.logger.warn('recovering from a full host file system failed; trying again', { error: message });
      if (!isHostFull(error)) this.lastWarning = message;
      this.counters.failures += 1;
      this.nextAttemptMs = Date.now() + this.backoffMs;
      this.backoffMs = Math.min(MAX_BACKOFF_MS, this.backoffMs * 2);
    }
    this.logIfStillFull();
    this.schedule(this.pollMs);
  }

  /** One pass of the recovery steps; true when the array may take writes again. */
  private async tryRecover(): Promise<boolean> {
    if (Date.now() < this.nextAttemptMs) return false;
    await this.releasing;
    const space = await this.sample();
    if (!(await this.recoverData(space))) return false;
    if (this.reserve === null || space === null) return true;
    const after = await this.sample();
    if (after === null || after.availableBytes < this.reserveTargetBytes + this.resumeMargin) return false;
    return this.reserve.hold(this.reserveTargetBytes);
  }

  /** Room wanted beside the reserve before writes are taken again: as much again, 8 MiB at least. */
  private get resumeMargin(): number {
    return Math.max(8 * MiB, this.reserveTargetBytes);
  }

  /** While `ok`: takes the reserve that there was no room for at open, once there is. */
  private async takeMissingReserve(): Promise<void> {
    if (this.reserve === null || this.reserve.heldBytes >= this.reserveTargetBytes) return;
    try {
      const space = await this.sample();
      if (space !== null && space.availableBytes >= this.reserveTargetBytes + this.resumeMargin && (await this.reserve.hold(this.reserveTargetBytes))) {
        this.logger.info('metadata reserve set aside on the host file system', { reserveBytes: this.reserve.heldBytes });
        return;
      }
    } catch {
      // Looked at again later.
    }
    if (this.state === 'ok') this.schedule(RESERVE_RETRY_MS);
  }

  /**
   * Steps 1 to 3: true once everything acknowledged is durable; false when there is not enough
   * room for a step yet. A step that fails throws.
   */
  private async recoverData(known?: FileSystemSpace | null): Promise<boolean> {
    const { ftl, meta } = this.array;
    await this.releasing;
    const space = known === undefined ? await this.sample() : known;
    const room = (bytes: number) => space === null || space.availableBytes >= bytes;
    if (ftl.stalledBytes > 0) {
      const stalled = ftl.stalledBytes;
      if (!room(stalled + META_HEADROOM_BYTES)) return false;
      await ftl.retryStalledPrograms();
      this.counters.retriedBytes += stalled;
    }
    if (meta.writeError !== null) {
      if (!room(META_HEADROOM_BYTES)) return false;
      await meta.reopen();
    }
    const reclaimed = ftl.reclaimEmptyBlocks();
    this.counters.reclaimedEraseBlocks += reclaimed;
    if (!this.committed || reclaimed > 0) {
      await this.array.commit(true);
      this.committed = true;
    }
    return true;
  }

  private resume(): void {
    const fullForMs = Date.now() - this.fullSinceMs;
    this.state = 'ok';
    this.refusing = false;
    this.counters.recoveries += 1;
    this.array.nand.resumeWarm?.();
    this.array.ftl.gcPaused = false;
    this.logger.info('host file system has room again: the array takes writes again', {
      fullForMs,
      failures: this.counters.failures,
      refusedWrites: this.counters.refusedWrites,
      retriedBytes: this.counters.retriedBytes,
      reclaimedEraseBlocks: this.counters.reclaimedEraseBlocks,
      availableBytes: this.lastSpace?.availableBytes ?? null,
      reserveBytes: this.reserve?.heldBytes ?? 0,
    });
  }

  private logIfStillFull(): void {
    const now = Date.now();
    if (this.state !== 'full' || now - this.lastLoggedMs < STILL_FULL_LOG_MS) return;
    this.lastLoggedMs = now;
    this.logger.warn('host file system still full', {
      fullForS: Math.round((now - this.fullSinceMs) / 1000),
      failures: this.counters.failures,
      refusedWrites: this.counters.refusedWrites,
      availableBytes: this.lastSpace?.availableBytes ?? null,
      stalledBytes: this.array.ftl.stalledBytes,
    });
  }
}
