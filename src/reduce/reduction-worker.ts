/**
 * Worker thread of the reduction pool: for a batch of 4 KiB blocks it detects patterns, computes
 * fingerprints, compresses when that pays and checksums the stored form (reduce-block.ts), so that
 * this CPU work runs on the second core while the main thread serves the protocol and the
 * metadata. Pure computation, no I/O.
 *
 * Blocks and results travel through shared memory (see SharedLayout), and the messages only name
 * slots: a message carrying the blocks themselves cost the main thread about 10 µs per 4 KiB and
 * more for bigger batches (measured), one that names slots about 3.6 µs.
 *
 * Message in:  { id, first, count, codec, key, recordSeed }: reduce the blocks in slots
 *              first..first+count, fingerprinting with the keyed xxHash64 `key` (null: dedup is
 *              off) and checksumming records with `recordSeed`
 * Message out: { id } once every slot's results are in place.
 */
import { parentPort, workerData } from 'node:worker_threads';
import type { Codec } from './codec.js';
import { FINGERPRINT_BYTES, keyedFingerprint } from './fingerprint.js';
import { ReducedBlocks, reduceInline } from './reduce-block.js';

export const SLOT_BYTES = 4096;
/** Per slot: pattern flag, pattern high word, pattern low word, codec, stored length, checksum. */
export const META_WORDS = 6;

export interface ReduceRequest {
  id: number;
  first: number;
  count: number;
  codec: Codec;
  key: bigint | null;
  recordSeed: bigint;
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
    this.fingerprints = Buffer.from(memory, 2 * slots * SLOT_BYTES, slots * FINGERPRINT_BYTES);
    this.meta = new Uint32Array(memory, 2 * slots * SLOT_BYTES + slots * FINGERPRINT_BYTES, slots * META_WORDS);
  }

  static bytesFor(slots: number): number {
    return 2 * slots * SLOT_BYTES + slots * FINGERPRINT_BYTES + slots * META_WORDS * 4;
  }
}

const fingerprintsByKey = new Map<bigint, ReturnType<typeof keyedFingerprint>>();

export function reduceSlots(layout: SharedLayout, request: ReduceRequest): void {
  const blocks: Buffer[] = [];
  for (let slot = request.first; slot < request.first + request.count; slot++) blocks.push(layout.input.subarray(slot * SLOT_BYTES, (slot + 1) * SLOT_BYTES));
  let fingerprint = null;
  if (request.key !== null) {
    fingerprint = fingerprintsByKey.get(request.key) ?? keyedFingerprint(request.key);
    fingerprintsByKey.set(request.key, fingerprint);
  }
  const out = new ReducedBlocks(request.count);
  reduceInline(blocks, out, 0, { codec: request.codec, fingerprint, recordSeed: request.recordSeed });
  const { meta } = layout;
  for (let i = 0; i < request.count; i++) {
    const slot = request.first + i;
    const at = slot * META_WORDS;
    meta[at] = out.pattern[i]!;
    meta[at + 1] = out.patternHigh[i]!;
    meta[at + 2] = out.patternLow[i]!;
    meta[at + 3] = out.codec[i]!;
    const compressed = out.compressed[i];
    meta[at + 4] = compressed === null ? SLOT_BYTES : compressed.length;
    meta[at + 5] = out.checksum[i]!;
    // A block stored raw is the caller's own bytes: only compressed forms are written back.
    if (compressed !== null) compressed.copy(layout.output, slot * SLOT_BYTES);
  }
  out.fingerprints.copy(layout.fingerprints, request.first * FINGERPRINT_BYTES);
}

if (parentPort !== null && workerData !== null && typeof workerData === 'object' && 'memory' in workerData) {
  const layout = new SharedLayout(workerData.memory as SharedArrayBuffer, workerData.slots as number);
  parentPort.on('message', (request: ReduceRequest) => {
    reduceSlots(layout, request);
    parentPort!.postMessage({ id: request.id } satisfies ReduceResponse);
  });
}
