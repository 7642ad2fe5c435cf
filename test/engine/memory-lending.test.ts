/**
 * The memory budget's lending (common/memory-budget.ts): the NAND image's read mapping may use
 * what the map and chunk page caches leave unused of their shares, and gives it back as they fill.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import test from 'ava';
import { silentLogger } from '../../src/common/log.js';
import { FileNand } from '../../src/nand/index.js';
import { FlashArray } from '../../src/volume/flash-array.js';

const MiB = 1024 * 1024;

test('balanceMemory lends the mapping what the page caches leave unused (less an eighth of the budget), and takes it back as they fill', async (t) => {
  const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'pstorage-lending-'));
  const { array } = await FlashArray.open(dataDir, silentLogger, { capacityBytes: 256 * MiB, cacheBytes: 16 * MiB, reductionWorkers: 0 });
  try {
    const nand = array.nand as FileNand;
    const plan = array.memory;
    t.is(nand.mappedLimit, plan.mappedReadBytes, 'before the first rebalance, the mapping has its own share');
    array.balanceMemory();
    const lentAtStart = nand.mappedLimit - plan.mappedReadBytes;
    const lendable = plan.mapPageBytes + plan.chunkPageBytes - plan.cacheBytes / 8;
    t.true(lentAtStart > 0.9 * lendable && lentAtStart <= lendable, `nearly all of both page caches' shares lent, less an eighth of the budget (${lentAtStart} of ${lendable} bytes)`);
    // Unique data in scattered places fills map and chunk pages.
    const volume = await array.createVolume('v', 192 * MiB);
    for (let i = 0; i < 3000; i++) {
      const block = Buffer.alloc(4096, i % 251);
      block.writeUInt32LE(i, 0);
      await volume.write(((i * 7919) % 49152) * 4096, block, { fua: false });
    }
    await array.flush();
    array.balanceMemory();
    const lent = nand.mappedLimit - plan.mappedReadBytes;
    t.true(lent < lentAtStart, `less is lent once the caches hold pages (${lent} < ${lentAtStart})`);
    t.true(nand.mappedBytes <= nand.mappedLimit);
  } finally {
    await array.close();
    fs.rmSync(dataDir, { recursive: true, force: true });
  }
});
