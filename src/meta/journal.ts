/**
 * The metadata journal: a redo log of compact entries, one per changed volume-map entry or chunk
 * table entry, so that a write costs metadata I/O in proportion to what it changed, not a whole
 * 9 KiB map page or 6 KiB chunk page per commit (the design of dm-vdo's recovery journal).
 *
 * Where it lives: LevelDB, sublevel 'journal', one value per commit under key u64(seq), written in
 * the commit's one atomic batch together with the erase-block summaries, the superblock state and
 * whatever metadata pages that commit writes back. So the journal has exactly the crash model of
 * every other batch (a prefix of the batches survives), and needs no file format of its own.
 *
 * Pages are written back lazily (by age of their oldest unwritten change, and under cache
 * pressure; see flash-array.ts). Each dirty page remembers the seq of the journal value holding
 * its first change since it was last written (`firstDirtySeq`). The superblock records the trim
 * point: the smallest `firstDirtySeq` of any dirty page (or the next seq when none is dirty).
 * Every change older than the trim point is in a written page, so journal values below it are
 * deleted in the same batch that moves the trim point.
 *
 * Replay (at open): every value from the trim point on, in seq order, applied to the pages read
 * from LevelDB. Entries hold absolute values (the new map entry, the new refcount, the new
 * address), never deltas, so applying one to a page that already has it changes nothing: a page
 * written back after the trim point may already hold some of the replayed changes, and the last
 * entry for each field, which replay applies last, is the state that was committed.
 *
 * Entry formats (little-endian; lba and chunk ids as u32 low + u16 high, so up to 2^48):
 *   MAP        u8 1 | u32 layer | u32+u16 lba | u8 kind | u32 high | u32 low             20 bytes
 *   CHUNK_NEW  u8 2 | u32+u16 chunk | u32 erase block | u32 offset | u32 stored bytes |
 *              u8 codec | u8 fingerprint length n | n bytes                       22 + n bytes
 *   CHUNK_REFS u8 3 | u32+u16 chunk | u32 refcount (0: the chunk is freed)             11 bytes
 *   CHUNK_MOVE u8 4 | u32+u16 chunk | u32 erase block | u32 offset                     15 bytes
 * A unique 4 KiB overwrite journals about 60 bytes: its map entry, its new chunk and the old
 * chunk's refcount.
 *
 * Pieces: a capture is cut, at entry boundaries, into values of about `PIECE_BYTES` (64 KiB),
 * each under a seq of its own, all in the same commit batch. A put of one multi-megabyte value
 * stalled the event loop for 20-35 ms (classic-level copies the value, then LevelDB appends it to
 * a batch buffer that grows by doubling, and on these virtual machines the fresh pages it touches
 * fault slowly), which was the p99.9 latency of 4 KiB random writes at QD32; pieces let the batch
 * be built across turns. A page's `firstDirtySeq` is the seq the journal was at when the change
 * was made, the first piece of its capture or an earlier one, so trimming stays conservative.
 *
 * Buffers: entries are written into a working buffer, and a capture's pieces are views of it; the
 * journal then writes on in a second buffer, and the first one comes back (`recycle`) once the
 * commit's batch is written, to be the working buffer after the next capture. A capture used to
 * copy the entries into a fresh buffer: 1-2 MB at 4 KiB random writes, memory the process had
 * never touched (above glibc's mmap threshold), so the copy faulted its pages in one by one and
 * held the event loop 7-21 ms at every commit on a busy machine.
 */
import { assert, fail } from '../common/assert.js';
import { StorageError } from '../common/errors.js';

export const enum JournalEntryType {
  Map = 1,
  ChunkNew = 2,
  ChunkRefs = 3,
  ChunkMove = 4,
}

/** What replay does with each entry; the decoder calls these in journal order. */
export interface JournalVisitor {
  map(layerId: number, lba: number, kind: number, high: number, low: number): void;
  /**
   * The fingerprint is `fingerprintBytes` bytes of `source` from `fingerprintAt` (0 bytes: none):
   * a place in the journal value itself, valid only during the call (replay decodes millions of
   * entries, and a copy of each fingerprint was most of its garbage).
   */
  chunkNew(chunkId: number, block: number, offsetBytes: number, storedBytes: number, codec: number, source: Buffer, fingerprintAt: number, fingerprintBytes: number): void;
  chunkRefs(chunkId: number, refcount: number): void;
  chunkMove(chunkId: number, block: number, offsetBytes: number): void;
}

const TWO_POW_32 = 0x1_0000_0000;
const MAX_ID = 2 ** 48;
const INITIAL_BUFFER_BYTES = 1024 * 1024;
/** A capture is cut into values of about this size (see "Pieces" above); below glibc's mmap threshold. */
const PIECE_BYTES = 64 * 1024;
/** The largest entry: CHUNK_NEW with a 255-byte fingerprint. */
const MAX_ENTRY_BYTES = 22 + 255;

export class MetaJournal {
  private buffer: Buffer = Buffer.allocUnsafeSlow(INITIAL_BUFFER_BYTES);
  /** A written capture's buffer, for the entries after the next capture (see "Buffers"). */
  private spare: Buffer | null = null;
  private length = 0;
  private entryCount = 0;
  /** Offsets where pieces after the first start (entry boundaries), since the last capture. */
  private readonly pieceStarts: number[] = [];
  private pieceStart = 0;

  /** `seq`: the key of the journal value that the next entries go into. */
  constructor(private nextSeq: number) {}

  /** Seq of the value the entries being made now will be committed in. */
  get seq(): number {
    return this.nextSeq;
  }

  /** Moves the next seq forward (replay found values up to `seq - 1`). */
  skipTo(seq: number): void {
    assert(this.length === 0, 'skipTo with entries pending');
    this.nextSeq = Math.max(this.nextSeq, seq);
  }

  /** Bytes of entries not yet captured by a commit. */
  get pendingBytes(): number {
    return this.length;
  }

  get pendingEntries(): number {
    return this.entryCount;
  }

  map(layerId: number, lba: number, kind: number, high: number, low: number): void {
    const at = this.reserve(20);
    const b = this.buffer;
    b[at] = JournalEntryType.Map;
    b.writeUInt32LE(layerId, at + 1);
    writeId(b, lba, at + 5);
    b[at + 11] = kind;
    b.writeUInt32LE(high >>> 0, at + 12);
    b.writeUInt32LE(low >>> 0, at + 16);
  }

  /** `fingerprint`: its `fingerprintBytes` bytes from `fingerprintAt` on (all of it by default). */
  chunkNew(chunkId: number, block: number, offsetBytes: number, storedBytes: number, codec: number, fingerprint: Uint8Array | null, fingerprintAt = 0, fingerprintBytes = fingerprint === null ? 0 : fingerprint.length - fingerprintAt): void {
    assert(fingerprintBytes <= 255, 'fingerprint longer than 255 bytes');
    const at = this.reserve(22 + fingerprintBytes);
    const b = this.buffer;
    b[at] = JournalEntryType.ChunkNew;
    writeId(b, chunkId, at + 1);
    b.writeUInt32LE(block, at + 7);
    b.writeUInt32LE(offsetBytes, at + 11);
    b.writeUInt32LE(storedBytes, at + 15);
    b[at + 19] = codec;
    b[at + 20] = fingerprintBytes;
    // Byte by byte: a fingerprint is 8 bytes, and a view to copy it from cost more than the copy.
    for (let k = 0; k < fingerprintBytes; k++) b[at + 21 + k] = fingerprint![fingerprintAt + k]!;
    b[at + 21 + fingerprintBytes] = 0; // spare byte, keeps entries of one fingerprint size aligned
  }

  chunkRefs(chunkId: number, refcount: number): void {
    const at = this.reserve(11);
    const b = this.buffer;
    b[at] = JournalEntryType.ChunkRefs;
    writeId(b, chunkId, at + 1);
    b.writeUInt32LE(refcount, at + 7);
  }

  chunkMove(chunkId: number, block: number, offsetBytes: number): void {
    const at = this.reserve(15);
    const b = this.buffer;
    b[at] = JournalEntryType.ChunkMove;
    writeId(b, chunkId, at + 1);
    b.writeUInt32LE(block, at + 7);
    b.writeUInt32LE(offsetBytes, at + 11);
  }

  /**
   * The entries made since the last capture, as the values to commit (a copy, in pieces of about
   * `PIECE_BYTES`, each under its own seq); none when there are no entries. Later entries go into
   * the next seq.
   */
  capture(): Array<{ seq: number; value: Buffer }> {
    if (this.length === 0) return [];
    const captured = this.buffer;
    const pieces: Array<{ seq: number; value: Buffer }> = [];
    let from = 0;
    for (const to of this.pieceStarts) {
      pieces.push({ seq: this.nextSeq++, value: captured.subarray(from, to) });
      from = to;
    }
    pieces.push({ seq: this.nextSeq++, value: captured.subarray(from, this.length) });
    // The entries stay where they were written, and new ones go to another buffer (see "Buffers").
    const spare = this.spare;
    this.spare = null;
    this.buffer = spare !== null && spare.length >= this.length ? spare : Buffer.allocUnsafeSlow(Math.max(INITIAL_BUFFER_BYTES, this.length));
    this.length = 0;
    this.entryCount = 0;
    this.pieceStarts.length = 0;
    this.pieceStart = 0;
    return pieces;
  }

  /**
   * The pieces of a capture whose batch has been written (the store copied them): their buffer
   * takes the entries after the next capture. A failed batch's pieces are kept for the retry and
   * never come here.
   */
  recycle(pieces: ReadonlyArray<{ value: Buffer }>): void {
    const last = pieces[pieces.length - 1];
    if (last === undefined || last.value.buffer === this.buffer.buffer) return;
    const backing = Buffer.from(last.value.buffer, 0, last.value.buffer.byteLength);
    if (this.spare === null || backing.length > this.spare.length) this.spare = backing;
  }

  private reserve(bytes: number): number {
    if (this.length + bytes > this.buffer.length) {
      const bigger = Buffer.allocUnsafeSlow(Math.max(this.buffer.length * 2, this.length + MAX_ENTRY_BYTES));
      this.buffer.copy(bigger, 0, 0, this.length);
      this.buffer = bigger;
    }
    const at = this.length;
    if (at - this.pieceStart >= PIECE_BYTES) {
      this.pieceStarts.push(at);
      this.pieceStart = at;
    }
    this.length += bytes;
    this.entryCount += 1;
    return at;
  }
}

/** Calls `visitor` for every entry of one journal value, in order. Damage is CORRUPT. */
export function decodeJournalValue(value: Buffer, visitor: JournalVisitor, where: string): void {
  let at = 0;
  const need = (bytes: number) => {
    if (at + bytes > value.length) throw StorageError.corrupt(`${where}: a journal entry at byte ${at} runs past the end (${value.length} bytes)`);
  };
  while (at < value.length) {
    const type = value[at]!;
    switch (type) {
      case JournalEntryType.Map:
        need(20);
        visitor.map(value.readUInt32LE(at + 1), readId(value, at + 5), value[at + 11]!, value.readUInt32LE(at + 12), value.readUInt32LE(at + 16));
        at += 20;
        break;
      case JournalEntryType.ChunkNew: {
        need(22);
        const fingerprintBytes = value[at + 20]!;
        need(22 + fingerprintBytes);
        visitor.chunkNew(readId(value, at + 1), value.readUInt32LE(at + 7), value.readUInt32LE(at + 11), value.readUInt32LE(at + 15), value[at + 19]!, value, at + 21, fingerprintBytes);
        at += 22 + fingerprintBytes;
        break;
      }
      case JournalEntryType.ChunkRefs:
        need(11);
        visitor.chunkRefs(readId(value, at + 1), value.readUInt32LE(at + 7));
        at += 11;
        break;
      case JournalEntryType.ChunkMove:
        need(15);
        visitor.chunkMove(readId(value, at + 1), value.readUInt32LE(at + 7), value.readUInt32LE(at + 11));
        at += 15;
        break;
      default:
        throw StorageError.corrupt(`${where}: unknown journal entry type ${type} at byte ${at}`);
    }
  }
}

function writeId(target: Buffer, id: number, at: number): void {
  if (!(id >= 0 && id < MAX_ID)) fail(`journal id ${id} out of range`);
  target.writeUInt32LE(id % TWO_POW_32, at);
  target.writeUInt16LE(Math.floor(id / TWO_POW_32), at + 4);
}

function readId(source: Buffer, at: number): number {
  return source.readUInt32LE(at) + source.readUInt16LE(at + 4) * TWO_POW_32;
}
