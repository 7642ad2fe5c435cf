/**
 * Cost of each data-reduction stage, in microseconds per 4 KiB block, on this machine's main
 * thread (medians of several rounds): pattern detection, the keyed fingerprint (and SHA-256 for
 * comparison), the incompressibility sample (and both in the addon's one call), LZ4 and zstd compression of
 * text-like and random blocks, LZ4 decompression, the record checksum, the dedup index's lookup,
 * insert and removal for a unique overwrite, and a whole write through
 * an in-memory array (unique, duplicate and zero blocks) for comparison.
 *
 *   node build/scripts/stage-costs.js [--blocks 20000]
 */
import crypto from 'node:crypto';
import { silentLogger } from '../src/common/log.js';
import { hashAndSample } from '../src/common/native.js';
import { checksumOf } from '../src/ftl/page-format.js';
import { MemoryMetaStore } from '../src/meta/memory-store.js';
import { MemoryNand } from '../src/nand/memory-nand.js';
import { Codec, compressBlock, decompressBlock, looksIncompressible } from '../src/reduce/codec.js';
import { BloomFilter } from '../src/reduce/bloom-filter.js';
import { DedupIndex } from '../src/reduce/dedup-index.js';
import { keyedFingerprint } from '../src/reduce/fingerprint.js';
import { detectPattern } from '../src/reduce/pattern.js';
import { FlashArray } from '../src/volume/flash-array.js';

const B = 4096;

function textBlock(seed: number): Buffer {
  const out = Buffer.alloc(B);
  for (let at = 0; at < B; at += 64) out.write(`2026-11-22T03:${String(seed % 60).padStart(2, '0')} host${seed % 7} svc[${at}]: request ok id=${(seed * 7919 + at) % 100000}\n`.padEnd(64, ' '), at, 'latin1');
  return out;
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)]!;
}

function timePerBlock(blocks: Buffer[], work: (block: Buffer) => unknown, rounds = 5): number {
  const samples: number[] = [];
  for (let round = 0; round < rounds; round++) {
    const started = process.hrtime.bigint();
    for (const block of blocks) work(block);
    samples.push(Number(process.hrtime.bigint() - started) / 1000 / blocks.length);
  }
  return median(samples);
}

async function writeCost(kind: 'unique' | 'duplicate' | 'zero', count: number): Promise<number> {
  const geometry = { pageBytes: 4096, pagesPerEraseBlock: 64, eraseBlockCount: Math.ceil((count * 3) / 60) + 64, enduranceCycles: 100_000 };
  const array = await FlashArray.assemble('memory', new MemoryMetaStore(), new MemoryNand(geometry), silentLogger, { reductionWorkers: 0 }, true);
  const volume = await array.createVolume('v', count * 2 * B);
  const source = crypto.randomBytes(count * B);
  if (kind === 'duplicate') await volume.write(0, source, { fua: false });
  const offset = kind === 'duplicate' ? count * B : 0;
  const zero = Buffer.alloc(B);
  const started = process.hrtime.bigint();
  for (let i = 0; i < count; i++) await volume.write(offset + i * B, kind === 'zero' ? zero : source.subarray(i * B, (i + 1) * B), { fua: false });
  const microseconds = Number(process.hrtime.bigint() - started) / 1000 / count;
  array.abandon();
  return microseconds;
}

/**
 * The dedup index's share of a unique overwrite: a lookup (a miss), the insert of the new chunk and
 * the removal of the chunk it replaces, in a table of the default budget's size (256 MiB), filled
 * from fresh memory as an array's is: its random accesses are what the table's huge pages are for.
 */
function dedupCost(count: number): number {
  const index = new DedupIndex(new MemoryMetaStore(), new BloomFilter(32 * 1024 * 1024), 512 * 1024 * 1024);
  const fingerprints = crypto.randomBytes(8 * 2 * count);
  for (let i = 0; i < count; i++) index.insertAt(fingerprints, i * 8, i + 1);
  const started = process.hrtime.bigint();
  for (let i = 0; i < count; i++) {
    const at = (count + i) * 8;
    index.lookupAt(fingerprints, at);
    index.insertAt(fingerprints, at, count + i + 1);
    index.removeAt(fingerprints, i * 8, i + 1);
  }
  return Number(process.hrtime.bigint() - started) / 1000 / count;
}

async function main(): Promise<void> {
  const args = process.argv.slice(2);
  const index = args.indexOf('--blocks');
  const count = index >= 0 ? Number(args[index + 1]) : 20000;
  const random = Array.from({ length: count }, () => crypto.randomBytes(B));
  const text = Array.from({ length: count }, (_, i) => textBlock(i));
  const lz4Text = text.map((block) => compressBlock(block, Codec.Lz4).stored);
  const scratch = Buffer.alloc(8);
  const rows: Array<[string, number]> = [
    ['pattern detection (random block)', timePerBlock(random, detectPattern)],
    ['SHA-256 (node:crypto, for comparison)', timePerBlock(random, (block) => crypto.createHash('sha256').update(block).digest())],
    ['fingerprint (keyed xxHash64)', timePerBlock(random, keyedFingerprint(0x1234n))],
    ['incompressibility sample (random block)', timePerBlock(random, looksIncompressible)],
    ['fingerprint + sample, one addon call (the write path)', hashAndSample === null ? NaN : timePerBlock(random, (block) => hashAndSample!(block, 0x1234, 0x5678, scratch, 0))],
    ['LZ4 compress (text, ~2x)', timePerBlock(text, (block) => compressBlock(block, Codec.Lz4))],
    ['LZ4 compress (random: stored raw)', timePerBlock(random, (block) => compressBlock(block, Codec.Lz4))],
    ['zstd compress (text)', timePerBlock(text, (block) => compressBlock(block, Codec.Zstd))],
    ['LZ4 decompress (text)', timePerBlock(lz4Text, (stored) => decompressBlock(stored, Codec.Lz4, B))],
    ['record checksum (xxHash64, low 32 bits)', timePerBlock(random, checksumOf)],
    ['dedup index, unique overwrite (lookup + insert + remove)', dedupCost(Math.max(count, 200_000))],
    ['whole write, unique block (inline reduction)', await writeCost('unique', Math.min(count, 20000))],
    ['whole write, duplicate block', await writeCost('duplicate', Math.min(count, 20000))],
    ['whole write, zero block', await writeCost('zero', Math.min(count, 20000))],
  ];
  const width = Math.max(...rows.map(([name]) => name.length));
  process.stdout.write(`stage${' '.repeat(width - 5)}  µs per 4 KiB block (median of 5 rounds of ${count})\n`);
  for (const [name, value] of rows) process.stdout.write(`${name.padEnd(width)}  ${value.toFixed(2)}\n`);
}

if (process.argv[1]?.endsWith('stage-costs.js')) {
  main().catch((error: unknown) => {
    process.stderr.write(`stage-costs: ${(error as Error).stack}\n`);
    process.exit(1);
  });
}
