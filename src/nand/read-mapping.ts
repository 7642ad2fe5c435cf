/**
 * Which erase blocks of the NAND image's read mapping (file-nand.ts) are mapped, within a limit.
 *
 * Mapped pages count in the process's resident set (VmRSS, as RssFile) although they are page
 * cache, so they are part of the memory budget (`limitBytes`), and the mapping takes in only so
 * much: an erase block enters it at its first read while there is room for a whole block; past
 * that, reads of other blocks are refused and go by pread (FileNand's `mapPagesSync` answers "read
 * these directly" and the FTL reads those records with one pread each through the same native
 * call, about 3 µs per record against 1.5 mapped). Each block taken in counts as wholly mapped (or
 * as the kernel's 64 KiB fault-around window, if blocks are smaller): kernels with large
 * page-cache folios map a whole folio at a fault (measured on 6.18: 256 KiB for one 4 KiB touch of
 * a block programmed in one write), and a folio never spans two erase blocks, since programs stay
 * within one and folios are aligned to their size. Counting is exact enough and costs nothing;
 * measuring (the "shared" count of /proc/self/statm) counted every other file mapping of the
 * process too, LevelDB's included, and followed other FileNands of a test process.
 *
 * Blocks leave the mapping when cold (madvise DONTNEED: the page cache keeps them): reads are
 * counted in epochs of a quarter of the limit (at most `EPOCH_BYTES`), and at the end of an epoch
 * in which some read was refused, the blocks not read for `COLD_EPOCHS` epochs (twice the limit's
 * worth of reads) leave and make room — at the next `settle()`, not at once: the FTL plans a
 * batch (`takesIn` for every record) before reading it, and a block dropped while planned would
 * be mapped again by the reads without being counted (measured: 58 MiB mapped at a limit of
 * 8 MiB, by 32 MiB reads). A first version mapped every read and dropped cold blocks whenever over
 * the limit: at a 32 MiB limit a 128 KiB sequential read of data written at random mapped a large
 * folio per 4 KiB record and spent three quarters of its time faulting pages in and dropping them
 * again (420 MiB/s, against 1.3 GiB/s with a 1 GiB limit).
 */
import { nandMap } from '../common/native.js';
import { eraseBlockBytes, type NandGeometry } from './nand-device.js';

/** A fault on the mapping maps up to 16 pages around it that the page cache holds (fault_around_bytes). */
const FAULT_AROUND_BYTES = 64 * 1024;
/** Bytes read in one read epoch (at most; a quarter of the limit below that)... */
const EPOCH_BYTES = 64 * 1024 * 1024;
/** ...and the epochs without a read after which a mapped block is cold. */
const COLD_EPOCHS = 8;

export class ReadMapping {
  /** Per erase block, the read epoch of its last read through the mapping; 0: not taken in since it was last dropped. */
  private readonly blockReadEpoch: Uint32Array;
  private readEpoch = 1;
  private epochBytesRead = 0;
  private readonly epochBytes: number;
  /** Reads this epoch that the mapping refused (then cold blocks leave at its end)... */
  private epochRefusals = 0;
  /** ...at the next `settle()`. */
  private dropPending = false;
  /** Erase blocks taken in since they were last dropped, and the bytes each counts for. */
  private mappedBlocks = 0;
  private readonly blockBytes: number;
  /** Erase blocks dropped so far (each drop of a block that was read counts once). */
  droppedEraseBlocks = 0;
  /** Reads (`takesIn`) of a block already in the mapping... */
  hits = 0;
  /** ...and of one that was not (taken in now, or refused and read by pread). */
  misses = 0;

  /** `segments`: the image mapped in pieces of `segmentBytes`, each a whole number of erase blocks. */
  constructor(
    private readonly segments: readonly Buffer[],
    private readonly segmentBytes: number,
    private readonly geometry: NandGeometry,
    private limit: number,
  ) {
    this.blockReadEpoch = new Uint32Array(geometry.eraseBlockCount);
    this.epochBytes = Math.max(1024 * 1024, Math.min(EPOCH_BYTES, Math.floor(limit / 4)));
    this.blockBytes = Math.max(eraseBlockBytes(geometry), FAULT_AROUND_BYTES);
  }

  /**
   * Whether a read of `pageCount` pages of the block goes through the mapping: yes if the block is
   * in it, or there is room to take it in. Counts the read in its epoch; never drops anything.
   */
  takesIn(eraseBlockIndex: number, pageCount: number): boolean {
    let taken = this.blockReadEpoch[eraseBlockIndex] !== 0;
    if (taken) this.hits += 1;
    else this.misses += 1;
    if (!taken && (this.mappedBlocks + 1) * this.blockBytes <= this.limit) {
      this.mappedBlocks += 1;
      taken = true;
    }
    if (taken) this.blockReadEpoch[eraseBlockIndex] = this.readEpoch;
    else this.epochRefusals += 1;
    this.epochBytesRead += pageCount * this.geometry.pageBytes;
    if (this.epochBytesRead >= this.epochBytes) this.endEpoch();
    return taken;
  }

  /** Drops the cold blocks an epoch with refused reads left pending; call between batches. */
  settle(): void {
    if (this.dropPending) this.dropColdBlocks(this.readEpoch - COLD_EPOCHS);
  }

  /**
   * The bytes the mapping may hold from now on. Below what it holds, blocks leave now, the least
   * recently read first (so never while a batch is being planned).
   */
  setLimit(bytes: number): void {
    this.limit = bytes;
    for (let cold = this.readEpoch - COLD_EPOCHS; this.bytes > bytes && cold <= this.readEpoch; cold++) this.dropColdBlocks(cold);
  }

  get limitBytes(): number {
    return this.limit;
  }

  /** The image's bytes mapped now, at most. */
  get bytes(): number {
    return this.mappedBlocks * this.blockBytes;
  }

  /** Drops every block; returns the bytes that were mapped (at most). */
  dropAll(): number {
    const before = this.bytes;
    this.dropColdBlocks(this.readEpoch);
    this.readEpoch += 1;
    this.epochBytesRead = 0;
    this.epochRefusals = 0;
    return before;
  }

  /** A read epoch ends: if the mapping refused reads in it, its cold blocks are to leave. */
  private endEpoch(): void {
    this.epochBytesRead = 0;
    this.readEpoch += 1;
    if (this.epochRefusals > 0) this.dropPending = true;
    this.epochRefusals = 0;
  }

  /** Drops the blocks taken in but not read since the read epoch `cold` (a CLOCK of sorts). */
  private dropColdBlocks(cold: number): void {
    this.dropPending = false;
    const epochs = this.blockReadEpoch;
    const blockBytes = eraseBlockBytes(this.geometry);
    const blocksPerSegment = this.segmentBytes / blockBytes;
    for (let block = 0; block < epochs.length; ) {
      const epoch = epochs[block]!;
      if (epoch === 0 || epoch > cold) {
        block += 1;
        continue;
      }
      // A run of cold blocks in one segment: one madvise.
      const start = block;
      const segment = Math.floor(start / blocksPerSegment);
      while (block < epochs.length && epochs[block] !== 0 && epochs[block]! <= cold && Math.floor(block / blocksPerSegment) === segment) {
        epochs[block] = 0;
        block += 1;
      }
      const from = (start - segment * blocksPerSegment) * blockBytes;
      nandMap?.dropResident(this.segments[segment]!.subarray(from, from + (block - start) * blockBytes));
      this.droppedEraseBlocks += block - start;
      this.mappedBlocks -= block - start;
    }
  }
}
