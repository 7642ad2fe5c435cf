/**
 * The reduction pool: pattern detection, SHA-256 and compression of whole 4 KiB blocks on worker
 * threads, so both cores work and the event loop keeps serving.
 *
 * Blocks submitted in the same turn of the event loop (many requests at a high queue depth) go to
 * a worker as one message; workers take batches in turn. The queue is bounded: at most
 * `maxQueuedBlocks` blocks may wait or run, and a caller beyond that waits for room, which in turn
 * stops its connection from reading more requests.
 *
 * Blocks go to the workers through a ring of slots in shared memory (reduction-worker.ts has the
 * layout): a batch takes contiguous slots, its blocks are copied in, and the slots are free again
 * once the batch's results have been copied out, oldest batch first.
 */
import { Worker } from 'node:worker_threads';
import { StorageError } from '../common/errors.js';
import type { Codec } from './codec.js';
import { META_WORDS, SLOT_BYTES, SharedLayout, type ReduceRequest, type ReduceResponse } from './reduction-worker.js';
import type { Pattern } from './pattern.js';

export interface ReducedBlock {
  pattern: Pattern | null;
  fingerprint: Buffer | null;
  reduced: { stored: Buffer; codec: Codec } | null;
}

interface Pending {
  blocks: Buffer[];
  resolve: (results: ReducedBlock[]) => void;
  reject: (error: unknown) => void;
}

interface Batch {
  first: number;
  count: number;
  pendings: Pending[];
  done: boolean;
}

/** Shared slots: 2 x 4 KiB + 52 bytes each, so 2048 slots take 16.1 MiB. */
const DEFAULT_SLOTS = 2048;

export class ReductionPool {
  private readonly workers: Worker[] = [];
  private readonly idle: Worker[] = [];
  private readonly inFlight = new Map<number, Batch>();
  /** Batches holding slots, oldest first; slots free up from the front. */
  private readonly ring: Batch[] = [];
  private head = 0;
  private readonly layout: SharedLayout;
  private queue: Pending[] = [];
  private readonly waitingForRoom: Array<() => void> = [];
  private queuedBlocks = 0;
  private nextId = 1;
  private flushScheduled = false;
  private closed = false;

  constructor(
    workerCount: number,
    private readonly codec: Codec,
    private readonly fingerprint: boolean,
    private readonly maxQueuedBlocks = 16384,
    private readonly maxBatchBlocks = 256,
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

  /** Reduces whole blocks (each exactly 4 KiB), in order. */
  async reduce(blocks: Buffer[]): Promise<ReducedBlock[]> {
    if (blocks.length === 0) return [];
    if (this.closed) throw StorageError.shuttingDown('the reduction pool is closed');
    if (blocks.length > this.maxBatchBlocks) {
      // A batch must fit in the ring of slots: big writes go as several.
      const parts: Promise<ReducedBlock[]>[] = [];
      for (let at = 0; at < blocks.length; at += this.maxBatchBlocks) parts.push(this.reduce(blocks.slice(at, at + this.maxBatchBlocks)));
      return (await Promise.all(parts)).flat();
    }
    while (this.queuedBlocks > 0 && this.queuedBlocks + blocks.length > this.maxQueuedBlocks) {
      await new Promise<void>((resolve) => this.waitingForRoom.push(resolve));
    }
    this.queuedBlocks += blocks.length;
    return new Promise((resolve, reject) => {
      this.queue.push({ blocks, resolve, reject });
      if (!this.flushScheduled) {
        this.flushScheduled = true;
        setImmediate(() => this.dispatch());
      }
    });
  }

  private dispatch(): void {
    this.flushScheduled = false;
    while (this.queue.length > 0 && this.idle.length > 0) {
      let count = 0;
      let taken = 0;
      while (taken < this.queue.length && (taken === 0 || count + this.queue[taken]!.blocks.length <= this.maxBatchBlocks)) {
        count += this.queue[taken]!.blocks.length;
        taken += 1;
      }
      const first = this.allocateSlots(count);
      if (first < 0) return; // the ring is full: a completion calls dispatch again
      const pendings = this.queue.splice(0, taken);
      let slot = first;
      for (const pending of pendings) {
        for (const block of pending.blocks) {
          block.copy(this.layout.input, slot * SLOT_BYTES);
          slot += 1;
        }
      }
      const batch: Batch = { first, count, pendings, done: false };
      this.ring.push(batch);
      const id = this.nextId++;
      this.inFlight.set(id, batch);
      const request: ReduceRequest = { id, first, count, codec: this.codec, fingerprint: this.fingerprint };
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
    // Results are copied out of the slots, which are reused as soon as the batch is released.
    let compressedBytes = 0;
    for (let slot = batch.first; slot < batch.first + batch.count; slot++) {
      if (meta[slot * META_WORDS] === 0 && meta[slot * META_WORDS + 3] !== 0) compressedBytes += meta[slot * META_WORDS + 4]!;
    }
    const stored = Buffer.allocUnsafe(compressedBytes);
    const fingerprints = this.fingerprint ? Buffer.from(this.layout.fingerprints.subarray(batch.first * 32, (batch.first + batch.count) * 32)) : null;
    let slot = batch.first;
    let storedAt = 0;
    for (const pending of batch.pendings) {
      const results: ReducedBlock[] = [];
      for (let i = 0; i < pending.blocks.length; i++, slot++) {
        const at = slot * META_WORDS;
        if (meta[at] === 1) {
          results.push({ pattern: { high: meta[at + 1]!, low: meta[at + 2]! }, fingerprint: null, reduced: null });
          continue;
        }
        const codec = meta[at + 3]! as Codec;
        const length = meta[at + 4]!;
        let reducedBytes: Buffer;
        if (codec === 0) {
          reducedBytes = pending.blocks[i]!; // the raw form is the caller's own block
        } else {
          this.layout.output.copy(stored, storedAt, slot * SLOT_BYTES, slot * SLOT_BYTES + length);
          reducedBytes = stored.subarray(storedAt, storedAt + length);
          storedAt += length;
        }
        const index = slot - batch.first;
        results.push({ pattern: null, fingerprint: fingerprints === null ? null : fingerprints.subarray(index * 32, index * 32 + 32), reduced: { stored: reducedBytes, codec } });
      }
      this.release(pending.blocks.length);
      pending.resolve(results);
    }
    batch.done = true;
    while (this.ring.length > 0 && this.ring[0]!.done) this.ring.shift();
    this.dispatch();
  }

  private release(count: number): void {
    this.queuedBlocks -= count;
    for (const resolve of this.waitingForRoom.splice(0)) resolve();
  }

  private failAll(error: unknown): void {
    for (const batch of this.inFlight.values()) for (const pending of batch.pendings) pending.reject(error);
    for (const pending of this.queue) pending.reject(error);
    this.inFlight.clear();
    this.ring.length = 0;
    this.queue = [];
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.failAll(StorageError.shuttingDown('the reduction pool is closed'));
    await Promise.all(this.workers.map((worker) => worker.terminate()));
  }
}
