/**
 * Reading the Prometheus text exposition in tests: samples keyed `name{label="value",...}`
 * (labels sorted), comments dropped, and a lookup that fails loudly when a sample is missing.
 */

/** The exposition as `name{label="value",...}` (labels sorted) → value. */
export function parseExposition(text: string): Map<string, number> {
  const samples = new Map<string, number>();
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('#')) continue;
    const match = /^([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
    if (match === null) throw new Error(`not an exposition line: ${line}`);
    const labels = match[2] === undefined ? [] : [...match[2].matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)].map((label) => `${label[1]}="${label[2]}"`).sort();
    samples.set(sampleKey(match[1]!, labels), Number(match[3]));
  }
  return samples;
}

/** The key `parseExposition` files a sample under. */
export function sampleKey(name: string, labels: string[] | Record<string, string> = []): string {
  const list = Array.isArray(labels) ? labels : Object.entries(labels).map(([label, value]) => `${label}="${value}"`).sort();
  return list.length === 0 ? name : `${name}{${list.join(',')}}`;
}

/** One sample's value; throws when the exposition has no such sample. */
export function sample(samples: Map<string, number>, name: string, labels: Record<string, string> = {}): number {
  const value = samples.get(sampleKey(name, labels));
  if (value === undefined) throw new Error(`no sample ${sampleKey(name, labels)}`);
  return value;
}
