import fs from 'node:fs';
import path from 'node:path';
import test from 'ava';
import { SpaceReserve, fileSystemSpace, reserveBytesFor } from '../../src/meta/space-reserve.js';
import { mountSmallFs } from '../helpers/small-fs.js';

const MiB = 1024 * 1024;

test('the reserve takes its space up front, gives it back, and on a full file system takes nothing', async (t) => {
  const small = mountSmallFs(t, 'tmpfs', 24 * MiB);
  const reserve = new SpaceReserve(small.mountPoint);
  const before = (await fileSystemSpace(small.mountPoint)).availableBytes;
  t.true(await reserve.hold(8 * MiB));
  t.is(reserve.heldBytes, 8 * MiB);
  t.true(fs.statSync(reserve.filePath).blocks * 512 >= 8 * MiB, 'allocated, not sparse');
  t.true((await fileSystemSpace(small.mountPoint)).availableBytes <= before - 8 * MiB);
  t.true(await reserve.hold(8 * MiB), 'holding again what is held costs nothing');
  t.is(await new SpaceReserve(small.mountPoint).load(), 8 * MiB, 'found again after a restart');
  await reserve.release();
  t.is(reserve.heldBytes, 0);
  t.false(fs.existsSync(reserve.filePath));
  t.true((await fileSystemSpace(small.mountPoint)).availableBytes >= before);
  small.fill('filler', 4 * MiB);
  t.false(await reserve.hold(8 * MiB), 'no room: not held');
  t.false(fs.existsSync(reserve.filePath), 'and nothing half-taken is left behind');
  t.true(small.space().availableBytes >= 3 * MiB);
  fs.rmSync(path.join(small.mountPoint, 'filler'));
});

test('the reserve is 5 % of the file system, 8 to 64 MiB', (t) => {
  t.is(reserveBytesFor(100 * MiB), 8 * MiB);
  t.is(reserveBytesFor(600 * MiB), 30 * MiB);
  t.is(reserveBytesFor(1024 * 1024 * MiB), 64 * MiB);
});
