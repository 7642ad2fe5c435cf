/**
 * Experiment 4 of the benchmark issue: flash write amplification. Runs the in-process FTL
 * experiments of scripts/flash-experiments.ts (memory NAND, no server, no disk) and turns them
 * into three charts and a results.md section:
 *
 * - flash-wa-vs-op.svg: WA of uniform random 4 KiB overwrite against over-provisioning, greedy
 *   and cost-benefit, over the theory curve for greedy cleaning;
 * - flash-wa-skew.svg: 80/20 and 90/10 skew × policy × hot/cold separation on or off;
 * - flash-pe-histogram.svg: erase counts of every erase block after the long runs.
 *
 * The rendering functions take the results as stored in results.json (`data`), so the charts can
 * be drawn again from an earlier run without measuring again.
 */
import { describeRun, flashPlan, runFlashExperiments, theoryWa, type FlashResults, type WaRun } from '../../flash-experiments.js';
import { PAGE_HEADER_BYTES, RECORD_HEADER_BYTES } from '../../../src/ftl/page-format.js';
import type { ExperimentContext, ExperimentResult } from '../extensions.js';
import { renderLineChart, type LineSeries } from '../line-chart.js';
import { renderBarChart } from '../svg-chart.js';

/** Stream bytes of one 4 KiB logical block: record header + payload. */
const RECORD_BYTES = 4096 + RECORD_HEADER_BYTES;
const PURPOSE = 'write amplification vs over-provisioning against theory, skew with greedy vs cost-benefit with and without hot/cold separation, the P/E histogram';
const POLICY_COLORS: Record<string, string> = { greedy: '#4e79a7', 'cost-benefit': '#f28e2b' };
const THEORY_COLOR = '#6b7580';
const SEPARATED_COLOR = '#59a14f';
const ONE_STREAM_COLOR = '#b07aa1';

export async function runWriteAmplification(context: ExperimentContext): Promise<ExperimentResult> {
  const quick = context.options.quick;
  const plan = flashPlan(quick);
  context.log(`flash: in process on memory NAND, ${plan.eraseBlocks} erase blocks, seed ${plan.seed}${quick ? ' (quick: figures have not settled)' : ''}`);
  const results = await runFlashExperiments(plan, (run) => context.log(`flash: ${describeRun(run)}`));
  return {
    status: 'ok',
    purpose: PURPOSE,
    ...(results.skipped.length > 0 ? { note: `skipped: ${results.skipped.join('; ')}` } : {}),
    data: results,
    markdown: flashMarkdown(results, quick),
    charts: flashCharts(results),
  };
}

export function flashCharts(results: FlashResults): Record<string, string> {
  return {
    'flash-wa-vs-op.svg': waVsOpChart(results),
    'flash-wa-skew.svg': skewChart(results),
    'flash-pe-histogram.svg': peHistogramChart(results),
  };
}

const passes = (count: number) => `${count} pass${count === 1 ? '' : 'es'}`;
const percent = (fraction: number) => `${Number((fraction * 100).toFixed(1))} %`;
const fixed = (value: number | null, digits = 2) => (value === null ? '–' : value.toFixed(digits));

function deviceText(results: FlashResults): string {
  const { eraseBlockCount, pagesPerEraseBlock, recordsPerEraseBlock } = results.geometry;
  return `${eraseBlockCount} erase blocks × ${pagesPerEraseBlock} pages of 4 KiB (${recordsPerEraseBlock} records each), memory NAND, in process`;
}

// ---- Charts ----------------------------------------------------------------------------------

function waVsOpChart(results: FlashResults): string {
  const ops = results.uniform.map((run) => run.overProvisioning);
  const [from, to] = [Math.min(0.1, ...ops), Math.max(1, ...ops)];
  const theory: LineSeries = { id: 'theory', label: 'theory, greedy: α / (α + W(−α e^−α))', color: THEORY_COLOR, style: 'line', points: [] };
  for (let op = from; op <= to + 1e-9; op += 0.005) theory.points.push({ x: op * 100, y: theoryWa(1 + op) });
  const measured = (policy: string): LineSeries => ({
    id: policy,
    label: `measured, ${policy}`,
    color: POLICY_COLORS[policy] ?? '#888',
    style: 'line+markers',
    points: results.uniform.filter((run) => run.policy === policy).map((run) => ({ x: run.overProvisioning * 100, y: run.writeAmplification })),
  });
  const greedyRuns = results.uniform.filter((run) => run.policy === 'greedy');
  const ideal: LineSeries = {
    id: 'ideal',
    label: 'idealised greedy, same erase blocks',
    color: THEORY_COLOR,
    style: 'line+markers',
    dashed: true,
    hollow: true,
    points: greedyRuns.map((run) => ({ x: run.overProvisioning * 100, y: run.idealGreedy ?? NaN })),
  };
  const policies = [...new Set(results.uniform.map((run) => run.policy))];
  return renderLineChart({
    title: 'Flash write amplification vs over-provisioning',
    subtitle: `Uniform random 4 KiB overwrite at steady state · ${deviceText(results)}`,
    xLabel: 'over-provisioning (physical / logical − 1, every erase block counted)',
    yLabel: 'write amplification (NAND bytes / host bytes, log scale)',
    xScale: 'linear',
    yScale: 'log',
    xDomain: [0, to * 100],
    // WA is at least 1: start the log axis there, so the distance from 1 reads as the cost.
    yDomain: [1, Math.max(...theory.points.map((point) => point.y), ...results.uniform.flatMap((run) => [run.writeAmplification, run.idealGreedy ?? 1]))],
    series: [theory, ...(greedyRuns.length > 0 ? [ideal] : []), ...policies.map(measured)],
    annotations: [
      // Texts under the curve (it falls to the right), where nothing else is drawn.
      { x: 12.5, y: theoryWa(1.125), text: `theory ${theoryWa(1.125).toFixed(2)} at 12.5 % OP`, color: '#222', textAt: { x: 15, y: 1.8 } },
      { x: 28, y: theoryWa(1.28), text: `theory ${theoryWa(1.28).toFixed(2)} at 28 % OP`, color: '#222', textAt: { x: 38, y: 1.45 } },
    ],
    xTickFormat: (value) => `${value} %`,
    yTickFormat: (value) => String(value),
    footnote: `Measured over ${passes(results.plan.uniform.measurePasses)} after the fill and ${passes(results.plan.uniform.warmupPasses)} of warm-up · idealised: simulated greedy, all erase blocks usable, no padding · npm run flash-experiments`,
  });
}

function skewChart(results: FlashResults): string {
  const groups = [...new Set(results.skew.map((run) => `${run.workload}|${run.policy}`))].map((key) => {
    const [workload, policy] = key.split('|') as [string, string];
    const runs = results.skew.filter((run) => run.workload === workload && run.policy === policy);
    const bar = (separated: boolean) => {
      const run = runs.find((candidate) => candidate.hotColdSeparation === separated);
      return { seriesId: separated ? 'separated' : 'one', value: run?.writeAmplification ?? null, text: run ? `${run.writeAmplification.toFixed(2)}  (P/E sd ${run.pe.stddev.toFixed(1)})` : 'not run' };
    };
    return { label: `${workload} skew`, sublabel: policy, bars: [bar(true), bar(false)] };
  });
  const op = results.plan.skew.overProvisioning;
  const uniformGreedy = results.uniform.find((run) => run.policy === 'greedy' && Math.abs(run.overProvisioning - op) < 1e-9);
  return renderBarChart({
    title: `Write amplification under skew, ${percent(op)} over-provisioning`,
    subtitle: `80/20: 80 % of writes on 20 % of the logical blocks · ${deviceText(results)}`,
    xLabel: 'write amplification (NAND bytes / host bytes); lower is better',
    scale: 'linear',
    series: [
      { id: 'separated', label: 'hot/cold separation (GC writes to its own stream)', color: SEPARATED_COLOR },
      { id: 'one', label: 'one stream for host and GC writes', color: ONE_STREAM_COLOR },
    ],
    groups,
    referenceLines: uniformGreedy ? [{ value: uniformGreedy.writeAmplification, label: `uniform, greedy ${uniformGreedy.writeAmplification.toFixed(2)}`, color: THEORY_COLOR }] : [],
    footnote: `Measured over ${passes(results.plan.skew.measurePasses)}, after the fill and ${passes(results.plan.skew.warmupPasses)} of warm-up; static wear leveling off. npm run flash-experiments`,
  });
}

/** A round bin width (1, 2, 5 × 10^k) giving about `count` bins over `span`. */
function binWidth(span: number, count: number): number {
  const rough = Math.max(1, span / count);
  const power = 10 ** Math.floor(Math.log10(rough));
  return [1, 2, 5, 10].map((factor) => factor * power).find((candidate) => candidate >= rough)!;
}

function peHistogramChart(results: FlashResults): string {
  const all = results.wear.flatMap((run) => run.eraseCounts);
  const [low, high] = all.length > 0 ? [Math.min(...all), Math.max(...all)] : [0, 0];
  const width = binWidth(high - low + 1, 25);
  const first = Math.floor(low / width) * width;
  const share = width / Math.max(1, results.wear.length);
  const series: LineSeries[] = results.wear.map((run, index) => {
    const counts = new Map<number, number>();
    for (const count of run.eraseCounts) {
      const bin = first + Math.floor((count - first) / width) * width;
      counts.set(bin, (counts.get(bin) ?? 0) + 1);
    }
    const { min, max, mean, stddev } = run.pe;
    return {
      id: run.policy,
      label: `${run.policy}: P/E ${min}–${max}, mean ${mean.toFixed(1)}, sd ${stddev.toFixed(1)}`,
      color: POLICY_COLORS[run.policy] ?? '#888',
      style: 'columns',
      columnWidth: share,
      columnLabels: true,
      points: [...counts].sort((a, b) => a[0] - b[0]).map(([bin, blocks]) => ({ x: bin + index * share, y: blocks })),
    };
  });
  const run = results.wear[0];
  return renderLineChart({
    title: 'Erase counts (P/E cycles) of every erase block after a long run',
    subtitle: run ? `${run.workload} skew, ${percent(run.overProvisioning)} OP, hot/cold separation, ${passes(run.warmupPasses + run.measurePasses)} of overwrite after the fill, ${results.geometry.eraseBlockCount} erase blocks` : 'no run',
    xLabel: `erase count (bins of ${width})`,
    yLabel: 'erase blocks',
    xScale: 'linear',
    yScale: 'linear',
    xDomain: [first, first + Math.ceil((high - first + 1) / width) * width],
    series,
    footnote: `Static wear leveling (threshold ${run?.wearSpreadThreshold ?? '–'}, the array's default) relocates the least-worn full erase block whenever max − min P/E exceeds it; free blocks are opened least-worn first.`,
  });
}

// ---- results.md ------------------------------------------------------------------------------

function uniformTable(results: FlashResults): string[] {
  const lines = [
    '| OP | α | theory (greedy) | idealised greedy, same erase blocks | greedy WA | cost-benefit WA | greedy copies | cost-benefit copies |',
    '|---:|---:|---:|---:|---:|---:|---:|---:|',
  ];
  for (const op of overProvisioningPoints(results)) {
    const greedy = results.uniform.find((run) => run.overProvisioning === op && run.policy === 'greedy');
    const costBenefit = results.uniform.find((run) => run.overProvisioning === op && run.policy === 'cost-benefit');
    const any = (greedy ?? costBenefit)!;
    lines.push(`| ${percent(op)} | ${any.alpha.toFixed(3)} | ${fixed(any.theoryGreedy)} | ${fixed(any.idealGreedy)} | ${fixed(greedy?.writeAmplification ?? null)} | ${fixed(costBenefit?.writeAmplification ?? null)} | ${fixed(greedy?.copyAmplification ?? null)} | ${fixed(costBenefit?.copyAmplification ?? null)} |`);
  }
  return lines;
}

/** Where greedy's physical space goes: the α the idealised cleaner needs to match it, and the FTL's known losses. */
function accountingTable(results: FlashResults): string[] {
  const lines = [
    '| OP | greedy copies | α matching the idealised cleaner | space lost | free erase blocks (mean) | theory at α less them | padding |',
    '|---:|---:|---:|---:|---:|---:|---:|',
  ];
  for (const run of results.uniform.filter((candidate) => candidate.policy === 'greedy')) {
    const lost = run.alphaEquivalent === null ? null : 1 - run.alphaEquivalent / run.alpha;
    lines.push(`| ${percent(run.overProvisioning)} | ${run.copyAmplification.toFixed(2)} | ${fixed(run.alphaEquivalent, 3)} | ${lost === null ? '–' : percent(lost)} | ${run.meanFreeBlocks.toFixed(1)} | ${fixed(run.theoryEffective)} | ${percent(run.paddingFraction)} |`);
  }
  return lines;
}

function overProvisioningPoints(results: FlashResults): number[] {
  return [...new Set(results.uniform.map((run) => run.overProvisioning))].sort((a, b) => a - b);
}

function skewTable(results: FlashResults): string[] {
  const lines = ['| skew | policy | hot/cold separation | WA | copies | P/E min–max (sd) | per-pass WA (warm-up, then measured) |', '|---|---|---|---:|---:|---|---|'];
  for (const run of results.skew) {
    lines.push(`| ${run.workload} | ${run.policy} | ${run.hotColdSeparation ? 'on' : 'off (one stream)'} | ${run.writeAmplification.toFixed(2)} | ${run.copyAmplification.toFixed(2)} | ${run.pe.min}–${run.pe.max} (${run.pe.stddev.toFixed(1)}) | ${run.passWa.map((wa) => wa.toFixed(2)).join(' ')} |`);
  }
  return lines;
}

function wearTable(results: FlashResults): string[] {
  const lines = ['| run | passes | WA | P/E min | mean | max | stddev | static wear-leveling threshold |', '|---|---:|---:|---:|---:|---:|---:|---:|'];
  for (const run of results.wear) {
    lines.push(`| ${run.workload}, ${run.policy}, separation on, ${percent(run.overProvisioning)} OP | ${run.warmupPasses + run.measurePasses} | ${run.writeAmplification.toFixed(2)} | ${run.pe.min} | ${run.pe.mean.toFixed(1)} | ${run.pe.max} | ${run.pe.stddev.toFixed(1)} | ${run.wearSpreadThreshold} |`);
  }
  return lines;
}

/** Plain statements read off the figures (no claim is made that the numbers do not support). */
function observations(results: FlashResults): string[] {
  const lines: string[] = [];
  const greedy = results.uniform.filter((run) => run.policy === 'greedy');
  lines.push(...theoryObservation(results, greedy));
  const pairs = greedy.flatMap((run) => {
    const other = results.uniform.find((candidate) => candidate.policy === 'cost-benefit' && candidate.overProvisioning === run.overProvisioning);
    return other ? [(other.writeAmplification - run.writeAmplification) / run.writeAmplification] : [];
  });
  if (pairs.length > 0) {
    const [low, high] = [Math.min(...pairs), Math.max(...pairs)];
    lines.push(`- Under uniform overwrite cost-benefit differs from greedy by ${(low * 100).toFixed(0)} % to ${(high * 100).toFixed(0)} % (positive: worse). Under uniform traffic a block's age says nothing about how soon its data will be overwritten, so cost-benefit has nothing to gain over greedy there.`);
  }
  for (const workload of [...new Set(results.skew.map((run) => run.workload))]) {
    const runs = results.skew.filter((run) => run.workload === workload);
    const best = runs.reduce((a, b) => (a.writeAmplification <= b.writeAmplification ? a : b));
    const worst = runs.reduce((a, b) => (a.writeAmplification >= b.writeAmplification ? a : b));
    lines.push(`- ${workload}: lowest WA ${best.writeAmplification.toFixed(2)} with ${best.policy}, separation ${best.hotColdSeparation ? 'on' : 'off'}; highest ${worst.writeAmplification.toFixed(2)} with ${worst.policy}, separation ${worst.hotColdSeparation ? 'on' : 'off'}.`);
  }
  lines.push(...separationObservation(results.skew));
  const greedySkew = results.skew.filter((run) => run.policy === 'greedy');
  const uniformAtSkewOp = results.uniform.find((run) => run.policy === 'greedy' && Math.abs(run.overProvisioning - results.plan.skew.overProvisioning) < 1e-9);
  if (uniformAtSkewOp && greedySkew.some((run) => run.writeAmplification > uniformAtSkewOp.writeAmplification)) {
    lines.push(
      `- Greedy does worse under some skew than under uniform overwrite at the same OP (${uniformAtSkewOp.writeAmplification.toFixed(2)}): it always cleans the emptiest erase block, which is a hot one, ` +
        'while erase blocks of cold data lose their data slowly and are never the emptiest, so the space freed in them stays locked up. Cost-benefit weighs in the age of a block and cleans them in time (Rosenblum & Ousterhout, LFS).',
    );
  }
  for (const run of results.wear) {
    const spread = run.pe.max - run.pe.min;
    const bound = run.wearSpreadThreshold !== null && spread >= run.wearSpreadThreshold
      ? 'at the threshold: static wear leveling is what holds it, relocating the least-worn full erase block whenever the spread passes it'
      : `below the threshold of ${run.wearSpreadThreshold ?? '–'}`;
    lines.push(`- Long run, ${run.policy}: P/E ${run.pe.min}–${run.pe.max}, mean ${run.pe.mean.toFixed(1)}, standard deviation ${run.pe.stddev.toFixed(1)}; the spread (${spread}) is ${bound}.`);
  }
  return lines;
}

/** Greedy against the theory, and where the difference comes from. */
function theoryObservation(results: FlashResults, greedy: WaRun[]): string[] {
  const lines: string[] = [];
  const point = (run: WaRun, value: number | null) => `${percent(run.overProvisioning)} (${run.writeAmplification.toFixed(2)} vs ${fixed(value)})`;
  const above = greedy.filter((run) => run.theoryGreedy !== null && run.writeAmplification > run.theoryGreedy * 1.05);
  const near = greedy.filter((run) => run.theoryGreedy !== null && run.writeAmplification <= run.theoryGreedy * 1.05);
  if (above.length > 0) lines.push(`- Measured greedy WA is more than 5 % above the theory at ${above.map((run) => point(run, run.theoryGreedy)).join(', ')}.`);
  if (near.length > 0) lines.push(`- Within 5 % of the theory (or below it): ${near.map((run) => point(run, run.theoryGreedy)).join(', ')}.`);
  const ideal = greedy.filter((run) => run.idealGreedy !== null && run.theoryGreedy !== null);
  if (ideal.length > 0) {
    const ratios = ideal.map((run) => run.idealGreedy! / run.theoryGreedy!);
    lines.push(
      `- The policy is not what costs: an idealised greedy cleaner simulated on the same ${results.geometry.eraseBlockCount} erase blocks of ${results.geometry.recordsPerEraseBlock} records (every block usable, one open block, no padding) ` +
        `comes out at ${(Math.min(...ratios) * 100).toFixed(0)}–${(Math.max(...ratios) * 100).toFixed(0)} % of the theory (the closed form is the limit as erase blocks hold more records; with few records per erase block greedy does a little better).`,
    );
  }
  const lost = greedy.filter((run) => run.alphaEquivalent !== null).map((run) => 1 - run.alphaEquivalent! / run.alpha);
  if (lost.length > 0) {
    const blocks = results.geometry.eraseBlockCount;
    const meanFree = greedy.reduce((sum, run) => sum + run.meanFreeBlocks, 0) / greedy.length;
    const { pagesPerEraseBlock, pageBytes, recordsPerEraseBlock } = results.geometry;
    const tail = 1 - (recordsPerEraseBlock * RECORD_BYTES) / (pagesPerEraseBlock * (pageBytes - PAGE_HEADER_BYTES));
    const commitPadding = greedy.reduce((sum, run) => sum + run.paddingFraction, 0) / greedy.length - tail;
    lines.push(
      `- What costs is space: the measured copies equal the idealised cleaner's with ${percent(Math.min(...lost))}–${percent(Math.max(...lost))} less physical space (the accounting table; least well determined at high OP, where WA hardly depends on α). ` +
        `The FTL's known losses add up to about that: GC keeps ${results.ftl.reserveBlocks} reserve blocks and cleans back up to ${results.ftl.gcTargetFreeBlocks} free ones, ${meanFree.toFixed(1)} erase blocks empty on average (${percent(meanFree / blocks)}); ` +
        `a second open erase block, for the GC stream (up to ${percent(1 / blocks)}); and pages sealed part-full at every commit, GC committing after each round of one or two victims so that it may erase them ` +
        `(about ${percent(Math.max(0, commitPadding))}: the padding column less the ${percent(tail)} tail of each erase block that α already leaves out). ` +
        'The same share of space weighs more the lower the OP, and WA is steepest there, which is why the gap to the curve grows to the left. Measured WA also counts record and page headers (×1.008).',
    );
  }
  return lines;
}

/** What a log stream of GC's own changes, pair by pair. */
function separationObservation(skew: WaRun[]): string[] {
  const pairs = skew.flatMap((on) => {
    const off = on.hotColdSeparation ? skew.find((run) => !run.hotColdSeparation && run.workload === on.workload && run.policy === on.policy) : undefined;
    return off ? [{ on, off, change: (on.writeAmplification - off.writeAmplification) / off.writeAmplification }] : [];
  });
  if (pairs.length === 0) return [];
  const describe = ({ on, change }: (typeof pairs)[number]) => `${on.workload} ${on.policy} ${change >= 0 ? '+' : ''}${(change * 100).toFixed(1)} %`;
  const mean = (values: number[]) => values.reduce((sum, value) => sum + value, 0) / values.length;
  const padding = [mean(pairs.map((pair) => pair.on.paddingFraction)), mean(pairs.map((pair) => pair.off.paddingFraction))];
  const lines = [`- Hot/cold separation (GC relocations in a stream of their own) against one shared stream, change in WA: ${pairs.map(describe).join(', ')} (negative: separation writes less).`];
  if (pairs.every((pair) => Math.abs(pair.change) < 0.05)) {
    lines.push(
      '  The difference is small either way. Separating by writer is a weak proxy for temperature: what GC relocates is whatever survived in the emptiest (mostly hot) victims, a mix of cold and not-yet-overwritten hot data; ' +
        `and a second stream costs a second open erase block and a second part-full page at every commit (padding ${percent(padding[0]!)} with separation, ${percent(padding[1]!)} without).`,
    );
  }
  if (pairs.every((pair) => pair.on.pe.stddev > pair.off.pe.stddev)) {
    lines.push('  Separation does keep cold data apart: in every pair the P/E spread is wider with it, as the erase blocks holding cold data are seldom erased.');
  }
  return lines;
}

export function flashMarkdown(results: FlashResults, quick: boolean): string[] {
  const { plan } = results;
  const bench = `npm run bench -- --no-matrix --experiments flash${quick ? ' --quick' : ''}`;
  const lines = [
    `In process on memory NAND, no server and no disk, so the figures are the FTL's alone: ${deviceText(results)}. ` +
      `Over-provisioning counts every erase block (α = physical / logical = 1 + OP, in whole record slots); GC keeps ${results.ftl.reserveBlocks} reserve erase blocks and cleans back up to ${results.ftl.gcTargetFreeBlocks} free ones. ` +
      'Each run fills its volume in order, then overwrites it at queue depth 1 in passes of as many writes as the volume has logical blocks: warm-up passes first, then measured passes. ' +
      'WA = NAND bytes programmed / host bytes written over the measured passes; "copies" = (host records + records GC relocated) / host records, the quantity the theory models. Unique data, dedup and compression off. ' +
      `Seed ${plan.seed}. Took ${results.seconds} s.`,
    '',
    `Commands: \`npm run flash-experiments${quick ? ' -- --quick' : ''}\` (the same runs; a table on stdout, \`--json FILE\` for the numbers) or \`${bench}\` (this section and the charts).`,
    '',
    ...(quick ? ['Quick mode: a smaller device and one or two passes per run; the figures have not reached steady state.', ''] : []),
    `### Uniform random overwrite (${plan.uniform.warmupPasses} warm-up + ${plan.uniform.measurePasses} measured passes, static wear leveling off)`,
    '',
    'Theory for greedy cleaning under uniform random overwrite of a large device: WA = α / (α + W(−α·e^−α)), W the principal branch of Lambert W (28 % OP: 2.48, 12.5 % OP: 4.68).',
    '',
    ...uniformTable(results),
    '',
    'Where greedy\'s space goes: the α at which the idealised cleaner makes as many copies as the FTL did, the share of physical space that implies the FTL loses, and the losses it knows of.',
    '',
    ...accountingTable(results),
    '',
    `### Skew at ${percent(plan.skew.overProvisioning)} OP (${plan.skew.warmupPasses} warm-up + ${plan.skew.measurePasses} measured passes, static wear leveling off)`,
    '',
    '80/20: 80 % of the writes go to the first 20 % of the logical blocks, the other 20 % to the rest. Separation on: GC relocations go to a log stream of their own; off: host writes and relocations share one stream (`hotColdSeparation: false`).',
    '',
    ...skewTable(results),
    '',
    '### P/E histogram after the long runs',
    '',
    ...wearTable(results),
    '',
    '### Reading the figures',
    '',
    ...observations(results),
  ];
  if (results.skipped.length > 0) lines.push('', `Skipped: ${results.skipped.join('; ')}.`);
  return lines;
}
