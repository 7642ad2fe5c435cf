/**
 * Capacity history: samples of used and logical bytes kept at three resolutions, and the
 * least-squares fits that turn them into a fill rate and a date the array will be full.
 *
 * What it owns: the capacity samples in the 'analytics' sublevel (key `capacitySampleKey(tier,
 * timeMs)`, meta/keys.ts; value 24 bytes: f64 used bytes, f64 logical bytes, f64 capacity bytes,
 * little-endian) and their copy in memory (at most 576 + 720 + 365 samples, about 100 KiB, whatever the interval).
 *
 * Thinning with age. A sample goes into tier 0 (every 5 minutes, kept 2 days; at a shorter sampler
 * interval, PSTORAGE_ANALYTICS_INTERVAL_MS, one per interval for 576 intervals); the first sample of
 * each hour also goes into tier 1 (kept 30 days), and the first of each UTC day into tier 2 (kept a
 * year). Samples past a tier's age are deleted in the same batch that adds the new one, so the
 * history is bounded whatever the uptime. A fit reads tier 0 where it has samples, tier 1 before
 * the oldest tier-0 sample and tier 2 before that, and weighs each sample by the time it stands
 * for (5 min, 1 h, 1 day): otherwise the 576 recent samples would outvote 28 days of hourly ones.
 *
 * Fits: weighted least squares of used bytes against time over the last 7, 30 and 90 days; the
 * slope is the fill rate, and days until full = (capacity - used now) / slope when the slope is
 * positive (null when the array is not filling, or a window has fewer than two samples). Each fit
 * says how many samples it had and the span they cover, so a 90-day figure from 3 days of history
 * is not mistaken for a 90-day trend.
 *
 * Crash: batches are written `sync: false`; a crash loses at most the last few samples, which the
 * fits do not miss. Pure functions (`fitWindow`, `encodeSample`/`decodeSample`) have no I/O.
 */
import { StorageError } from '../common/errors.js';
import { capacitySampleKey, capacityTierRange, decodeCapacitySampleKey } from '../meta/keys.js';
import type { MetaOp, MetaStore } from '../meta/meta-store.js';

export interface CapacitySample {
  timeMs: number;
  usedBytes: number;
  logicalBytes: number;
  capacityBytes: number;
}

export const MINUTE_MS = 60_000;
export const HOUR_MS = 60 * MINUTE_MS;
export const DAY_MS = 24 * HOUR_MS;
export const SAMPLE_INTERVAL_MS = 5 * MINUTE_MS;

/** Samples tier 0 keeps: 2 days at the default 5-minute interval. */
export const TIER0_SAMPLES = 576;
/** Bounds of a sampling interval other than the default (PSTORAGE_ANALYTICS_INTERVAL_MS, for demos and tests). */
export const MIN_SAMPLE_INTERVAL_MS = 1000;
export const MAX_SAMPLE_INTERVAL_MS = HOUR_MS;

/**
 * Resolution and age limit of each tier, finest first, for a sampler running every
 * `sampleIntervalMs`: tier 0 holds one sample per interval for the last 576 intervals (2 days at
 * the default 5 minutes, 9.6 minutes at 1 s), so a short interval never grows the history.
 */
export function tiersFor(sampleIntervalMs: number): ReadonlyArray<{ intervalMs: number; keepMs: number }> {
  return [
    { intervalMs: sampleIntervalMs, keepMs: TIER0_SAMPLES * sampleIntervalMs },
    { intervalMs: HOUR_MS, keepMs: 30 * DAY_MS },
    { intervalMs: DAY_MS, keepMs: 365 * DAY_MS },
  ];
}
export const TIERS = tiersFor(SAMPLE_INTERVAL_MS);
export const FORECAST_WINDOWS_DAYS = [7, 30, 90] as const;
const SAMPLE_VALUE_BYTES = 24;

export interface Forecast {
  windowDays: number;
  /** Samples the fit used, and the days between the oldest and the newest of them. */
  samples: number;
  spanDays: number;
  /** Slopes of the fits, bytes per day (negative: shrinking); null with fewer than two samples. */
  usedBytesPerDay: number | null;
  logicalBytesPerDay: number | null;
  /** (capacity - used now) / used bytes per day; null when not filling or no fit. */
  daysUntilFull: number | null;
  fullAt: string | null;
}

export function encodeSample(sample: CapacitySample): Buffer {
  const value = Buffer.allocUnsafe(SAMPLE_VALUE_BYTES);
  value.writeDoubleLE(sample.usedBytes, 0);
  value.writeDoubleLE(sample.logicalBytes, 8);
  value.writeDoubleLE(sample.capacityBytes, 16);
  return value;
}

export function decodeSample(timeMs: number, value: Buffer): CapacitySample {
  if (value.length !== SAMPLE_VALUE_BYTES) throw StorageError.corrupt(`capacity sample of ${value.length} bytes, expected ${SAMPLE_VALUE_BYTES}`);
  return { timeMs, usedBytes: value.readDoubleLE(0), logicalBytes: value.readDoubleLE(8), capacityBytes: value.readDoubleLE(16) };
}

export class CapacityHistory {
  /** Per tier, oldest first. */
  readonly tiers: CapacitySample[][] = TIERS.map(() => []);
  /** This history's tiers (tier 0 at the sampler's interval). */
  readonly config: ReadonlyArray<{ intervalMs: number; keepMs: number }>;

  constructor(sampleIntervalMs: number = SAMPLE_INTERVAL_MS) {
    this.config = tiersFor(sampleIntervalMs);
  }

  static async load(meta: MetaStore, sampleIntervalMs: number = SAMPLE_INTERVAL_MS): Promise<CapacityHistory> {
    const history = new CapacityHistory(sampleIntervalMs);
    for (let tier = 0; tier < TIERS.length; tier++) {
      for await (const [key, value] of meta.iterate('analytics', capacityTierRange(tier))) {
        history.tiers[tier]!.push(decodeSample(decodeCapacitySampleKey(key).timeMs, value));
      }
    }
    return history;
  }

  /**
   * Adds `sample` to every tier whose current interval has none yet, drops what has aged out, and
   * returns the operations that make the same change in the store.
   */
  record(sample: CapacitySample): MetaOp[] {
    const ops: MetaOp[] = [];
    this.config.forEach(({ intervalMs, keepMs }, tier) => {
      const samples = this.tiers[tier]!;
      const last = samples[samples.length - 1];
      if (last === undefined || Math.floor(last.timeMs / intervalMs) < Math.floor(sample.timeMs / intervalMs)) {
        samples.push(sample);
        ops.push({ type: 'put', sublevel: 'analytics', key: capacitySampleKey(tier, sample.timeMs), value: encodeSample(sample) });
      }
      while (samples.length > 0 && samples[0]!.timeMs < sample.timeMs - keepMs) {
        ops.push({ type: 'del', sublevel: 'analytics', key: capacitySampleKey(tier, samples.shift()!.timeMs) });
      }
    });
    return ops;
  }

  /** The newest sample, if any. */
  get latest(): CapacitySample | undefined {
    const finest = this.tiers.find((samples) => samples.length > 0);
    return finest?.[finest.length - 1];
  }

  /** Samples from the finest tier that has them at each time, oldest first, with their weights (ms stood for). */
  merged(): Array<{ sample: CapacitySample; weight: number }> {
    const out: Array<{ sample: CapacitySample; weight: number }> = [];
    let before = Infinity;
    this.config.forEach(({ intervalMs }, tier) => {
      const older = this.tiers[tier]!.filter((sample) => sample.timeMs < before);
      out.unshift(...older.map((sample) => ({ sample, weight: intervalMs })));
      if (older.length > 0) before = older[0]!.timeMs;
    });
    return out;
  }

  forecasts(nowMs: number): Forecast[] {
    const merged = this.merged();
    const latest = this.latest;
    return FORECAST_WINDOWS_DAYS.map((windowDays) => fitWindow(merged.filter(({ sample }) => sample.timeMs >= nowMs - windowDays * DAY_MS), windowDays, latest, nowMs));
  }
}

/** Weighted least-squares slope of `y` against `x`; null with fewer than two distinct x. */
export function weightedSlope(points: ReadonlyArray<{ x: number; y: number; w: number }>): number | null {
  let sw = 0;
  let sx = 0;
  let sy = 0;
  for (const { x, y, w } of points) {
    sw += w;
    sx += w * x;
    sy += w * y;
  }
  if (points.length < 2 || sw <= 0) return null;
  const mx = sx / sw;
  const my = sy / sw;
  let sxy = 0;
  let sxx = 0;
  for (const { x, y, w } of points) {
    sxy += w * (x - mx) * (y - my);
    sxx += w * (x - mx) * (x - mx);
  }
  return sxx > 0 ? sxy / sxx : null;
}

export function fitWindow(points: ReadonlyArray<{ sample: CapacitySample; weight: number }>, windowDays: number, latest: CapacitySample | undefined, nowMs: number): Forecast {
  // x in days before now keeps the sums well inside a double's precision.
  const series = (pick: (sample: CapacitySample) => number) => points.map(({ sample, weight }) => ({ x: (sample.timeMs - nowMs) / DAY_MS, y: pick(sample), w: weight }));
  const usedBytesPerDay = weightedSlope(series((sample) => sample.usedBytes));
  const logicalBytesPerDay = weightedSlope(series((sample) => sample.logicalBytes));
  const spanDays = points.length > 0 ? (points[points.length - 1]!.sample.timeMs - points[0]!.sample.timeMs) / DAY_MS : 0;
  let daysUntilFull: number | null = null;
  if (usedBytesPerDay !== null && usedBytesPerDay > 0 && latest !== undefined) {
    daysUntilFull = Math.max(0, latest.capacityBytes - latest.usedBytes) / usedBytesPerDay;
  }
  return {
    windowDays,
    samples: points.length,
    spanDays: round(spanDays, 3),
    usedBytesPerDay: usedBytesPerDay === null ? null : Math.round(usedBytesPerDay),
    logicalBytesPerDay: logicalBytesPerDay === null ? null : Math.round(logicalBytesPerDay),
    daysUntilFull: daysUntilFull === null ? null : round(daysUntilFull, 2),
    fullAt: daysUntilFull === null || latest === undefined ? null : isoDate(latest.timeMs + daysUntilFull * DAY_MS),
  };
}

/** An ISO date, or null past what a Date can hold (a fill rate of a few bytes a day). */
function isoDate(timeMs: number): string | null {
  return timeMs < MAX_DATE_MS ? new Date(timeMs).toISOString() : null;
}
const MAX_DATE_MS = 8.64e15;

function round(value: number, digits: number): number {
  const scale = 10 ** digits;
  return Math.round(value * scale) / scale;
}
