/**
 * Model-based test of the engine: random write / partial write / read / trim / write-zeroes /
 * flush / crash-and-reopen sequences (fast-check commands, seeded) against a plain in-memory model,
 * over the crash models of the memory NAND and the memory metadata store.
 *
 * The model keeps, per logical block, every content written since the last one a completed FLUSH
 * covered. Without a crash a read must return the newest; after a crash it may return any of them
 * (old or new) but never torn bytes and never another block's data.
 */
import test from 'ava';
import fc from 'fast-check';
import { concatReadExtents } from '../../src/common/block-device.js';
import { silentLogger } from '../../src/common/log.js';
import { MemoryMetaStore } from '../../src/meta/memory-store.js';
import { MemoryNand } from '../../src/nand/memory-nand.js';
import { FlashArray } from '../../src/volume/flash-array.js';
import type { Volume } from '../../src/volume/volume.js';
import { auditArray } from '../../src/volume/audit.js';

/** Every run ends with the audit: refcounts equal references, records verify, valid bytes add up. */
async function audit(array: FlashArray): Promise<void> {
  const report = await auditArray(array);
  if (!report.ok) throw new Error(`audit found problems:\n${report.problems.slice(0, 10).join('\n')}`);
}

const B = 4096;
const REGION_BLOCKS = 192;
const GEOMETRY = { pageBytes: 4096, pagesPerEraseBlock: 16, eraseBlockCount: 48, enduranceCycles: 100000 };

class Model {
  /** Per block: contents since the flush-covered one; [0] is the flush-covered (or initial) one. */
  versions: Buffer[][] = Array.from({ length: REGION_BLOCKS }, () => [Buffer.alloc(B)]);
  latest(lba: number): Buffer {
    return this.versions[lba]!.at(-1)!;
  }
  push(lba: number, content: Buffer): void {
    this.versions[lba]!.push(content);
  }
  flushed(): void {
    this.versions = this.versions.map((list) => [list.at(-1)!]);
  }
}

interface Real {
  nand: MemoryNand;
  meta: MemoryMetaStore;
  array: FlashArray;
  volume: Volume;
  counter: number;
  gcRuns: number;
}

async function open(real: Pick<Real, 'nand' | 'meta'>, create: boolean): Promise<{ array: FlashArray; volume: Volume }> {
  const array = await FlashArray.assemble('memory', real.meta, real.nand, silentLogger, { cacheBytes: 256 * 1024, ftl: { gcBatchBlocks: 2 } }, create);
  const volume = create ? await array.createVolume('v', REGION_BLOCKS * B) : (array.lookup('v')!.device as Volume);
  return { array, volume };
}

/** Unique, duplicate (one of a few contents) or compressible bytes, by `kind`. */
function dataFor(kind: number, counter: number, length: number): Buffer {
  if (kind === 1) return content(1 + (counter % 3), length);
  if (kind === 2) {
    const out = Buffer.alloc(length);
    for (let i = 0; i < length; i += 32) out.write(`record ${counter} field ${i % 300} ok;`.padEnd(32, '.'), i, 'latin1');
    return out;
  }
  return content(counter, length);
}

function content(counter: number, length: number): Buffer {
  const out = Buffer.alloc(length);
  let x = (counter * 2654435761) >>> 0 || 1;
  for (let i = 0; i < length; i += 4) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    out.writeUInt32LE(x >>> 0, i);
  }
  return out;
}

async function readBlock(volume: Volume, lba: number): Promise<Buffer> {
  return concatReadExtents(await volume.read(lba * B, B), B);
}

class WriteCommand implements fc.AsyncCommand<Model, Real> {
  constructor(readonly lba: number, readonly blocks: number, readonly offsetInBlock: number, readonly trimTail: number, readonly kind = 0) {}
  check = () => true;
  async run(model: Model, real: Real): Promise<void> {
    const start = this.lba * B + this.offsetInBlock;
    const length = Math.min(this.blocks * B - this.offsetInBlock - this.trimTail, REGION_BLOCKS * B - start);
    if (length <= 0) return;
    const data = dataFor(this.kind, ++real.counter, length);
    await real.volume.write(start, data, { fua: false });
    for (let lba = Math.floor(start / B); lba <= Math.floor((start + length - 1) / B); lba++) {
      const merged = Buffer.from(model.latest(lba));
      const from = Math.max(start, lba * B);
      const to = Math.min(start + length, (lba + 1) * B);
      data.copy(merged, from - lba * B, from - start, to - start);
      model.push(lba, merged);
    }
  }
  toString = () => `write(lba ${this.lba} x${this.blocks}, +${this.offsetInBlock}, -${this.trimTail}, kind ${this.kind})`;
}

class ReadCommand implements fc.AsyncCommand<Model, Real> {
  constructor(readonly lba: number, readonly blocks: number) {}
  check = () => true;
  async run(model: Model, real: Real): Promise<void> {
    const count = Math.min(this.blocks, REGION_BLOCKS - this.lba);
    const data = concatReadExtents(await real.volume.read(this.lba * B, count * B), count * B);
    for (let i = 0; i < count; i++) {
      if (!data.subarray(i * B, (i + 1) * B).equals(model.latest(this.lba + i))) throw new Error(`lba ${this.lba + i} differs from the model`);
    }
  }
  toString = () => `read(lba ${this.lba} x${this.blocks})`;
}

class ZeroCommand implements fc.AsyncCommand<Model, Real> {
  constructor(readonly lba: number, readonly blocks: number, readonly trim: boolean, readonly noHole: boolean) {}
  check = () => true;
  async run(model: Model, real: Real): Promise<void> {
    const count = Math.min(this.blocks, REGION_BLOCKS - this.lba);
    if (this.trim) await real.volume.trim(this.lba * B, count * B, { fua: false });
    else await real.volume.writeZeroes(this.lba * B, count * B, { fua: false, noHole: this.noHole, fastZero: false });
    // A trimmed block's content is unspecified until rewritten, but this engine unmaps it.
    for (let i = 0; i < count; i++) model.push(this.lba + i, Buffer.alloc(B));
  }
  toString = () => `${this.trim ? 'trim' : 'zero'}(lba ${this.lba} x${this.blocks}${this.noHole ? ', no-hole' : ''})`;
}

class FlushCommand implements fc.AsyncCommand<Model, Real> {
  check = () => true;
  async run(model: Model, real: Real): Promise<void> {
    await real.volume.flush();
    model.flushed();
  }
  toString = () => 'flush';
}

class CrashCommand implements fc.AsyncCommand<Model, Real> {
  constructor(readonly inflight: Array<[number, number]>, readonly keepUnsynced: number, readonly torn: boolean) {}
  check = () => true;
  async run(model: Model, real: Real): Promise<void> {
    // Writes still in flight when the power goes: each block may end up old or new.
    const pending = this.inflight.map(([lba, blocks]) => {
      const count = Math.min(blocks, REGION_BLOCKS - lba);
      const data = content(++real.counter, count * B);
      for (let i = 0; i < count; i++) model.push(lba + i, data.subarray(i * B, (i + 1) * B));
      return real.volume.write(lba * B, data, { fua: false }).catch(() => undefined);
    });
    await new Promise((resolve) => setImmediate(resolve));
    real.array.abandon();
    real.gcRuns += real.array.ftl.counters.gcRuns;
    const nand = real.nand.crash({ tornLastPage: this.torn });
    const meta = real.meta.crash(() => this.keepUnsynced / 4);
    await Promise.all(pending);
    const reopened = await open({ nand, meta }, false);
    Object.assign(real, { nand, meta, ...reopened });
    for (let lba = 0; lba < REGION_BLOCKS; lba++) {
      const actual = await readBlock(real.volume, lba);
      if (!model.versions[lba]!.some((version) => version.equals(actual))) {
        throw new Error(`after crash, lba ${lba} holds none of its ${model.versions[lba]!.length} allowed contents`);
      }
      model.versions[lba] = [actual];
    }
  }
  toString = () => `crash(inflight ${JSON.stringify(this.inflight)}, keep ${this.keepUnsynced}, torn ${this.torn})`;
}

const lba = fc.integer({ min: 0, max: REGION_BLOCKS - 1 });
const commands = [
  fc.tuple(lba, fc.integer({ min: 1, max: 24 }), fc.constantFrom(0, 0, 0, 512, 1000), fc.constantFrom(0, 0, 0, 512, 3000), fc.constantFrom(0, 0, 1, 2)).map(([l, n, o, t, k]) => new WriteCommand(l, n, o, t, k)),
  fc.tuple(lba, fc.integer({ min: 1, max: 32 })).map(([l, n]) => new ReadCommand(l, n)),
  fc.tuple(lba, fc.integer({ min: 1, max: 16 }), fc.boolean(), fc.boolean()).map(([l, n, trim, noHole]) => new ZeroCommand(l, n, trim, noHole)),
  fc.constant(new FlushCommand()),
  fc.tuple(fc.array(fc.tuple(lba, fc.integer({ min: 1, max: 8 })), { maxLength: 4 }), fc.integer({ min: 0, max: 3 }), fc.boolean()).map(([inflight, keep, torn]) => new CrashCommand(inflight, keep, torn)),
];

// Mostly whole-block overwrites, so the log wraps around and GC runs many times.
const overwriteHeavy = [
  ...commands,
  ...Array.from({ length: 5 }, () => fc.tuple(lba, fc.integer({ min: 8, max: 32 })).map(([l, n]) => new WriteCommand(l, n, 0, 0))),
];

test('model: random write/read/trim/zero/flush/crash sequences keep the durability contract', async (t) => {
  const seed = Number(process.env.PSTORAGE_MODEL_SEED ?? Date.now() % 2 ** 31);
  t.log(`seed ${seed} (rerun with PSTORAGE_MODEL_SEED=${seed})`);
  let runs = 0;
  await fc.assert(
    fc.asyncProperty(fc.commands(commands, { maxCommands: 60 }), async (cmds) => {
      runs += 1;
      const nand = new MemoryNand(GEOMETRY);
      const meta = new MemoryMetaStore();
      const real: Real = { nand, meta, counter: 0, gcRuns: 0, ...(await open({ nand, meta }, true)) };
      try {
        await fc.asyncModelRun(() => ({ model: new Model(), real }), cmds);
        await audit(real.array);
      } finally {
        real.array.abandon();
      }
    }),
    { seed, numRuns: Number(process.env.PSTORAGE_MODEL_RUNS ?? 40) },
  );
  t.true(runs >= 40 || process.env.PSTORAGE_MODEL_RUNS !== undefined);
});

/** Overwrites the whole region `passes` times with unique data and flushes; the matching model. */
async function fillAndFlush(real: Real, passes: number): Promise<Model> {
  const model = new Model();
  for (let pass = 0; pass < passes; pass++) {
    for (let lba = 0; lba < REGION_BLOCKS; lba += 16) {
      const data = content(++real.counter, 16 * B);
      await real.volume.write(lba * B, data, { fua: false });
      for (let i = 0; i < 16; i++) model.push(lba + i, data.subarray(i * B, (i + 1) * B));
    }
  }
  await real.array.flush();
  model.flushed();
  return model;
}

test('model: a long overwrite run with GC, crashes and flushes', async (t) => {
  const seed = Number(process.env.PSTORAGE_MODEL_SEED ?? (Date.now() + 1) % 2 ** 31);
  t.log(`seed ${seed}`);
  let gcRuns = 0;
  await fc.assert(
    fc.asyncProperty(fc.commands(overwriteHeavy, { maxCommands: 300, size: 'max' }), async (cmds) => {
      const nand = new MemoryNand(GEOMETRY);
      const meta = new MemoryMetaStore();
      const real: Real = { nand, meta, counter: 0, gcRuns: 0, ...(await open({ nand, meta }, true)) };
      try {
        // A flushed prefix that overwrites the region 4 times fills the device, so GC runs here
        // and keeps running under the random commands, however short they are.
        const model = await fillAndFlush(real, 4);
        await fc.asyncModelRun(() => ({ model, real }), cmds);
        await audit(real.array);
        gcRuns += real.gcRuns + real.array.ftl.counters.gcRuns;
      } finally {
        real.array.abandon();
      }
    }),
    { seed, numRuns: 6 },
  );
  t.log(`GC runs: ${gcRuns}`);
  t.true(gcRuns > 0, 'the long runs must exercise garbage collection');
});
