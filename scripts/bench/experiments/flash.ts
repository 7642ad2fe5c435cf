/**
 * NOT IMPLEMENTED YET: write amplification vs over-provisioning against theory, skew with greedy vs cost-benefit with and without hot/cold separation, the P/E histogram.
 */
import type { ExperimentContext, ExperimentResult } from '../extensions.js';

export async function runWriteAmplification(_context: ExperimentContext): Promise<ExperimentResult> {
  return { status: 'not-implemented', purpose: "write amplification vs over-provisioning against theory, skew with greedy vs cost-benefit with and without hot/cold separation, the P/E histogram" };
}
