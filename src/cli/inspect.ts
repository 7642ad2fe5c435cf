/** `pstorage stats` and `pstorage inspect audit`. */
import { formatBytes } from '../common/size.js';
import { auditArray, type AuditReport } from '../volume/audit.js';
import { callApi, withArray } from './api-client.js';
import { keyValues, printJson, table } from './output.js';

type Stats = Record<string, unknown> & {
  flash: Record<string, number>;
  hostSpace?: { state: string; totalBytes: number | null; availableBytes: number | null; reserveBytes: number; stalledBytes: number };
  reduction: Record<string, number | string | boolean>;
  volumes: Array<{ name: string; sizeBytes: number; logicalBytes: number }>;
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
  process.stdout.write('\n' + table(['VOLUME', 'SIZE', 'MAPPED'], stats.volumes.map((volume) => [volume.name, formatBytes(volume.sizeBytes), formatBytes(volume.logicalBytes)])));
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
export async function auditCommand(dataDir: string, json: boolean): Promise<number> {
  const report = await withArray<AuditReport>(dataDir, () => callApi(dataDir, 'POST', '/api/v1/audit'), (array) => auditArray(array));
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
