/**
 * Worker thread of the reduction pool: for a batch of 4 KiB blocks it detects patterns, computes
 * SHA-256 fingerprints and compresses, so that this CPU work runs on the second core while the
 * main thread serves the protocol and the metadata. Pure computation, no I/O.
 *
 * Message in:  { id, blocks: ArrayBuffer (count x 4096 bytes), count, codec, fingerprint }
 * Message out: { id, patterns: Uint32Array (count x 3: flag, high, low), fingerprints: ArrayBuffer
 *                (count x 32), codecs: Uint8Array, lengths: Uint32Array, stored: ArrayBuffer }
 */
import { parentPort } from 'node:worker_threads';
import { compressBlock, type Codec } from './codec.js';
import { sha256Fingerprint } from './fingerprint.js';
import { detectPattern } from './pattern.js';

export interface ReduceRequest {
  id: number;
  blocks: ArrayBuffer;
  count: number;
  codec: Codec;
  fingerprint: boolean;
}

export interface ReduceResponse {
  id: number;
  patterns: Uint32Array;
  fingerprints: ArrayBuffer;
  codecs: Uint8Array;
  lengths: Uint32Array;
  stored: ArrayBuffer;
}

const BLOCK_BYTES = 4096;

export function reduceBatch(request: ReduceRequest): ReduceResponse {
  const { count } = request;
  const patterns = new Uint32Array(count * 3);
  const fingerprints = Buffer.alloc(count * 32);
  const codecs = new Uint8Array(count);
  const lengths = new Uint32Array(count);
  const pieces: Buffer[] = [];
  for (let i = 0; i < count; i++) {
    const block = Buffer.from(request.blocks, i * BLOCK_BYTES, BLOCK_BYTES);
    const pattern = detectPattern(block);
    if (pattern !== null) {
      patterns.set([1, pattern.high, pattern.low], i * 3);
      continue;
    }
    if (request.fingerprint) sha256Fingerprint(block).copy(fingerprints, i * 32);
    const { stored, codec } = compressBlock(block, request.codec);
    codecs[i] = codec;
    lengths[i] = stored.length;
    // A block stored raw is the caller's own bytes: only compressed forms travel back.
    if (codec !== 0) pieces.push(stored);
  }
  const stored = Buffer.concat(pieces);
  return { id: request.id, patterns, fingerprints: toArrayBuffer(fingerprints), codecs, lengths, stored: toArrayBuffer(stored) };
}

function toArrayBuffer(buffer: Buffer): ArrayBuffer {
  if (buffer.byteOffset === 0 && buffer.byteLength === buffer.buffer.byteLength) return buffer.buffer as ArrayBuffer;
  return buffer.buffer.slice(buffer.byteOffset, buffer.byteOffset + buffer.byteLength) as ArrayBuffer;
}

parentPort?.on('message', (request: ReduceRequest) => {
  const response = reduceBatch(request);
  parentPort!.postMessage(response, [response.fingerprints, response.stored, response.patterns.buffer as ArrayBuffer, response.codecs.buffer as ArrayBuffer, response.lengths.buffer as ArrayBuffer]);
});
