/**
 * Hand-written SVG for horizontal grouped bar charts: one group per job, one colour per server,
 * a value written at the end of every bar, min-max whiskers, an x axis with ticks and a label,
 * optional dashed reference lines, a legend, a title and a footnote. Pure: a chart description
 * in, an SVG document out. Horizontal bars leave room for job names that read as words.
 */

export interface ChartSeries {
  id: string;
  label: string;
  color: string;
}

export interface ChartBar {
  seriesId: string;
  /** null draws "no result" instead of a bar. */
  value: number | null;
  whiskerMin?: number;
  whiskerMax?: number;
  /** Written after the bar, e.g. "41.2K IOPS · 27%". */
  text: string;
}

export interface ChartGroup {
  label: string;
  sublabel?: string;
  bars: ChartBar[];
}

export interface BarChart {
  title: string;
  subtitle?: string;
  xLabel: string;
  scale: 'linear' | 'log';
  series: ChartSeries[];
  groups: ChartGroup[];
  referenceLines?: { value: number; label: string; color: string }[];
  footnote?: string;
  /** Formats tick labels, e.g. (v) => `${v}%`. */
  tickFormat?: (value: number) => string;
}

const WIDTH = 1000;
const MARGIN_LEFT = 250;
const MARGIN_RIGHT = 170;
const PLOT_TOP = 104;
const BAR_HEIGHT = 16;
const BAR_GAP = 3;
const GROUP_GAP = 18;
const FONT = 'DejaVu Sans, Helvetica, Arial, sans-serif';

export function escapeXml(text: string): string {
  return text.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');
}

/** Round tick steps (1, 2, 2.5, 5 x 10^k) giving about `count` ticks from 0 to past `max`. */
export function linearTicks(max: number, count = 6): number[] {
  if (!(max > 0)) return [0, 1];
  const rough = max / count;
  const power = 10 ** Math.floor(Math.log10(rough));
  const step = [1, 2, 2.5, 5, 10].map((factor) => factor * power).find((candidate) => candidate >= rough)!;
  const ticks: number[] = [];
  for (let tick = 0; tick < max + step * 0.999; tick += step) ticks.push(Number(tick.toPrecision(12)));
  return ticks;
}

/** Decades (with 2 and 5 between when there are few of them) covering [min, max]. */
export function logTicks(min: number, max: number): number[] {
  const low = Math.floor(Math.log10(min));
  const high = Math.max(Math.ceil(Math.log10(max)), low + 1);
  const factors = high - low <= 3 ? [1, 2, 5] : [1];
  const ticks: number[] = [];
  for (let exponent = low; exponent <= high; exponent++) {
    for (const factor of factors) {
      const tick = factor * 10 ** exponent;
      if (tick <= 10 ** high) ticks.push(Number(tick.toPrecision(12)));
    }
  }
  return ticks;
}

interface Axis {
  ticks: number[];
  x(value: number): number;
}

function buildAxis(chart: BarChart, plotWidth: number): Axis {
  const values = chart.groups.flatMap((group) => group.bars.flatMap((bar) => [bar.value, bar.whiskerMax ?? null])).filter((value): value is number => value !== null && value > 0);
  for (const line of chart.referenceLines ?? []) values.push(line.value);
  const max = values.length > 0 ? Math.max(...values) : 1;
  if (chart.scale === 'log') {
    const ticks = logTicks(values.length > 0 ? Math.min(...values) : 1, max);
    const [low, high] = [Math.log10(ticks[0]!), Math.log10(ticks[ticks.length - 1]!)];
    return { ticks, x: (value) => MARGIN_LEFT + (plotWidth * (Math.log10(Math.max(value, ticks[0]!)) - low)) / (high - low) };
  }
  const ticks = linearTicks(max);
  const top = ticks[ticks.length - 1]!;
  return { ticks, x: (value) => MARGIN_LEFT + (plotWidth * Math.max(0, value)) / top };
}

function groupHeight(group: ChartGroup): number {
  return group.bars.length * (BAR_HEIGHT + BAR_GAP) - BAR_GAP;
}

function text(x: number, y: number, content: string, attributes = ''): string {
  return `<text x="${x.toFixed(1)}" y="${y.toFixed(1)}" ${attributes}>${escapeXml(content)}</text>`;
}

function renderHeader(chart: BarChart): string[] {
  const parts = [text(MARGIN_LEFT - 230, 32, chart.title, 'font-size="20" font-weight="bold" fill="#222"')];
  if (chart.subtitle) parts.push(text(MARGIN_LEFT - 230, 54, chart.subtitle, 'font-size="13" fill="#555"'));
  let x = MARGIN_LEFT - 230;
  for (const series of chart.series) {
    parts.push(`<rect x="${x}" y="70" width="14" height="14" rx="2" fill="${series.color}"/>`);
    parts.push(text(x + 20, 82, series.label, 'font-size="13" fill="#222"'));
    x += 40 + series.label.length * 8;
  }
  return parts;
}

function renderBar(bar: ChartBar, y: number, axis: Axis, series: ChartSeries | undefined): string[] {
  const base = axis.x(axis.ticks[0]!);
  if (bar.value === null) return [text(base + 6, y + BAR_HEIGHT - 4, bar.text || 'no result', 'font-size="12" fill="#b00020" font-style="italic"')];
  const end = axis.x(bar.value);
  const parts = [`<rect x="${base.toFixed(1)}" y="${y.toFixed(1)}" width="${Math.max(1, end - base).toFixed(1)}" height="${BAR_HEIGHT}" fill="${series?.color ?? '#888'}"><title>${escapeXml(`${series?.label ?? ''}: ${bar.text}`)}</title></rect>`];
  let textX = end;
  if (bar.whiskerMin !== undefined && bar.whiskerMax !== undefined && bar.whiskerMax > bar.whiskerMin) {
    const [from, to, middle] = [axis.x(bar.whiskerMin), axis.x(bar.whiskerMax), y + BAR_HEIGHT / 2];
    parts.push(`<path d="M${from.toFixed(1)} ${middle}H${to.toFixed(1)}M${from.toFixed(1)} ${middle - 4}v8M${to.toFixed(1)} ${middle - 4}v8" stroke="#333" stroke-width="1.2" fill="none"/>`);
    textX = Math.max(textX, to);
  }
  parts.push(text(textX + 6, y + BAR_HEIGHT - 4, bar.text, 'font-size="12" fill="#222"'));
  return parts;
}

function renderAxis(chart: BarChart, axis: Axis, plotBottom: number): string[] {
  const format = chart.tickFormat ?? formatTick;
  const parts: string[] = [];
  for (const tick of axis.ticks) {
    const x = axis.x(tick).toFixed(1);
    parts.push(`<line x1="${x}" y1="${PLOT_TOP - 8}" x2="${x}" y2="${plotBottom}" stroke="#e3e3e3"/>`);
    parts.push(text(Number(x), plotBottom + 18, format(tick), 'font-size="12" fill="#444" text-anchor="middle"'));
  }
  parts.push(`<line x1="${MARGIN_LEFT}" y1="${plotBottom}" x2="${axis.x(axis.ticks[axis.ticks.length - 1]!).toFixed(1)}" y2="${plotBottom}" stroke="#888"/>`);
  parts.push(text((MARGIN_LEFT + axis.x(axis.ticks[axis.ticks.length - 1]!)) / 2, plotBottom + 40, chart.xLabel, 'font-size="13" fill="#222" text-anchor="middle"'));
  for (const line of chart.referenceLines ?? []) {
    const x = axis.x(line.value).toFixed(1);
    parts.push(`<line x1="${x}" y1="${PLOT_TOP - 8}" x2="${x}" y2="${plotBottom}" stroke="${line.color}" stroke-width="1.5" stroke-dasharray="5 4"/>`);
    parts.push(text(Number(x) + 4, PLOT_TOP - 12, line.label, `font-size="11" fill="${line.color}"`));
  }
  return parts;
}

export function renderBarChart(chart: BarChart): string {
  const plotWidth = WIDTH - MARGIN_LEFT - MARGIN_RIGHT;
  const axis = buildAxis(chart, plotWidth);
  const seriesById = new Map(chart.series.map((series) => [series.id, series]));
  const body: string[] = [];
  let y = PLOT_TOP + (chart.referenceLines?.length ? 10 : 0);
  chart.groups.forEach((group, index) => {
    const height = groupHeight(group);
    if (index % 2 === 1) body.push(`<rect x="0" y="${(y - GROUP_GAP / 2).toFixed(1)}" width="${WIDTH}" height="${height + GROUP_GAP}" fill="#f6f7f9"/>`);
    const middle = y + height / 2;
    body.push(text(MARGIN_LEFT - 12, group.sublabel ? middle - 2 : middle + 5, group.label, 'font-size="13" fill="#222" text-anchor="end"'));
    if (group.sublabel) body.push(text(MARGIN_LEFT - 12, middle + 13, group.sublabel, 'font-size="11" fill="#666" text-anchor="end"'));
    group.bars.forEach((bar, barIndex) => body.push(...renderBar(bar, y + barIndex * (BAR_HEIGHT + BAR_GAP), axis, seriesById.get(bar.seriesId))));
    y += height + GROUP_GAP;
  });
  const plotBottom = y - GROUP_GAP / 2;
  const height = plotBottom + (chart.footnote ? 76 : 56);
  const footnote = chart.footnote ? [text(MARGIN_LEFT - 230, height - 14, chart.footnote, 'font-size="11" fill="#666"')] : [];
  return [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${WIDTH}" height="${height.toFixed(0)}" viewBox="0 0 ${WIDTH} ${height.toFixed(0)}" font-family="${FONT}">`,
    `<rect width="100%" height="100%" fill="#ffffff"/>`,
    ...renderHeader(chart),
    // Grid and axis first so that bars and values are drawn over them, except the stripes.
    ...body.filter((part) => part.startsWith('<rect x="0"')),
    ...renderAxis(chart, axis, plotBottom),
    ...body.filter((part) => !part.startsWith('<rect x="0"')),
    ...footnote,
    '</svg>',
    '',
  ].join('\n');
}

/** 1234567 -> "1.23M", 41234 -> "41.2K", 950 -> "950", 0.125 -> "0.125". */
export function formatTick(value: number): string {
  return formatCompact(value);
}

export function formatCompact(value: number): string {
  const magnitude = Math.abs(value);
  if (magnitude >= 1e6) return `${trimNumber(value / 1e6)}M`;
  if (magnitude >= 1e3) return `${trimNumber(value / 1e3)}K`;
  return trimNumber(value);
}

function trimNumber(value: number): string {
  const magnitude = Math.abs(value);
  const digits = magnitude >= 100 ? 0 : magnitude >= 10 ? 1 : magnitude >= 1 ? 2 : 3;
  return String(Number(value.toFixed(digits)));
}
