/**
 * What a NAND program costs the host when its erase block was punched out of the image first
 * versus when its old pages are still cached (FileNand's warm pool): writes 256 KiB blocks over a
 * 128 MiB region of a sparse file, `--gib` GiB in all (default 4), either punching each block just
 * before rewriting it or overwriting in place, and prints CPU seconds per GiB and the rate.
 *
 *   node build/scripts/rewrite-cost.js [--gib 4] [--dir /tmp]
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { trim } from 'fs-native-extensions';

const BLOCK_BYTES = 256 * 1024;
const REGION_BYTES = 128 * 1024 * 1024;

async function measure(dir: string, punch: boolean, totalBytes: number): Promise<string> {
  const scratch = fs.mkdtempSync(path.join(dir, 'rewrite-cost-'));
  const fd = fs.openSync(path.join(scratch, 'image'), 'w+');
  try {
    fs.ftruncateSync(fd, REGION_BYTES);
    const block = Buffer.alloc(BLOCK_BYTES, 7);
    for (let at = 0; at < REGION_BYTES; at += BLOCK_BYTES) fs.writeSync(fd, block, 0, BLOCK_BYTES, at);
    const cpu = process.cpuUsage();
    const started = performance.now();
    for (let done = 0; done < totalBytes; done += BLOCK_BYTES) {
      const at = done % REGION_BYTES;
      if (punch) await trim(fd, at, BLOCK_BYTES);
      fs.writeSync(fd, block, 0, BLOCK_BYTES, at);
    }
    const used = process.cpuUsage(cpu);
    const gib = totalBytes / 2 ** 30;
    const seconds = (performance.now() - started) / 1000;
    return `${punch ? 'punch, then rewrite' : 'overwrite in place '}  CPU ${((used.user + used.system) / 1e6 / gib).toFixed(3)} s/GiB (system ${(used.system / 1e6 / gib).toFixed(3)})  ${(gib / seconds).toFixed(2)} GiB/s`;
  } finally {
    fs.closeSync(fd);
    fs.rmSync(scratch, { recursive: true, force: true });
  }
}

const args = process.argv.slice(2);
const option = (name: string, fallback: string) => (args.includes(name) ? args[args.indexOf(name) + 1]! : fallback);
const gib = Number(option('--gib', '4'));
if (!(gib > 0)) throw new Error('--gib takes a positive number');
const dir = option('--dir', os.tmpdir());
for (let round = 0; round < 3; round++) {
  console.log(await measure(dir, true, gib * 2 ** 30));
  console.log(await measure(dir, false, gib * 2 ** 30));
}
