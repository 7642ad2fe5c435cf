/**
 * NOT IMPLEMENTED YET: data reduction on realistic data sets: the array's physical bytes next to an independently computed ideal (4 KiB dedup + per-block LZ4).
 */
import type { ExperimentContext, ExperimentResult } from '../extensions.js';

export async function runReductionDatasets(_context: ExperimentContext): Promise<ExperimentResult> {
  return { status: 'not-implemented', purpose: "data reduction on realistic data sets: the array's physical bytes next to an independently computed ideal (4 KiB dedup + per-block LZ4)" };
}
