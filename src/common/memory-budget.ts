/**
 * The memory budget (`--cache-mb`; by default an eighth of the machine's memory, see
 * `defaultBudgetMiB`) and how it is shared out: everything the array keeps in memory for as long
 * as it runs, whatever the workload, is sized from it here and nowhere else.
 *
 * Inside the budget (resident once warm, for good):
 *   - volume-map and chunk-table pages (page-cache.ts): what is left, half each;
 *   - the dedup index table (dedup-index.ts): 15 %;
 *   - the Bloom filter over fingerprints in LevelDB (bloom-filter.ts): what the capacity wants
 *     (10 bits per 2 KiB of NAND), at most 1/16;
 *   - LevelDB's memtable (twice: the one being filled and the one being written out) and its block
 *     cache: about 1/8 at 64 MiB, 1/6 at the default 256 MiB;
 *   - NAND image pages kept mapped for reads (file-nand.ts): 1/8. They are page cache, but they
 *     count in the process's resident set (RssFile) while mapped; past the share, records are read
 *     with pread (about twice the CPU of a mapped read). What the two page caches leave unused of
 *     their shares, less an eighth of the budget, is lent to the mapping, and taken back as they
 *     fill (the server rebalances twice a second: FlashArray.balanceMemory), so an array whose
 *     metadata is small reads its data mapped. The eighth kept back is margin for what runs
 *     beside the budget: lending everything, a 4-minute soak at --cache-mb 256 (16 connections of
 *     verified writes, aborted clients, TRIM storms) peaked at 455 MiB, 1 MiB under the bound.
 *
 * Beside the budget, bounded too:
 *   - request payloads and read replies in flight (server/in-flight-limit.ts): a quarter of the
 *     budget, between 16 and 64 MiB (one request alone may use up to the 64 MiB maximum payload),
 *     half of that per connection, and a quarter more that only requests up to 1 MiB may use (so
 *     they never wait behind a 64 MiB one); requests beyond it wait before their payload is read;
 *   - the Node.js runtime: about 90 MiB resident with an empty array (46 MiB of it the node binary
 *     itself, RssFile), and the garbage V8 lets pile up between collections (process-memory.ts
 *     keeps that small, and collects it when the array goes idle).
 * So the whole process stays within the budget plus about 200 MiB under load, and within the
 * budget plus about 120 MiB when idle (test/memory/memory-bound.test.ts measures both).
 */
import os from 'node:os';

const MiB = 1024 * 1024;
const GiB = 1024 * MiB;

/**
 * `pstorage serve`'s budget when none is given: an eighth of the machine's memory, between 256 MiB
 * and 4 GiB (2.9 GiB on a 23.5 GiB machine), in MiB. A storage array is the machine's main tenant
 * and its memory is its read cache: at a fixed 256 MiB, 128 KiB reads of a 512 MiB region found
 * most records outside the mapping (0.36x of nbdkit memory, against 0.68x with all mapped).
 */
export function defaultBudgetMiB(totalMemoryBytes = os.totalmem()): number {
  return Math.floor(clamp(totalMemoryBytes / 8, 256 * MiB, 4 * GiB) / MiB);
}

export interface MemoryPlan {
  cacheBytes: number;
  mapPageBytes: number;
  chunkPageBytes: number;
  dedupIndexBytes: number;
  bloomFilterBytes: number;
  /** LevelDB's write buffer (it may hold two) and block cache. */
  levelWriteBufferBytes: number;
  levelCacheBytes: number;
  /** Image bytes the read mapping may hold (reads of other erase blocks use pread). */
  mappedReadBytes: number;
  /** Beside the budget: request bytes in flight on all connections, and on one. */
  inFlightBytes: number;
  connectionInFlightBytes: number;
}

export interface PlanInput {
  cacheBytes: number;
  /** NAND capacity: sizes the Bloom filter. */
  capacityBytes: number;
  /** LevelDB and a mapped image (false: the in-memory devices of tests, which need neither). */
  onDisk: boolean;
  dedup: boolean;
}

/** Shares the budget out (see the design note). */
export function planMemory(input: PlanInput): MemoryPlan {
  const budget = input.cacheBytes;
  const levelWriteBufferBytes = input.onDisk ? clamp(budget / 16, 2 * MiB, 16 * MiB) : 0;
  const levelCacheBytes = input.onDisk ? clamp(budget / 32, 1 * MiB, 8 * MiB) : 0;
  const mappedReadBytes = input.onDisk ? clamp(budget / 8, 2 * MiB, 1 * GiB) : 0;
  const bloomFilterBytes = input.dedup ? Math.min(Math.ceil(((input.capacityBytes / 2048) * 10) / 8), Math.floor(budget / 16), 64 * MiB) : 0;
  const dedupIndexBytes = input.dedup ? Math.floor(budget * 0.15) : 0;
  // Below about 20 MiB the floors of the on-disk shares leave too little; the page caches then keep
  // 40 % of the budget, and the whole goes over it by those floors (7 MiB at most).
  const rest = Math.max(Math.floor(budget * 0.4), budget - 2 * levelWriteBufferBytes - levelCacheBytes - mappedReadBytes - bloomFilterBytes - dedupIndexBytes);
  const inFlightBytes = clamp(budget / 4, 16 * MiB, 64 * MiB);
  return {
    cacheBytes: budget,
    mapPageBytes: Math.floor(rest / 2),
    chunkPageBytes: Math.floor(rest / 2),
    dedupIndexBytes,
    bloomFilterBytes,
    levelWriteBufferBytes,
    levelCacheBytes,
    mappedReadBytes,
    inFlightBytes,
    connectionInFlightBytes: Math.ceil(inFlightBytes / 2),
  };
}

function clamp(value: number, low: number, high: number): number {
  return Math.floor(Math.min(high, Math.max(low, value)));
}
