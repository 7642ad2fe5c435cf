/**
 * Erase-block sequence numbers are never reused after a crash: blocks opened after the last
 * commit took numbers the metadata does not record, and their pages (with valid checksums) may
 * still be on NAND when the block is opened again. Every page on NAND must carry a sequence
 * below the one the reopened array hands out next.
 */
import test from 'ava';
import crypto from 'node:crypto';
import { silentLogger } from '../../src/common/log.js';
import { PAGE_MAGIC, PAGE_MAGIC_AT, PAGE_SEQUENCE_AT } from '../../src/ftl/page-format.js';
import { MemoryMetaStore } from '../../src/meta/memory-store.js';
import { MemoryNand } from '../../src/nand/memory-nand.js';
import { FlashArray } from '../../src/volume/flash-array.js';

const B = 4096;

async function highestSequenceOnNand(nand: MemoryNand): Promise<number> {
  let highest = -1;
  for (let block = 0; block < nand.geometry.eraseBlockCount; block++) {
    const pages = nand.blockInfo(block).writePointer;
    if (pages === 0) continue;
    const data = await nand.readPages(block, 0, pages);
    for (let page = 0; page < pages; page++) {
      const at = page * nand.geometry.pageBytes;
      if (data.readUInt16BE(at + PAGE_MAGIC_AT) === PAGE_MAGIC) highest = Math.max(highest, data.readUInt32BE(at + PAGE_SEQUENCE_AT));
    }
  }
  return highest;
}

test('after a crash with uncommitted blocks on NAND, new blocks get sequences above every page on NAND', async (t) => {
  const geometry = { pageBytes: 4096, pagesPerEraseBlock: 16, eraseBlockCount: 128, enduranceCycles: 100_000 };
  let nand = new MemoryNand(geometry);
  let meta = new MemoryMetaStore();
  let array = await FlashArray.assemble('memory', meta, nand, silentLogger, { reductionWorkers: 0, compression: 'none', dedup: false }, true);
  const volume = await array.createVolume('v', 4096 * B);
  await volume.write(0, crypto.randomBytes(64 * B), { fua: false });
  await array.flush();
  // Enough unflushed data to open several blocks whose programs reach NAND without a commit.
  await volume.write(64 * B, crypto.randomBytes(200 * B), { fua: false });
  // The NAND part of a commit completes (programs + NAND sync) and the power fails before the
  // metadata batch: NAND holds pages of blocks the metadata never heard of.
  await new Promise((resolve) => setTimeout(resolve, 10));
  await nand.sync();
  array.abandon();
  nand = nand.crash();
  meta = meta.crash();
  const onNand = await highestSequenceOnNand(nand);
  t.true(onNand > 0, 'pages were programmed before the crash');
  array = await FlashArray.assemble('memory', meta, nand, silentLogger, { reductionWorkers: 0, compression: 'none', dedup: false }, false);
  t.true(array.ftl.sequence > onNand, `next sequence ${array.ftl.sequence} must be above ${onNand}, the highest on NAND`);
  // And the array still works: writes go to new blocks, reads return them.
  const reopened = array.lookup('v')!.device;
  const data = crypto.randomBytes(300 * B);
  await reopened.write(0, data, { fua: true });
  const extents = await reopened.read(0, data.length);
  t.true(Buffer.concat(extents.map((extent) => extent.data ?? Buffer.alloc(extent.lengthBytes))).equals(data));
  array.abandon();
});
