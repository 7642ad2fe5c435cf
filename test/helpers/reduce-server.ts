/**
 * Data-reduction figures from a running `pstorage serve` (and from `pstorage estimate`), read
 * through the CLI exactly as a user would: `pstorage stats --json --data-dir DIR` and
 * `pstorage estimate --json FILE`.
 */
import { PSTORAGE_BIN, type PstorageProcess } from './pstorage-process.js';
import { mustRun } from './interop.js';

export interface ServerStats {
  physicalBytes: number;
  logicalBytes: number;
  hostBytesWritten: number;
  nandBytesWritten: number;
  writeAmplification: number;
  dataReductionRatio: number;
  reduction: { liveChunks: number; dedupHits: number; patternBlocks: number; compressionRatio: number };
}

export interface EstimateReport {
  logicalBytes: number;
  blocks: number;
  patternBlocks: number;
  duplicateBlocks: number;
  uniqueBlocks: number;
  compressedBytes: number;
  physicalBytes: number;
  dataReductionRatio: number;
}

export async function serverStats(server: PstorageProcess): Promise<ServerStats> {
  const result = await mustRun(process.execPath, [PSTORAGE_BIN, 'stats', '--json', '--data-dir', server.dataDir], { timeoutMs: 30_000 });
  return JSON.parse(result.stdout) as ServerStats;
}

export async function estimateImage(file: string): Promise<EstimateReport> {
  const result = await mustRun(process.execPath, [PSTORAGE_BIN, 'estimate', '--json', file], { timeoutMs: 120_000 });
  return JSON.parse(result.stdout) as EstimateReport;
}

/**
 * An nbdcopy endpoint for `lengthBytes` of an export starting at `offsetBytes`: nbdkit's nbd
 * plugin with the offset filter, run by nbdcopy itself (the `[ CMD ]` form, socket activation).
 */
export function exportWindow(server: PstorageProcess, offsetBytes: number, lengthBytes: number, exportName = 'default'): string[] {
  return ['[', 'nbdkit', '--exit-with-parent', '--filter=offset', 'nbd', `socket=${server.socketPath}`, `export=${exportName}`, `offset=${offsetBytes}`, `range=${lengthBytes}`, ']'];
}
