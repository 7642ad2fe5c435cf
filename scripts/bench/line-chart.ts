/**
 * Hand-written SVG for x-y charts: series drawn as lines, markers or columns (a histogram is a
 * column series), linear or log axes with ticks, grid and labels, labelled points, a legend, a
 * title and a footnote. Same fonts, colours and header layout as svg-chart.ts's bar charts, so
 * the report's charts look like one family. Pure: a chart description in, an SVG document out.
 */
import { escapeXml, formatTick, linearTicks } from './svg-chart.js';

export interface LinePoint {
  x: number;
  y: number;
}

export interface LineSeries {
  id: string;
  label: string;
  color: string;
  points: LinePoint[];
  /** 'columns' draws a bar from the x axis to y for each point, `columnWidth` wide in x units, starting at x. */
  style: 'line' | 'markers' | 'line+markers' | 'columns';
  dashed?: boolean;
  /** Hollow markers (white fill), e.g. for derived rather than measured points. */
  hollow?: boolean;
  columnWidth?: number;
  /** Written above each column (histograms: the count). */
  columnLabels?: boolean;
}

/** A point called out on the plot: a ring and a short text beside it. */
export interface Annotation {
  x: number;
  y: number;
  text: string;
  color?: string;
  /** Where the text goes relative to the point (default 'right'). */
  side?: 'left' | 'right' | 'above' | 'below-left';
  /** Puts the text here instead (data coordinates, text starting there), with a leader line to the point. */
  textAt?: LinePoint;
}

export interface LineChart {
  title: string;
  subtitle?: string;
  xLabel: string;
  yLabel: string;
  xScale: 'linear' | 'log';
  yScale: 'linear' | 'log';
  /** Forced axis ranges; otherwise from the data (linear axes start at 0). */
  xDomain?: [number, number];
  yDomain?: [number, number];
  series: LineSeries[];
  annotations?: Annotation[];
  footnote?: string;
  xTickFormat?: (value: number) => string;
  yTickFormat?: (value: number) => string;
  /** Default 560. */
  height?: number;
}

const WIDTH = 1000;
const PLOT_LEFT = 90;
const PLOT_RIGHT = WIDTH - 40;
const PLOT_TOP = 104;
const FONT = 'DejaVu Sans, Helvetica, Arial, sans-serif';

interface Scale {
  ticks: number[];
  at(value: number): number;
}

/** Log ticks that stay readable over a short range: 1 1.5 2 3 5 7 within a decade and a half, 1 2 5 up to three decades. */
export function niceLogTicks(min: number, max: number): number[] {
  const decades = Math.log10(max / min);
  const factors = decades <= 1.5 ? [1, 1.5, 2, 3, 5, 7] : decades <= 3 ? [1, 2, 5] : [1];
  const ticks: number[] = [];
  for (let exponent = Math.floor(Math.log10(min)); exponent <= Math.ceil(Math.log10(max)); exponent++) {
    for (const factor of factors) ticks.push(Number((factor * 10 ** exponent).toPrecision(12)));
  }
  const low = ticks.filter((tick) => tick <= min).pop() ?? ticks[0]!;
  // Strictly above `low`, so that even a single value gets an axis with some length.
  const high = ticks.find((tick) => tick >= max && tick > low) ?? ticks[ticks.length - 1]!;
  return ticks.filter((tick) => tick >= low && tick <= high);
}

/** Round ticks (1, 2, 2.5, 5 × 10^k apart), about `count` of them, from the first at or above `low` to the first at or above `high`. */
function spanTicks(low: number, high: number, count = 8): number[] {
  const rough = Math.max(high - low, 1e-9) / count;
  const power = 10 ** Math.floor(Math.log10(rough));
  const step = [1, 2, 2.5, 5, 10].map((factor) => factor * power).find((candidate) => candidate >= rough)!;
  const ticks: number[] = [];
  for (let tick = Math.ceil(low / step) * step; tick < high + step * 0.999; tick += step) ticks.push(Number(tick.toPrecision(12)));
  return ticks;
}

function buildScale(kind: 'linear' | 'log', values: number[], domain: [number, number] | undefined, from: number, to: number): Scale {
  if (kind === 'log') {
    const positive = values.filter((value) => value > 0);
    const ticks = niceLogTicks(domain?.[0] ?? Math.min(...positive), domain?.[1] ?? Math.max(...positive));
    const [low, high] = [Math.log10(ticks[0]!), Math.log10(ticks[ticks.length - 1]!)];
    return { ticks, at: (value) => from + ((to - from) * (Math.log10(Math.max(value, ticks[0]!)) - low)) / (high - low) };
  }
  const low = domain?.[0] ?? 0;
  const ticks = low > 0 ? spanTicks(low, domain?.[1] ?? Math.max(...values)) : linearTicks(domain?.[1] ?? Math.max(...values, 0));
  const high = ticks[ticks.length - 1]!;
  return { ticks: ticks.filter((tick) => tick >= low), at: (value) => from + ((to - from) * (value - low)) / (high - low) };
}

function text(x: number, y: number, content: string, attributes = ''): string {
  return `<text x="${x.toFixed(1)}" y="${y.toFixed(1)}" ${attributes}>${escapeXml(content)}</text>`;
}

function marker(x: number, y: number, series: LineSeries): string {
  return `<circle cx="${x.toFixed(1)}" cy="${y.toFixed(1)}" r="4.5" fill="${series.hollow ? '#ffffff' : series.color}" stroke="${series.color}" stroke-width="1.8"/>`;
}

function legendSwatch(x: number, series: LineSeries): string[] {
  if (series.style === 'columns') return [`<rect x="${x}" y="70" width="14" height="14" rx="2" fill="${series.color}"/>`];
  const parts: string[] = [];
  if (series.style !== 'markers') parts.push(`<line x1="${x}" y1="77" x2="${x + 22}" y2="77" stroke="${series.color}" stroke-width="2.2"${series.dashed ? ' stroke-dasharray="6 4"' : ''}/>`);
  if (series.style !== 'line') parts.push(marker(x + 11, 77, series));
  return parts;
}

function renderHeader(chart: LineChart): string[] {
  const parts = [text(20, 32, chart.title, 'font-size="20" font-weight="bold" fill="#222"')];
  if (chart.subtitle) parts.push(text(20, 54, chart.subtitle, 'font-size="13" fill="#555"'));
  let x = 20;
  for (const series of chart.series) {
    parts.push(...legendSwatch(x, series));
    const swatchWidth = series.style === 'columns' ? 14 : 22;
    parts.push(text(x + swatchWidth + 6, 82, series.label, 'font-size="13" fill="#222"'));
    x += swatchWidth + 26 + series.label.length * 7.2;
  }
  return parts;
}

function renderAxes(chart: LineChart, xs: Scale, ys: Scale, plotBottom: number): string[] {
  const formatX = chart.xTickFormat ?? formatTick;
  const formatY = chart.yTickFormat ?? formatTick;
  const parts: string[] = [];
  for (const tick of xs.ticks) {
    const x = xs.at(tick);
    parts.push(`<line x1="${x.toFixed(1)}" y1="${PLOT_TOP}" x2="${x.toFixed(1)}" y2="${plotBottom}" stroke="#e3e3e3"/>`);
    parts.push(text(x, plotBottom + 18, formatX(tick), 'font-size="12" fill="#444" text-anchor="middle"'));
  }
  for (const tick of ys.ticks) {
    const y = ys.at(tick);
    parts.push(`<line x1="${PLOT_LEFT}" y1="${y.toFixed(1)}" x2="${PLOT_RIGHT}" y2="${y.toFixed(1)}" stroke="#e3e3e3"/>`);
    parts.push(text(PLOT_LEFT - 8, y + 4, formatY(tick), 'font-size="12" fill="#444" text-anchor="end"'));
  }
  parts.push(`<path d="M${PLOT_LEFT} ${PLOT_TOP}V${plotBottom}H${PLOT_RIGHT}" stroke="#888" fill="none"/>`);
  parts.push(text((PLOT_LEFT + PLOT_RIGHT) / 2, plotBottom + 40, chart.xLabel, 'font-size="13" fill="#222" text-anchor="middle"'));
  const middle = (PLOT_TOP + plotBottom) / 2;
  parts.push(`<text x="24" y="${middle.toFixed(1)}" font-size="13" fill="#222" text-anchor="middle" transform="rotate(-90 24 ${middle.toFixed(1)})">${escapeXml(chart.yLabel)}</text>`);
  return parts;
}

function renderSeries(series: LineSeries, xs: Scale, ys: Scale, plotBottom: number): string[] {
  const parts: string[] = [];
  const points = series.points.filter((point) => Number.isFinite(point.x) && Number.isFinite(point.y));
  if (series.style === 'columns') {
    const width = series.columnWidth ?? 1;
    for (const point of points) {
      const [left, right, top] = [xs.at(point.x), xs.at(point.x + width), ys.at(point.y)];
      const title = `${series.label}: ${formatTick(point.x)}–${formatTick(point.x + width)}: ${point.y}`;
      parts.push(`<rect x="${(left + 0.5).toFixed(1)}" y="${top.toFixed(1)}" width="${Math.max(1, right - left - 1).toFixed(1)}" height="${Math.max(0, plotBottom - top).toFixed(1)}" fill="${series.color}" fill-opacity="0.85"><title>${escapeXml(title)}</title></rect>`);
      if (series.columnLabels && point.y > 0) parts.push(text((left + right) / 2, top - 4, String(point.y), 'font-size="11" fill="#444" text-anchor="middle"'));
    }
    return parts;
  }
  if (series.style !== 'markers' && points.length > 1) {
    const path = points.map((point, i) => `${i === 0 ? 'M' : 'L'}${xs.at(point.x).toFixed(1)} ${ys.at(point.y).toFixed(1)}`).join('');
    parts.push(`<path d="${path}" stroke="${series.color}" stroke-width="2.2" fill="none"${series.dashed ? ' stroke-dasharray="6 4"' : ''}/>`);
  }
  if (series.style !== 'line') {
    for (const point of points) {
      parts.push(marker(xs.at(point.x), ys.at(point.y), series).replace('/>', `><title>${escapeXml(`${series.label}: ${formatTick(point.x)} → ${formatTick(point.y)}`)}</title></circle>`));
    }
  }
  return parts;
}

function renderAnnotation(annotation: Annotation, xs: Scale, ys: Scale): string[] {
  const [x, y] = [xs.at(annotation.x), ys.at(annotation.y)];
  const color = annotation.color ?? '#222';
  const side = annotation.side ?? 'right';
  const ring = `<circle cx="${x.toFixed(1)}" cy="${y.toFixed(1)}" r="7" fill="none" stroke="${color}" stroke-width="1.5"/>`;
  const label = (textX: number, textY: number, anchor: string) =>
    `<text x="${textX.toFixed(1)}" y="${textY.toFixed(1)}" font-size="12" fill="${color}" text-anchor="${anchor}" stroke="#ffffff" stroke-width="3" paint-order="stroke">${escapeXml(annotation.text)}</text>`;
  if (annotation.textAt !== undefined) {
    const [textX, textY] = [xs.at(annotation.textAt.x), ys.at(annotation.textAt.y)];
    // The leader starts at the ring's edge and ends just short of the text's first letter.
    const length = Math.hypot(textX - x, textY - 4 - y);
    const [ux, uy] = [(textX - x) / length, (textY - 4 - y) / length];
    const leader = `<line x1="${(x + 7 * ux).toFixed(1)}" y1="${(y + 7 * uy).toFixed(1)}" x2="${(textX - 3 * ux).toFixed(1)}" y2="${(textY - 4 - 3 * uy).toFixed(1)}" stroke="${color}" stroke-width="1"/>`;
    return [ring, leader, label(textX, textY, 'start')];
  }
  const [dx, dy, anchor] = side === 'left' ? [-10, 4, 'end'] : side === 'above' ? [0, -12, 'middle'] : side === 'below-left' ? [-8, 20, 'end'] : [10, 4, 'start'];
  return [ring, label(x + dx, y + dy, anchor)];
}

export function renderLineChart(chart: LineChart): string {
  const height = chart.height ?? 560;
  const plotBottom = height - (chart.footnote ? 86 : 66);
  const columnEnds = chart.series.flatMap((series) => (series.style === 'columns' ? series.points.map((point) => point.x + (series.columnWidth ?? 1)) : []));
  const xValues = [...chart.series.flatMap((series) => series.points.map((point) => point.x)), ...columnEnds, ...(chart.annotations ?? []).map((a) => a.x)];
  const yValues = [...chart.series.flatMap((series) => series.points.map((point) => point.y)), ...(chart.annotations ?? []).map((a) => a.y)];
  const xs = buildScale(chart.xScale, xValues, chart.xDomain, PLOT_LEFT, PLOT_RIGHT);
  const ys = buildScale(chart.yScale, yValues, chart.yDomain, plotBottom, PLOT_TOP);
  // Columns first, then lines, then markers and call-outs on top.
  const order = (series: LineSeries) => (series.style === 'columns' ? 0 : series.style === 'line' ? 1 : 2);
  const body = [...chart.series].sort((a, b) => order(a) - order(b)).flatMap((series) => renderSeries(series, xs, ys, plotBottom));
  const footnote = chart.footnote ? [text(20, height - 14, chart.footnote, 'font-size="11" fill="#666"')] : [];
  return [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${WIDTH}" height="${height}" viewBox="0 0 ${WIDTH} ${height}" font-family="${FONT}">`,
    `<rect width="100%" height="100%" fill="#ffffff"/>`,
    ...renderHeader(chart),
    ...renderAxes(chart, xs, ys, plotBottom),
    ...body,
    ...(chart.annotations ?? []).flatMap((annotation) => renderAnnotation(annotation, xs, ys)),
    ...footnote,
    '</svg>',
    '',
  ].join('\n');
}
