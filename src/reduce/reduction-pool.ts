/**
 * The reduction pool: pattern detection, fingerprints, compression and record checksums of whole
 * 4 KiB blocks on worker threads (reduce-block.ts), so both cores work and the event loop keeps
 * serving.
 *
 * Jobs submitted in the same turn of the event loop (the writes of many requests, several
 * connections) go to a worker as one message; workers take batches in turn; a job larger than a
 * batch is split, and completes when its last part does. Results are written straight into the
 * job's `ReducedBlocks`, and its callback is called once, with no promise per job.
 *
 * Blocks go to the workers through a ring of slots in shared memory (reduction-worker.ts has the
 * layout): a batch takes contiguous slots, its blocks are copied in, and the slots are free again
 * once the batch's results have been copied out, oldest batch first.
 */
import { Worker } from 'node:worker_threads';
import { StorageError } from '../common/errors.js';
import type { Codec } from './codec.js';
import { FINGERPRINT_BYTES } from './fingerprint.js';
import type { ReducedBlocks } from './reduce-block.js';
import { META_WORDS, SLOT_BYTES, SharedLayout, type ReduceRequest, type ReduceResponse } from './reduction-worker.js';

export interface ReductionJob {
  blocks: readonly Buffer[];
  out: ReducedBlocks;
  /** Results of `blocks[i]` go to `out` at `first + i`. */
  first: number;
  /** Called once: with null when every result is in place, or with the error. */
  done(error: unknown): void;
}

/** A contiguous part of a job, as it sits in the ring. */
interface Part {
  job: ReductionJob;
  from: number;
  count: number;
}

interface Batch {
  first: number;
  count: number;
  parts: Part[];
  done: boolean;
}

/** Shared slots: 2 x 4 KiB + 32 bytes each, so 2048 slots take 16.1 MiB. */
const DEFAULT_SLOTS = 2048;

export class ReductionPool {
  private readonly workers: Worker[] = [];
  private readonly idle: Worker[] = [];
  private readonly inFlight = new Map<number, Batch>();
  /** Batches holding slots, oldest first; slots free up from the front. */
  private readonly ring: Batch[] = [];
  private head = 0;
  private readonly layout: SharedLayout;
  private queue: Part[] = [];
  private readonly partsLeft = new Map<ReductionJob, number>();
  private queuedBlocksCount = 0;
  private nextId = 1;
  private flushScheduled = false;
  private closed = false;
  private readonly maxBatchBlocks: number;

  constructor(
    workerCount: number,
    private readonly codec: Codec,
    private readonly key: bigint | null,
    private readonly recordSeed: bigint,
    maxBatchBlocks = 256,
    slots = DEFAULT_SLOTS,
  ) {
    this.layout = new SharedLayout(new SharedArrayBuffer(SharedLayout.bytesFor(slots)), slots);
    this.maxBatchBlocks = Math.min(maxBatchBlocks, slots);
    for (let i = 0; i < workerCount; i++) {
      const worker = new Worker(new URL('./reduction-worker.js', import.meta.url), { workerData: { memory: this.layout.memory, slots } });
      worker.on('message', (response: ReduceResponse) => this.onResponse(worker, response));
      worker.on('error', (error) => this.failAll(error));
      // An idle worker must not keep the process alive; a busy one must (see dispatch).
      // unref() comes after the listeners: adding one refs the worker's port again.
      worker.unref();
      this.workers.push(worker);
      this.idle.push(worker);
    }
  }

  /** Blocks submitted and not yet reduced. */
  get queuedBlocks(): number {
    return this.queuedBlocksCount;
  }

  /** True when no worker is busy and nothing waits. */
  get isIdle(): boolean {
    return this.queuedBlocksCount === 0;
  }

  submit(job: ReductionJob): void {
    if (this.closed) {
      job.done(StorageError.shuttingDown('the reduction pool is closed'));
      return;
    }
    if (job.blocks.length === 0) {
      job.done(null);
      return;
    }
    let parts = 0;
    for (let from = 0; from < job.blocks.length; from += this.maxBatchBlocks) {
      this.queue.push({ job, from, count: Math.min(this.maxBatchBlocks, job.blocks.length - from) });
      parts += 1;
    }
    this.partsLeft.set(job, parts);
    this.queuedBlocksCount += job.blocks.length;
    if (!this.flushScheduled) {
      this.flushScheduled = true;
      setImmediate(() => this.dispatch());
    }
  }

  private dispatch(): void {
    this.flushScheduled = false;
    while (this.queue.length > 0 && this.idle.length > 0) {
      let count = 0;
      let taken = 0;
      while (taken < this.queue.length && (taken === 0 || count + this.queue[taken]!.count <= this.maxBatchBlocks)) {
        count += this.queue[taken]!.count;
        taken += 1;
      }
      const first = this.allocateSlots(count);
      if (first < 0) return; // the ring is full: a completion calls dispatch again
      const parts = this.queue.splice(0, taken);
      let slot = first;
      for (const part of parts) {
        for (let i = part.from; i < part.from + part.count; i++) {
          part.job.blocks[i]!.copy(this.layout.input, slot * SLOT_BYTES);
          slot += 1;
        }
      }
      const batch: Batch = { first, count, parts, done: false };
      this.ring.push(batch);
      const id = this.nextId++;
      this.inFlight.set(id, batch);
      const request: ReduceRequest = { id, first, count, codec: this.codec, key: this.key, recordSeed: this.recordSeed };
      const worker = this.idle.pop()!;
      worker.ref();
      worker.postMessage(request);
    }
  }

  /** The first of `count` contiguous free slots, or -1 when the ring has no such run now. */
  private allocateSlots(count: number): number {
    const slots = this.layout.slots;
    if (this.ring.length === 0) this.head = 0;
    const oldest = this.ring.length > 0 ? this.ring[0]!.first : slots;
    let first = -1;
    if (this.ring.length === 0 || this.head > oldest) {
      // Free: [head, slots) and, wrapping, [0, oldest).
      if (this.head + count <= slots) first = this.head;
      else if (count <= oldest && this.ring.length > 0) first = 0;
    } else if (this.head + count <= oldest) {
      first = this.head; // wrapped: free is [head, oldest)
    }
    if (first >= 0) this.head = first + count;
    return first;
  }

  private onResponse(worker: Worker, response: ReduceResponse): void {
    const batch = this.inFlight.get(response.id);
    if (batch === undefined) return; // failed already (the pool was closed)
    this.inFlight.delete(response.id);
    worker.unref();
    this.idle.push(worker);
    const { meta } = this.layout;
    // Compressed forms are copied out of the slots (which are reused once the batch is released)
    // into one buffer for the whole batch.
    let compressedBytes = 0;
    for (let slot = batch.first; slot < batch.first + batch.count; slot++) {
      if (meta[slot * META_WORDS] === 0 && meta[slot * META_WORDS + 3] !== 0) compressedBytes += meta[slot * META_WORDS + 4]!;
    }
    const stored = compressedBytes > 0 ? Buffer.allocUnsafe(compressedBytes) : null;
    let storedAt = 0;
    let slot = batch.first;
    const finished: ReductionJob[] = [];
    for (const part of batch.parts) {
      const { out } = part.job;
      this.layout.fingerprints.copy(out.fingerprints, (part.job.first + part.from) * FINGERPRINT_BYTES, slot * FINGERPRINT_BYTES, (slot + part.count) * FINGERPRINT_BYTES);
      for (let i = 0; i < part.count; i++, slot++) {
        const index = part.job.first + part.from + i;
        const at = slot * META_WORDS;
        out.pattern[index] = meta[at]!;
        out.patternHigh[index] = meta[at + 1]!;
        out.patternLow[index] = meta[at + 2]!;
        if (meta[at] !== 0) continue;
        let compressed: Buffer | null = null;
        if (meta[at + 3] !== 0) {
          const length = meta[at + 4]!;
          this.layout.output.copy(stored!, storedAt, slot * SLOT_BYTES, slot * SLOT_BYTES + length);
          compressed = stored!.subarray(storedAt, storedAt + length);
          storedAt += length;
        }
        out.setStored(index, meta[at + 3]!, compressed, meta[at + 5]!);
      }
      this.queuedBlocksCount -= part.count;
      const left = this.partsLeft.get(part.job)! - 1;
      if (left > 0) this.partsLeft.set(part.job, left);
      else {
        this.partsLeft.delete(part.job);
        finished.push(part.job);
      }
    }
    batch.done = true;
    while (this.ring.length > 0 && this.ring[0]!.done) this.ring.shift();
    this.dispatch();
    for (const job of finished) job.done(null);
  }

  private failAll(error: unknown): void {
    const jobs = new Set<ReductionJob>();
    for (const batch of this.inFlight.values()) for (const part of batch.parts) jobs.add(part.job);
    for (const part of this.queue) jobs.add(part.job);
    this.inFlight.clear();
    this.ring.length = 0;
    this.queue = [];
    this.partsLeft.clear();
    this.queuedBlocksCount = 0;
    for (const job of jobs) job.done(error);
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.failAll(StorageError.shuttingDown('the reduction pool is closed'));
    await Promise.all(this.workers.map((worker) => worker.terminate()));
  }
}
