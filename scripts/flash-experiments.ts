/**
 * Flash experiments, in process on the memory NAND (no disk, so the figures are the FTL's own):
 *
 * - write amplification of uniform random 4 KiB overwrite against over-provisioning, for greedy
 *   and cost-benefit cleaning, next to the theory for greedy cleaning
 *   WA = α / (α + W(−α e^−α)), α = physical / logical (Hu et al. 2009, Desnoyers 2012);
 * - 80/20 and 90/10 skew (that share of the writes on that share of the logical blocks, the rest
 *   on the rest) for greedy and cost-benefit, with and without hot/cold separation (GC
 *   relocations in a log stream of their own, or in the host stream);
 * - the P/E (erase count) histogram of every erase block after a long skewed run with static wear
 *   leveling at the array's default threshold.
 *
 *   node build/scripts/flash-experiments.js [--quick] [--blocks N] [--warmup P] [--passes P] [--seed S] [--json FILE]
 *
 * `npm run bench -- --no-matrix --experiments flash` runs the same code (scripts/bench/experiments/flash.ts)
 * and draws the charts.
 *
 * How a run measures: a fresh array on memory NAND (64 pages of 4 KiB per erase block), one volume
 * of `logical` 4 KiB blocks with α = erase blocks × records per erase block / logical, so the
 * over-provisioning counts every erase block, the ones GC keeps free included. The volume is
 * filled in order, then overwritten at queue depth 1 in passes of `logical` writes: warm-up passes
 * first (until the distribution of valid data in the erase blocks has settled), then measured
 * passes. WA = NAND bytes programmed / host bytes written over the measured passes. Data is
 * unique to the FTL (no dedup, no compression), so every host block costs one 4112-byte record.
 * Every run is seeded (xorshift32) and the seed is part of its result, so any figure replays.
 *
 * Uniform runs also report an idealised greedy cleaner simulated on the same erase blocks (every
 * block usable, no padding; `idealGreedyCopies`), and for greedy the α at which it matches the
 * FTL: that tells the policy's share of the gap to the theory from the FTL's lost space.
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import { assert } from '../src/common/assert.js';
import { silentLogger } from '../src/common/log.js';
import { MemoryMetaStore } from '../src/meta/memory-store.js';
import { MemoryNand } from '../src/nand/memory-nand.js';
import { BlockState, type VictimPolicy } from '../src/ftl/erase-block-table.js';
import { defaultFtlOptions } from '../src/ftl/ftl.js';
import { PAGE_HEADER_BYTES, RECORD_HEADER_BYTES } from '../src/ftl/page-format.js';
import { FlashArray } from '../src/volume/flash-array.js';
import type { Volume } from '../src/volume/volume.js';

const LBA_BYTES = 4096;
const RECORD_BYTES = LBA_BYTES + RECORD_HEADER_BYTES;
export const FLASH_GEOMETRY = { pageBytes: 4096, pagesPerEraseBlock: 64, enduranceCycles: 1_000_000 };
/** Free-block thresholds of the experiments: as low as the FTL allows, so that little space sits idle. */
export const EXPERIMENT_FTL = { reserveBlocks: 3, gcStartFreeBlocks: 5, gcTargetFreeBlocks: 6 };
/** A spread no run reaches: static wear leveling off, so it moves no data and WA is GC's alone. */
const WEAR_LEVELING_OFF = 1_000_000_000;

/** Lambert W, principal branch, for x in [-1/e, 0). */
function lambertW(x: number): number {
  let w = x < -0.3 ? -0.5 : x;
  for (let i = 0; i < 100; i++) {
    const e = Math.exp(w);
    const next = w - (w * e - x) / (e * (w + 1) - ((w + 2) * (w * e - x)) / (2 * w + 2));
    if (Math.abs(next - w) < 1e-12) return next;
    w = next;
  }
  return w;
}

/** Greedy cleaning under uniform random overwrite, large device: α / (α + W0(−α e^−α)). */
export function theoryWa(alpha: number): number {
  return alpha / (alpha + lambertW(-alpha * Math.exp(-alpha)));
}

export type Workload = 'uniform' | '80/20' | '90/10';

/** Share of the writes that go to the hot logical blocks, and the hot share of the logical blocks. */
function skewOf(workload: Workload): { hotWriteShare: number; hotLbaShare: number } | null {
  if (workload === '80/20') return { hotWriteShare: 0.8, hotLbaShare: 0.2 };
  if (workload === '90/10') return { hotWriteShare: 0.9, hotLbaShare: 0.1 };
  return null;
}

export interface WaSpec {
  policy: VictimPolicy;
  /** Physical / logical − 1, counting every erase block. */
  overProvisioning: number;
  workload: Workload;
  hotColdSeparation: boolean;
  eraseBlocks: number;
  warmupPasses: number;
  measurePasses: number;
  /** Static wear-leveling threshold; null turns it off. */
  wearSpreadThreshold: number | null;
  seed: number;
}

export interface PeStats {
  min: number;
  max: number;
  mean: number;
  stddev: number;
}

export interface WaRun extends WaSpec {
  alpha: number;
  logicalBlocks: number;
  recordsPerEraseBlock: number;
  /** NAND bytes programmed / host bytes written, over the measured passes. */
  writeAmplification: number;
  /** (host records + records GC relocated) / host records: WA in records, what the theory models. */
  copyAmplification: number;
  /** Share of the programmed page payload that is padding (pages sealed part-full at commits, block tails). */
  paddingFraction: number;
  /** NAND bytes / host bytes of each pass, warm-up passes first. */
  passWa: number[];
  /** Greedy theory at α (uniform workload only). */
  theoryGreedy: number | null;
  /** Free erase blocks, sampled over the measured passes: space GC keeps idle. */
  meanFreeBlocks: number;
  /** α without the mean free erase blocks: the space GC actually cleans in. */
  alphaEffective: number;
  /** Greedy theory at the effective α (uniform workload only). */
  theoryEffective: number | null;
  /** Copies of an idealised greedy cleaner on the same erase blocks at α (uniform only; see idealGreedyCopies). */
  idealGreedy: number | null;
  /**
   * The α at which the idealised greedy cleaner makes as many copies as this run did (uniform
   * greedy runs only): 1 − alphaEquivalent / alpha is the share of physical space the FTL loses.
   */
  alphaEquivalent: number | null;
  pe: PeStats;
  /** Erase count of every erase block at the end. */
  eraseCounts: number[];
  gcRuns: number;
  seconds: number;
}

const round3 = (value: number) => Math.round(value * 1000) / 1000;

function xorshift32(seed: number): () => number {
  let state = seed >>> 0 || 1;
  return () => {
    state ^= state << 13;
    state ^= state >>> 17;
    state ^= state << 5;
    return (state >>> 0) / 2 ** 32;
  };
}

export function peStats(counts: ArrayLike<number>): PeStats {
  const values = Array.from(counts);
  const mean = values.reduce((sum, value) => sum + value, 0) / Math.max(1, values.length);
  const variance = values.reduce((sum, value) => sum + (value - mean) ** 2, 0) / Math.max(1, values.length);
  return { min: Math.min(...values), max: Math.max(...values), mean: round3(mean), stddev: round3(Math.sqrt(variance)) };
}

/** Record slots of one erase block: a record never spans erase blocks, so the tail is lost. */
export function recordsPerEraseBlock(): number {
  return Math.floor(((FLASH_GEOMETRY.pageBytes - PAGE_HEADER_BYTES) * FLASH_GEOMETRY.pagesPerEraseBlock) / RECORD_BYTES);
}

/**
 * An idealised greedy cleaner under uniform random overwrite, to tell the FTL's own losses from
 * the policy's: `eraseBlocks` blocks of `slots` records, every one usable (no reserve, no free
 * target), one open block shared by host writes and relocations, no padding, no commits. Fills,
 * overwrites one pass to warm up, then returns (host + relocated records) / host records over
 * three passes. Pure and fast (well under a second for 256 erase blocks).
 */
export function idealGreedyCopies(eraseBlocks: number, slots: number, alpha: number, seed: number): number {
  const logicalBlocks = Math.floor((eraseBlocks * slots) / alpha);
  const slotOf = new Int32Array(logicalBlocks).fill(-1);
  const lbaAt = new Int32Array(eraseBlocks * slots);
  const valid = new Int32Array(eraseBlocks);
  const full = new Uint8Array(eraseBlocks);
  const free: number[] = [];
  for (let block = eraseBlocks - 1; block >= 0; block--) free.push(block);
  let open = free.pop()!;
  let used = 0;
  let copies = 0;
  const pending: number[] = [];
  const clean = () => {
    let victim = -1;
    for (let block = 0; block < eraseBlocks; block++) if (full[block] && (victim < 0 || valid[block]! < valid[victim]!)) victim = block;
    assert(victim >= 0, 'no erase block to clean');
    for (let slot = victim * slots; slot < (victim + 1) * slots; slot++) {
      const lba = lbaAt[slot]!;
      if (slotOf[lba] === slot) {
        slotOf[lba] = -1;
        pending.push(lba);
        copies += 1;
      }
    }
    valid[victim] = 0;
    full[victim] = 0;
    free.push(victim);
  };
  const place = (lba: number) => {
    while (used === slots) {
      full[open] = 1;
      if (free.length === 0) clean();
      open = free.pop()!;
      used = 0;
    }
    const slot = open * slots + used++;
    slotOf[lba] = slot;
    lbaAt[slot] = lba;
    valid[open] += 1;
  };
  const write = (lba: number) => {
    if (slotOf[lba] >= 0) valid[Math.floor(slotOf[lba]! / slots)] -= 1;
    slotOf[lba] = -1;
    pending.push(lba);
    while (pending.length > 0) place(pending.pop()!);
  };
  for (let lba = 0; lba < logicalBlocks; lba++) write(lba);
  const next = lbaPicker('uniform', logicalBlocks, seed);
  for (let i = 0; i < logicalBlocks; i++) write(next());
  copies = 0;
  for (let i = 0; i < 3 * logicalBlocks; i++) write(next());
  return 1 + copies / (3 * logicalBlocks);
}

/** Bisection: the α at which the idealised greedy cleaner makes `copies`; `alphaMax` if it makes fewer even there. */
function equivalentAlpha(copies: number, eraseBlocks: number, slots: number, alphaMax: number, seed: number): number {
  let [low, high] = [1 + 2 / eraseBlocks, alphaMax];
  if (idealGreedyCopies(eraseBlocks, slots, high, seed) >= copies) return alphaMax;
  for (let step = 0; step < 10; step++) {
    const middle = (low + high) / 2;
    if (idealGreedyCopies(eraseBlocks, slots, middle, seed) > copies) low = middle;
    else high = middle;
  }
  return (low + high) / 2;
}

function assembleArray(spec: WaSpec): Promise<FlashArray> {
  const geometry = { ...FLASH_GEOMETRY, eraseBlockCount: spec.eraseBlocks };
  return FlashArray.assemble('memory', new MemoryMetaStore(), new MemoryNand(geometry), silentLogger, {
    cacheBytes: 64 * 1024 * 1024,
    dedup: false,
    compression: 'none',
    reductionWorkers: 0,
    ftl: {
      ...EXPERIMENT_FTL,
      victimPolicy: spec.policy,
      overProvisioning: 0,
      wearSpreadThreshold: spec.wearSpreadThreshold ?? WEAR_LEVELING_OFF,
      hotColdSeparation: spec.hotColdSeparation,
    },
  }, true);
}

/** Writes one 4 KiB logical block of incompressible, pattern-free data (a fresh buffer: the array may keep it). */
function payloadWriter(volume: Volume): (lba: number) => Promise<void> {
  const pool = crypto.randomBytes(64 * LBA_BYTES);
  let written = 0;
  return (lba) => {
    const payload = Buffer.allocUnsafe(LBA_BYTES);
    pool.copy(payload, 0, (written % 64) * LBA_BYTES, ((written % 64) + 1) * LBA_BYTES);
    payload.writeUInt32LE(written++, 0);
    return volume.write(lba * LBA_BYTES, payload, { fua: false });
  };
}

/** The next logical block to overwrite: uniform, or the hot share of writes on the first hot share of blocks. */
function lbaPicker(workload: Workload, logicalBlocks: number, seed: number): () => number {
  const random = xorshift32(seed);
  const skew = skewOf(workload);
  if (skew === null) return () => Math.floor(random() * logicalBlocks);
  const hotLbas = Math.max(1, Math.floor(logicalBlocks * skew.hotLbaShare));
  return () => (random() < skew.hotWriteShare ? Math.floor(random() * hotLbas) : hotLbas + Math.floor(random() * (logicalBlocks - hotLbas)));
}

interface Counters {
  host: number;
  nand: number;
  relocated: number;
}

interface Overwrite {
  passWa: number[];
  /** Counter deltas over the measured passes. */
  measured: Counters;
  meanFreeBlocks: number;
}

/** Warm-up then measured passes of `logicalBlocks` overwrites each, at queue depth 1. */
async function overwritePasses(array: FlashArray, write: (lba: number) => Promise<void>, next: () => number, spec: WaSpec, logicalBlocks: number): Promise<Overwrite> {
  const mark = (): Counters => ({ host: array.counters.hostBytesWritten, nand: array.nandBytesWritten, relocated: array.ftl.counters.relocatedBytes });
  const passWa: number[] = [];
  let measureStart = mark();
  let freeSum = 0;
  let freeSamples = 0;
  for (let pass = 0; pass < spec.warmupPasses + spec.measurePasses; pass++) {
    if (pass === spec.warmupPasses) measureStart = mark();
    const before = mark();
    const measuring = pass >= spec.warmupPasses;
    for (let i = 0; i < logicalBlocks; i++) {
      await write(next());
      if (measuring && (i & 31) === 0) {
        freeSum += array.ftl.table.freeBlocks;
        freeSamples += 1;
      }
    }
    const after = mark();
    passWa.push(round3((after.nand - before.nand) / (after.host - before.host)));
  }
  const end = mark();
  const measured = { host: end.host - measureStart.host, nand: end.nand - measureStart.nand, relocated: end.relocated - measureStart.relocated };
  return { passWa, measured, meanFreeBlocks: freeSum / Math.max(1, freeSamples) };
}

/** One array, one workload: fill, warm up, measure. */
export async function runWa(spec: WaSpec): Promise<WaRun> {
  const started = Date.now();
  const array = await assembleArray(spec);
  try {
    const slots = recordsPerEraseBlock();
    const alpha = 1 + spec.overProvisioning;
    const logicalBlocks = Math.floor((spec.eraseBlocks * slots) / alpha);
    if (logicalBlocks * RECORD_BYTES > array.ftl.usableBytes) {
      throw new OverProvisioningTooLow(`${(spec.overProvisioning * 100).toFixed(1)}% over-provisioning does not fit ${spec.eraseBlocks} erase blocks: the array keeps ${EXPERIMENT_FTL.reserveBlocks + EXPERIMENT_FTL.gcTargetFreeBlocks} of them free; use more erase blocks (--blocks)`);
    }
    const write = payloadWriter(await array.createVolume('v', logicalBlocks * LBA_BYTES));
    for (let lba = 0; lba < logicalBlocks; lba++) await write(lba);
    const { passWa, measured, meanFreeBlocks } = await overwritePasses(array, write, lbaPicker(spec.workload, logicalBlocks, spec.seed), spec, logicalBlocks);
    const recordBytes = ((measured.host + measured.relocated) / LBA_BYTES) * RECORD_BYTES;
    const payloadBytes = (measured.nand * (FLASH_GEOMETRY.pageBytes - PAGE_HEADER_BYTES)) / FLASH_GEOMETRY.pageBytes;
    const alphaEffective = ((spec.eraseBlocks - meanFreeBlocks) * slots) / logicalBlocks;
    const uniform = spec.workload === 'uniform';
    const eraseCounts: number[] = [];
    for (let block = 0; block < spec.eraseBlocks; block++) if (array.ftl.table.state[block] !== BlockState.Bad) eraseCounts.push(array.ftl.table.eraseCount[block]!);
    return {
      ...spec,
      alpha: round3(alpha),
      logicalBlocks,
      recordsPerEraseBlock: slots,
      writeAmplification: round3(measured.nand / measured.host),
      copyAmplification: round3(1 + measured.relocated / measured.host),
      paddingFraction: round3(1 - recordBytes / payloadBytes),
      passWa,
      theoryGreedy: uniform ? round3(theoryWa(alpha)) : null,
      meanFreeBlocks: Math.round(meanFreeBlocks * 10) / 10,
      alphaEffective: round3(alphaEffective),
      theoryEffective: uniform ? round3(theoryWa(alphaEffective)) : null,
      idealGreedy: uniform ? round3(idealGreedyCopies(spec.eraseBlocks, slots, alpha, spec.seed)) : null,
      alphaEquivalent: uniform && spec.policy === 'greedy' ? round3(equivalentAlpha(1 + measured.relocated / measured.host, spec.eraseBlocks, slots, alpha, spec.seed)) : null,
      pe: peStats(eraseCounts),
      eraseCounts,
      gcRuns: array.ftl.counters.gcRuns,
      seconds: Math.round((Date.now() - started) / 100) / 10,
    };
  } finally {
    array.abandon();
  }
}

/** The requested over-provisioning leaves less than the array's usable capacity for the volume. */
export class OverProvisioningTooLow extends Error {}

export interface FlashPlan {
  eraseBlocks: number;
  seed: number;
  uniform: { overProvisioning: number[]; policies: VictimPolicy[]; warmupPasses: number; measurePasses: number };
  skew: { overProvisioning: number; workloads: Workload[]; policies: VictimPolicy[]; warmupPasses: number; measurePasses: number };
  /** The long runs (one per policy) whose erase counts make the P/E histogram; static wear leveling at the array's default threshold. */
  wear: { workload: Workload; policies: VictimPolicy[]; overProvisioning: number; warmupPasses: number; measurePasses: number };
}

/**
 * Quick: a smoke test of every path (about half a minute; the figures have not settled). Full:
 * five to ten minutes on two cores, depending on what else runs.
 */
export function flashPlan(quick: boolean): FlashPlan {
  const policies: VictimPolicy[] = ['greedy', 'cost-benefit'];
  const workloads: Workload[] = ['80/20', '90/10'];
  if (quick) {
    return {
      eraseBlocks: 128,
      seed: 1,
      uniform: { overProvisioning: [0.15, 0.28, 1], policies, warmupPasses: 1, measurePasses: 1 },
      skew: { overProvisioning: 0.28, workloads, policies, warmupPasses: 1, measurePasses: 1 },
      wear: { workload: '90/10', policies, overProvisioning: 0.28, warmupPasses: 1, measurePasses: 2 },
    };
  }
  return {
    eraseBlocks: 256,
    seed: 1,
    uniform: { overProvisioning: [0.07, 0.1, 0.125, 0.15, 0.2, 0.28, 0.35, 0.5, 0.75, 1], policies, warmupPasses: 1, measurePasses: 2 },
    skew: { overProvisioning: 0.28, workloads, policies, warmupPasses: 3, measurePasses: 3 },
    wear: { workload: '90/10', policies, overProvisioning: 0.28, warmupPasses: 5, measurePasses: 30 },
  };
}

export interface FlashResults {
  plan: FlashPlan;
  geometry: typeof FLASH_GEOMETRY & { eraseBlockCount: number; recordsPerEraseBlock: number };
  ftl: typeof EXPERIMENT_FTL & { defaultWearSpreadThreshold: number };
  uniform: WaRun[];
  skew: WaRun[];
  /** The long runs, with static wear leveling on; their `eraseCounts` are the histogram. */
  wear: WaRun[];
  /** Runs the device could not hold, and why. */
  skipped: string[];
  seconds: number;
}

/** Every run of the plan, in order; `onRun` hears of each as it finishes. */
export async function runFlashExperiments(plan: FlashPlan, onRun: (run: WaRun) => void = () => undefined): Promise<FlashResults> {
  const started = Date.now();
  const skipped: string[] = [];
  const run = async (spec: Omit<WaSpec, 'eraseBlocks' | 'seed'>, keepEraseCounts: boolean): Promise<WaRun[]> => {
    try {
      const result = await runWa({ ...spec, eraseBlocks: plan.eraseBlocks, seed: plan.seed });
      onRun(result);
      return [keepEraseCounts ? result : { ...result, eraseCounts: [] }];
    } catch (error) {
      if (!(error instanceof OverProvisioningTooLow)) throw error;
      skipped.push(`${spec.policy} ${spec.workload}: ${error.message}`);
      return [];
    }
  };
  const uniform: WaRun[] = [];
  const { warmupPasses, measurePasses } = plan.uniform;
  for (const policy of plan.uniform.policies) {
    for (const overProvisioning of plan.uniform.overProvisioning) {
      uniform.push(...(await run({ policy, overProvisioning, workload: 'uniform', hotColdSeparation: true, warmupPasses, measurePasses, wearSpreadThreshold: null }, false)));
    }
  }
  const skew: WaRun[] = [];
  for (const workload of plan.skew.workloads) {
    for (const policy of plan.skew.policies) {
      for (const hotColdSeparation of [true, false]) {
        const { overProvisioning, warmupPasses, measurePasses } = plan.skew;
        skew.push(...(await run({ policy, overProvisioning, workload, hotColdSeparation, warmupPasses, measurePasses, wearSpreadThreshold: null }, false)));
      }
    }
  }
  const defaultWearSpreadThreshold = defaultFtlOptions(plan.eraseBlocks).wearSpreadThreshold;
  const wear: WaRun[] = [];
  for (const policy of plan.wear.policies) {
    const { workload, overProvisioning, warmupPasses, measurePasses } = plan.wear;
    wear.push(...(await run({ policy, overProvisioning, workload, hotColdSeparation: true, warmupPasses, measurePasses, wearSpreadThreshold: defaultWearSpreadThreshold }, true)));
  }
  return {
    plan,
    geometry: { ...FLASH_GEOMETRY, eraseBlockCount: plan.eraseBlocks, recordsPerEraseBlock: recordsPerEraseBlock() },
    ftl: { ...EXPERIMENT_FTL, defaultWearSpreadThreshold },
    uniform,
    skew,
    wear,
    skipped,
    seconds: Math.round((Date.now() - started) / 1000),
  };
}

/** One line of the human-readable table. */
export function describeRun(run: WaRun): string {
  const equivalent = run.alphaEquivalent === null ? '' : `, matches idealised at α ${run.alphaEquivalent.toFixed(3)}`;
  const theory = run.theoryGreedy === null ? '' : `  theory ${run.theoryGreedy.toFixed(2)}, idealised greedy ${run.idealGreedy!.toFixed(2)} (theory at α less free blocks ${run.alphaEffective.toFixed(3)}: ${run.theoryEffective!.toFixed(2)}${equivalent})`;
  const separation = run.hotColdSeparation ? 'separated' : 'one stream';
  return [
    run.policy.padEnd(12),
    run.workload.padEnd(7),
    separation.padEnd(10),
    `OP ${(run.overProvisioning * 100).toFixed(1).padStart(5)}%`,
    `WA ${run.writeAmplification.toFixed(3).padStart(6)}`,
    `copies ${run.copyAmplification.toFixed(3).padStart(6)}`,
    `padding ${(run.paddingFraction * 100).toFixed(1).padStart(4)}%`,
    run.wearSpreadThreshold === null ? 'no static WL' : `static WL ${run.wearSpreadThreshold}`,
    `${run.warmupPasses}+${run.measurePasses} passes`,
    `P/E ${run.pe.min}..${run.pe.max} (mean ${run.pe.mean.toFixed(1)}, sd ${run.pe.stddev.toFixed(1)})`,
    `${run.seconds.toFixed(0).padStart(3)} s`,
  ].join('  ') + theory;
}

async function main(): Promise<void> {
  const args = process.argv.slice(2);
  const option = (name: string): string | undefined => {
    const index = args.indexOf(name);
    return index >= 0 ? args[index + 1] : undefined;
  };
  const plan = flashPlan(args.includes('--quick'));
  const number = (name: string, fallback: number) => {
    const value = option(name);
    if (value === undefined) return fallback;
    const parsed = Number(value);
    if (!Number.isInteger(parsed) || parsed < 1) throw new Error(`${name} wants a positive integer, not ${value}`);
    return parsed;
  };
  plan.eraseBlocks = number('--blocks', plan.eraseBlocks);
  plan.seed = number('--seed', plan.seed);
  for (const part of [plan.uniform, plan.skew]) {
    part.warmupPasses = number('--warmup', part.warmupPasses);
    part.measurePasses = number('--passes', part.measurePasses);
  }
  const jsonPath = option('--json');
  process.stdout.write(`flash experiments: ${plan.eraseBlocks} erase blocks of ${FLASH_GEOMETRY.pagesPerEraseBlock} × 4 KiB pages (${recordsPerEraseBlock()} records each), seed ${plan.seed}\n`);
  const results = await runFlashExperiments(plan, (run) => process.stdout.write(`${describeRun(run)}\n`));
  for (const reason of results.skipped) process.stdout.write(`skipped: ${reason}\n`);
  process.stdout.write(`done in ${results.seconds} s\n`);
  if (jsonPath !== undefined) fs.writeFileSync(jsonPath, JSON.stringify(results, null, 2) + '\n');
}

if (process.argv[1]?.endsWith('flash-experiments.js')) {
  main().catch((error: unknown) => {
    process.stderr.write(`flash-experiments: ${(error as Error).stack}\n`);
    process.exit(1);
  });
}
