/**
 * NOT IMPLEMENTED YET: resident memory over a 20 GiB unique write; time to serve again after SIGKILL with 1, 5 and 10 GiB stored.
 */
import type { ExperimentContext, ExperimentResult } from '../extensions.js';

export async function runMemoryAndRecovery(_context: ExperimentContext): Promise<ExperimentResult> {
  return { status: 'not-implemented', purpose: "resident memory over a 20 GiB unique write; time to serve again after SIGKILL with 1, 5 and 10 GiB stored" };
}
