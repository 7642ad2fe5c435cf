/**
 * `pstorage analytics`: the capacity forecast, health score and hot/cold shares of
 * mgmt/analytics.ts, through the running server (whose sampler keeps the history), or from the
 * history stored in the data directory when no server runs.
 */
import { formatBytes } from '../common/size.js';
import type { AnalyticsReport } from '../mgmt/analytics.js';
import { analytics } from '../mgmt/operations.js';
import { request } from './api-client.js';
import { keyValues, printJson, table } from './output.js';

export async function analyticsCommand(dataDir: string, json: boolean): Promise<void> {
  const report = await request<AnalyticsReport>(dataDir, 'GET', '/api/v1/analytics', undefined, (array) => analytics(array, null));
  if (json) return printJson(report);
  process.stdout.write(renderAnalytics(report));
}

/** The human form: current use, one forecast row per window, health, one row per volume. */
export function renderAnalytics(report: AnalyticsReport): string {
  const current = report.current;
  const head = keyValues([
    ['used', current === null ? '-' : `${formatBytes(current.usedBytes)} of ${formatBytes(current.capacityBytes)} (${formatBytes(current.freeBytes)} free)`],
    ['logical (mapped)', current === null ? '-' : formatBytes(current.logicalBytes)],
    ['history since', report.trackingSince],
    ['samples', `${report.samples.tier5m} x ${intervalText(report.sampleIntervalMs)}, ${report.samples.tier1h} x 1 h, ${report.samples.tier1d} x 1 day`],
    ['health', `${report.health.score}/100 (limited by ${report.health.limitedBy}; wear ${report.health.wearScore}, retired blocks ${report.health.retiredScore}, free space ${report.health.freeScore})`],
  ]);
  const perDay = (bytes: number | null) => (bytes === null ? '-' : `${bytes < 0 ? '-' : ''}${formatBytes(Math.abs(bytes))}/day`);
  const forecasts = table(
    ['WINDOW', 'SAMPLES', 'SPAN', 'USED RATE', 'LOGICAL RATE', 'DAYS UNTIL FULL', 'FULL ON'],
    report.forecasts.map((f) => [`${f.windowDays} d`, f.samples, `${f.spanDays} d`, perDay(f.usedBytesPerDay), perDay(f.logicalBytesPerDay), f.daysUntilFull === null ? 'not filling' : String(f.daysUntilFull), f.fullAt?.slice(0, 10) ?? '-']),
  );
  const share = (value: number | null) => (value === null ? '-' : `${(value * 100).toFixed(1)} %`);
  const volumes = table(
    ['VOLUME', 'MAPPED', 'NOT WRITTEN 1 d', '7 d', '30 d'],
    report.volumes.map((v) => [v.name, formatBytes(v.mappedBlocks * 4096), share(v.notWrittenFor['1d']), share(v.notWrittenFor['7d']), share(v.notWrittenFor['30d'])]),
  );
  return `${head}\n${forecasts}\n${volumes}`;
}

/** The finest tier's interval: '5 min' by default, '2 s' under PSTORAGE_ANALYTICS_INTERVAL_MS=2000. */
function intervalText(ms: number): string {
  return ms % 60_000 === 0 ? `${ms / 60_000} min` : `${ms / 1000} s`;
}
