/**
 * What the bench command prints when it is done: the summary tables and where the files are.
 */
import { isFailed } from './fio.js';
import { summaryTable } from './markdown.js';
import type { BenchReport } from './report.js';

export function countFailedRuns(report: BenchReport): number {
  return [...report.block, ...report.filesystem.jobs]
    .flatMap((result) => Object.values(result.results))
    .flatMap((server) => server?.runs ?? [])
    .filter(isFailed).length;
}

export function renderMarkdownSummary(report: BenchReport): string {
  const lines = [
    '',
    ...summaryTable(report.block),
    '',
    ...(report.filesystem.jobs.length > 0 ? [...summaryTable(report.filesystem.jobs), ''] : []),
    `${report.problems.length} problem(s)${report.problems.length > 0 ? ':' : '.'}`,
    ...report.problems.map((problem) => `  - ${problem.split('\n')[0]}`),
    `Results (${report.durationSeconds.toFixed(0)} s): ${report.options.outDir}/{${report.files.join(',')}}`,
    '',
  ];
  return lines.join('\n');
}
