/**
 * The reduction pool: pattern detection, SHA-256 and compression of whole 4 KiB blocks on worker
 * threads, so both cores work and the event loop keeps serving.
 *
 * Blocks submitted in the same turn of the event loop (many requests at a high queue depth) go to
 * a worker as one message; workers take batches in turn. The queue is bounded: at most
 * `maxQueuedBlocks` blocks may wait or run, and a caller beyond that waits for room, which in turn
 * stops its connection from reading more requests.
 */
import { Worker } from 'node:worker_threads';
import { StorageError } from '../common/errors.js';
import type { Codec } from './codec.js';
import type { ReduceRequest, ReduceResponse } from './reduction-worker.js';
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

const BLOCK_BYTES = 4096;

export class ReductionPool {
  private readonly workers: Worker[] = [];
  private readonly idle: Worker[] = [];
  private readonly inFlight = new Map<number, Pending[]>();
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
  ) {
    for (let i = 0; i < workerCount; i++) {
      const worker = new Worker(new URL('./reduction-worker.js', import.meta.url));
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
      const batch: Pending[] = [];
      let count = 0;
      while (this.queue.length > 0 && (batch.length === 0 || count + this.queue[0]!.blocks.length <= this.maxBatchBlocks)) {
        const next = this.queue.shift()!;
        batch.push(next);
        count += next.blocks.length;
      }
      const data = Buffer.allocUnsafe(count * BLOCK_BYTES);
      let at = 0;
      for (const pending of batch) for (const block of pending.blocks) at += block.copy(data, at);
      const id = this.nextId++;
      this.inFlight.set(id, batch);
      const request: ReduceRequest = { id, blocks: data.buffer.slice(data.byteOffset, data.byteOffset + data.byteLength) as ArrayBuffer, count, codec: this.codec, fingerprint: this.fingerprint };
      const worker = this.idle.pop()!;
      worker.ref();
      worker.postMessage(request, [request.blocks]);
    }
  }

  private onResponse(worker: Worker, response: ReduceResponse): void {
    const batch = this.inFlight.get(response.id);
    if (batch === undefined) return; // failed already (the pool was closed)
    this.inFlight.delete(response.id);
    worker.unref();
    this.idle.push(worker);
    const fingerprints = Buffer.from(response.fingerprints);
    const stored = Buffer.from(response.stored);
    let index = 0;
    let storedAt = 0;
    for (const pending of batch) {
      const results: ReducedBlock[] = [];
      for (let i = 0; i < pending.blocks.length; i++, index++) {
        if (response.patterns[index * 3] === 1) {
          results.push({ pattern: { high: response.patterns[index * 3 + 1]!, low: response.patterns[index * 3 + 2]! }, fingerprint: null, reduced: null });
          continue;
        }
        const length = response.lengths[index]!;
        const codec = response.codecs[index]! as Codec;
        // The raw form is the caller's own block; compressed forms come from the worker.
        const reducedBytes = codec === 0 ? pending.blocks[i]! : stored.subarray(storedAt, storedAt + length);
        if (codec !== 0) storedAt += length;
        results.push({ pattern: null, fingerprint: this.fingerprint ? fingerprints.subarray(index * 32, index * 32 + 32) : null, reduced: { stored: reducedBytes, codec } });
      }
      this.release(pending.blocks.length);
      pending.resolve(results);
    }
    this.dispatch();
  }

  private release(count: number): void {
    this.queuedBlocks -= count;
    for (const resolve of this.waitingForRoom.splice(0)) resolve();
  }

  private failAll(error: unknown): void {
    for (const batch of this.inFlight.values()) for (const pending of batch) pending.reject(error);
    for (const pending of this.queue) pending.reject(error);
    this.inFlight.clear();
    this.queue = [];
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.failAll(StorageError.shuttingDown('the reduction pool is closed'));
    await Promise.all(this.workers.map((worker) => worker.terminate()));
  }
}
