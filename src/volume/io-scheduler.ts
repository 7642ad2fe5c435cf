/**
 * The array's I/O scheduler: every WRITE, TRIM, WRITE_ZEROES and FLUSH of every volume passes
 * through one FIFO, so requests that change data take effect in the order they were submitted,
 * without a lock or a promise per request.
 *
 * Requests submitted in one turn of the event loop (what one socket read, or several connections'
 * reads, brought) form a batch. Its whole 4 KiB blocks are reduced together (reduce-block.ts),
 * on the main thread or on a reduction worker with one message for the whole batch. The worker
 * costs more CPU in all (a hand-off costs the main thread about `WORKER_HANDOFF_US` here, and the
 * worker as much again: 6.8 µs of worker per random block against 3 µs inline, measured), so it is
 * used only when it buys time the main thread does not have: when the main thread was busy more
 * than `WORKER_WHEN_BUSY` of the last interval (Node's event-loop utilization), the batch is big
 * enough to pay for the hand-off (`WORKER_MIN_BLOCKS`), and the data is costly to reduce: most
 * recent blocks were compressible, so LZ4 or zstd really runs (8 to 10 µs a block). Random data
 * (two hashes and a sample, 3 µs a block) is always reduced inline: the second core is better
 * left to the client, the kernel and the garbage collector. Batches then run strictly in order: each request is planned and applied synchronously by
 * `Volume.applyChange`; when that needs pages or dedup entries that are not cached, or GC to make
 * room, the batch waits for them (later batches wait behind it) and the request is planned again.
 * TRIM and WRITE_ZEROES, which may cover gigabytes, run as asynchronous steps in their place.
 *
 * Pipelining: a batch is applied in slices of at most `TURN_BUDGET_MS` of work; between two slices
 * the event loop turns, so the replies of the slice go out (one write per connection) and new
 * requests are read while the rest is applied. Applying a whole queue-depth's worth in one go
 * made the client and the server wait for each other in turn (one connection at QD32 reached half
 * the rate of four connections at QD8).
 *
 * Completion: a request is done as soon as it is applied, except that FUA requests of a batch
 * share one commit after it, and a FLUSH is done when a commit started after every earlier request
 * was applied has finished (so it covers every write completed before the FLUSH arrived, on any
 * connection). Neither holds up later batches.
 *
 * Management operations that restructure maps (snapshot delete, restore, volume delete) run as an
 * exclusive step of the same FIFO (`runExclusive`): nothing is applied while they run.
 *
 * Backpressure: a written block is acknowledged from the FTL's block buffers before its NAND program
 * completes; when too much waits on programs (a slow disk, or ext4 taking its time to fail near
 * ENOSPC), the next slice waits for them (`Ftl.programsBacklogged`, checked once per slice).
 */
import { IoCommand, type IoRequest } from '../common/block-device.js';
import { isStorageError } from '../common/errors.js';
import { TurnSlicer } from '../common/turns.js';
import { ReducedBlocks, reduceInline, BLOCK_BYTES } from '../reduce/reduce-block.js';
import type { FlashArray } from './flash-array.js';
import { ChangeMode, type Volume } from './volume.js';

interface Entry {
  volume: Volume;
  request: IoRequest;
  /** For a WRITE: index of its first whole block in the batch's reduction results. */
  reducedFirst: number;
}

class Batch {
  entries: Entry[] = [];
  blocks: Buffer[] = [];
  reduced: ReducedBlocks | null = null;
  /** Reduction is done (or there was nothing to reduce). */
  ready = false;
  cursor = 0;
  unpins: Array<() => void> = [];
  durable: Entry[] = [];
  exclusive: (() => Promise<void>) | null = null;
}

export interface SchedulerOptions {
  /** Batches with fewer whole blocks than this are always reduced on the main thread (0: every batch goes to a worker, for tests). */
  workerMinBlocks: number;
}

export const DEFAULT_WORKER_MIN_BLOCKS = 32;
/** Smallest batch worth a worker hand-off (about 60 µs of main thread, 250 µs in all, here). */
const WORKER_MIN_BLOCKS = 32;
/** Event-loop utilization above which the main thread counts as busy... */
const WORKER_WHEN_BUSY = 0.85;
/** ...measured over intervals this long. */
const UTILIZATION_INTERVAL_MS = 100;
/** Work applied in one turn of the event loop before the replies go out. */
const TURN_BUDGET_MS = 0.25;
/** A WRITE larger than this is applied as parts of this size (enqueueParts)... */
const WRITE_PART_BYTES = 1024 * 1024;
/** ...and a batch holds at most this many whole blocks (4 MiB); the rest waits for the next turn. */
const MAX_BATCH_BLOCKS = 1024;

export class IoScheduler {
  private pending: Entry[] = [];
  private scheduled = false;
  private readonly queue: Batch[] = [];
  /** The head batch waits for something asynchronous (a load, GC, an unmap, an exclusive step). */
  private waiting = false;
  /** Share of recent non-pattern blocks stored compressed (moving average). */
  private compressibleShare = 0;
  /** Event-loop utilization of the last complete interval, and where the current one started. */
  private utilization = 0;
  private utilizationMark = performance.eventLoopUtilization();
  private utilizationAtMs = performance.now();
  /** Bounds each slice of a batch's application (`TURN_BUDGET_MS`). */
  private readonly slicer = new TurnSlicer(TURN_BUDGET_MS);

  constructor(
    private readonly array: FlashArray,
    private readonly options: SchedulerOptions,
  ) {}

  /** Requests queued or running. */
  get depth(): number {
    let count = this.pending.length;
    for (const batch of this.queue) count += batch.entries.length - batch.cursor;
    return count;
  }

  enqueue(volume: Volume, request: IoRequest): void {
    if (request.command === IoCommand.Write && request.lengthBytes > WRITE_PART_BYTES) {
      this.enqueueParts(volume, request);
      return;
    }
    this.pending.push({ volume, request, reducedFirst: 0 });
    this.schedule();
  }

  private schedule(): void {
    if (this.scheduled) return;
    this.scheduled = true;
    setImmediate(() => {
      this.scheduled = false;
      this.formBatch();
      if (this.pending.length > 0) this.schedule();
      this.pump();
    });
  }

  /**
   * A WRITE over `WRITE_PART_BYTES` goes in as parts of about that size, cut at block boundaries,
   * one after the other in the FIFO; it is done when every part is (a FUA write then commits
   * once). With `MAX_BATCH_BLOCKS` per batch, a 64 MiB write is reduced and applied a few MiB a
   * turn instead of in one go, which held other connections' reads for up to 172 ms.
   */
  private enqueueParts(volume: Volume, request: IoRequest): void {
    const end = request.offsetBytes + request.lengthBytes;
    const cuts: number[] = [request.offsetBytes];
    while (cuts[cuts.length - 1]! < end) {
      const from = cuts[cuts.length - 1]!;
      cuts.push(Math.min(end, Math.floor((from + WRITE_PART_BYTES) / BLOCK_BYTES) * BLOCK_BYTES));
    }
    let left = cuts.length - 1;
    let failure: unknown = null;
    const partDone = (_part: IoRequest, error: unknown): void => {
      if (error !== null && error !== undefined && failure === null) failure = error;
      left -= 1;
      if (left > 0) return;
      if (failure !== null || !request.fua) {
        request.done(request, failure);
        return;
      }
      this.array.commit(true).then(
        () => request.done(request, null),
        (error: unknown) => request.done(request, error),
      );
    };
    for (let k = 0; k + 1 < cuts.length; k++) {
      const at = cuts[k]! - request.offsetBytes;
      const lengthBytes = cuts[k + 1]! - cuts[k]!;
      const part: IoRequest = { command: IoCommand.Write, offsetBytes: cuts[k]!, lengthBytes, data: request.data!.subarray(at, at + lengthBytes), fua: false, noHole: false, fastZero: false, result: null, done: partDone };
      this.pending.push({ volume, request: part, reducedFirst: 0 });
    }
    this.schedule();
  }

  /** Runs `work` once every request submitted before has been applied, and nothing else meanwhile. */
  runExclusive<T>(work: () => Promise<T>): Promise<T> {
    while (this.pending.length > 0) this.formBatch();
    return new Promise<T>((resolve, reject) => {
      const batch = new Batch();
      batch.ready = true;
      batch.exclusive = () => work().then(resolve, reject);
      this.queue.push(batch);
      this.pump();
    });
  }

  /** Makes a batch of what is pending, up to `MAX_BATCH_BLOCKS` whole blocks (at least one request). */
  private formBatch(): void {
    if (this.pending.length === 0) return;
    const batch = new Batch();
    let taken = 0;
    let blocks = 0;
    for (; taken < this.pending.length; taken++) {
      const { request } = this.pending[taken]!;
      const [firstBlock, endBlock] = wholeBlocks(request);
      const whole = request.command === IoCommand.Write ? Math.max(0, endBlock - firstBlock) : 0;
      if (taken > 0 && blocks + whole > MAX_BATCH_BLOCKS) break;
      blocks += whole;
    }
    if (taken === this.pending.length) {
      batch.entries = this.pending;
      this.pending = [];
    } else {
      batch.entries = this.pending.slice(0, taken);
      this.pending = this.pending.slice(taken);
    }
    for (const entry of batch.entries) {
      const { request } = entry;
      if (request.command !== IoCommand.Write) continue;
      entry.reducedFirst = batch.blocks.length;
      const [first, end] = wholeBlocks(request);
      for (let lba = first; lba < end; lba++) {
        const at = lba * BLOCK_BYTES - request.offsetBytes;
        batch.blocks.push(request.data!.subarray(at, at + BLOCK_BYTES));
      }
    }
    this.queue.push(batch);
    this.reduce(batch);
  }

  private reduce(batch: Batch): void {
    const count = batch.blocks.length;
    if (count === 0) {
      batch.ready = true;
      return;
    }
    const reduced = new ReducedBlocks(count);
    reduced.blocks = batch.blocks;
    batch.reduced = reduced;
    const pool = this.array.reducer;
    const settings = this.array.reduceSettings;
    const forced = this.options.workerMinBlocks === 0; // tests: every batch through the worker
    const worthIt = count >= Math.max(this.options.workerMinBlocks, WORKER_MIN_BLOCKS) && this.compressibleShare > 0.5 && this.mainThreadBusy();
    if (pool === null || !(forced || worthIt)) {
      // Stored forms are computed when the write path decides to store a block (dedup hits never).
      reduceInline(batch.blocks, reduced, 0, settings, false);
      batch.ready = true;
      return;
    }
    pool.submit({
      blocks: batch.blocks,
      out: reduced,
      first: 0,
      done: (error) => {
        // A pool that failed (a worker died, or it is closing) leaves the work to this thread.
        if (error !== null) reduceInline(batch.blocks, reduced, 0, settings);
        batch.ready = true;
        this.pump();
      },
    });
  }

  /** Learns from an applied batch how costly its data was to reduce. */
  private learn(results: ReducedBlocks): void {
    const data = results.storedCount;
    if (data > 0) this.compressibleShare += (results.compressedCount / data - this.compressibleShare) * Math.min(1, data / 64);
  }

  /** Whether the main thread was busy (event-loop utilization) in the last interval. */
  private mainThreadBusy(): boolean {
    const now = performance.now();
    if (now - this.utilizationAtMs >= UTILIZATION_INTERVAL_MS) {
      const mark = performance.eventLoopUtilization();
      this.utilization = performance.eventLoopUtilization(mark, this.utilizationMark).utilization;
      this.utilizationMark = mark;
      this.utilizationAtMs = now;
    }
    return this.utilization > WORKER_WHEN_BUSY;
  }

  private pump(): void {
    while (!this.waiting && this.queue.length > 0) {
      const head = this.queue[0]!;
      if (!head.ready) return;
      const wait = head.exclusive !== null ? head.exclusive() : this.runBatch(head);
      if (wait !== null) {
        this.waiting = true;
        void wait.then(() => {
          if (head.exclusive !== null) this.queue.shift();
          this.waiting = false;
          this.pump();
        });
        return;
      }
      this.queue.shift();
    }
  }

  /** Applies the batch from its cursor on; a promise when it must wait (then it is run again). */
  private runBatch(batch: Batch): Promise<void> | null {
    // Acknowledged data waits in block buffers until programmed: a slow disk must not grow them.
    if (this.array.ftl.programsBacklogged) return this.array.ftl.drainPrograms();
    const release = this.array.holdEvictions();
    const slicer = this.slicer;
    slicer.restart();
    try {
      while (batch.cursor < batch.entries.length) {
        if (slicer.due()) return slicer.nextTurn();
        const entry = batch.entries[batch.cursor]!;
        const wait = this.runEntry(batch, entry);
        if (wait !== null) return wait;
        batch.cursor += 1;
      }
    } finally {
      release();
    }
    for (const unpin of batch.unpins.splice(0)) unpin();
    if (batch.reduced !== null) this.learn(batch.reduced);
    if (batch.durable.length > 0) {
      const durable = batch.durable;
      this.array.commit(true).then(
        () => durable.forEach((entry) => entry.request.done(entry.request, null)),
        (error: unknown) => durable.forEach((entry) => entry.request.done(entry.request, error)),
      );
    }
    this.array.maybeCommit();
    return null;
  }

  /** Runs one request; a promise when the batch must wait before running it (again). */
  private runEntry(batch: Batch, entry: Entry): Promise<void> | null {
    const { request, volume } = entry;
    switch (request.command) {
      case IoCommand.Flush:
        this.array.commit(true).then(
          () => request.done(request, null),
          (error: unknown) => request.done(request, error),
        );
        return null;
      case IoCommand.Trim:
      case IoCommand.WriteZeroes:
        // Runs in its place; the batch goes on after it.
        return volume.applyUnmapRequest(request).then(
          () => this.finish(batch, entry),
          (error: unknown) => request.done(request, error),
        ).then(() => {
          batch.cursor += 1;
        });
      default:
        break;
    }
    let outcome;
    try {
      outcome = volume.applyChange(ChangeMode.Data, request.offsetBytes, request.lengthBytes, request.data, batch.reduced, entry.reducedFirst);
    } catch (error) {
      request.done(request, error);
      return null;
    }
    if (outcome === null) {
      volume.countWrite(request.lengthBytes);
      this.finish(batch, entry);
      return null;
    }
    if ('missing' in outcome) return this.array.loadMissing(outcome.missing).then((unpin) => void batch.unpins.push(unpin), (error: unknown) => this.fail(batch, entry, error));
    return this.array.ftl.ensureHostSpace(outcome.spaceBytes).catch((error: unknown) => this.fail(batch, entry, error));
  }

  private finish(batch: Batch, entry: Entry): void {
    if (entry.request.fua) batch.durable.push(entry);
    else entry.request.done(entry.request, null);
  }

  /** The request cannot be run (NO_SPACE, a failed load): it fails and the batch moves past it. */
  private fail(batch: Batch, entry: Entry, error: unknown): void {
    if (!isStorageError(error)) this.array.logger.error('request failed with an unexpected error', { error: (error as Error).message });
    entry.request.done(entry.request, error);
    batch.cursor += 1;
  }
}

/** The whole 4 KiB blocks a request covers: [first, end). */
function wholeBlocks(request: IoRequest): [number, number] {
  return [Math.ceil(request.offsetBytes / BLOCK_BYTES), Math.floor((request.offsetBytes + request.lengthBytes) / BLOCK_BYTES)];
}
