/**
 * Capacity analytics (issue: observability, part 3), driven by an injected clock, never by real
 * waiting: forecasts from a synthetic fill at a known rate land within 5 % of the true days until
 * full for each window (7, 30, 90 days); the history stays bounded and thinned; history and write
 * ages survive a restart (LevelDB on disk); hot/cold shares follow the write times; the health
 * score follows wear, retired blocks and free space.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import test from 'ava';
import { StorageError } from '../../src/common/errors.js';
import { silentLogger } from '../../src/common/log.js';
import { MemoryMetaStore } from '../../src/meta/memory-store.js';
import { Analytics, health, sampleIntervalFromEnv } from '../../src/mgmt/analytics.js';
import { CapacityHistory, DAY_MS, FORECAST_WINDOWS_DAYS, SAMPLE_INTERVAL_MS, TIER0_SAMPLES, TIERS } from '../../src/mgmt/capacity-history.js';
import { FlashArray } from '../../src/volume/flash-array.js';
import { seededBytes } from '../helpers/interop.js';
import { memoryArray } from '../helpers/reduce-data.js';
import { recordingLogger } from '../engine/ftl-harness.js';
import { MemoryNand } from '../../src/nand/memory-nand.js';

const GiB = 1024 ** 3;
const MiB = 1024 ** 2;
const GEOMETRY = { pageBytes: 4096, pagesPerEraseBlock: 16, eraseBlockCount: 256, enduranceCycles: 3000 };

/** A seeded generator (mulberry32) for the sampling noise; the seed is printed. */
function random(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let x = Math.imul(state ^ (state >>> 15), 1 | state);
    x = (x + Math.imul(x ^ (x >>> 7), 61 | x)) ^ x;
    return ((x ^ (x >>> 14)) >>> 0) / 4294967296;
  };
}

test('days until full from 7, 30 and 90-day fits is within 5 % of the truth for a synthetic fill', async (t) => {
  const seed = Number(process.env.PSTORAGE_TEST_SEED ?? 1414);
  const next = random(seed);
  const startMs = Date.UTC(2026, 0, 1);
  const capacityBytes = 4096 * GiB;
  const baseBytes = 1024 * GiB;
  const rateBytesPerDay = 20 * GiB;
  const days = 100;
  const meta = new MemoryMetaStore();
  const history = new CapacityHistory();
  let nowMs = startMs;
  for (; nowMs <= startMs + days * DAY_MS; nowMs += SAMPLE_INTERVAL_MS) {
    const elapsedDays = (nowMs - startMs) / DAY_MS;
    // A known linear fill, plus a daily swing of 4 GiB (GC, nightly jobs) and ±2 GiB of noise.
    const usedBytes = baseBytes + rateBytesPerDay * elapsedDays + 4 * GiB * Math.sin(2 * Math.PI * elapsedDays) + (next() * 4 - 2) * GiB;
    await meta.batch(history.record({ timeMs: nowMs, usedBytes, logicalBytes: usedBytes * 3, capacityBytes }), { sync: false });
  }
  nowMs -= SAMPLE_INTERVAL_MS;
  const trueUsedBytes = baseBytes + rateBytesPerDay * days;
  const trueDays = (capacityBytes - trueUsedBytes) / rateBytesPerDay;
  const reloaded = await CapacityHistory.load(meta);
  t.deepEqual(reloaded.tiers, history.tiers, 'what the batches stored is what is in memory');
  t.deepEqual(history.tiers.map((samples) => samples.length), [576 + 1, 720 + 1, days + 1].map((n, tier) => Math.min(n, Math.floor(TIERS[tier]!.keepMs / TIERS[tier]!.intervalMs) + 1)), 'bounded: 2 days of 5-minute, 30 days of hourly, daily samples');
  const forecasts = reloaded.forecasts(nowMs);
  t.log(`seed ${seed}; true days until full ${trueDays.toFixed(2)} (fill ${rateBytesPerDay / GiB} GiB/day)`);
  for (const forecast of forecasts) {
    const errorShare = Math.abs(forecast.daysUntilFull! - trueDays) / trueDays;
    t.log(`window ${forecast.windowDays} d: ${forecast.samples} samples over ${forecast.spanDays} d, ${(forecast.usedBytesPerDay! / GiB).toFixed(3)} GiB/day, days until full ${forecast.daysUntilFull} (true ${trueDays.toFixed(2)}, error ${(errorShare * 100).toFixed(2)} %)`);
    t.true(errorShare < 0.05, `window ${forecast.windowDays}: ${forecast.daysUntilFull} vs ${trueDays}`);
    t.true(Math.abs(forecast.logicalBytesPerDay! / (3 * rateBytesPerDay) - 1) < 0.05, 'the logical fill rate too');
    t.true(forecast.spanDays <= forecast.windowDays && forecast.spanDays > forecast.windowDays - 1.1, `the fit says what span it had: ${forecast.spanDays}`);
  }
  t.deepEqual(forecasts.map((forecast) => forecast.windowDays), [...FORECAST_WINDOWS_DAYS]);
  t.is(forecasts[2]!.samples, history.tiers[0]!.length + 28 * 24 + 60, '90 days: 2 days of 5-minute samples, then hourly to 30 days, then daily');
});

test('a short history says so: no fit from one sample, spans as long as the history', (t) => {
  const history = new CapacityHistory();
  const startMs = Date.UTC(2026, 5, 1);
  history.record({ timeMs: startMs, usedBytes: GiB, logicalBytes: GiB, capacityBytes: 10 * GiB });
  t.is(history.forecasts(startMs)[0]!.daysUntilFull, null);
  history.record({ timeMs: startMs + DAY_MS, usedBytes: 2 * GiB, logicalBytes: GiB, capacityBytes: 10 * GiB });
  const [week, month] = history.forecasts(startMs + DAY_MS);
  t.is(week!.samples, 2);
  t.is(week!.spanDays, 1);
  t.is(week!.daysUntilFull, 8);
  t.is(month!.daysUntilFull, 8);
  t.is(week!.logicalBytesPerDay, 0);
  history.record({ timeMs: startMs + 2 * DAY_MS, usedBytes: GiB, logicalBytes: GiB, capacityBytes: 10 * GiB });
  t.is(history.forecasts(startMs + 2 * DAY_MS)[0]!.daysUntilFull, null, 'not filling: no date');
});

test('a short sampling interval (PSTORAGE_ANALYTICS_INTERVAL_MS) keeps one sample per interval, still bounded', async (t) => {
  t.is(sampleIntervalFromEnv({}), SAMPLE_INTERVAL_MS, 'the default: 5 minutes');
  t.is(sampleIntervalFromEnv({ PSTORAGE_ANALYTICS_INTERVAL_MS: '2000' }), 2000);
  for (const bad of ['999', '1.5e3', 'fast', '3600001']) t.throws(() => sampleIntervalFromEnv({ PSTORAGE_ANALYTICS_INTERVAL_MS: bad }), { message: /1000 to 3600000/ }, bad);
  const meta = new MemoryMetaStore();
  const history = new CapacityHistory(1000);
  const startMs = Date.UTC(2026, 0, 1);
  for (let second = 0; second < 3600; second++) {
    await meta.batch(history.record({ timeMs: startMs + second * 1000, usedBytes: GiB + second * MiB, logicalBytes: GiB, capacityBytes: 64 * GiB }), { sync: false });
  }
  t.deepEqual(history.tiers.map((samples) => samples.length), [TIER0_SAMPLES + 1, 1, 1], 'tier 0: the last 576 seconds; hourly and daily tiers as ever');
  t.deepEqual((await CapacityHistory.load(meta, 1000)).tiers, history.tiers, 'what the batches stored is what is in memory');
  const [week] = history.forecasts(startMs + 3599 * 1000);
  t.true(Math.abs(week!.usedBytesPerDay! - 86400 * MiB) <= 1, `the fit sees 1 MiB a second: ${week!.usedBytesPerDay} bytes a day`);
});

test('hot/cold shares follow the write times of each 4 MiB extent', async (t) => {
  let nowMs = Date.now();
  const { array } = await memoryArray(t, GEOMETRY, { cacheBytes: 4 * MiB, reductionWorkers: 0, nowMs: () => nowMs });
  const analytics = await Analytics.open(array);
  const volume = await array.createVolume('v', 64 * MiB);
  await array.createVolume('empty', 64 * MiB);
  const advance = (days: number) => {
    nowMs += days * DAY_MS;
    array.clock.refresh();
  };
  // Extents 0-3: 16 blocks each, 15 days ago; extent 4: 16 blocks, 5 days ago; extent 5: 32 blocks, 2 hours ago.
  for (let extent = 0; extent < 4; extent++) await volume.write(extent * 4 * MiB, seededBytes(64 * 1024, extent), { fua: false });
  advance(10);
  await volume.write(4 * 4 * MiB + 8192, seededBytes(64 * 1024, 10), { fua: false });
  advance(5 - 2 / 24);
  await volume.write(5 * 4 * MiB, seededBytes(128 * 1024, 11), { fua: false });
  advance(2 / 24);
  const report = await analytics.report();
  const v = report.volumes.find((entry) => entry.name === 'v')!;
  t.log(JSON.stringify(v));
  t.is(v.mappedBlocks, 112);
  t.is(v.untrackedBlocks, 0);
  t.deepEqual(v.notWrittenFor, { '1d': Math.round((80 / 112) * 10000) / 10000, '7d': Math.round((64 / 112) * 10000) / 10000, '30d': 0 });
  t.deepEqual(report.volumes.find((entry) => entry.name === 'empty')!.notWrittenFor, { '1d': null, '7d': null, '30d': null });
  // Rewriting a cold extent makes it hot again; trimming one removes its blocks from the shares.
  await volume.write(0, seededBytes(4096, 20), { fua: false });
  await volume.trim(4 * MiB, 4 * MiB, { fua: false });
  const after = (await analytics.report()).volumes.find((entry) => entry.name === 'v')!;
  t.is(after.mappedBlocks, 96);
  // Extents 2-3 (32 blocks, 15 days) and 4 (16 blocks, 5 days) are cold; 0 (16) and 5 (32) are hot.
  t.deepEqual(after.notWrittenFor, { '1d': 0.5, '7d': Math.round((32 / 96) * 10000) / 10000, '30d': 0 });
  advance(30);
  t.deepEqual((await analytics.report()).volumes.find((entry) => entry.name === 'v')!.notWrittenFor, { '1d': 1, '7d': 1, '30d': 1 });
  await analytics.close();
});

test('history and write ages survive a restart (LevelDB on disk), and the report reads map pages not cached', async (t) => {
  const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'pstorage-analytics-'));
  t.teardown(() => fs.rmSync(dataDir, { recursive: true, force: true }));
  let nowMs = Date.UTC(2026, 2, 1);
  const options = { capacityBytes: 64 * MiB, cacheBytes: 8 * MiB, reductionWorkers: 0, nowMs: () => nowMs };
  const first = (await FlashArray.open(dataDir, silentLogger, options)).array;
  const volume = await first.createVolume('v', 256 * MiB);
  let analytics = await Analytics.open(first);
  await volume.write(0, seededBytes(256 * 1024, 1), { fua: false });
  for (let i = 0; i < 3 * 24 * 12; i++) {
    await analytics.sample();
    nowMs += SAMPLE_INTERVAL_MS;
    first.clock.refresh();
  }
  await volume.write(100 * MiB, seededBytes(128 * 1024, 2), { fua: false });
  await analytics.close();
  const before = await analytics.report();
  await first.close();
  t.true(before.samples.tier5m === 577 && before.samples.tier1h === 73 && before.samples.tier1d === 4, JSON.stringify(before.samples));

  const second = (await FlashArray.open(dataDir, silentLogger, options)).array;
  t.teardown(() => second.close());
  analytics = await Analytics.open(second);
  t.true(second.maps.cache.peek(0) === undefined, 'nothing cached yet');
  const after = await analytics.report();
  t.deepEqual(after.samples, before.samples);
  t.deepEqual(after.forecasts, before.forecasts);
  t.is(after.trackingSince, before.trackingSince);
  t.deepEqual(after.volumes, before.volumes);
  t.deepEqual(after.volumes[0]!.notWrittenFor, { '1d': Math.round((64 / 96) * 10000) / 10000, '7d': 0, '30d': 0 }, '64 blocks 3 days old, 32 blocks new');
});

test('health is the lowest of wear, retired erase blocks and free space', async (t) => {
  const { array } = await memoryArray(t, GEOMETRY, { cacheBytes: 4 * MiB, reductionWorkers: 0 });
  const fresh = health(array);
  t.is(fresh.score, 100);
  for (let block = 0; block < GEOMETRY.eraseBlockCount; block++) array.ftl.table.eraseCount[block] = 1500;
  const worn = health(array);
  t.is(worn.wearScore, 50);
  t.is(worn.score, 50);
  t.is(worn.limitedBy, 'wear');
  const volume = await array.createVolume('v', 64 * MiB);
  const fillBytes = Math.floor(array.ftl.usableBytes * 0.9 / 65536) * 65536;
  await volume.write(0, seededBytes(fillBytes, 3), { fua: false });
  const full = health(array);
  t.log(JSON.stringify(full));
  t.true(full.freeScore < 60 && full.freeScore > 30, `about 10 % free: ${full.freeScore}`);
  t.is(full.limitedBy, 'wear');
});

test('a damaged analytics sublevel does not stop the array: analytics start afresh, with a warning, and sample again', async (t) => {
  const meta = new MemoryMetaStore();
  const logger = recordingLogger();
  const array = await FlashArray.assemble('memory', meta, new MemoryNand(GEOMETRY), logger, { cacheBytes: 4 * MiB, reductionWorkers: 0 }, true);
  t.teardown(() => array.close().catch(() => undefined));
  await array.createVolume('v', 64 * MiB);
  const first = await Analytics.open(array);
  await first.sample(true);
  await first.close();
  // LevelDB reporting corruption in a table block that holds analytics keys (see cli/repair.test.ts).
  const iterate = meta.iterate.bind(meta);
  meta.iterate = (sublevel, range) => {
    if (sublevel !== 'analytics') return iterate(sublevel, range);
    return (async function* () {
      yield* [] as Array<[Buffer, Buffer]>;
      throw StorageError.corrupt('metadata iteration in analytics: LevelDB reports corruption (Corruption: bad block type)');
    })();
  };
  const analytics = await Analytics.open(array);
  t.deepEqual(logger.lines.map((line) => line.msg), ['capacity history and write ages unreadable: analytics start afresh; run "pstorage inspect repair" when the server is stopped']);
  t.is(analytics.history.tiers[0]!.length, 0, 'no history');
  await analytics.sample(true);
  t.is((await analytics.report()).samples.tier5m, 1, 'a fresh sample');
  await analytics.close();
});
