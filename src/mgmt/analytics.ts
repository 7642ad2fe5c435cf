/**
 * Capacity analytics: the sampler that keeps the capacity history (capacity-history.ts), and the
 * report behind `pstorage analytics` and `GET /api/v1/analytics`: fill-rate forecasts, a health
 * score, and per-volume hot/cold shares from the write ages (volume/write-age.ts).
 *
 * What it owns: the 'analytics' sublevel (meta/keys.ts): capacity samples, each volume's write-age
 * segments (value: 1024 u32 minutes, little-endian, the typed array's own bytes) and the time
 * analytics began (`TRACKING_START_KEY`, u64 ms big-endian). None of it is read by the data path.
 *
 * Cost: the sampler runs on an unref'd timer every 5 minutes (and once at start; `pstorage serve`
 * takes a shorter interval from PSTORAGE_ANALYTICS_INTERVAL_MS, at least 1 s, for demos). A sample reads
 * the array's counters (O(volumes)) and writes the write-age segments holding an extent written
 * since the previous sample: a segment is one 4 KiB value for 4 GiB of volume, and a scan of all
 * of them costs about 1 ms per TiB written. The hot/cold shares need each tracked extent's mapped
 * blocks: taken from the map page cache when the page is there, else read from LevelDB in batches
 * (without entering the cache, so a report never evicts the data path's pages). That is on request
 * only, never on a timer.
 *
 * Hot/cold shares: a volume's mapped blocks are weighed per extent by the top layer's mapped
 * entries, with the age of that extent's last write. Mapped blocks no tracked extent accounts for
 * (blocks a clone shares with its origin, blocks under a snapshot, blocks written before analytics
 * began) were last written no later than the newest of: the volume's creation, its newest
 * snapshot, the start of tracking; they are counted with that age, a lower bound (flagged as
 * `untrackedBlocks`). Health: the lowest of three scores (0-100): wear (1 - mean P/E / rated
 * cycles), retired erase blocks (0 when 5 % of blocks are retired), free space (falls linearly
 * below 20 % free, 0 when full).
 *
 * Crash: batches are `sync: false`; `close()` writes the last state with `sync: true`. A crash
 * loses at most one interval of write ages (those extents then look older than they are).
 */
import { isStorageError } from '../common/errors.js';
import { TRACKING_START_KEY, decodeWriteAgeKey, volumeMapKey, writeAgeKey, writeAgeRange } from '../meta/keys.js';
import type { MetaOp } from '../meta/meta-store.js';
import type { FlashArray } from '../volume/flash-array.js';
import { EntryKind, LBAS_PER_MAP_PAGE, MapPage } from '../volume/map-page.js';
import { mapCacheId } from '../volume/map-table.js';
import type { Volume } from '../volume/volume.js';
import { SEGMENT_EXTENTS, type WriteAges } from '../volume/write-age.js';
import { CapacityHistory, DAY_MS, MAX_SAMPLE_INTERVAL_MS, MINUTE_MS, MIN_SAMPLE_INTERVAL_MS, SAMPLE_INTERVAL_MS, type Forecast } from './capacity-history.js';

export const COLD_AFTER_DAYS = [1, 7, 30] as const;
const RETIRED_LIMIT_SHARE = 0.05;
const FREE_COMFORT_SHARE = 0.2;
/** Map pages read from LevelDB per batch while weighing extents. */
const MAP_READ_BATCH = 256;

export interface HealthReport {
  score: number;
  limitedBy: 'wear' | 'retired' | 'free';
  wearScore: number;
  retiredScore: number;
  freeScore: number;
  peMean: number;
  peMax: number;
  enduranceCycles: number;
  retiredEraseBlocks: number;
  eraseBlocks: number;
  freeShare: number;
}

export interface VolumeTemperature {
  name: string;
  mappedBlocks: number;
  /** Blocks whose age is a lower bound (see the design note). */
  untrackedBlocks: number;
  /** Share (0-1) of mapped blocks not written for at least 1, 7 and 30 days; null when none is mapped. */
  notWrittenFor: Record<'1d' | '7d' | '30d', number | null>;
}

export interface AnalyticsReport {
  generatedAt: string;
  trackingSince: string;
  sampleIntervalMs: number;
  samples: { tier5m: number; tier1h: number; tier1d: number };
  current: { usedBytes: number; logicalBytes: number; capacityBytes: number; freeBytes: number } | null;
  forecasts: Forecast[];
  health: HealthReport;
  volumes: VolumeTemperature[];
  /** With `{ history: true }`: [time ms, used bytes, logical bytes, capacity bytes], oldest first, finest tier at each time. */
  history?: Array<[number, number, number, number]>;
}

export interface AnalyticsOptions {
  /** Wall clock (tests inject one); default the array's clock. */
  nowMs?: () => number;
  sampleIntervalMs?: number;
}

/**
 * The sampling interval `pstorage serve` uses: PSTORAGE_ANALYTICS_INTERVAL_MS when set (whole
 * milliseconds, 1000 to 3600000; for demos and tests that want a capacity history within
 * minutes), else 5 minutes. Anything else is an error, not a silent default.
 */
export function sampleIntervalFromEnv(env: NodeJS.ProcessEnv = process.env): number {
  const text = env.PSTORAGE_ANALYTICS_INTERVAL_MS;
  if (text === undefined || text === '') return SAMPLE_INTERVAL_MS;
  const value = /^\d+$/.test(text) ? Number(text) : NaN;
  if (!Number.isInteger(value) || value < MIN_SAMPLE_INTERVAL_MS || value > MAX_SAMPLE_INTERVAL_MS) {
    throw new Error(`PSTORAGE_ANALYTICS_INTERVAL_MS must be a whole number of milliseconds from ${MIN_SAMPLE_INTERVAL_MS} to ${MAX_SAMPLE_INTERVAL_MS}, not "${text}"`);
  }
  return value;
}

export class Analytics {
  private timer: NodeJS.Timeout | null = null;
  /** Clock minute at the last write-age persist: segments with a newer entry are written again. */
  private persistedMinute = 0;
  /** Per volume with persisted segments: one more than the highest segment index persisted. */
  private readonly persistedSegments = new Map<number, number>();
  private sampling: Promise<void> = Promise.resolve();
  private closed = false;
  readonly nowMs: () => number;

  private constructor(
    private readonly array: FlashArray,
    readonly history: CapacityHistory,
    readonly trackingStartMs: number,
    private readonly sampleIntervalMs: number,
    nowMs: () => number,
  ) {
    this.nowMs = nowMs;
  }

  /**
   * Loads the history and the persisted write ages (merged into the array's, newest wins). None of
   * it is needed to serve data, so a damaged 'analytics' sublevel (LevelDB reports corruption) is
   * logged and analytics start afresh, from now; `pstorage inspect repair` drops the damage.
   */
  static async open(array: FlashArray, options: AnalyticsOptions = {}): Promise<Analytics> {
    const nowMs = options.nowMs ?? array.clock.nowMs;
    const sampleIntervalMs = options.sampleIntervalMs ?? SAMPLE_INTERVAL_MS;
    try {
      const history = await CapacityHistory.load(array.meta, sampleIntervalMs);
      const startBytes = await array.meta.get('analytics', TRACKING_START_KEY);
      const trackingStartMs = startBytes === undefined ? nowMs() : Number(startBytes.readBigUInt64BE(0));
      const analytics = new Analytics(array, history, trackingStartMs, sampleIntervalMs, nowMs);
      await analytics.loadWriteAges();
      return analytics;
    } catch (error) {
      if (!(isStorageError(error) && error.code === 'CORRUPT')) throw error;
      array.logger.warn('capacity history and write ages unreadable: analytics start afresh; run "pstorage inspect repair" when the server is stopped', { error: error.message });
      return new Analytics(array, new CapacityHistory(sampleIntervalMs), nowMs(), sampleIntervalMs, nowMs);
    }
  }

  private async loadWriteAges(): Promise<void> {
    const live = new Set([...this.array.volumes.values()].map((volume) => volume.record.id));
    for await (const [key, value] of this.array.meta.iterate('analytics', writeAgeRange())) {
      const { volumeId, segmentIndex } = decodeWriteAgeKey(key);
      this.notePersisted(volumeId, segmentIndex);
      if (!live.has(volumeId) || value.length !== SEGMENT_EXTENTS * 4) continue;
      const minutes = new Uint32Array(SEGMENT_EXTENTS);
      new Uint8Array(minutes.buffer).set(value);
      this.array.writeAgesOf(volumeId).merge(segmentIndex, minutes);
    }
  }

  /** Samples now, then every interval on an unref'd timer, until `close()`. */
  start(): void {
    void this.sampleNow();
    this.timer = setInterval(() => void this.sampleNow(), this.sampleIntervalMs);
    this.timer.unref();
  }

  /** One sample (serialized with any running one); errors are the caller's to log. */
  sample(sync = false): Promise<void> {
    const next = this.sampling.then(() => this.takeSample(sync));
    this.sampling = next.catch(() => undefined);
    return next;
  }

  private async sampleNow(): Promise<void> {
    if (this.closed) return;
    try {
      await this.sample();
    } catch (error) {
      this.array.logger.warn('capacity sample failed', { error: (error as Error).message });
    }
  }

  private async takeSample(sync: boolean): Promise<void> {
    const stats = this.array.stats() as { physicalBytes: number; logicalBytes: number; capacityBytes: number };
    const timeMs = this.nowMs();
    const ops = this.history.record({ timeMs, usedBytes: stats.physicalBytes, logicalBytes: stats.logicalBytes, capacityBytes: stats.capacityBytes });
    if (this.history.tiers[0]!.length === 1 && ops.length > 0) {
      const start = Buffer.alloc(8);
      start.writeBigUInt64BE(BigInt(Math.floor(this.trackingStartMs)));
      ops.push({ type: 'put', sublevel: 'analytics', key: TRACKING_START_KEY, value: start });
    }
    const minute = this.array.clock.minute;
    ops.push(...this.writeAgeOps());
    await this.array.meta.batch(ops, { sync });
    this.persistedMinute = minute;
  }

  /** Puts for segments written since the last persist; deletes for volumes that are gone. */
  private writeAgeOps(): MetaOp[] {
    const ops: MetaOp[] = [];
    for (const [volumeId, ages] of this.array.writeAges) {
      ages.segments.forEach((segment, segmentIndex) => {
        if (segment === undefined || !newerThan(segment, this.persistedMinute)) return;
        this.notePersisted(volumeId, segmentIndex);
        ops.push({ type: 'put', sublevel: 'analytics', key: writeAgeKey(volumeId, segmentIndex), value: Buffer.from(segment.slice().buffer) });
      });
    }
    for (const [volumeId, segmentCount] of [...this.persistedSegments]) {
      if (this.array.writeAges.has(volumeId)) continue;
      // A deleted volume: one delete per segment it may have persisted (one per 4 GiB of volume).
      this.persistedSegments.delete(volumeId);
      for (let segmentIndex = 0; segmentIndex < segmentCount; segmentIndex++) ops.push({ type: 'del', sublevel: 'analytics', key: writeAgeKey(volumeId, segmentIndex) });
    }
    return ops;
  }

  private notePersisted(volumeId: number, segmentIndex: number): void {
    this.persistedSegments.set(volumeId, Math.max(this.persistedSegments.get(volumeId) ?? 0, segmentIndex + 1));
  }

  async report(options: { history?: boolean } = {}): Promise<AnalyticsReport> {
    const nowMs = this.nowMs();
    const stats = this.array.stats() as { physicalBytes: number; logicalBytes: number; capacityBytes: number; freeBytes: number };
    const volumes: VolumeTemperature[] = [];
    for (const volume of [...this.array.volumes.values()].sort((a, b) => a.record.name.localeCompare(b.record.name))) {
      volumes.push(await this.temperature(volume, nowMs));
    }
    const tiers = this.history.tiers;
    return {
      generatedAt: new Date(nowMs).toISOString(),
      trackingSince: new Date(this.trackingStartMs).toISOString(),
      sampleIntervalMs: this.sampleIntervalMs,
      samples: { tier5m: tiers[0]!.length, tier1h: tiers[1]!.length, tier1d: tiers[2]!.length },
      current: { usedBytes: stats.physicalBytes, logicalBytes: stats.logicalBytes, capacityBytes: stats.capacityBytes, freeBytes: stats.freeBytes },
      forecasts: this.history.forecasts(nowMs),
      health: health(this.array),
      volumes,
      ...(options.history === true ? { history: this.history.merged().map(({ sample }) => [sample.timeMs, sample.usedBytes, sample.logicalBytes, sample.capacityBytes] as [number, number, number, number]) } : {}),
    };
  }

  private async temperature(volume: Volume, nowMs: number): Promise<VolumeTemperature> {
    const record = volume.record;
    const ages = this.array.writeAges.get(record.id);
    const weighed = ages === undefined ? [] : await this.weighExtents(record.topLayerId, ages);
    const nowMinute = nowMs / MINUTE_MS;
    const coldAfterMinutes = COLD_AFTER_DAYS.map((days) => (days * DAY_MS) / MINUTE_MS);
    const cold = COLD_AFTER_DAYS.map(() => 0);
    let tracked = 0;
    for (const { minute, blocks } of weighed) {
      tracked += blocks;
      coldAfterMinutes.forEach((limit, i) => (cold[i]! += nowMinute - minute >= limit ? blocks : 0));
    }
    const untrackedBlocks = Math.max(0, record.mappedBlocks - tracked);
    const newestSnapshotMs = Math.max(0, ...[...this.array.snapshots.values()].filter((s) => s.volumeId === record.id).map((s) => Date.parse(s.createdAt)));
    const latestPossibleMinute = Math.max(Date.parse(record.createdAt) || 0, this.trackingStartMs, newestSnapshotMs) / MINUTE_MS;
    coldAfterMinutes.forEach((limit, i) => (cold[i]! += nowMinute - latestPossibleMinute >= limit ? untrackedBlocks : 0));
    const total = Math.max(record.mappedBlocks, tracked);
    const share = (blocks: number) => (total === 0 ? null : Math.round((blocks / total) * 10000) / 10000);
    return { name: record.name, mappedBlocks: record.mappedBlocks, untrackedBlocks, notWrittenFor: { '1d': share(cold[0]!), '7d': share(cold[1]!), '30d': share(cold[2]!) } };
  }

  /** Per tracked extent: its last-write minute and the mapped entries of the top layer's map page. */
  private async weighExtents(layerId: number, ages: WriteAges): Promise<Array<{ minute: number; blocks: number }>> {
    const out: Array<{ minute: number; blocks: number }> = [];
    const uncached: Array<{ extent: number; minute: number }> = [];
    ages.forEach((extent, minute) => {
      const page = this.array.maps.cache.peek(mapCacheId(layerId, extent));
      if (page === undefined) uncached.push({ extent, minute });
      else out.push({ minute, blocks: mappedEntries(page) });
    });
    for (let i = 0; i < uncached.length; i += MAP_READ_BATCH) {
      const slice = uncached.slice(i, i + MAP_READ_BATCH);
      const values = await this.array.meta.getMany('map', slice.map(({ extent }) => volumeMapKey(layerId, extent)));
      slice.forEach(({ minute }, k) => out.push({ minute, blocks: values[k] === undefined ? 0 : mappedEntries(MapPage.decode(values[k])) }));
    }
    return out;
  }

  /** Stops sampling and writes the last state durably. */
  async close(): Promise<void> {
    if (this.timer !== null) clearInterval(this.timer);
    this.timer = null;
    this.closed = true;
    await this.sample(true);
  }
}

function newerThan(segment: Uint32Array, minute: number): boolean {
  for (let i = 0; i < segment.length; i++) if (segment[i]! >= minute && segment[i] !== 0) return true;
  return false;
}

/** Blocks of the page holding data, a pattern or a lost marker (holes and absent entries do not count). */
function mappedEntries(page: MapPage): number {
  let count = 0;
  for (let slot = 0; slot < LBAS_PER_MAP_PAGE; slot++) {
    const kind = page.kinds[slot]!;
    if (kind === EntryKind.Chunk || kind === EntryKind.Pattern || kind === EntryKind.Lost) count += 1;
  }
  return count;
}

export function health(array: FlashArray): HealthReport {
  const flash = array.ftl.stats();
  const enduranceCycles = array.nand.geometry.enduranceCycles;
  const capacityBytes = array.ftl.usableBytes;
  const freeShare = capacityBytes > 0 ? Math.max(0, capacityBytes - array.ftl.liveBytes) / capacityBytes : 0;
  const wearScore = clampScore(100 * (1 - flash.peMean! / enduranceCycles));
  const retiredScore = clampScore(100 * (1 - flash.badEraseBlocks! / (flash.eraseBlocks! * RETIRED_LIMIT_SHARE)));
  const freeScore = clampScore(100 * Math.min(1, freeShare / FREE_COMFORT_SHARE));
  const scores = { wear: wearScore, retired: retiredScore, free: freeScore } as const;
  const limitedBy = (Object.keys(scores) as Array<keyof typeof scores>).reduce((worst, name) => (scores[name] < scores[worst] ? name : worst), 'wear');
  return {
    score: scores[limitedBy],
    limitedBy,
    wearScore,
    retiredScore,
    freeScore,
    peMean: flash.peMean!,
    peMax: flash.peMax!,
    enduranceCycles,
    retiredEraseBlocks: flash.badEraseBlocks!,
    eraseBlocks: flash.eraseBlocks!,
    freeShare: Math.round(freeShare * 10000) / 10000,
  };
}

function clampScore(value: number): number {
  return Math.round(Math.max(0, Math.min(100, value)) * 10) / 10;
}
