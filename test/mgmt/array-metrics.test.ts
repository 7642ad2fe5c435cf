/**
 * The array's own metrics (issue: observability, metric gaps): metadata commit durations and
 * counts, metadata cache hits and misses, and GC time, rendered by PrometheusMetrics over an array
 * on memory NAND (engine/ftl-harness.ts), where a test can flush, reopen with cold caches and
 * force garbage collection in well under a second. metrics.test.ts checks the same names on a
 * real `pstorage serve`, and promtool there; here promtool runs too when it is installed.
 */
import { spawnSync } from 'node:child_process';
import test from 'ava';
import { PrometheusMetrics } from '../../src/mgmt/prometheus.js';
import { IoStats } from '../../src/server/io-stats.js';
import { COMMIT_BUCKETS_SECONDS } from '../../src/common/latency-histogram.js';
import { Harness, seedFor } from '../engine/ftl-harness.js';
import { parseExposition, sample } from '../helpers/exposition.js';
import { describeRun, run } from '../helpers/interop.js';


async function scrape(h: Harness): Promise<{ text: string; samples: Map<string, number> }> {
  const text = await new PrometheusMetrics(h.array, new IoStats(), { recoveryMs: 0 }).render();
  return { text, samples: parseExposition(text) };
}

/** The commit histogram is whole: cumulative buckets, +Inf = _count = pstorage_metadata_commits_total. */
function commitHistogram(samples: Map<string, number>): { count: number; sumSeconds: number } {
  const name = 'pstorage_metadata_commit_duration_seconds';
  const count = sample(samples, `${name}_count`);
  let previous = 0;
  for (const le of [...COMMIT_BUCKETS_SECONDS.map(String), '+Inf']) {
    const bucket = sample(samples, `${name}_bucket`, { le });
    if (bucket < previous) throw new Error(`bucket le=${le} (${bucket}) is below the one before (${previous})`);
    previous = bucket;
  }
  if (previous !== count) throw new Error(`+Inf bucket ${previous} but _count ${count}`);
  if (count !== sample(samples, 'pstorage_metadata_commits_total')) throw new Error(`_count ${count} but commits_total ${sample(samples, 'pstorage_metadata_commits_total')}`);
  return { count, sumSeconds: sample(samples, `${name}_sum`) };
}

test('each flush is a commit in the histogram and in pstorage_metadata_commits_total; a failed commit counts in both and in the failures', async (t) => {
  const h = await Harness.create(seedFor(t));
  const before = commitHistogram((await scrape(h)).samples);
  t.is(COMMIT_BUCKETS_SECONDS[0], 1e-4, 'buckets from 100 µs...');
  t.is(COMMIT_BUCKETS_SECONDS.at(-1), 10, '...to 10 s');
  for (let i = 0; i < 3; i++) {
    await h.write(i);
    await h.volume.flush();
  }
  const { samples } = await scrape(h);
  const after = commitHistogram(samples);
  t.true(after.count >= before.count + 3, `${before.count} commits, then ${after.count} after three flushes`);
  t.true(after.sumSeconds > before.sumSeconds, 'commits take some time');
  t.is(sample(samples, 'pstorage_metadata_commit_failures_total'), 0);

  // A batch the metadata store refuses (its disk is full): the commit fails, and is counted.
  h.meta.hostFull = true;
  await h.write(10);
  await t.throwsAsync(h.volume.flush());
  const failed = (await scrape(h)).samples;
  t.is(commitHistogram(failed).count, after.count + 1);
  t.is(sample(failed, 'pstorage_metadata_commit_failures_total'), 1);
  h.array.abandon();
});

test('a read of metadata that is not cached counts a miss; reading it again counts hits, not misses', async (t) => {
  const seed = seedFor(t);
  let h = await Harness.create(seed);
  // 600 unique blocks: chunk ids 0..599 over three chunk-table pages, so page 0 is not the page
  // new chunks are allocated from (which an open loads).
  await h.write(0, 600);
  await h.array.checkpoint();
  h = await h.crashAndReopen();
  const cold = (await scrape(h)).samples;
  for (const cache of ['map', 'chunk']) {
    t.true(sample(cold, 'pstorage_cache_bytes', { cache }) >= 0, cache);
    t.is(sample(cold, 'pstorage_cache_dirty_bytes', { cache }), 0, `${cache}: nothing changed since the checkpoint`);
  }
  t.false([...cold.keys()].some((key) => key.includes('cache="nand_mapping"')), 'memory NAND has no read mapping');

  t.deepEqual(await h.mismatches(0, 4), []);
  const first = (await scrape(h)).samples;
  t.true(sample(first, 'pstorage_cache_misses_total', { cache: 'map' }) > sample(cold, 'pstorage_cache_misses_total', { cache: 'map' }), 'the map page was read from the store');
  t.true(sample(first, 'pstorage_cache_misses_total', { cache: 'chunk' }) > sample(cold, 'pstorage_cache_misses_total', { cache: 'chunk' }), 'the chunk page was read from the store');
  t.true(sample(first, 'pstorage_cache_bytes', { cache: 'map' }) > sample(cold, 'pstorage_cache_bytes', { cache: 'map' }), 'and is held now');

  t.deepEqual(await h.mismatches(0, 4), []);
  const again = (await scrape(h)).samples;
  for (const cache of ['map', 'chunk']) {
    t.is(sample(again, 'pstorage_cache_misses_total', { cache }), sample(first, 'pstorage_cache_misses_total', { cache }), `${cache}: no new miss`);
    t.true(sample(again, 'pstorage_cache_hits_total', { cache }) > sample(first, 'pstorage_cache_hits_total', { cache }), `${cache}: hits`);
  }
  // A write dirties its pages until the next commit writes them back.
  await h.write(1);
  t.true(sample((await scrape(h)).samples, 'pstorage_cache_dirty_bytes', { cache: 'map' }) > 0, 'a dirty map page');
  await h.close();
});

test('forced garbage collection adds to pstorage_gc_seconds_total; promtool accepts the exposition', async (t) => {
  const seed = seedFor(t);
  const h = await Harness.create(seed);
  t.is(sample((await scrape(h)).samples, 'pstorage_gc_seconds_total'), 0, 'no GC yet');
  // Fill 80 % with unique data, then overwrite at random until GC has run.
  const fillLbas = Math.floor(h.capacityLbas * 0.8);
  for (let lba = 0; lba < fillLbas; lba += 8) await h.write(lba, Math.min(8, fillLbas - lba));
  for (let round = 0; round < 20 && h.array.ftl.counters.gcRuns === 0; round++) {
    await h.drive(fillLbas / 2, 4, () => ({ lba: h.random.nextInt(fillLbas), count: 1 }));
  }
  await h.volume.flush();
  await h.quiesce();
  const { text, samples } = await scrape(h);
  t.true(sample(samples, 'pstorage_gc_runs_total') > 0, `GC ran (seed ${seed})`);
  t.true(sample(samples, 'pstorage_gc_seconds_total') > 0, `GC took time (seed ${seed})`);
  t.true(commitHistogram(samples).count > 0);
  await h.close();

  if (spawnSync('sh', ['-c', 'command -v promtool'], { stdio: 'ignore' }).status !== 0) {
    t.log('promtool is not installed: metrics.test.ts checks the exposition of a real server with it');
    return;
  }
  const lint = await run('promtool', ['check', 'metrics'], { input: text, timeoutMs: 30_000 });
  t.is(lint.code, 0, `promtool check metrics found problems\n${describeRun(lint)}`);
});
