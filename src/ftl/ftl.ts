/**
 * The flash translation layer: log-structured allocation over the NAND device.
 *
 * What it owns: the erase-block table, the host and GC log streams, the buffers of erase blocks not
 * yet entirely on NAND, garbage collection, wear leveling, bad-block retirement and the FTL
 * counters; reading records back is record-reader.ts's (the FTL hands it the NAND and the
 * buffers, and GC waits for its readers before an erase). It does not own
 * the chunk table: GC asks a `ChunkLocator` (the volume layer) whether a record is still live and
 * tells it where the record moved, so a relocation rewrites one chunk-table entry and nothing else.
 *
 * Invariants:
 * - a free block is erased (its NAND write pointer is 0); streams open only free blocks;
 * - host writes never take the last `reserveBlocks` free blocks: those keep GC able to move
 *   data, so GC always makes progress (with `hotColdSeparation` off, GC appends through the host
 *   stream and may open a reserve block for it);
 * - valid bytes of a block = record bytes of the chunks the chunk table places in it;
 * - a block is erased (or retired) only after a synced metadata commit that no longer references
 *   it, and only when no read of it is in flight.
 *
 * Commit protocol (`makeDurable`): seal partly filled pages and issue their programs, capture the
 * metadata in the same tick (so it references nothing that was not issued), wait for the programs,
 * and fdatasync the NAND; only then does the caller write the metadata batch. If a program fails,
 * the block is retired, its live records are re-appended elsewhere from the block's buffer,
 * and the capture is taken again.
 *
 * Host full: a program that fails with NO_SPACE (the file system under the image is full) is no
 * flaw of the block. Its pages are noted as stalled (`stalled`: per block, the page range to write
 * again), the block keeps its buffer (reads of its records are served from it, and nothing of it
 * is lost), and the listener given to `onNoSpace` hears of it at once, so that the array stops
 * taking new data. While any program is stalled no commit can be made (`makeDurable` throws
 * NO_SPACE): the capture would reference records that are not on NAND. `retryStalledPrograms`
 * writes the stalled ranges again, in place, once the caller has seen room come back; the chunk
 * table never changes for it. GC does not start meanwhile (`gcPaused`): its relocations would only
 * stall in turn.
 */
import { assert } from '../common/assert.js';
import { StorageError, isHostFull } from '../common/errors.js';
import type { Logger } from '../common/log.js';
import { TurnSlicer, nextTurn } from '../common/turns.js';
import { isNandFault, type NandDevice } from '../nand/nand-device.js';
import { BlockState, EraseBlockTable, type BlockSummary, type VictimPolicy } from './erase-block-table.js';
import { BlockBuffers, LogStream, type PhysicalAddress, type StreamHost } from './log-stream.js';
import { RecordReader } from './record-reader.js';
import type { RecordCipher } from './record-cipher.js';
import { DEFAULT_CHECKSUM_SEED, PAGE_HEADER_BYTES, RECORD_HEADER_BYTES, checksumOf } from './page-format.js';

/** Erases in flight at once after a commit (see `releaseAfterCommit`). */
const ERASE_LANES = 2;
/** Erases after a commit let the event loop turn after this much work (see `releaseAfterCommit`). */
const RELEASE_SLICE_MS = 2;

export interface FtlOptions {
  victimPolicy: VictimPolicy;
  /** Background GC starts below this many free blocks... */
  gcStartFreeBlocks: number;
  /** ...and stops at this many. */
  gcTargetFreeBlocks: number;
  /** Free blocks only GC may use. */
  reserveBlocks: number;
  /** Fraction of the stream capacity kept out of the usable capacity, so GC has room to work. */
  overProvisioning: number;
  /** Static wear leveling moves cold data when max - min P/E exceeds this. */
  wearSpreadThreshold: number;
  /**
   * A recently erased block is opened before the least-worn one while it is at most this many
   * cycles more worn (0: always the least-worn). See EraseBlockTable.pickFree.
   */
  warmWearSlack: number;
  /** Erase blocks GC cleans, at most, before one commit... */
  gcBatchBlocks: number;
  /**
   * ...and live bytes it relocates, at most, before one commit (at least one victim per round).
   * Every round ends with a synced commit (only then may its victims be erased), so a round must
   * free many blocks: with 8 victims of 256 KiB a round freed 2 MiB per 150-500 ms commit, and a
   * 128K sequential write at 300 MiB/s stalled for 1.5 s at a time once GC started.
   */
  gcRoundBytes: number;
  programBatchPages: number;
  /**
   * GC relocations go to their own log stream, apart from host writes (hot/cold separation:
   * relocated data has already outlived one erase block, so it is likely colder). False puts
   * both in the host stream; that is only a baseline for the write-amplification experiments.
   * Not persisted: each open may choose, since it changes where new records go and nothing else.
   */
  hotColdSeparation: boolean;
  /**
   * Written data that may wait on its NAND programs before host writes wait for them
   * (`programsBacklogged`): the bound on acknowledged data held in memory when the disk under the
   * image is slow or failing.
   */
  maxProgramBytesInFlight: number;
}

export function defaultFtlOptions(blockCount: number): FtlOptions {
  const start = Math.max(6, Math.ceil(blockCount * 0.03));
  return {
    victimPolicy: 'cost-benefit',
    gcStartFreeBlocks: start,
    gcTargetFreeBlocks: start + Math.max(4, Math.ceil(blockCount * 0.02)),
    reserveBlocks: 4,
    overProvisioning: 0.1,
    wearSpreadThreshold: 64,
    warmWearSlack: 8,
    gcBatchBlocks: 4096,
    gcRoundBytes: 32 * 1024 * 1024,
    // A whole erase block per NAND program: the block's buffer is kept until its programs complete
    // anyway, and each program is a hand-off to the thread pool that costs about 25 µs of main
    // thread here whatever its size (commits still program partly filled blocks).
    programBatchPages: 1 << 16,
    hotColdSeparation: true,
    maxProgramBytesInFlight: 32 * 1024 * 1024,
  };
}

/** The volume layer's side of GC: is this record live, and where did it go. */
export interface ChunkLocator {
  /** Loads and pins what `isAt`/`moveTo` need for these chunks; returns the unpin function. */
  pin(chunkIds: number[]): Promise<() => void>;
  isAt(chunkId: number, address: PhysicalAddress): boolean;
  moveTo(chunkId: number, address: PhysicalAddress): void;
}

/** A record to read: where it is and what its header must say. */
export interface RecordRef {
  address: PhysicalAddress;
  chunkId: number;
  storedBytes: number;
}

export interface ParsedRecord {
  chunkId: number;
  offsetBytes: number;
  payload: Buffer;
}

export interface FtlCounters {
  nandBytesProgrammed: number;
  relocatedBytes: number;
  erases: number;
  gcRuns: number;
  /** Wall time of the GC runs (relocation and the commit that follows each), in milliseconds. */
  gcMs: number;
  programFailures: number;
  eraseFailures: number;
  retiredForWear: number;
}

export class Ftl implements StreamHost {
  readonly buffers: BlockBuffers;
  readonly table: EraseBlockTable;
  readonly counters: FtlCounters = { nandBytesProgrammed: 0, relocatedBytes: 0, erases: 0, gcRuns: 0, gcMs: 0, programFailures: 0, eraseFailures: 0, retiredForWear: 0 };
  private readonly hostStream: LogStream;
  private readonly gcStream: LogStream;
  private readonly inflightPrograms = new Set<Promise<void>>();
  /** Bytes of the programs in `inflightPrograms` (see `programsBacklogged`). */
  private programBytesInFlight = 0;
  /** Programs in flight per erase block: a block's buffer goes once it is full and this is 0. */
  private readonly programsPerBlock = new Map<number, number>();
  /** The read path (record-reader.ts). */
  private readonly reader: RecordReader;
  /** Blocks relocated and waiting for a synced commit, with the capture generation that covers them. */
  private readonly pendingRelease = new Map<number, { generation: number; retire: boolean }>();
  private readonly busyBlocks = new Set<number>();
  private generation = 0;
  private nextSequence: number;
  private deviceError: StorageError | null = null;
  /** Per erase block, the pages [from, to) whose programs failed for want of host space (see the design note). */
  private readonly stalled = new Map<number, { from: number; to: number }>();
  private stalledPages = 0;
  private noSpaceListener: ((error: StorageError) => void) | null = null;
  /** Set by the array while its host file system is full: GC does not start. */
  gcPaused = false;
  /** True while a GC relocation appends, so a shared stream may open a block from the reserve. */
  private appendingForGc = false;
  private gcRunning: Promise<void> | null = null;
  private locator: ChunkLocator | null = null;
  private committer: (() => Promise<void>) | null = null;
  readonly streamBytesPerBlock: number;
  readonly payloadBytesPerPage: number;
  /** Where an encrypted array's host records are encrypted before they are appended. */
  private readonly cipherScratch: Buffer;

  constructor(
    readonly nand: NandDevice,
    readonly options: FtlOptions,
    private readonly logger: Logger,
    nextSequence = 1,
    /** Seed of record checksums (page-format.ts): the array's fingerprint key. */
    readonly recordSeed = DEFAULT_CHECKSUM_SEED,
    /** The array's record cipher (record-cipher.ts), or null for a plain array. */
    readonly cipher: RecordCipher | null = null,
  ) {
    const { pageBytes, pagesPerEraseBlock, eraseBlockCount } = nand.geometry;
    this.payloadBytesPerPage = pageBytes - PAGE_HEADER_BYTES;
    this.streamBytesPerBlock = this.payloadBytesPerPage * pagesPerEraseBlock;
    this.cipherScratch = cipher === null ? Buffer.alloc(0) : Buffer.alloc(this.streamBytesPerBlock);
    this.table = new EraseBlockTable(eraseBlockCount, this.streamBytesPerBlock);
    this.table.warmWearSlack = options.warmWearSlack;
    this.buffers = new BlockBuffers(pageBytes * pagesPerEraseBlock);
    this.reader = new RecordReader(nand, this.buffers, recordSeed, cipher);
    // An encrypted array swaps in its own append: a plain one pays no check per record.
    if (cipher !== null) this.append = this.appendEncrypted;
    for (let block = 0; block < eraseBlockCount; block++) this.table.eraseCount[block] = nand.blockInfo(block).eraseCount;
    this.table.rebuildFreeHeap();
    this.table.clearDirty();
    this.nextSequence = nextSequence;
    this.hostStream = new LogStream('host', this, options.programBatchPages);
    this.gcStream = new LogStream('gc', this, options.programBatchPages);
  }

  /** Wires the volume layer in: GC needs to ask about chunks and to commit. */
  attach(locator: ChunkLocator, committer: () => Promise<void>): void {
    this.locator = locator;
    this.committer = committer;
  }

  /**
   * Recovery from the durable summaries (no scan of the data): blocks that were open are sealed
   * as full, and free blocks the NAND says were touched after its last sync are erased again.
   */
  async recover(summaries: Iterable<[number, BlockSummary]>): Promise<void> {
    for (const [block, summary] of summaries) {
      const state = summary.state === BlockState.Open ? BlockState.Full : summary.state;
      this.table.load(block, { ...summary, state });
      this.nextSequence = Math.max(this.nextSequence, summary.sequence + 1);
    }
    for (let block = 0; block < this.table.blockCount; block++) {
      const info = this.nand.blockInfo(block);
      if (info.bad) {
        if (this.table.state[block] !== BlockState.Bad) this.table.setState(block, this.table.validBytes[block]! > 0 ? BlockState.Retiring : BlockState.Bad);
      } else if (this.table.state[block] === BlockState.Free && info.writePointer !== 0) {
        await this.eraseOrRetire(block);
      }
    }
    this.table.rebuildFreeHeap();
  }

  // ---- StreamHost ----------------------------------------------------------------------------

  openBlock(stream: LogStream): { block: number; sequence: number } {
    // The reserve is for GC: without hot/cold separation GC appends through the host stream, and
    // must still reach the reserve, or GC on a full device could not free anything.
    const floor = stream.name === 'host' && !this.appendingForGc ? this.options.reserveBlocks : 0;
    if (this.table.freeBlocks <= floor) {
      throw StorageError.noSpace(`no free erase block for the ${stream.name} stream (${this.table.freeBlocks} free, ${floor} reserved)`);
    }
    const block = this.table.pickFree();
    assert(block >= 0, 'free count and free blocks disagree');
    const sequence = this.nextSequence++;
    this.table.setState(block, BlockState.Open);
    this.table.sequence[block] = sequence;
    this.table.resetValid(block);
    this.table.writtenBytes[block] = 0;
    this.maybeStartGc();
    return { block, sequence };
  }

  closeBlock(block: number): void {
    if (this.table.state[block] === BlockState.Open) this.table.setState(block, BlockState.Full);
    this.maybeReleaseBuffer(block);
    this.releaseIfDead(block);
  }

  /** A full block whose programs have all completed is on NAND: reads go there from now on. */
  private maybeReleaseBuffer(block: number): void {
    if (this.table.state[block] === BlockState.Full && !this.programsPerBlock.has(block) && !(this.stalledPages > 0 && this.stalled.has(block))) this.buffers.release(block);
  }

  addWritten(block: number, bytes: number): void {
    this.table.writtenBytes[block] = this.table.writtenBytes[block]! + bytes;
    this.table.markDirty(block);
  }

  trackProgram(block: number, firstPageIndex: number, pages: Buffer): void {
    void this.issueProgram(block, firstPageIndex, pages, false);
  }

  /** Issues a program (or, `again`, the reprogram of a stalled range) and tracks it until it settles. */
  private issueProgram(block: number, firstPageIndex: number, pages: Buffer, again: boolean): Promise<void> {
    this.programsPerBlock.set(block, (this.programsPerBlock.get(block) ?? 0) + 1);
    const issued = again ? this.nand.reprogramPages(block, firstPageIndex, pages) : this.nand.programPages(block, firstPageIndex, pages);
    const program = issued.then(
      () => {
        this.counters.nandBytesProgrammed += pages.length;
      },
      (error: unknown) => this.onProgramFailure(block, error, firstPageIndex, pages.length),
    );
    this.inflightPrograms.add(program);
    this.programBytesInFlight += pages.length;
    void program.finally(() => {
      this.inflightPrograms.delete(program);
      this.programBytesInFlight -= pages.length;
      const left = this.programsPerBlock.get(block)! - 1;
      if (left > 0) this.programsPerBlock.set(block, left);
      else {
        this.programsPerBlock.delete(block);
        this.maybeReleaseBuffer(block);
      }
    });
    return program;
  }

  /**
   * True when more than `maxProgramBytesInFlight` of written data waits on its programs: the
   * disk under the image is slow, or failing slowly (ext4 retries a while before ENOSPC), and
   * every acknowledged write sits in a block buffer meanwhile. The host write path then waits for
   * `drainPrograms` before taking more, so that memory stays bounded.
   */
  get programsBacklogged(): boolean {
    return this.programBytesInFlight > this.options.maxProgramBytesInFlight;
  }

  /** Resolves once the programs in flight are down to half the limit. */
  async drainPrograms(): Promise<void> {
    while (this.programBytesInFlight > this.options.maxProgramBytesInFlight / 2 && this.inflightPrograms.size > 0) await Promise.race(this.inflightPrograms);
  }

  // ---- Host path -----------------------------------------------------------------------------

  /** Appends a record; `checksum` is its record checksum (computed here when not given). */
  append(stream: 'host' | 'gc', chunkId: number, stored: Uint8Array, checksum = checksumOf(stored, this.recordSeed)): PhysicalAddress {
    return this.appendRecord(stream, chunkId, stored, checksum);
  }

  private appendRecord(stream: 'host' | 'gc', chunkId: number, stored: Uint8Array, checksum: number): PhysicalAddress {
    const target = stream === 'gc' && this.options.hotColdSeparation ? this.gcStream : this.hostStream;
    this.appendingForGc = stream === 'gc';
    let address: PhysicalAddress;
    try {
      address = target.append(chunkId, stored, checksum);
    } finally {
      this.appendingForGc = false;
    }
    this.table.addValid(address.block, LogStream.recordBytes(stored.length));
    return address;
  }

  /**
   * `append` of an encrypted array: a host record is encrypted (a copy, in scratch memory) and its
   * checksum computed over the ciphertext; a GC record is ciphertext already (parseBlock) and goes
   * as it is. The caller's checksum (of the clear bytes) is not used.
   */
  private appendEncrypted(stream: 'host' | 'gc', chunkId: number, stored: Uint8Array): PhysicalAddress {
    if (stream === 'gc') return this.appendRecord(stream, chunkId, stored, checksumOf(stored, this.recordSeed));
    const sealed = this.cipherScratch.subarray(0, stored.length);
    sealed.set(stored);
    this.cipher!.encrypt(sealed, chunkId);
    return this.appendRecord(stream, chunkId, sealed, checksumOf(sealed, this.recordSeed));
  }

  /** Decrypts a record's payload from `parseBlock` in place (repair reads records that way); nothing on a plain array. */
  openRecord(payload: Buffer, chunkId: number): Buffer {
    this.cipher?.decrypt(payload, chunkId);
    return payload;
  }

  /** A chunk's record (of `storedBytes`, in erase block `block`) is no longer referenced. */
  invalidate(block: number, storedBytes: number): void {
    this.table.addValid(block, -LogStream.recordBytes(storedBytes));
    if (this.table.validBytes[block] === 0) this.releaseIfDead(block);
  }

  /**
   * A full block that holds nothing live is erased after the next synced commit, without waiting
   * for GC to pick it (it costs no relocation). Sequential overwrites kill whole blocks; erasing
   * them at once keeps the NAND image thin on the host (an erase punches a hole) and its page
   * cache small, so new programs reuse recently freed memory: on these virtual machines a page
   * the guest has not touched before costs several times more to write into (1 MiB pwrites into
   * a fresh file 475 MiB/s, into freed and reused page cache 5.1-5.3 GiB/s).
   */
  private releaseIfDead(block: number): void {
    if (this.table.state[block] !== BlockState.Full || this.table.validBytes[block] !== 0) return;
    if (this.busyBlocks.has(block) || this.pendingRelease.has(block)) return;
    this.pendingRelease.set(block, { generation: this.generation, retire: false });
  }

  get usableBytes(): number {
    const bad = this.table.lostBlocks;
    const blocks = Math.max(0, this.table.blockCount - this.options.reserveBlocks - this.options.gcTargetFreeBlocks - bad);
    const perBlock = this.streamBytesPerBlock - (RECORD_HEADER_BYTES + this.nand.geometry.pageBytes / 2);
    return Math.floor(blocks * perBlock * (1 - this.options.overProvisioning));
  }

  get liveBytes(): number {
    return this.table.totalValidBytes;
  }

  /** True when the host stream can take `bytes` more record bytes without GC's reserve. */
  hasHostSpace(bytes: number): boolean {
    return this.hostHeadroom() >= bytes;
  }

  private hostHeadroom(): number {
    return (this.table.freeBlocks - this.options.reserveBlocks - 1) * this.streamBytesPerBlock;
  }

  /**
   * Waits until the host stream can take `bytes` more record bytes without dipping into the GC
   * reserve, running GC in the foreground if needed. Throws NO_SPACE when GC cannot free enough.
   */
  async ensureHostSpace(bytes: number): Promise<void> {
    for (let attempt = 0; ; attempt++) {
      if (this.deviceError) throw this.deviceError;
      if (this.hostHeadroom() >= bytes) return;
      const freeBefore = this.table.freeBlocks;
      await this.runGc();
      if (this.table.freeBlocks <= freeBefore && attempt > 2) {
        throw StorageError.noSpace('the array is full: no erase block can be reclaimed; delete or trim data to free space');
      }
    }
  }

  // ---- Reads (record-reader.ts) ------------------------------------------------------------

  /** See RecordReader.canReadSync. */
  get canReadSync(): boolean {
    return this.reader.canReadSync;
  }

  /** See RecordReader.readRecordsSync. */
  readRecordsSync(requests: readonly RecordRef[], sink: (index: number, payload: Buffer) => void, destinations?: ReadonlyArray<Buffer | undefined>): void {
    this.reader.readRecordsSync(requests, sink, destinations);
  }

  /** See RecordReader.readRecords. */
  readRecords(requests: readonly RecordRef[]): Promise<Buffer[]> {
    return this.reader.readRecords(requests);
  }

  /** Every record of a block, in stream order (payloads are copies), from its buffer or NAND. */
  parseBlock(block: number): Promise<{ records: ParsedRecord[]; problems: string[] }> {
    return this.reader.parseBlock(block, Math.min(this.table.writtenBytes[block]!, this.streamBytesPerBlock), this.table.sequence[block]! >>> 0);
  }

  // ---- Commit points -------------------------------------------------------------------------

  /**
   * Makes every appended record durable on NAND and returns `capture()`'s result, taken at the
   * moment the last programs were issued (so it references only durable records).
   */
  async makeDurable<T>(capture: (generation: number) => T): Promise<T> {
    for (let attempt = 0; attempt < 16; attempt++) {
      await this.relocateRetiring();
      this.checkRetiringRelocated();
      this.checkNothingStalled();
      this.hostStream.sealPartial();
      this.gcStream.sealPartial();
      const generation = ++this.generation;
      const captured = capture(generation);
      const failuresBefore = this.counters.programFailures;
      // Only the programs issued so far hold what the capture references; waiting until none is
      // in flight at all let a steady stream of new programs hold a commit for seconds.
      await Promise.all([...this.inflightPrograms]);
      if (this.deviceError) throw this.deviceError;
      this.checkNothingStalled();
      if (this.counters.programFailures !== failuresBefore) continue;
      await this.nand.sync();
      return captured;
    }
    throw StorageError.io('NAND programs keep failing; the array cannot make data durable');
  }

  /**
   * A failed erase block whose live records could not all be moved (they could not be read back)
   * holds data that never reached NAND intact: a commit now would acknowledge it as durable.
   */
  private checkRetiringRelocated(): void {
    for (let block = 0; block < this.table.blockCount; block++) {
      if (this.table.state[block] === BlockState.Retiring && this.table.validBytes[block]! > 0 && !this.busyBlocks.has(block)) {
        throw StorageError.io(`erase block ${block} failed and ${this.table.validBytes[block]} bytes of its data could not be relocated`);
      }
    }
  }

  /** A stalled program holds records a capture may reference: nothing can be committed. */
  private checkNothingStalled(): void {
    if (this.stalledPages === 0) return;
    throw StorageError.hostFull(`the host file system is full: ${this.stalledBytes} bytes of written data wait for room on it (in ${this.stalled.size} erase blocks)`);
  }

  // ---- Host full -----------------------------------------------------------------------------

  /** `listener` hears of every program that fails with NO_SPACE, as it fails. */
  onNoSpace(listener: (error: StorageError) => void): void {
    this.noSpaceListener = listener;
  }

  /** Bytes of stalled programs: data that is only in memory until the host has room for it. */
  get stalledBytes(): number {
    return this.stalledPages * this.nand.geometry.pageBytes;
  }

  /**
   * Programs the stalled ranges again, each in one program from its block's buffer. A block with a
   * program still in flight waits for the next call (that program will fail, untried, and join the
   * range). Throws NO_SPACE if any is still stalled afterwards.
   */
  async retryStalledPrograms(): Promise<void> {
    const pageBytes = this.nand.geometry.pageBytes;
    const retries: Promise<void>[] = [];
    for (const [block, { from, to }] of [...this.stalled]) {
      if (this.programsPerBlock.has(block)) continue;
      const buffer = this.buffers.get(block);
      assert(buffer !== undefined, `stalled erase block ${block} has no buffer`);
      this.stalled.delete(block);
      this.stalledPages -= to - from;
      retries.push(this.issueProgram(block, from, buffer.subarray(from * pageBytes, to * pageBytes), true));
    }
    await Promise.all(retries);
    this.checkNothingStalled();
  }

  private stall(block: number, firstPageIndex: number, pageCount: number): void {
    const range = this.stalled.get(block);
    const from = Math.min(range?.from ?? firstPageIndex, firstPageIndex);
    const to = Math.max(range?.to ?? 0, firstPageIndex + pageCount);
    this.stalledPages += to - from - (range === undefined ? 0 : range.to - range.from);
    this.stalled.set(block, { from, to });
  }

  private unstall(block: number): void {
    const range = this.stalled.get(block);
    if (range === undefined) return;
    this.stalled.delete(block);
    this.stalledPages -= range.to - range.from;
  }

  /**
   * Queues every full erase block that holds no live data for release after the next synced
   * commit, as GC would with an empty victim: erasing punches it out of the image, which gives the
   * host file system its space back (GC itself waits for the array to run low on erase blocks).
   * Returns how many were queued.
   */
  reclaimEmptyBlocks(): number {
    let queued = 0;
    const current = new Set([this.hostStream.currentBlock, this.gcStream.currentBlock]);
    for (let block = 0; block < this.table.blockCount; block++) {
      if (this.table.state[block] !== BlockState.Full || this.table.validBytes[block] !== 0) continue;
      if (this.busyBlocks.has(block) || this.pendingRelease.has(block) || current.has(block) || this.stalled.has(block)) continue;
      this.pendingRelease.set(block, { generation: this.generation, retire: false });
      queued += 1;
    }
    return queued;
  }

  /** Changed erase-block summary pages, for the metadata batch of a commit: [page, value]. */
  captureSummaries(): Array<[number, Buffer]> {
    return this.table.captureSummaryPages();
  }

  /**
   * After a synced commit of `generation`: erase or retire the blocks it freed, `ERASE_LANES` at a
   * time. An erase is a hole punch in the image, which takes the file's lock that every program's
   * pwrite needs too; all of a commit's erases at once (hundreds after a sequential overwrite)
   * filled libuv's four threads, and programs queued behind them: 128 KiB writes in one process
   * measured programs waiting 59 ms on average and erases 230 ms, and the writers stalled on the
   * program backlog for 2-3 s in 17. A block is busy while it waits, so GC does not pick it.
   * An erase that only marks the block stale (the warm pool) resolves at once, so the lanes let
   * the event loop turn every `RELEASE_SLICE_MS`: the thousand erases after a 1 GiB TRIM ran in
   * one turn and held other connections' reads for 77-97 ms on a busy machine.
   */
  releaseAfterCommit(generation: number): Promise<void> {
    const released: Array<{ block: number; retire: boolean }> = [];
    for (const [block, pending] of this.pendingRelease) {
      if (pending.generation >= generation) continue;
      this.pendingRelease.delete(block);
      this.busyBlocks.add(block);
      released.push({ block, retire: pending.retire });
    }
    let next = 0;
    const slicer = new TurnSlicer(RELEASE_SLICE_MS);
    const lane = async (): Promise<void> => {
      while (next < released.length) {
        const { block, retire } = released[next++]!;
        try {
          await this.reader.whenNoReaders(block);
          if (retire) this.retire(block);
          else await this.eraseOrRetire(block);
        } finally {
          this.busyBlocks.delete(block);
        }
        if (slicer.due()) await slicer.nextTurn();
      }
    };
    return Promise.all(Array.from({ length: Math.min(ERASE_LANES, released.length) }, lane)).then(() => undefined);
  }

  get sequence(): number {
    return this.nextSequence;
  }

  // ---- Failures ------------------------------------------------------------------------------

  private onProgramFailure(block: number, error: unknown, firstPageIndex: number, bytes: number): void {
    const state = this.table.state[block];
    if (state === BlockState.Retiring || state === BlockState.Bad) {
      // A program queued behind one that already failed on this block: the block is being
      // retired and its records relocated from its buffer, so this is no new failure.
      return;
    }
    if (isHostFull(error)) {
      this.stall(block, firstPageIndex, bytes / this.nand.geometry.pageBytes);
      this.noSpaceListener?.(error);
      return;
    }
    if (!isNandFault(error)) {
      this.deviceError = error instanceof StorageError ? error : StorageError.io(`NAND program failed: ${String(error)}`, error);
      this.logger.error('NAND write failed; the array cannot make new data durable', { block, error: this.deviceError.message });
      return;
    }
    this.counters.programFailures += 1;
    this.logger.warn('NAND program failure: retiring erase block', { block });
    for (const stream of [this.hostStream, this.gcStream]) if (stream.currentBlock === block) stream.abandonBlock();
    if (this.table.state[block] !== BlockState.Bad) this.table.setState(block, BlockState.Retiring);
  }

  private async eraseOrRetire(block: number): Promise<void> {
    if (this.table.eraseCount[block]! + 1 >= this.nand.geometry.enduranceCycles) {
      this.counters.retiredForWear += 1;
      this.retire(block);
      return;
    }
    try {
      const erased = this.nand.eraseBlock(block);
      this.unstall(block); // the erase discards the stalled pages (a block with live data is never erased)
      await erased;
      this.buffers.release(block);
      this.counters.erases += 1;
      this.table.eraseCount[block] = this.nand.blockInfo(block).eraseCount;
      this.table.resetValid(block);
      this.table.writtenBytes[block] = 0;
      this.table.setState(block, BlockState.Free);
    } catch (error) {
      if (!isNandFault(error)) throw error;
      this.counters.eraseFailures += 1;
      this.logger.warn('NAND erase failure: retiring erase block', { block });
      this.retire(block);
    }
  }

  private retire(block: number): void {
    this.unstall(block);
    this.nand.markBad(block);
    this.buffers.release(block);
    this.table.resetValid(block);
    this.table.setState(block, BlockState.Bad);
  }

  // ---- Garbage collection and wear leveling --------------------------------------------------

  /** Moves the live records of blocks whose programs failed, before a commit references them. */
  private async relocateRetiring(): Promise<void> {
    // A program may fail while this awaits a relocation, retiring a block the scan has passed:
    // scan again until a pass finds no block it has not tried (each is tried once per call).
    const tried = new Set<number>();
    for (let found = true; found; ) {
      found = false;
      for (let block = 0; block < this.table.blockCount; block++) {
        if (this.table.state[block] === BlockState.Retiring && !this.busyBlocks.has(block) && !this.pendingRelease.has(block) && !tried.has(block)) {
          tried.add(block);
          found = true;
          await this.relocateBlock(block, true);
        }
      }
    }
  }

  /**
   * Re-appends every live record of `block` to the GC stream and updates the chunk table. The
   * block is released (erased or retired) after the next synced commit.
   */
  async relocateBlock(block: number, retire: boolean): Promise<void> {
    assert(this.locator !== null, 'FTL used before attach()');
    this.busyBlocks.add(block);
    try {
      if (this.table.validBytes[block] === 0) {
        // Nothing live: no need to read (after a crash the block may hold stale, never-committed pages).
        this.pendingRelease.set(block, { generation: this.generation, retire: retire || this.table.state[block] === BlockState.Retiring });
        return;
      }
      let parsed = await this.parseBlock(block);
      for (let retry = 0; retry < 3 && parsed.problems.length > 0; retry++) parsed = await this.parseBlock(block);
      const { records, problems } = parsed;
      for (const problem of problems) this.logger.error('unreadable data found while relocating', { block, problem });
      const unpin = await this.locator.pin(records.map((record) => record.chunkId));
      try {
        for (const record of records) {
          if (!this.locator.isAt(record.chunkId, { block, offsetBytes: record.offsetBytes })) continue;
          const moved = this.append('gc', record.chunkId, record.payload);
          this.locator.moveTo(record.chunkId, moved);
          this.table.addValid(block, -LogStream.recordBytes(record.payload.length));
          this.counters.relocatedBytes += record.payload.length;
        }
      } finally {
        unpin();
      }
      if (this.table.validBytes[block] !== 0) {
        this.logger.error('erase block still has valid bytes after relocation; keeping it', { block, validBytes: this.table.validBytes[block] });
        return;
      }
      this.pendingRelease.set(block, { generation: this.generation, retire: retire || this.table.state[block] === BlockState.Retiring });
    } finally {
      this.busyBlocks.delete(block);
    }
  }

  private maybeStartGc(): void {
    if (this.gcRunning || this.committer === null || this.gcPaused) return;
    const needed = this.table.freeBlocks < this.options.gcStartFreeBlocks || this.table.retiringBlocks > 0;
    if (!needed) return;
    void this.runGc().catch((error: unknown) => {
      // A full host file system is the array's to report (host-space.ts), once.
      if (!(isHostFull(error) && this.gcPaused)) this.logger.error('garbage collection failed', { error: (error as Error).message });
    });
  }

  /** Runs GC until the free target is met or nothing can be reclaimed; one run at a time. */
  runGc(): Promise<void> {
    if (this.gcRunning) return this.gcRunning;
    this.gcRunning = this.gcLoop().finally(() => {
      this.gcRunning = null;
    });
    return this.gcRunning;
  }

  private async gcLoop(): Promise<void> {
    for (let round = 0; round < 1_000_000; round++) {
      const victims = this.chooseVictims();
      if (victims.length === 0) return;
      this.counters.gcRuns += 1;
      const startedMs = performance.now();
      try {
        for (const victim of victims) await this.relocateBlock(victim, false);
        await this.committer!();
      } finally {
        this.counters.gcMs += performance.now() - startedMs;
      }
      if (this.table.freeBlocks >= this.options.gcTargetFreeBlocks && this.table.retiringBlocks === 0) return;
      await nextTurn();
    }
  }

  private chooseVictims(): number[] {
    const exclude = new Set<number>([...this.busyBlocks, ...this.pendingRelease.keys(), ...this.stalled.keys()]);
    for (const stream of [this.hostStream, this.gcStream]) if (stream.currentBlock >= 0) exclude.add(stream.currentBlock);
    const victims: number[] = [];
    const wanted = Math.max(1, Math.min(this.options.gcBatchBlocks, this.options.gcTargetFreeBlocks - this.table.freeBlocks));
    const cold = this.table.pickColdBlock(this.options.wearSpreadThreshold, exclude);
    if (cold >= 0) {
      victims.push(cold);
      exclude.add(cold);
    }
    // Each victim's live data needs room in the GC stream; stay within the free blocks.
    let budget = (this.table.freeBlocks - 1) * this.streamBytesPerBlock;
    let roundBytes = victims.length > 0 ? this.table.validBytes[victims[0]!]! : 0;
    for (const victim of this.table.pickVictims(this.options.victimPolicy, this.nextSequence, exclude, wanted - victims.length)) {
      const valid = this.table.validBytes[victim]!;
      if (valid > budget) break;
      if (victims.length > 0 && roundBytes + valid > this.options.gcRoundBytes) break;
      roundBytes += valid;
      if (this.table.freeBlocks >= this.options.gcTargetFreeBlocks && this.table.state[victim] !== BlockState.Retiring) break;
      budget -= valid;
      victims.push(victim);
      exclude.add(victim);
    }
    return victims;
  }

  stats(): Record<string, number> {
    const wear = this.table.wearStats();
    const endurance = this.nand.geometry.enduranceCycles;
    return {
      eraseBlocks: this.table.blockCount,
      freeEraseBlocks: this.table.freeBlocks,
      badEraseBlocks: this.table.count(BlockState.Bad) + this.table.count(BlockState.Retiring),
      peMin: wear.min,
      peMean: Math.round(wear.mean * 100) / 100,
      peMax: wear.max,
      flashHealthPercent: Math.max(0, Math.round((1 - wear.mean / endurance) * 10000) / 100),
      nandBytesProgrammed: this.counters.nandBytesProgrammed,
      relocatedBytes: this.counters.relocatedBytes,
      erases: this.counters.erases,
      gcRuns: this.counters.gcRuns,
      gcSeconds: Math.round(this.counters.gcMs) / 1000,
      programFailures: this.counters.programFailures,
      eraseFailures: this.counters.eraseFailures,
      stalledProgramBytes: this.stalledBytes,
      warmEraseBlocks: this.nand.warmEraseBlocks ?? 0,
      warmProgrammedBytes: this.nand.warmProgrammedBytes ?? 0,
      liveBytes: this.liveBytes,
      usableBytes: this.usableBytes,
    };
  }
}
