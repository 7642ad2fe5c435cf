/**
 * The host file system fills up (ENOSPC under the NAND image or under LevelDB), through the real
 * array over memory devices that model it: `MemoryNand.hostSpacePages` (a program with no room
 * fails with NO_SPACE and writes nothing) and `MemoryMetaStore.hostFull` (a batch fails and stops
 * writes until a reopen). The array must refuse new data instead of acknowledging it into memory,
 * fail FLUSH while acknowledged data is not durable, log it once, keep every acknowledged block
 * readable, and recover by itself when room comes back; nothing flushed is ever lost, and nothing
 * acknowledged is lost once a later FLUSH succeeded. Seeded (see ftl-harness.ts).
 */
import { randomBytes } from 'node:crypto';
import test, { type ExecutionContext } from 'ava';
import { concatReadExtents } from '../../src/common/block-device.js';
import { silentLogger } from '../../src/common/log.js';
import { MemoryMetaStore } from '../../src/meta/memory-store.js';
import { MemoryNand } from '../../src/nand/memory-nand.js';
import { FlashArray } from '../../src/volume/flash-array.js';
import type { FileSystemSpace } from '../../src/meta/space-reserve.js';
import { Harness, codeOf, seedFor } from './ftl-harness.js';

/** The injected statfs: what the memory NAND's simulated host file system has left. */
function spaceOf(box: { nand: MemoryNand | null }): () => Promise<FileSystemSpace | null> {
  return async () => {
    const nand = box.nand;
    if (nand === null || nand.hostSpacePages === null) return { totalBytes: 1 << 30, availableBytes: 1 << 30 };
    const pageBytes = nand.geometry.pageBytes;
    return { totalBytes: nand.hostSpacePages * pageBytes, availableBytes: Math.max(0, nand.hostSpacePages - nand.hostPagesHeld) * pageBytes };
  };
}

async function fullHarness(t: ExecutionContext): Promise<{ h: Harness; nand: MemoryNand; box: { nand: MemoryNand | null } }> {
  const seed = seedFor(t);
  const box: { nand: MemoryNand | null } = { nand: null };
  const h = await Harness.create(seed, { hostSpace: { space: spaceOf(box), pollMs: 5 } });
  const nand = h.nand as MemoryNand;
  box.nand = nand;
  return { h, nand, box };
}

async function until(predicate: () => boolean, what: string, timeoutMs = 5000): Promise<number> {
  const started = Date.now();
  while (!predicate()) {
    if (Date.now() - started > timeoutMs) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
  return Date.now() - started;
}

function hostState(h: Harness): Record<string, unknown> {
  return h.array.stats().hostSpace as Record<string, unknown>;
}

test('NAND programs hit ENOSPC: writes fail with NO_SPACE, FLUSH fails, acknowledged blocks stay readable; room back: recovers by itself, nothing lost', async (t) => {
  const { h, nand, box } = await fullHarness(t);
  const seed = h.seed;
  for (let lba = 0; lba < 200; lba += 8) await h.write(lba, 8);
  await h.volume.flush();
  const { pagesPerEraseBlock } = nand.geometry;
  // Room for two more erase blocks of data, then the host file system is full.
  nand.hostSpacePages = nand.hostPagesHeld + 2 * pagesPerEraseBlock;
  let acked = 0;
  let failure: unknown = null;
  for (let lba = 200; lba < 1000 && failure === null; lba++) {
    try {
      await h.write(lba, 1);
      acked += 1;
    } catch (error) {
      failure = error;
    }
  }
  t.is(codeOf(failure), 'NO_SPACE', `(seed ${seed})`);
  t.log(`${acked} blocks acknowledged after the flush before writes were refused`);
  // Acknowledged beyond the room: at most the blocks in flight when the program failed (here one
  // erase block's buffer): never without bound.
  t.true(acked <= 3 * pagesPerEraseBlock, `${acked} blocks acknowledged (seed ${seed})`);
  await t.throwsAsync(h.volume.flush(), { code: 'NO_SPACE' }, 'FLUSH reports that acknowledged data is not durable');
  await t.throwsAsync(h.write(0, 1), { code: 'NO_SPACE' });
  const full = hostState(h);
  t.is(full.state, 'full');
  t.true((full.stalledBytes as number) > 0);
  t.true((full.refusedWrites as number) >= 2);
  t.deepEqual(await h.mismatches(0, 200 + acked), [], `every acknowledged block reads back while full (seed ${seed})`);
  await h.trim(0, 16); // TRIM is taken: it only frees space
  t.deepEqual(h.logged('error').map((line) => line.split(' {')[0]), ['host file system full: new writes fail with ENOSPC until space returns; flushed data is safe']);

  nand.hostSpacePages = null;
  const recoverMs = await until(() => hostState(h).state === 'ok', 'the array to recover');
  t.log(`recovered ${recoverMs} ms after room came back`);
  const ok = hostState(h);
  t.is(ok.recoveries, 1);
  t.true((ok.retriedBytes as number) > 0);
  t.is(ok.stalledBytes, 0);
  await h.volume.flush();
  for (let lba = 1000; lba < 1100; lba += 4) await h.write(lba, 4);
  await h.volume.flush();
  t.deepEqual(await h.mismatches(0, 1100), [], `after recovery (seed ${seed})`);
  t.deepEqual(h.logged('error').length, 1, 'one error line for the whole fault');
  const reopened = await h.crashAndReopen();
  box.nand = reopened.nand as MemoryNand;
  t.deepEqual(await reopened.mismatches(0, 1100), [], `after a crash, everything flushed is there (seed ${seed})`);
  await reopened.close();
});

test('the program of a FLUSH fails after the commit captured its metadata: the next commit still carries it', async (t) => {
  const { h, nand } = await fullHarness(t);
  const seed = h.seed;
  for (let lba = 0; lba < 40; lba += 4) await h.write(lba, 4);
  await h.volume.flush();
  await h.write(40, 3); // in the open page's buffer: the FLUSH programs it, after capturing its journal
  nand.hostSpacePages = nand.hostPagesHeld;
  await t.throwsAsync(h.volume.flush(), { code: 'NO_SPACE' });
  nand.hostSpacePages = null;
  await until(() => hostState(h).state === 'ok', 'the array to recover');
  const reopened = await h.crashAndReopen();
  t.deepEqual(await reopened.mismatches(0, 64), [], `(seed ${seed})`);
  await reopened.close();
});

test('a crash while full keeps everything flushed; the stalled, never flushed writes read old or new', async (t) => {
  const { h, nand } = await fullHarness(t);
  const seed = h.seed;
  for (let lba = 0; lba < 300; lba += 4) await h.write(lba, 4);
  await h.volume.flush();
  const flushed = h.versions.slice();
  nand.hostSpacePages = nand.hostPagesHeld + nand.geometry.pagesPerEraseBlock;
  for (let lba = 0; lba < 300; lba++) {
    try {
      await h.write(lba, 1);
    } catch {
      break;
    }
  }
  await t.throwsAsync(h.volume.flush(), { code: 'NO_SPACE' });
  const written = h.versions.slice();
  const reopened = await h.crashAndReopen();
  const problems: string[] = [];
  for (let lba = 0; lba < 300; lba++) {
    const [got] = await reopened.volume.read(lba * 4096, 4096).then((extents) => extents.map((extent) => extent.data ?? Buffer.alloc(4096)));
    reopened.versions[lba] = flushed[lba]!;
    const old = reopened.expected(lba);
    reopened.versions[lba] = written[lba]!;
    const fresh = reopened.expected(lba);
    if (!got!.equals(old) && !got!.equals(fresh)) problems.push(`lba ${lba}`);
  }
  t.deepEqual(problems, [], `(seed ${seed})`);
  await reopened.close();
});

test('LevelDB hits ENOSPC: the failed commit loses nothing, the store is reopened, and what was acknowledged is durable after recovery', async (t) => {
  const { h } = await fullHarness(t);
  const seed = h.seed;
  for (let lba = 0; lba < 100; lba += 4) await h.write(lba, 4);
  await h.volume.flush();
  for (let lba = 100; lba < 140; lba += 4) await h.write(lba, 4); // acknowledged, not flushed
  h.meta.hostFull = true;
  await t.throwsAsync(h.volume.flush(), { code: 'NO_SPACE' });
  t.is(hostState(h).state, 'full');
  t.true(hostState(h).metadataWritesStopped as boolean);
  await t.throwsAsync(h.write(200, 1), { code: 'NO_SPACE' });
  h.meta.hostFull = false;
  await until(() => hostState(h).state === 'ok', 'the array to recover');
  t.is(h.meta.reopens, 1, 'the store was reopened before writing again');
  // No FLUSH since the failed one: the recovery commit made the acknowledged writes durable.
  const reopened = await h.crashAndReopen();
  t.deepEqual(await reopened.mismatches(0, 140), [], `(seed ${seed})`);
  await reopened.close();
});

test('a shutdown while still full fails and says what it could not save; a shutdown once room is back succeeds', async (t) => {
  const { h, nand } = await fullHarness(t);
  for (let lba = 0; lba < 64; lba += 4) await h.write(lba, 4);
  await h.volume.flush();
  nand.hostSpacePages = nand.hostPagesHeld;
  for (let lba = 64; lba < 200; lba++) {
    try {
      await h.write(lba, 1);
    } catch {
      break;
    }
  }
  await until(() => h.array.ftl.stalledBytes > 0, 'a stalled program');
  await t.throwsAsync(h.array.close(), { code: 'NO_SPACE', message: /acknowledged writes that were never flushed could not be made durable: data flushed before is safe/ });
  t.true(nand.isClosed, 'the devices were closed all the same');

  const second = await fullHarness(t);
  for (let lba = 0; lba < 64; lba += 4) await second.h.write(lba, 4);
  second.nand.hostSpacePages = second.nand.hostPagesHeld;
  for (let lba = 64; lba < 200; lba++) {
    try {
      await second.h.write(lba, 1);
    } catch {
      break;
    }
  }
  await until(() => second.h.array.ftl.stalledBytes > 0, 'a stalled program');
  second.nand.hostSpacePages = null;
  await second.h.array.close(); // the last chance writes the stalled programs and checkpoints
  t.pass();
});

/** Memory NAND whose programs wait while `hold()` is in force: a disk that is slow, or slow to fail. */
class GatedNand extends MemoryNand {
  private gate: Promise<void> | null = null;
  private open: () => void = () => {};
  hold(): void {
    this.gate = new Promise((resolve) => (this.open = resolve));
  }
  release(): void {
    this.gate = null;
    this.open();
  }
  protected override async doProgramPages(eraseBlockIndex: number, firstPageIndex: number, data: Buffer): Promise<void> {
    if (this.gate !== null) await this.gate;
    return super.doProgramPages(eraseBlockIndex, firstPageIndex, data);
  }
}

test('programs that hang (ext4 near ENOSPC, a slow disk): acknowledged data waiting on them is bounded, then all of it lands', async (t) => {
  const MiB = 1024 * 1024;
  const nand = new GatedNand({ pageBytes: 4096, pagesPerEraseBlock: 16, eraseBlockCount: 512, enduranceCycles: 3000 });
  const array = await FlashArray.assemble('unused', new MemoryMetaStore(), nand, silentLogger, { reductionWorkers: 0, ftl: { maxProgramBytesInFlight: MiB } }, true);
  const volume = await array.createVolume('v', 16 * MiB);
  nand.hold();
  const chunks = Array.from({ length: 128 }, () => randomBytes(64 * 1024));
  let acked = 0;
  const writes = chunks.map((chunk, i) => volume.write(i * chunk.length, chunk, { fua: false }).then(() => (acked += chunk.length)));
  await until(() => array.ftl.programsBacklogged, 'the programs in flight to pass the limit');
  await new Promise((resolve) => setTimeout(resolve, 100)); // anything more would be taken by now
  t.log(`${acked / MiB} MiB acknowledged while the programs hang`);
  // The limit, plus what one batch applies before the next check (a batch is at most 4 MiB).
  t.true(acked <= 6 * MiB, `${acked / MiB} MiB acknowledged`);
  t.true(acked < 8 * MiB, 'some writes wait');
  nand.release();
  await Promise.all(writes);
  await volume.flush();
  const read = concatReadExtents(await volume.read(0, 8 * MiB), 8 * MiB);
  t.true(read.equals(Buffer.concat(chunks)));
  await array.close();
});
