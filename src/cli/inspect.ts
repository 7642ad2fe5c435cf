/** `pstorage stats`, `pstorage inspect audit` and `pstorage inspect repair`. */
import path from 'node:path';
import { StorageError } from '../common/errors.js';
import { createLogger } from '../common/log.js';
import { formatBytes } from '../common/size.js';
import { readKeyFile } from '../volume/array-key.js';
import { auditArray, type AuditReport } from '../volume/audit.js';
import { repairArray, type RepairReport } from '../volume/repair.js';
import { DataDirectoryInUse, callApi, withArray } from './api-client.js';
import { keyValues, printJson, table } from './output.js';
import type { IoSummary } from '../server/io-stats.js';

type Stats = Record<string, unknown> & {
  flash: Record<string, number>;
  hostSpace?: { state: string; totalBytes: number | null; availableBytes: number | null; reserveBytes: number; stalledBytes: number };
  reduction: Record<string, number | string | boolean>;
  volumes: Array<{ name: string; sizeBytes: number; logicalBytes: number; io?: Record<'read' | 'write', IoSummary> }>;
};

export async function statsCommand(dataDir: string, json: boolean): Promise<void> {
  const stats = await withArray<Stats>(dataDir, () => callApi(dataDir, 'GET', '/api/v1/metrics'), async (array) => array.stats() as Stats);
  if (json) return printJson(stats);
  const bytes = (key: string) => formatBytes(Number(stats[key] ?? 0));
  process.stdout.write(
    keyValues([
      ['capacity', bytes('capacityBytes')],
      ['physical used', bytes('physicalBytes')],
      ['free', bytes('freeBytes')],
      ['logical (mapped)', bytes('logicalBytes')],
      ['provisioned', `${bytes('provisionedBytes')} (over-commit ${stats.overCommitRatio}x)`],
      ['host bytes written', bytes('hostBytesWritten')],
      ['NAND bytes written', bytes('nandBytesWritten')],
      ['write amplification', String(stats.writeAmplification)],
      ['data reduction', `${stats.dataReductionRatio}:1 (logical / physical)`],
      ['  patterns', `${stats.reduction.patternBlocks} blocks, ${formatBytes(Number(stats.reduction.patternBytesSaved))} saved`],
      ['  dedup', `${stats.reduction.dedup ? 'on' : 'off'}, ${stats.reduction.dedupHits} hits, ${formatBytes(Number(stats.reduction.dedupBytesSaved))} saved`],
      ['  compression', `${stats.reduction.compression}, ${stats.reduction.compressionRatio}:1, ${formatBytes(Number(stats.reduction.compressionBytesSaved))} saved`],
      ['  thin provisioning', `${formatBytes(Number(stats.reduction.thinProvisioningBytesSaved))} not allocated`],
      ['erase blocks', `${stats.flash.eraseBlocks} (${stats.flash.freeEraseBlocks} free, ${stats.flash.badEraseBlocks} bad)`],
      ['P/E min/mean/max', `${stats.flash.peMin} / ${stats.flash.peMean} / ${stats.flash.peMax}`],
      ['flash health', `${stats.flash.flashHealthPercent}%`],
      ['host file system', hostSpaceLine(stats.hostSpace)],
    ]),
  );
  // Latency comes from the running server (since it started); an array opened here has none.
  const withLatency = stats.volumes.some((volume) => volume.io !== undefined);
  const header = ['VOLUME', 'SIZE', 'MAPPED', ...(withLatency ? ['READS', 'READ p50/p99/p99.9', 'WRITES', 'WRITE p50/p99/p99.9'] : [])];
  const rows = stats.volumes.map((volume) => {
    const row = [volume.name, formatBytes(volume.sizeBytes), formatBytes(volume.logicalBytes)];
    if (!withLatency) return row;
    const { read, write } = volume.io ?? { read: undefined, write: undefined };
    return [...row, String(read?.requests ?? 0), percentiles(read), String(write?.requests ?? 0), percentiles(write)];
  });
  process.stdout.write('\n' + table(header, rows));
}

/** "0.12 / 1.5 / 8 ms", or "-" before the first request. */
export function percentiles(summary: IoSummary | undefined): string {
  if (summary === undefined || summary.p50Ms === null) return '-';
  const ms = (value: number | null): string => (value === null ? '-' : value === Infinity ? '>72 s' : value >= 10 ? value.toFixed(0) : String(Number(value.toPrecision(2))));
  return `${ms(summary.p50Ms)} / ${ms(summary.p99Ms)} / ${ms(summary.p999Ms)} ms`;
}

/** "12.5 GiB free of 40 GiB, ok" or, when full, what waits for room and what to do. */
function hostSpaceLine(host: Stats['hostSpace']): string {
  if (host === undefined) return 'unknown';
  const free = host.availableBytes === null ? 'free space unknown' : `${formatBytes(host.availableBytes)} free of ${formatBytes(host.totalBytes ?? 0)}`;
  if (host.state === 'ok') return `${free}, ok (${formatBytes(host.reserveBytes)} reserved for metadata)`;
  const waiting = host.stalledBytes > 0 ? `, ${formatBytes(host.stalledBytes)} written data waiting for room` : '';
  return `${free}, FULL: writes fail with ENOSPC${waiting}; free space there (or TRIM) and the array recovers by itself`;
}

/** Returns the exit code: 0 when the audit is clean. */
export async function auditCommand(dataDir: string, json: boolean, keyFile?: string): Promise<number> {
  const report = await withArray<AuditReport>(dataDir, () => callApi(dataDir, 'POST', '/api/v1/audit'), (array) => auditArray(array), keyFile);
  if (json) printJson(report);
  else {
    process.stdout.write(
      keyValues([
        ['result', report.ok ? 'clean' : `${report.problems.length} problem(s)`],
        ['volumes', report.volumes],
        ['mapped blocks', report.mappedBlocks],
        ['live chunks', report.liveChunks],
        ['records verified', report.checkedRecords],
        ['erase blocks', report.eraseBlocks],
        ['duration', `${report.durationMs} ms`],
      ]),
    );
    for (const problem of report.problems) process.stdout.write(`problem: ${problem}\n`);
  }
  return report.ok ? 0 : 1;
}

/** Exit code of a repair that finished but had to mark blocks lost (they read as EIO). */
export const EXIT_REPAIRED_WITH_LOSS = 4;
/** Ranges listed per volume in the human output (--json lists all). */
const RANGES_SHOWN = 16;

/**
 * Returns the exit code: 0 repaired with nothing lost, 4 repaired with blocks lost (listed), 1
 * when the repaired array does not pass its audit. Refuses (exit 3) while a server runs.
 */
export async function repairCommand(dataDir: string, json: boolean, keyFile?: string): Promise<number> {
  if ((await callApi(dataDir, 'GET', '/api/v1/volumes')) !== null) {
    throw new DataDirectoryInUse(StorageError.busy(`a pstorage server is running on ${path.resolve(dataDir)}: stop it first (repair works on an idle data directory)`));
  }
  let report: RepairReport;
  try {
    const keyFileBytes = keyFile === undefined || keyFile === '' ? undefined : readKeyFile(keyFile);
    report = await repairArray(path.resolve(dataDir), createLogger({ component: 'repair' }), keyFileBytes);
  } catch (error) {
    if (error instanceof StorageError && error.code === 'BUSY') throw new DataDirectoryInUse(error);
    throw error;
  }
  if (json) printJson(report);
  else process.stdout.write(describeRepair(report));
  if (!report.ok) return 1;
  return report.lost.exports.length > 0 || report.lost.chunks > 0 ? EXIT_REPAIRED_WITH_LOSS : 0;
}

function describeRepair(report: RepairReport): string {
  const lostBytes = report.lost.exports.reduce((sum, entry) => sum + entry.lostBytes, 0);
  const lines = keyValues([
    ['result', report.ok ? (lostBytes > 0 ? `repaired; ${formatBytes(lostBytes)} of volume data lost (reads EIO)` : 'repaired; nothing lost') : 'repaired, but the audit still finds problems'],
    ['damaged sublevels', report.damagedSublevels.join(', ') || 'none found'],
    ['metadata read', `${report.salvage.files} file(s), ${formatBytes(report.salvage.bytes)}, ${report.salvage.versions} entries intact`],
    ['old metadata kept in', report.damagedCopy],
    ['audit', report.audit.ok ? `clean (${report.audit.checkedRecords} records verified)` : `${report.audit.problems.length} problem(s)`],
    ['duration', `${report.durationMs} ms`],
  ]);
  const out = [lines];
  for (const where of [...report.salvage.damagedBlocks, ...report.salvage.logDamage]) out.push(`damaged: ${where}\n`);
  for (const line of report.rebuilt) out.push(`rebuilt: ${line}\n`);
  for (const note of report.notes) out.push(`note: ${note}\n`);
  if (report.lost.counters) out.push('lost: the host and NAND byte counters (reset to 0)\n');
  for (const entry of report.lost.exports) {
    const shown = entry.ranges.slice(0, RANGES_SHOWN).map((range) => `${range.offsetBytes}+${range.lengthBytes}`);
    const more = entry.ranges.length > RANGES_SHOWN ? ` ... (${entry.ranges.length - RANGES_SHOWN} more; --json lists all)` : '';
    out.push(`lost: ${entry.name}: ${formatBytes(entry.lostBytes)} in ${entry.ranges.length} range(s) (offset+length bytes): ${shown.join(' ')}${more}\n`);
  }
  for (const problem of report.audit.problems) out.push(`problem: ${problem}\n`);
  if (report.lost.exports.length > 0) out.push('Lost blocks read as EIO until they are written again; restore them from a backup.\n');
  return out.join('');
}
