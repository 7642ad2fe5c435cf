/**
 * NAND kept in a directory: the pages in a sparse image file, the per-block state in a small
 * spare-area file, as on real NAND.
 *
 * Files:
 *   - `nand.img`: page p of erase block e at byte offset (e * pagesPerEraseBlock + p) * pageBytes.
 *     Created with ftruncate only (no data written), so it takes no disk space until programmed.
 *     A program is one positional write of the whole multi-page buffer. An erase punches a hole
 *     over the whole erase block (fallocate PUNCH_HOLE, through `fs-native-extensions`), never over
 *     single pages, so disk usage follows live data. Holes read as zeros. Where the file system
 *     cannot punch holes, erase writes zeros instead (`punchSupported` turns false).
 *   - `nand.oob`: the geometry header and one 16-byte record {eraseCount, writePointer, flags}
 *     per erase block; see `spare-area.ts` for the layout. It is locked (an OFD lock) while open,
 *     so two processes, or two opens in one process, cannot share an image. It is written out
 *     whole (zeros) when created, so that its disk space is taken up front: a sync that rewrites
 *     records never needs new space, and cannot fail for want of it when the file system is full.
 *
 * Reads: the image is mapped read-only into memory (MAP_SHARED, through the `pstorage-nand-map`
 * addon; Node has no mmap), and `viewPagesSync` hands the FTL a view of the mapped pages: no
 * system call and no copy. Measured here, a 4 KiB record costs 0.6 µs that way against 2 µs for
 * an 8 KiB pread (two pages) plus the copy, and a 128 KiB read of 32 scattered records spent
 * 60 % of its time in pread. For many records at once the FTL goes further: `mappedImage` and
 * `mapPagesSync` give it the mapping and the pages' offsets, and one native call copies and
 * verifies the whole batch (see ftl.ts, readMappedRecords); `noteMappedRead` times it as a
 * view's touch is timed. Mapped pages count in the process's resident set (VmRSS, as RssFile)
 * although they are page cache, so they are part of the memory budget: which erase blocks the
 * mapping takes in, and when they leave, is read-mapping.ts's (past its limit `mapPagesSync`
 * answers "read these directly", and the FTL reads those records with one pread each through the
 * same native call; `viewPagesSync` answers null). `dropMapped()` drops them all (the array calls
 * it when idle). The price of the mapping:
 * a disk error under the image raises SIGBUS while reading and ends the process, where pread would
 * have returned EIO; nothing acknowledged is lost by that (the durability contract holds across
 * any crash), and without the addon (or where mmap fails) reads fall back to pread.
 *
 * `readPagesSync` is one `pread` on the calling thread. While the image's pages sit in the
 * page cache that costs about 1.5 µs per 4 KiB, against 5 to 17 µs of CPU for a hand-off to
 * libuv's thread pool (measured here), so the FTL reads synchronously. A synchronous read that
 * went to the disk instead would stall the event loop, so each one is timed: when a quarter of
 * the last 32 were slower than a page-cache read can be (`SLOW_SYNC_READ_US`, plus a little per
 * page), `preferAsyncReads` turns true for `ASYNC_READS_MS`, during which the FTL reads through
 * the thread pool (many reads in flight at once, which a disk wants); after that synchronous reads
 * probe again. One slow read is not enough: on a busy machine the thread is sometimes descheduled
 * in the middle of a page-cache read.
 *
 * Erases are deferred (the warm pool): an erase normally leaves the block's pages where they are
 * and only marks the block stale; reads of a stale block's pages at or above its write pointer
 * return zeros, as erased pages must, and its next programs overwrite the old pages in place. A
 * hole punched at each erase gave the pages' memory back to the kernel, and the next program of
 * the block then wrote into page-cache memory the kernel had to find (and this virtual machine to
 * back) anew, and ext4 had to allocate its disk blocks again: with GC running, a third of all the
 * CPU went into that copy. Overwriting cached pages costs a plain memory copy. The FTL opens the
 * most recently erased free blocks first (erase-block-table.ts), so the stale blocks are the
 * ones reused. Disk space still follows live data: `warmEraseBytes` of stale blocks are kept; above
 * that bound, up to `warmOverflowBytes` more wait `warmOverflowMs` (3 s) for a program before the
 * oldest are punched (past both, the oldest is punched at once). The overflow is for the erases of
 * a commit, which come together once a second: with the bound alone, every commit under heavy
 * writes punched hundreds of blocks that the next second's programs then had to take from memory
 * the host gave back, and each punch held the image's inode (and the main thread's programs and
 * mapped reads behind it) while ext4 committed its journal: 4 KiB writes at QD32 ran at 57-65 K
 * IOPS with p99.9 8-14 ms, and at 75-88 K with p99.9 4.4-4.8 ms when nothing was punched. All
 * stale blocks are punched, two at a time, once
 * no program or erase has come for `WARM_IDLE_MS` (until one comes), at close, and at once when a
 * program fails for want of host space (`releaseWarm`). The quiet time is a minute, not a second:
 * memory the guest frees is soon handed back to the hypervisor here, and a page it must back anew
 * costs 12-17 µs to write into against 0.4-0.7 µs for a page the pool kept (programs timed in
 * `pstorage serve` under fio); with a 1 s quiet time every pause between two bursts of writes (a
 * few seconds between fio jobs) emptied the pool, and the next burst paid that for every page.
 * After a crash, stale blocks that were never punched keep their old
 * pages, which the crash model below allows (pages the metadata does not reference may hold old
 * data), and their next programs overwrite them.
 *
 * Programs are positional writes on the calling thread: into the page cache (mostly pages the
 * warm pool kept) a 256 KiB program is a memory copy of about 40 µs, where a hand-off to libuv's
 * thread pool cost the main thread more than that: on these two-vCPU machines the woken pool
 * thread often took the main thread's CPU for the whole copy, and the `fs.write` call measured
 * 54 µs at the median (mean 2.3 ms under load). A write can still wait on the disk (the kernel
 * throttles writers when too much of the page cache is dirty), so each one is timed like a
 * synchronous read: when `SLOW_PROGRAMS_TO_SWITCH` of the last 32 took longer than a copy can,
 * programs go through the thread pool for `ASYNC_PROGRAMS_MS`.
 *
 * State: erase counts, write pointers and bad flags live in memory (`NandDeviceBase`); the spare
 * file is written only by `sync()`, which writes the records of the erase blocks touched since
 * the previous sync (positional writes, adjacent records coalesced) and costs two fdatasyncs:
 *   1. fdatasync `nand.img`, so every program and punch that completed before the sync is stable;
 *   2. write the dirty records, captured when the sync started;
 *   3. fdatasync `nand.oob`.
 * Because the image is made stable before any record is written, a record on disk never claims a
 * page whose data is not on disk.
 *
 * On crash: the records are those of the last completed sync (a sync cut short may have
 * updated some records, each of which still describes stable data). Programs and erases after that
 * sync may or may not have reached the disk, in any combination, so after reopening:
 *   - pages at or above a block's write pointer may hold data of unsynced programs (possibly torn);
 *   - a block whose record says writePointer > 0 may have been erased (punched) after that sync,
 *     and then partly programmed again: any of its pages may read as zeros, as its old data or as
 *     newer data.
 * The FTL must therefore erase again any block it considers free whose `blockInfo().writePointer`
 * is not 0 before programming it (`needsEraseBeforeReuse`), and trust its own durable metadata and
 * page headers over the pointer.
 *
 * Creation is crash safe: the spare file is written under a temporary name and renamed into place
 * last, so `nand.oob` exists only for a complete image. An image file without a spare file is
 * taken for an interrupted creation and recreated only if it holds no data.
 */
import fs from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import { mkdir, open, rename, stat } from 'node:fs/promises';
import path from 'node:path';
import { trim, tryLock } from 'fs-native-extensions';
import { StorageError, fromSystemError } from '../common/errors.js';
import { nandMap, readRecords } from '../common/native.js';
import type { MappedImage, NandBlockInfo, NandGeometry } from './nand-device.js';
import { capacityBytes, directAnswer, eraseBlockBytes, validateGeometry } from './nand-device.js';
import { NandDeviceBase, type NandBlockStates, freshBlockStates } from './nand-device-base.js';
import { ReadMapping } from './read-mapping.js';
import {
  SPARE_HEADER_BYTES,
  SPARE_RECORD_BYTES,
  decodeSpareHeader,
  decodeSpareRecord,
  encodeSpareHeader,
  encodeSpareRecord,
  spareFileBytes,
  spareRecordOffsetBytes,
} from './spare-area.js';

export const IMAGE_FILE_NAME = 'nand.img';
export const SPARE_FILE_NAME = 'nand.oob';

export interface FileNandOpenOptions {
  /** Create the image if the directory has none (then `geometry` is required). */
  create?: boolean;
  /** Mapped image pages resident above which cold ones are dropped from the mapping (default 1 GiB). */
  mappedLimitBytes?: number;
  /** Erased blocks kept unpunched for reuse (the warm pool; default 1/16 of the image, at most `DEFAULT_WARM_ERASE_BYTES`; 0: punch at every erase). */
  warmEraseBytes?: number;
  /** Quiet time (no program, no erase) after which the warm pool is punched (default `WARM_IDLE_MS`). */
  warmIdleMs?: number;
  /**
   * Stale blocks kept above `warmEraseBytes` for at most `warmOverflowMs` (the erases of one commit
   * come together; default 3 × `warmEraseBytes`; 0: punch at once above the bound).
   */
  warmOverflowBytes?: number;
  /** How long a stale block above the bound may wait for a program (default `WARM_OVERFLOW_MS`). */
  warmOverflowMs?: number;
}

/** Zeros written per I/O when a new spare file is written out. */
const ALLOCATE_CHUNK_BYTES = 1024 * 1024;
/** Records read per I/O when loading the spare file (1 MiB). */
const LOAD_RECORDS_PER_READ = 65536;
/** Record writes in flight at once during a sync. */
const SYNC_WRITES_IN_FLIGHT = 32;
/** A synchronous read slower than this (plus `SLOW_SYNC_READ_US_PER_PAGE` a page) went to the disk. */
const SLOW_SYNC_READ_US = 500;
const SLOW_SYNC_READ_US_PER_PAGE = 20;
/** The image is mapped in pieces of about this size (a Node 20 Buffer holds at most 4 GiB). */
const MAP_SEGMENT_BYTES = 1024 * 1024 * 1024;
/** Bytes mapped, by default, before reads of blocks not yet mapped go by pread. */
const DEFAULT_MAPPED_LIMIT_BYTES = 1024 * 1024 * 1024;
/** Values of `FileNand.stale`. */
const NOT_STALE = 0;
const STALE = 1;
const PUNCHING = 2;
/** The warm pool's default bound... */
const DEFAULT_WARM_ERASE_BYTES = 1024 * 1024 * 1024;
/** ...and the quiet time (no program, no erase) after which the whole pool is punched. */
const WARM_IDLE_MS = 60_000;
/** Stale blocks above the bound, up to this many times the bound, wait this long for a program. */
const WARM_OVERFLOW_FACTOR = 3;
const WARM_OVERFLOW_MS = 3000;
/** A synchronous program slower than this (plus `SLOW_SYNC_PROGRAM_US_PER_PAGE` a page) waited on the disk... */
const SLOW_SYNC_PROGRAM_US = 1000;
const SLOW_SYNC_PROGRAM_US_PER_PAGE = 20;
/** ...and this many of the last 32 send programs to the thread pool for `ASYNC_PROGRAMS_MS`. */
const SLOW_PROGRAMS_TO_SWITCH = 4;
const ASYNC_PROGRAMS_MS = 2000;
/** Punches of stale blocks in flight at once (idle, close, host full). */
const PUNCH_LANES = 2;
/** Slow reads among the last 32 that switch reads to the thread pool... */
const SLOW_READS_TO_SWITCH = 8;
/** ...for this long. */
const ASYNC_READS_MS = 1000;

export class FileNand extends NandDeviceBase {
  private punchWorks = true;
  private readonly readsInFlight = new Set<Promise<void>>();
  private zeroEraseBlock: Buffer | undefined;
  /** Synchronous reads and programs timed: too many slow ones send them to the thread pool a while. */
  private readonly syncReads = new SlowSwitch(SLOW_SYNC_READ_US, SLOW_SYNC_READ_US_PER_PAGE, SLOW_READS_TO_SWITCH, ASYNC_READS_MS);
  private readonly syncPrograms = new SlowSwitch(SLOW_SYNC_PROGRAM_US, SLOW_SYNC_PROGRAM_US_PER_PAGE, SLOW_PROGRAMS_TO_SWITCH, ASYNC_PROGRAMS_MS);
  /** The image mapped read-only in pieces of `segmentBytes`, or null (no addon, or mmap failed). */
  private mapping: Buffer[] | null = null;
  private readonly segmentBytes: number;
  /** The mapping as the FTL's batch reads see it (`mappedImage`). */
  private readonly image_: MappedImage | null;
  /** Which erase blocks the mapping holds (null without a mapping). */
  private readonly residency: ReadMapping | null;
  /** Kept so that touching the pages of a view cannot be optimised away (read in `stats`). */
  lastTouched = 0;
  /**
   * Per erase block: STALE for an erased block whose old pages were not punched (the warm pool,
   * see the design note), PUNCHING while the punch of its pages above the write pointer is queued
   * or running (they still read as zeros, but no longer count in the pool), else 0.
   */
  private readonly stale: Uint8Array;
  /** Stale blocks, oldest first (an entry whose block is no longer stale is skipped). */
  private staleQueue: number[] = [];
  private staleCount = 0;
  /** `performance.now()` of each stale block's erase (the age of the pool's overflow). */
  private readonly staleSinceMs: Float64Array;
  /** The pool's bound, and the overflow above it kept for `warmOverflowMs`... */
  private readonly warmBoundBlocks: number;
  private readonly warmOverflowBlocks: number;
  /** ...neither of which is kept while released (`releaseWarm`: the host file system is full). */
  private warmReleased = false;
  private overflowPunching = false;
  /** `performance.now()` of the last program or erase, and the timer that punches the pool when idle. */
  private lastMutationMs = 0;
  private idleTimer: NodeJS.Timeout | null = null;
  private idlePunching = false;
  /** Erases that punched at once, and stale blocks punched later (counted in `stats`). */
  readonly warmCounters = { deferredErases: 0, punchedAtErase: 0, punchedLater: 0, programmedBytes: 0 };

  private constructor(
    readonly directory: string,
    geometry: NandGeometry,
    states: NandBlockStates,
    private readonly image: FileHandle,
    private readonly spare: FileHandle,
    mappedLimitBytes: number,
    warm: Pick<FileNandOpenOptions, 'warmEraseBytes' | 'warmOverflowBytes'>,
    private readonly warmIdleMs: number,
    private readonly warmOverflowMs: number,
  ) {
    super(geometry, states);
    this.stale = new Uint8Array(geometry.eraseBlockCount);
    this.staleSinceMs = new Float64Array(geometry.eraseBlockCount);
    const blockBytes = eraseBlockBytes(geometry);
    const bound = warm.warmEraseBytes ?? Math.min(DEFAULT_WARM_ERASE_BYTES, capacityBytes(geometry) / 16);
    this.warmBoundBlocks = Math.max(0, Math.floor(bound / blockBytes));
    this.warmOverflowBlocks = Math.max(0, Math.floor((warm.warmOverflowBytes ?? WARM_OVERFLOW_FACTOR * bound) / blockBytes));
    this.segmentBytes = Math.max(1, Math.floor(MAP_SEGMENT_BYTES / eraseBlockBytes(geometry))) * eraseBlockBytes(geometry);
    this.mapping = mapImage(image.fd, capacityBytes(geometry), this.segmentBytes);
    this.residency = this.mapping === null ? null : new ReadMapping(this.mapping, this.segmentBytes, geometry, mappedLimitBytes);
    this.image_ = this.mapping === null ? null : { segments: this.mapping, segmentBytes: this.segmentBytes, descriptor: image.fd };
  }

  /** True when reads go through the memory mapping. */
  get mapped(): boolean {
    return this.mapping !== null;
  }

  /**
   * Opens the image in `directory`. With `geometry`, the image must have been made with exactly
   * that geometry; without it, the recorded geometry is used. With `create`, a missing image is
   * created (sparse: no data is written).
   */
  static async open(directory: string, geometry?: NandGeometry, options: FileNandOpenOptions = {}): Promise<FileNand> {
    const sparePath = path.join(directory, SPARE_FILE_NAME);
    if (!fs.existsSync(sparePath)) {
      if (options.create !== true) {
        throw StorageError.notFound(`no NAND image in ${directory}: create one first (open with create: true)`);
      }
      if (geometry === undefined) throw StorageError.invalidArgument('a NAND geometry is needed to create an image');
      await createImage(directory, validateGeometry(geometry));
    }
    const handles = await openLocked(directory);
    try {
      const recorded = await readGeometry(handles.spare, sparePath);
      if (geometry !== undefined) checkSameGeometry(directory, recorded, geometry);
      await checkImageSize(handles.image, path.join(directory, IMAGE_FILE_NAME), capacityBytes(recorded));
      const states = await loadBlockStates(handles.spare, recorded, sparePath);
      return new FileNand(directory, recorded, states, handles.image, handles.spare, options.mappedLimitBytes ?? DEFAULT_MAPPED_LIMIT_BYTES, options, options.warmIdleMs ?? WARM_IDLE_MS, options.warmOverflowMs ?? WARM_OVERFLOW_MS);
    } catch (error) {
      await Promise.allSettled([handles.image.close(), handles.spare.close()]);
      throw error;
    }
  }

  /** False once a punch failed as unsupported; erases then write zeros. */
  get punchSupported(): boolean {
    return this.punchWorks;
  }

  /** Disk space the image takes now, as `du` counts it. */
  async allocatedBytes(): Promise<number> {
    const stats = await this.image.stat();
    return stats.blocks * 512;
  }

  protected async doReadPages(eraseBlockIndex: number, firstPageIndex: number, pageCount: number): Promise<Buffer> {
    const data = Buffer.allocUnsafe(pageCount * this.geometry.pageBytes);
    const read = readFully(this.image, data, this.pageOffsetBytes(eraseBlockIndex, firstPageIndex));
    // Reads use the raw descriptor (see preadOnce): close() must wait for them.
    this.readsInFlight.add(read);
    try {
      await read;
    } catch (error) {
      throw fromSystemError(error, `NAND read of erase block ${eraseBlockIndex}`);
    } finally {
      this.readsInFlight.delete(read);
    }
    this.zeroStalePages(eraseBlockIndex, firstPageIndex, data);
    return data;
  }

  /** Erased pages of a stale block read as zeros: clears those of `data` (pages from `firstPageIndex`). */
  private zeroStalePages(eraseBlockIndex: number, firstPageIndex: number, data: Buffer): void {
    if (this.stale[eraseBlockIndex] === NOT_STALE) return;
    const from = Math.max(0, this.writePointers[eraseBlockIndex]! - firstPageIndex) * this.geometry.pageBytes;
    if (from < data.length) data.fill(0, from);
  }

  /** True when a read of these pages would show a stale block's old pages (they must read as zeros). */
  private readsStale(eraseBlockIndex: number, firstPageIndex: number, pageCount: number): boolean {
    return this.stale[eraseBlockIndex] !== NOT_STALE && firstPageIndex + pageCount > this.writePointers[eraseBlockIndex]!;
  }

  protected doReadPagesSync(eraseBlockIndex: number, firstPageIndex: number, pageCount: number, target: Buffer): void {
    const started = performance.now();
    const positionBytes = this.pageOffsetBytes(eraseBlockIndex, firstPageIndex);
    try {
      let doneBytes = 0;
      while (doneBytes < target.length) {
        const bytesRead = fs.readSync(this.image.fd, target, doneBytes, target.length - doneBytes, positionBytes + doneBytes);
        if (bytesRead === 0) throw StorageError.corrupt(`the NAND image ends before byte ${positionBytes + target.length}`);
        doneBytes += bytesRead;
      }
    } catch (error) {
      throw fromSystemError(error, `NAND read of erase block ${eraseBlockIndex}`);
    }
    this.noteSyncRead(started, pageCount);
    this.zeroStalePages(eraseBlockIndex, firstPageIndex, target);
  }

  protected override doViewPagesSync(eraseBlockIndex: number, firstPageIndex: number, pageCount: number): Buffer | null {
    const mapping = this.mapping;
    const residency = this.residency;
    if (mapping === null || residency === null || this.readsStale(eraseBlockIndex, firstPageIndex, pageCount)) return null;
    residency.settle();
    if (!residency.takesIn(eraseBlockIndex, pageCount)) return null;
    const started = performance.now();
    const offset = this.pageOffsetBytes(eraseBlockIndex, firstPageIndex);
    // Segments hold whole erase blocks, so a range of pages of one block lies in one segment.
    const at = offset % this.segmentBytes;
    const view = mapping[Math.floor(offset / this.segmentBytes)]!.subarray(at, at + pageCount * this.geometry.pageBytes);
    // Touch every page now, so a page that must come from the disk is timed here (see above).
    let touched = 0;
    for (let offset = 0; offset < view.length; offset += this.geometry.pageBytes) touched ^= view[offset]!;
    this.lastTouched = touched;
    this.noteSyncRead(started, pageCount);
    return view;
  }

  override get mappedImage(): MappedImage | null {
    return this.image_;
  }

  protected override doMapPagesSync(eraseBlockIndex: number, firstPageIndex: number, pageCount: number): number {
    const residency = this.residency;
    if (residency === null || this.readsStale(eraseBlockIndex, firstPageIndex, pageCount)) return -1;
    const offset = this.pageOffsetBytes(eraseBlockIndex, firstPageIndex);
    if (residency.takesIn(eraseBlockIndex, pageCount)) return offset;
    return readRecords === null ? -1 : directAnswer(offset);
  }

  override noteMappedRead(startedMs: number, pageCount: number): void {
    this.noteSyncRead(startedMs, pageCount);
    this.residency?.settle();
  }

  /** See ReadMapping.setLimit (the array lends the mapping what its page caches leave unused). */
  setMappedLimit(bytes: number): void {
    this.residency?.setLimit(bytes);
  }

  get mappedLimit(): number {
    return this.residency?.limitBytes ?? 0;
  }

  /** The image's bytes mapped now, at most. */
  get mappedBytes(): number {
    return this.residency?.bytes ?? 0;
  }

  /** Erase blocks dropped from the mapping so far. */
  get droppedEraseBlocks(): number {
    return this.residency?.droppedEraseBlocks ?? 0;
  }

  /** Reads through the mapping of blocks it held (hits) and of blocks it did not (misses); null without a mapping. */
  get mappedReads(): { hits: number; misses: number } | null {
    const residency = this.residency;
    return residency === null ? null : { hits: residency.hits, misses: residency.misses };
  }

  /**
   * Drops every page of the image from the mapping (the page cache keeps them); returns the bytes
   * that were mapped (at most). For when idle.
   */
  dropMapped(): number {
    return this.residency?.dropAll() ?? 0;
  }

  /** Times a synchronous read (see the design note): too many slow ones switch to the thread pool. */
  private noteSyncRead(startedMs: number, pageCount: number): void {
    this.syncReads.note(startedMs, pageCount);
  }

  /** Times a synchronous program (see the design note): too many slow ones switch programs to the thread pool. */
  private noteSyncProgram(startedMs: number, pageCount: number): void {
    this.syncPrograms.note(startedMs, pageCount);
  }

  /** True while programs go through the thread pool (recent synchronous ones waited on the disk). */
  get preferAsyncPrograms(): boolean {
    return this.syncPrograms.switched;
  }

  override get preferAsyncReads(): boolean {
    return this.syncReads.switched;
  }

  protected async doProgramPages(eraseBlockIndex: number, firstPageIndex: number, data: Buffer): Promise<void> {
    this.noteMutation();
    const positionBytes = this.pageOffsetBytes(eraseBlockIndex, firstPageIndex);
    if (this.stale[eraseBlockIndex] === STALE) this.warmCounters.programmedBytes += data.length;
    try {
      if (this.preferAsyncPrograms) {
        await writeFully(this.image, data, positionBytes);
      } else {
        const started = performance.now();
        writeFullySync(this.image.fd, data, positionBytes);
        this.noteSyncProgram(started, data.length / this.geometry.pageBytes);
      }
    } catch (error) {
      // No room on the host: the pool's pages are the space to give back first.
      if ((error as NodeJS.ErrnoException).code === 'ENOSPC') void this.releaseWarm();
      throw fromSystemError(error, `NAND program of erase block ${eraseBlockIndex}`);
    }
    // Every old page of a stale block has been overwritten once its last page is programmed.
    if (this.stale[eraseBlockIndex] === STALE && firstPageIndex + data.length / this.geometry.pageBytes === this.geometry.pagesPerEraseBlock) this.unstale(eraseBlockIndex);
  }

  protected async doEraseBlock(eraseBlockIndex: number): Promise<void> {
    this.noteMutation();
    // Already stale, or its punch queued (this erase was issued before the punch, so the punch
    // starts at the write pointer this erase reset, and discards the whole block's old pages).
    if (this.stale[eraseBlockIndex] !== NOT_STALE) {
      this.warmCounters.deferredErases += 1;
      return;
    }
    if (this.warmLimitBlocks > 0) {
      const keptBlocks = this.warmLimitBlocks + this.warmOverflowBlocks;
      this.stale[eraseBlockIndex] = STALE;
      this.staleCount += 1;
      // Entries of blocks programmed full since are dropped now and then, so the queue stays small.
      if (this.staleQueue.length >= 4 * (keptBlocks + 16)) this.staleQueue = this.staleQueue.filter((block) => this.stale[block] === STALE);
      this.staleQueue.push(eraseBlockIndex);
      this.staleSinceMs[eraseBlockIndex] = this.lastMutationMs;
      this.warmCounters.deferredErases += 1;
      while (this.staleCount > keptBlocks) this.punchOldestStale();
      this.armIdleTimer();
      return;
    }
    this.warmCounters.punchedAtErase += 1;
    await this.discard(eraseBlockIndex, 0);
  }

  /** Stale blocks kept unpunched now (the warm pool). */
  get warmEraseBlocks(): number {
    return this.staleCount;
  }

  /** Bytes programmed over pages the warm pool kept (the rest went into pages the host had to find). */
  get warmProgrammedBytes(): number {
    return this.warmCounters.programmedBytes;
  }

  /**
   * Punches every stale block and keeps none until `resumeWarm` (the host file system is short of
   * space). Resolves when the punches are done.
   */
  releaseWarm(): Promise<void> {
    this.warmReleased = true;
    return this.punchStale(false);
  }

  /** Keeps erased blocks warm again (see `releaseWarm`). */
  resumeWarm(): void {
    this.warmReleased = false;
  }

  override async close(): Promise<void> {
    if (this.isClosed) return;
    this.clearIdleTimer();
    if (this.staleCount > 0) await this.punchStale(false);
    await super.close();
  }

  private noteMutation(): void {
    this.lastMutationMs = performance.now();
  }

  private armIdleTimer(): void {
    if (this.idleTimer !== null) return;
    const timer = setInterval(() => {
      if (this.staleCount === 0 || this.isClosed) {
        this.clearIdleTimer();
        return;
      }
      if (this.idle && !this.idlePunching) {
        this.idlePunching = true;
        void this.punchStale(true).finally(() => (this.idlePunching = false));
      } else if (!this.overflowPunching && this.overflowAged) {
        this.overflowPunching = true;
        void this.punchAgedOverflow().finally(() => (this.overflowPunching = false));
      }
    }, Math.max(10, Math.min(this.warmIdleMs, this.warmOverflowMs || Infinity) / 2));
    timer.unref();
    this.idleTimer = timer;
  }

  private clearIdleTimer(): void {
    if (this.idleTimer === null) return;
    clearInterval(this.idleTimer);
    this.idleTimer = null;
  }

  /** The block leaves the pool: NOT_STALE (programmed full) or PUNCHING. */
  private unstale(eraseBlockIndex: number, next: number = NOT_STALE): void {
    if (this.stale[eraseBlockIndex] !== STALE) return;
    this.stale[eraseBlockIndex] = next;
    this.staleCount -= 1;
  }

  /** The stale blocks kept for good (the bound), none while released. */
  private get warmLimitBlocks(): number {
    return this.warmReleased ? 0 : this.warmBoundBlocks;
  }

  /** No program or erase for `warmIdleMs`. */
  private get idle(): boolean {
    return performance.now() - this.lastMutationMs >= this.warmIdleMs;
  }

  /**
   * Punches the stale blocks, oldest first, `PUNCH_LANES` at a time (a thousand punches queued at
   * once would hold libuv's thread pool, and the fdatasync of the next commit behind them);
   * `whileIdle` stops as soon as a program or erase comes (the rest stays warm for it).
   */
  private async punchStale(whileIdle: boolean): Promise<void> {
    await this.punchWhile(() => this.staleCount > 0 && !(whileIdle && (!this.idle || this.isClosed)));
    if (this.staleCount === 0) this.staleQueue = [];
  }

  /** Punches the oldest stale block, `PUNCH_LANES` at a time, while `more()` says so. */
  private async punchWhile(more: () => boolean): Promise<void> {
    const lane = async (): Promise<void> => {
      while (more()) await this.punchOldestStale();
    };
    await Promise.all(Array.from({ length: PUNCH_LANES }, lane));
  }

  /** The pool is over its bound, and its oldest stale block has waited `warmOverflowMs` for a program. */
  private get overflowAged(): boolean {
    if (this.staleCount <= this.warmLimitBlocks) return false;
    while (this.staleQueue.length > 0 && this.stale[this.staleQueue[0]!] !== STALE) this.staleQueue.shift();
    const oldest = this.staleQueue[0];
    return oldest !== undefined && performance.now() - this.staleSinceMs[oldest]! >= this.warmOverflowMs;
  }

  /**
   * Punches the pool down to its bound, oldest first, while the oldest has waited `warmOverflowMs`,
   * `PUNCH_LANES` at a time. A punch holds the image's inode while ext4 commits its journal, and
   * the main thread's programs and mapped reads wait on it (punches at every commit's erases held
   * the event loop 10-60 ms at a time), so only blocks that programs did not take back are punched.
   */
  private punchAgedOverflow(): Promise<void> {
    return this.punchWhile(() => !this.isClosed && this.overflowAged);
  }

  /**
   * Punches the oldest stale block's pages from its write pointer on (the pages below it were
   * programmed since the erase), in the block's program/erase order: programs queued before it
   * run first, and those queued after it write after the punch.
   */
  private punchOldestStale(): Promise<void> {
    let block = -1;
    while (block < 0 && this.staleQueue.length > 0) {
      const candidate = this.staleQueue.shift()!;
      if (this.stale[candidate] === STALE) block = candidate;
    }
    if (block < 0) {
      // Every stale block is queued; should the count ever disagree, trust the flags.
      this.staleCount = 0;
      for (let candidate = 0; candidate < this.stale.length; candidate++) {
        if (this.stale[candidate] !== STALE) continue;
        this.staleCount += 1;
        this.staleQueue.push(candidate);
      }
      return Promise.resolve();
    }
    const fromPage = this.writePointers[block]!;
    this.warmCounters.punchedLater += 1;
    if (fromPage >= this.geometry.pagesPerEraseBlock) {
      this.unstale(block);
      return Promise.resolve();
    }
    this.unstale(block, PUNCHING);
    const punched = block;
    const punch = this.enqueueUpkeep(punched, async () => {
      try {
        await this.discard(punched, fromPage);
      } finally {
        // Pages above the pointer read as zeros from the image itself now (or, if the punch
        // failed, hold old data nothing references, as after a crash).
        if (this.stale[punched] === PUNCHING) this.stale[punched] = NOT_STALE;
      }
    });
    return punch.catch(() => undefined);
  }

  /** Discards the pages of a block from `fromPage` on: a hole punched, or zeros written. */
  private async discard(eraseBlockIndex: number, fromPage: number): Promise<void> {
    const offsetBytes = this.pageOffsetBytes(eraseBlockIndex, fromPage);
    const lengthBytes = (this.geometry.pagesPerEraseBlock - fromPage) * this.geometry.pageBytes;
    try {
      if (this.punchWorks && (await punchHole(this.image, offsetBytes, lengthBytes))) return;
      this.punchWorks = false;
      this.zeroEraseBlock ??= Buffer.alloc(eraseBlockBytes(this.geometry));
      await writeFully(this.image, this.zeroEraseBlock.subarray(0, lengthBytes), offsetBytes);
    } catch (error) {
      throw fromSystemError(error, `NAND erase of erase block ${eraseBlockIndex}`);
    }
  }

  protected async doSync(eraseBlockIndexes: readonly number[], states: readonly NandBlockInfo[]): Promise<void> {
    try {
      await this.image.datasync();
      if (eraseBlockIndexes.length === 0) return;
      await writeRecords(this.spare, eraseBlockIndexes, states);
      await this.spare.datasync();
    } catch (error) {
      throw fromSystemError(error, `NAND sync of ${this.directory}`);
    }
  }

  protected async doClose(): Promise<void> {
    await Promise.allSettled([...this.readsInFlight]);
    const results = await Promise.allSettled([this.image.close(), this.spare.close()]);
    for (const result of results) {
      if (result.status === 'rejected') throw fromSystemError(result.reason, `closing the NAND image in ${this.directory}`);
    }
  }

  private pageOffsetBytes(eraseBlockIndex: number, pageIndex: number): number {
    return (eraseBlockIndex * this.geometry.pagesPerEraseBlock + pageIndex) * this.geometry.pageBytes;
  }
}

async function createImage(directory: string, geometry: NandGeometry): Promise<void> {
  const imagePath = path.join(directory, IMAGE_FILE_NAME);
  const sparePath = path.join(directory, SPARE_FILE_NAME);
  try {
    await mkdir(directory, { recursive: true });
    const leftover = await stat(imagePath).catch(() => undefined);
    if (leftover !== undefined && leftover.blocks > 0) {
      throw StorageError.corrupt(
        `${imagePath} holds data but ${SPARE_FILE_NAME} is missing; refusing to overwrite it. ` +
          'Restore the spare-area file, or remove the image to start afresh',
      );
    }
    const temporaryPath = `${sparePath}.tmp`;
    await writeNewFile(temporaryPath, encodeSpareHeader(geometry), spareFileBytes(geometry), true);
    await writeNewFile(imagePath, Buffer.alloc(0), capacityBytes(geometry), false);
    await rename(temporaryPath, sparePath);
    await syncDirectory(directory);
  } catch (error) {
    throw fromSystemError(error, `creating a NAND image in ${directory}`);
  }
}

/** A new file of `sizeBytes` starting with `head`: sparse, or with `allocate` written out in full. */
async function writeNewFile(filePath: string, head: Buffer, sizeBytes: number, allocate: boolean): Promise<void> {
  const handle = await open(filePath, 'w');
  try {
    if (head.length > 0) await writeFully(handle, head, 0);
    if (allocate) {
      const zeros = Buffer.alloc(Math.min(ALLOCATE_CHUNK_BYTES, sizeBytes));
      for (let at = head.length; at < sizeBytes; at += zeros.length) await writeFully(handle, zeros.subarray(0, Math.min(zeros.length, sizeBytes - at)), at);
    }
    await handle.truncate(sizeBytes);
    await handle.sync();
  } finally {
    await handle.close();
  }
}

async function syncDirectory(directory: string): Promise<void> {
  const handle = await open(directory, 'r');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}

async function openLocked(directory: string): Promise<{ image: FileHandle; spare: FileHandle }> {
  let spare: FileHandle | undefined;
  let image: FileHandle | undefined;
  try {
    spare = await open(path.join(directory, SPARE_FILE_NAME), 'r+');
    if (!tryLock(spare.fd)) {
      throw StorageError.busy(`the NAND image in ${directory} is in use by another process (or is already open)`);
    }
    image = await open(path.join(directory, IMAGE_FILE_NAME), 'r+');
    return { image, spare };
  } catch (error) {
    await Promise.allSettled([spare?.close(), image?.close()]);
    throw fromSystemError(error, `opening the NAND image in ${directory}`);
  }
}

async function readGeometry(spare: FileHandle, sparePath: string): Promise<NandGeometry> {
  const header = Buffer.alloc(SPARE_HEADER_BYTES);
  const { bytesRead } = await spare.read(header, 0, SPARE_HEADER_BYTES, 0);
  if (bytesRead < SPARE_HEADER_BYTES) throw StorageError.corrupt(`${sparePath} is too short to hold a header`);
  const geometry = decodeSpareHeader(header, sparePath);
  try {
    return validateGeometry(geometry);
  } catch (error) {
    throw StorageError.corrupt(`${sparePath} records a geometry that is not allowed`, error);
  }
}

function checkSameGeometry(directory: string, recorded: NandGeometry, wanted: NandGeometry): void {
  const same =
    recorded.pageBytes === wanted.pageBytes &&
    recorded.pagesPerEraseBlock === wanted.pagesPerEraseBlock &&
    recorded.eraseBlockCount === wanted.eraseBlockCount &&
    recorded.enduranceCycles === wanted.enduranceCycles;
  if (same) return;
  throw StorageError.invalidArgument(
    `the NAND image in ${directory} was made with other geometry (${describeGeometry(recorded)}) ` +
      `than requested (${describeGeometry(wanted)}); open it with its own geometry, or create a new image elsewhere`,
  );
}

function describeGeometry(geometry: NandGeometry): string {
  return (
    `pageBytes ${geometry.pageBytes}, pagesPerEraseBlock ${geometry.pagesPerEraseBlock}, ` +
    `eraseBlockCount ${geometry.eraseBlockCount}, enduranceCycles ${geometry.enduranceCycles}`
  );
}

async function checkImageSize(image: FileHandle, imagePath: string, expectedBytes: number): Promise<void> {
  const { size } = await image.stat();
  if (size !== expectedBytes) {
    throw StorageError.corrupt(`${imagePath} is ${size} bytes but its geometry needs ${expectedBytes}; the image is damaged`);
  }
}

/** Reads every spare-area record, a bounded slice at a time. */
async function loadBlockStates(spare: FileHandle, geometry: NandGeometry, sparePath: string): Promise<NandBlockStates> {
  const states = freshBlockStates(geometry.eraseBlockCount);
  const chunk = Buffer.alloc(LOAD_RECORDS_PER_READ * SPARE_RECORD_BYTES);
  for (let first = 0; first < geometry.eraseBlockCount; first += LOAD_RECORDS_PER_READ) {
    const count = Math.min(LOAD_RECORDS_PER_READ, geometry.eraseBlockCount - first);
    const view = chunk.subarray(0, count * SPARE_RECORD_BYTES);
    const { bytesRead } = await spare.read(view, 0, view.length, spareRecordOffsetBytes(first));
    if (bytesRead < view.length) throw StorageError.corrupt(`${sparePath} is too short for ${geometry.eraseBlockCount} erase blocks`);
    for (let i = 0; i < count; i += 1) {
      const info = decodeSpareRecord(first + i, view, i * SPARE_RECORD_BYTES, sparePath);
      if (info.writePointer > geometry.pagesPerEraseBlock) {
        throw StorageError.corrupt(`${sparePath}: erase block ${first + i} has write pointer ${info.writePointer} past its last page`);
      }
      states.eraseCounts[first + i] = info.eraseCount;
      states.writePointers[first + i] = info.writePointer;
      states.badFlags[first + i] = info.bad ? 1 : 0;
    }
  }
  return states;
}

/** Writes the records, one positional write per run of adjacent erase blocks (`indexes` sorted). */
async function writeRecords(spare: FileHandle, indexes: readonly number[], states: readonly NandBlockInfo[]): Promise<void> {
  const writes: Array<{ data: Buffer; offsetBytes: number }> = [];
  let runStart = 0;
  for (let i = 1; i <= indexes.length; i += 1) {
    if (i < indexes.length && indexes[i] === indexes[i - 1]! + 1) continue;
    const data = Buffer.alloc((i - runStart) * SPARE_RECORD_BYTES);
    for (let j = runStart; j < i; j += 1) encodeSpareRecord(indexes[j]!, states[j]!, data, (j - runStart) * SPARE_RECORD_BYTES);
    writes.push({ data, offsetBytes: spareRecordOffsetBytes(indexes[runStart]!) });
    runStart = i;
  }
  for (let i = 0; i < writes.length; i += SYNC_WRITES_IN_FLIGHT) {
    const batch = writes.slice(i, i + SYNC_WRITES_IN_FLIGHT);
    await Promise.all(batch.map((write) => writeFully(spare, write.data, write.offsetBytes)));
  }
}

/** Punches a hole; false when the file system cannot (the caller then writes zeros). */
async function punchHole(image: FileHandle, offsetBytes: number, lengthBytes: number): Promise<boolean> {
  try {
    await trim(image.fd, offsetBytes, lengthBytes);
    return true;
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (code === 'EOPNOTSUPP' || code === 'ENOTSUP' || code === 'ENOSYS') return false;
    throw error;
  }
}

/*
 * Page I/O goes through the callback API on the FileHandle's descriptor: a FileHandle's own
 * read/write cost about twice the main-thread time per call (measured: 4 KiB random reads at
 * QD32 from the page cache, 96 K/s through FileHandle.read vs 242 K/s through fs.read). The
 * handle still owns the descriptor; close() waits for the I/O the FTL has in flight.
 */
function preadOnce(fd: number, data: Buffer, offset: number, length: number, positionBytes: number): Promise<number> {
  return new Promise((resolve, reject) => fs.read(fd, data, offset, length, positionBytes, (error, bytesRead) => (error ? reject(error) : resolve(bytesRead))));
}

function pwriteOnce(fd: number, data: Buffer, offset: number, length: number, positionBytes: number): Promise<number> {
  return new Promise((resolve, reject) => fs.write(fd, data, offset, length, positionBytes, (error, bytesWritten) => (error ? reject(error) : resolve(bytesWritten))));
}

async function readFully(handle: FileHandle, data: Buffer, positionBytes: number): Promise<void> {
  let doneBytes = 0;
  while (doneBytes < data.length) {
    const bytesRead = await preadOnce(handle.fd, data, doneBytes, data.length - doneBytes, positionBytes + doneBytes);
    if (bytesRead === 0) throw StorageError.corrupt(`the NAND image ends before byte ${positionBytes + data.length}`);
    doneBytes += bytesRead;
  }
}

async function writeFully(handle: FileHandle, data: Buffer, positionBytes: number): Promise<void> {
  let doneBytes = 0;
  while (doneBytes < data.length) {
    const bytesWritten = await pwriteOnce(handle.fd, data, doneBytes, data.length - doneBytes, positionBytes + doneBytes);
    if (bytesWritten === 0) throw StorageError.io(`the NAND image accepted no bytes at byte ${positionBytes + doneBytes}`);
    doneBytes += bytesWritten;
  }
}

/**
 * Watches synchronous I/O for calls that had to wait on the disk: one bit per recent call (newest
 * lowest, 1 when slower than `slowUs` plus `slowUsPerPage` a page); once `slowToSwitch` of the last
 * 32 were slow, `switched` is true for `switchMs`. One slow call is not enough: on a busy machine
 * the thread is sometimes descheduled in the middle of a page-cache copy.
 */
class SlowSwitch {
  private recent = 0;
  private untilMs = 0;

  constructor(
    private readonly slowUs: number,
    private readonly slowUsPerPage: number,
    private readonly slowToSwitch: number,
    private readonly switchMs: number,
  ) {}

  note(startedMs: number, pageCount: number): void {
    const slow = (performance.now() - startedMs) * 1000 > this.slowUs + this.slowUsPerPage * pageCount;
    this.recent = ((this.recent << 1) | (slow ? 1 : 0)) >>> 0;
    if (slow && popcount(this.recent) >= this.slowToSwitch) {
      this.untilMs = performance.now() + this.switchMs;
      this.recent = 0;
    }
  }

  get switched(): boolean {
    return this.untilMs > 0 && performance.now() < this.untilMs;
  }
}

function writeFullySync(fd: number, data: Buffer, positionBytes: number): void {
  let doneBytes = 0;
  while (doneBytes < data.length) {
    const bytesWritten = fs.writeSync(fd, data, doneBytes, data.length - doneBytes, positionBytes + doneBytes);
    if (bytesWritten === 0) throw StorageError.io(`the NAND image accepted no bytes at byte ${positionBytes + doneBytes}`);
    doneBytes += bytesWritten;
  }
}

/** The image mapped read-only in segments, or null when the addon is missing or mmap fails (pread then). */
function mapImage(fd: number, lengthBytes: number, segmentBytes: number): Buffer[] | null {
  if (nandMap === null) return null;
  const segments: Buffer[] = [];
  try {
    for (let offset = 0; offset < lengthBytes; offset += segmentBytes) segments.push(nandMap.map(fd, offset, Math.min(segmentBytes, lengthBytes - offset)));
    return segments;
  } catch {
    return null;
  }
}

function popcount(bits: number): number {
  let count = 0;
  for (let rest = bits >>> 0; rest !== 0; rest &= rest - 1) count += 1;
  return count;
}
