/**
 * Flash experiments, in process on the memory NAND (no disk, so the figures are the FTL's own):
 * write amplification of uniform random 4 KiB overwrite against over-provisioning, next to the
 * theory for greedy-like cleaning WA = α / (α + W(−α e^−α)) with α = physical / logical, and
 * under 80/20 and 90/10 skew for greedy and cost-benefit; the P/E spread after each run.
 *
 *   node build/scripts/flash-experiments.js [--blocks 256] [--passes 4] [--json FILE]
 *
 * Data is unique (no dedup, no compression), so every host block costs one 4112-byte record.
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import { silentLogger } from '../src/common/log.js';
import { MemoryMetaStore } from '../src/meta/memory-store.js';
import { MemoryNand } from '../src/nand/memory-nand.js';
import { FlashArray } from '../src/volume/flash-array.js';
import type { VictimPolicy } from '../src/ftl/erase-block-table.js';

const B = 4096;

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

export function theoryWa(alpha: number): number {
  return alpha / (alpha + lambertW(-alpha * Math.exp(-alpha)));
}

interface Run {
  policy: VictimPolicy;
  skew: string;
  overProvisioning: number;
  alpha: number;
  writeAmplification: number;
  theoryGreedy: number | null;
  peMin: number;
  peMax: number;
}

async function experiment(policy: VictimPolicy, op: number, hotShare: number | null, eraseBlocks: number, passes: number, seed: number): Promise<Run> {
  const geometry = { pageBytes: 4096, pagesPerEraseBlock: 64, eraseBlockCount: eraseBlocks, enduranceCycles: 1_000_000 };
  const array = await FlashArray.assemble('memory', new MemoryMetaStore(), new MemoryNand(geometry), silentLogger, {
    cacheBytes: 64 * 1024 * 1024,
    dedup: false,
    compression: 'none',
    reductionWorkers: 0,
    ftl: { victimPolicy: policy, overProvisioning: 0, reserveBlocks: 3, gcStartFreeBlocks: 5, gcTargetFreeBlocks: 6, wearSpreadThreshold: 1_000_000 },
  }, true);
  const recordBytes = B + 16;
  const streamBytes = array.ftl.streamBytesPerBlock;
  const recordsPerBlock = Math.floor(streamBytes / recordBytes);
  // α = physical / logical: logical blocks = all usable record slots / α.
  const alpha = 1 + op;
  const logicalBlocks = Math.floor((eraseBlocks * recordsPerBlock) / alpha);
  const volume = await array.createVolume('v', logicalBlocks * B);
  let state = seed >>> 0 || 1;
  const random = () => {
    state ^= state << 13;
    state ^= state >>> 17;
    state ^= state << 5;
    return (state >>> 0) / 2 ** 32;
  };
  const write = (lba: number) => volume.write(lba * B, crypto.randomBytes(B), { fua: false });
  for (let lba = 0; lba < logicalBlocks; lba++) await write(lba);
  const hotBlocks = hotShare === null ? logicalBlocks : Math.max(1, Math.floor(logicalBlocks * (1 - hotShare)));
  const before = { host: array.counters.hostBytesWritten, nand: array.nandBytesWritten };
  for (let i = 0; i < passes * logicalBlocks; i++) {
    const lba = hotShare === null || random() >= hotShare ? Math.floor(random() * logicalBlocks) : Math.floor(random() * hotBlocks);
    await write(lba);
  }
  await array.flush();
  const wa = (array.nandBytesWritten - before.nand) / (array.counters.hostBytesWritten - before.host);
  const wear = array.ftl.table.wearStats();
  array.abandon();
  return {
    policy,
    skew: hotShare === null ? 'uniform' : `${Math.round(hotShare * 100)}/${Math.round((1 - hotShare) * 100)}`,
    overProvisioning: op,
    alpha,
    writeAmplification: Math.round(wa * 1000) / 1000,
    theoryGreedy: hotShare === null ? Math.round(theoryWa(alpha) * 1000) / 1000 : null,
    peMin: wear.min,
    peMax: wear.max,
  };
}

async function main(): Promise<void> {
  const args = process.argv.slice(2);
  const option = (name: string, fallback: number) => {
    const index = args.indexOf(name);
    return index >= 0 ? Number(args[index + 1]) : fallback;
  };
  const eraseBlocks = option('--blocks', 256);
  const passes = option('--passes', 4);
  const jsonIndex = args.indexOf('--json');
  const runs: Run[] = [];
  const report = (run: Run) => {
    runs.push(run);
    process.stdout.write(`${run.policy.padEnd(12)} ${run.skew.padEnd(8)} OP ${(run.overProvisioning * 100).toFixed(1).padStart(5)}%  WA ${run.writeAmplification.toFixed(3)}${run.theoryGreedy === null ? '' : `  (theory ${run.theoryGreedy.toFixed(3)})`}  P/E ${run.peMin}..${run.peMax}\n`);
  };
  for (const op of [0.07, 0.125, 0.28, 0.5]) report(await experiment('greedy', op, null, eraseBlocks, passes, 1));
  for (const op of [0.125, 0.28]) report(await experiment('cost-benefit', op, null, eraseBlocks, passes, 1));
  for (const hot of [0.8, 0.9]) {
    for (const policy of ['greedy', 'cost-benefit'] as const) report(await experiment(policy, 0.28, hot, eraseBlocks, passes, 2));
  }
  if (jsonIndex >= 0) fs.writeFileSync(args[jsonIndex + 1]!, JSON.stringify(runs, null, 2) + '\n');
}

if (process.argv[1]?.endsWith('flash-experiments.js')) {
  main().catch((error: unknown) => {
    process.stderr.write(`flash-experiments: ${(error as Error).stack}\n`);
    process.exit(1);
  });
}
