/**
 * The array's I/O scheduler: every WRITE, TRIM, WRITE_ZEROES and FLUSH of every volume passes
 * through one FIFO, so requests that change data take effect in the order they were submitted,
 * without a lock or a promise per request.
 *
 * Requests submitted in one turn of the event loop (what one socket read, or several connections'
 * reads, brought) form a batch. Its whole 4 KiB blocks are reduced together (reduce-block.ts):
 * on the main thread when that costs less than handing the batch to a worker, or on the reduction
 * workers with one message for the whole batch. A hand-off costs the main thread about
 * `WORKER_HANDOFF_US` on these machines (posting the message, copying into shared slots, the
 * reply's event), while reducing a random 4 KiB block inline costs about 3 µs and a compressible
 * one 8 to 10: so a batch goes to a worker when its blocks times the measured inline cost per
 * block exceeds the hand-off. Small batches of random data stay inline; big or compressible ones
 * use the second core. Batches then run strictly in order: each request is planned and applied synchronously by
 * `Volume.applyChange`; when that needs pages or dedup entries that are not cached, or GC to make
 * room, the batch waits for them (later batches wait behind it) and the request is planned again.
 * TRIM and WRITE_ZEROES, which may cover gigabytes, run as asynchronous steps in their place.
 *
 * Completion: a request is done as soon as it is applied, except that FUA requests of a batch
 * share one commit after it, and a FLUSH is done when a commit started after every earlier request
 * was applied has finished (so it covers every write completed before the FLUSH arrived, on any
 * connection). Neither holds up later batches.
 *
 * Management operations that restructure maps (snapshot delete, restore, volume delete) run as an
 * exclusive step of the same FIFO (`runExclusive`): nothing is applied while they run.
 */
import { IoCommand, type IoRequest } from '../common/block-device.js';
import { isStorageError } from '../common/errors.js';
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
  /** Batches with fewer whole blocks than this are always reduced on the main thread. */
  workerMinBlocks: number;
}

export const DEFAULT_WORKER_MIN_BLOCKS = 2;
/** Main-thread cost of handing a batch to a reduction worker (measured on these machines). */
const WORKER_HANDOFF_US = 250;

export class IoScheduler {
  private pending: Entry[] = [];
  private scheduled = false;
  private readonly queue: Batch[] = [];
  /** The head batch waits for something asynchronous (a load, GC, an unmap, an exclusive step). */
  private waiting = false;
  /** Recent cost of reducing one block on this thread (moving average, µs). */
  private inlineUsPerBlock = 3;

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
    this.pending.push({ volume, request, reducedFirst: 0 });
    if (!this.scheduled) {
      this.scheduled = true;
      setImmediate(() => {
        this.scheduled = false;
        this.formBatch();
        this.pump();
      });
    }
  }

  /** Runs `work` once every request submitted before has been applied, and nothing else meanwhile. */
  runExclusive<T>(work: () => Promise<T>): Promise<T> {
    this.formBatch();
    return new Promise<T>((resolve, reject) => {
      const batch = new Batch();
      batch.ready = true;
      batch.exclusive = () => work().then(resolve, reject);
      this.queue.push(batch);
      this.pump();
    });
  }

  private formBatch(): void {
    if (this.pending.length === 0) return;
    const batch = new Batch();
    batch.entries = this.pending;
    this.pending = [];
    for (const entry of batch.entries) {
      const { request } = entry;
      if (request.command !== IoCommand.Write) continue;
      entry.reducedFirst = batch.blocks.length;
      const first = Math.ceil(request.offsetBytes / BLOCK_BYTES);
      const end = Math.floor((request.offsetBytes + request.lengthBytes) / BLOCK_BYTES);
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
    batch.reduced = reduced;
    const pool = this.array.reducer;
    const settings = this.array.reduceSettings;
    if (pool === null || count < this.options.workerMinBlocks || count * this.inlineUsPerBlock < WORKER_HANDOFF_US) {
      const started = performance.now();
      reduceInline(batch.blocks, reduced, 0, settings);
      const usPerBlock = ((performance.now() - started) * 1000) / count;
      this.inlineUsPerBlock += (usPerBlock - this.inlineUsPerBlock) * Math.min(1, count / 64);
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
    const release = this.array.holdEvictions();
    try {
      for (; batch.cursor < batch.entries.length; batch.cursor++) {
        const entry = batch.entries[batch.cursor]!;
        const wait = this.runEntry(batch, entry);
        if (wait !== null) return wait;
      }
    } finally {
      release();
    }
    for (const unpin of batch.unpins.splice(0)) unpin();
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
