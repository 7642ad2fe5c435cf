/** `pstorage estimate FILE`: what the array would save on an existing image, read-only. */
import fs from 'node:fs';
import { formatBytes } from '../common/size.js';
import type { CompressionName } from '../reduce/codec.js';
import { ReductionEstimator } from '../reduce/estimator.js';
import { keyValues, printJson } from './output.js';
import { ProgressBar } from './progress.js';

export async function estimateCommand(file: string, options: { json: boolean; compression: CompressionName; dedup: boolean }): Promise<void> {
  const { size } = await fs.promises.stat(file);
  const estimator = new ReductionEstimator(options.compression, options.dedup);
  const progress = new ProgressBar(`estimating ${file}`, size);
  const stream = fs.createReadStream(file, { highWaterMark: 1024 * 1024 });
  let done = 0;
  for await (const chunk of stream) {
    estimator.push(chunk as Buffer);
    done += (chunk as Buffer).length;
    progress.update(done);
  }
  progress.finish();
  const estimate = estimator.finish();
  if (options.json) return printJson({ file, compression: options.compression, dedup: options.dedup, ...estimate });
  const pct = (bytes: number) => (estimate.logicalBytes > 0 ? `${((bytes / estimate.logicalBytes) * 100).toFixed(1)}%` : '0%');
  process.stdout.write(
    keyValues([
      ['file', file],
      ['logical', formatBytes(estimate.logicalBytes)],
      ['saved by patterns', `${formatBytes(estimate.savedByPatterns)} (${pct(estimate.savedByPatterns)})`],
      ['saved by dedup', `${formatBytes(estimate.savedByDedup)} (${pct(estimate.savedByDedup)})`],
      [`saved by ${options.compression}`, `${formatBytes(estimate.savedByCompression)} (${pct(estimate.savedByCompression)})`],
      ['physical (estimated)', formatBytes(estimate.physicalBytes)],
      ['data reduction', `${estimate.dataReductionRatio}:1`],
    ]),
  );
}
