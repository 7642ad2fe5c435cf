/**
 * Worker thread of the reduction pool: for a batch of 4 KiB blocks it detects patterns, computes
 * SHA-256 fingerprints and compresses, so that this CPU work runs on the second core while the
 * main thread serves the protocol and the metadata. Pure computation, no I/O.
 *
 * Blocks and results travel through shared memory (see SharedLayout), and the messages only name
 * slots: a message carrying the blocks themselves cost the main thread about 10 µs per 4 KiB and
 * more for bigger batches (measured), one that names slots about 3.6 µs.
 *
 * Message in:  { id, first, count, codec, fingerprint }: reduce the blocks in slots first..first+count
 * Message out: { id } once every slot's results are in place.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { compressBlock, type Codec } from './codec.js';
import { sha256Fingerprint } from './fingerprint.js';
import { detectPattern } from './pattern.js';

export const SLOT_BYTES = 4096;
/** Per slot: pattern flag, pattern high word, pattern low word, codec, stored length. */
export const META_WORDS = 5;

export interface ReduceRequest {
  id: number;
  first: number;
  count: number;
  codec: Codec;
  fingerprint: boolean;
}

export interface ReduceResponse {
  id: number;
}

/** Views of the shared memory: one input block, one output block, one fingerprint per slot. */
export class SharedLayout {
  readonly input: Buffer;
  readonly output: Buffer;
  readonly fingerprints: Buffer;
  readonly meta: Uint32Array;

  constructor(
    readonly memory: SharedArrayBuffer,
    readonly slots: number,
  ) {
    this.input = Buffer.from(memory, 0, slots * SLOT_BYTES);
    this.output = Buffer.from(memory, slots * SLOT_BYTES, slots * SLOT_BYTES);
    this.fingerprints = Buffer.from(memory, 2 * slots * SLOT_BYTES, slots * 32);
    this.meta = new Uint32Array(memory, 2 * slots * SLOT_BYTES + slots * 32, slots * META_WORDS);
  }

  static bytesFor(slots: number): number {
    return 2 * slots * SLOT_BYTES + slots * 32 + slots * META_WORDS * 4;
  }
}

export function reduceSlots(layout: SharedLayout, request: ReduceRequest): void {
  const { meta } = layout;
  for (let slot = request.first; slot < request.first + request.count; slot++) {
    const block = layout.input.subarray(slot * SLOT_BYTES, (slot + 1) * SLOT_BYTES);
    const at = slot * META_WORDS;
    const pattern = detectPattern(block);
    if (pattern !== null) {
      meta[at] = 1;
      meta[at + 1] = pattern.high;
      meta[at + 2] = pattern.low;
      continue;
    }
    meta[at] = 0;
    if (request.fingerprint) sha256Fingerprint(block).copy(layout.fingerprints, slot * 32);
    const { stored, codec } = compressBlock(block, request.codec);
    meta[at + 3] = codec;
    meta[at + 4] = stored.length;
    // A block stored raw is the caller's own bytes: only compressed forms are written back.
    if (codec !== 0) stored.copy(layout.output, slot * SLOT_BYTES);
  }
}

if (parentPort !== null && workerData !== null && typeof workerData === 'object' && 'memory' in workerData) {
  const layout = new SharedLayout(workerData.memory as SharedArrayBuffer, workerData.slots as number);
  parentPort.on('message', (request: ReduceRequest) => {
    reduceSlots(layout, request);
    parentPort!.postMessage({ id: request.id } satisfies ReduceResponse);
  });
}
