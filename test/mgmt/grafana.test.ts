/**
 * The Grafana dashboard in docs/grafana (issue: observability): every query must be valid PromQL
 * (promtool checks them as recording rules, Grafana's `$__rate_interval` and `$volume` filled in)
 * and name only metrics the server exports, so the dashboard cannot drift from the metrics.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import test from 'ava';
import { describeRun, requireTools, run } from '../helpers/interop.js';
import { REPO_ROOT } from '../helpers/pstorage-process.js';

interface Panel {
  title: string;
  targets?: Array<{ expr: string }>;
}

test('the Grafana dashboard queries only exported metrics, in PromQL that promtool accepts', async (t) => {
  requireTools(['promtool']);
  const dashboard = JSON.parse(fs.readFileSync(path.join(REPO_ROOT, 'docs/grafana/pstorage-dashboard.json'), 'utf8')) as { panels: Panel[] };
  const exported = new Set([...fs.readFileSync(path.join(REPO_ROOT, 'src/mgmt/prometheus.ts'), 'utf8').matchAll(/'(pstorage_[a-z_]+)'/g)].map((match) => match[1]!));
  t.true(exported.has('pstorage_nbd_requests_total'), 'the metric names are read from prometheus.ts');
  const expressions: string[] = [];
  for (const panel of dashboard.panels) {
    t.true((panel.targets ?? []).length > 0, `panel "${panel.title}" has queries`);
    for (const { expr } of panel.targets ?? []) {
      expressions.push(expr.replaceAll('$__rate_interval', '1m').replaceAll('$volume', '.*'));
      for (const [name] of expr.matchAll(/pstorage_[a-z_]+/g)) {
        const base = name.replace(/_(bucket|count|sum)$/, '');
        t.true(exported.has(name) || exported.has(base), `panel "${panel.title}" queries ${name}, which pstorage does not export`);
      }
    }
  }
  const directory = fs.mkdtempSync(path.join(os.tmpdir(), 'pstorage-grafana-'));
  t.teardown(() => fs.rmSync(directory, { recursive: true, force: true }));
  const rules = path.join(directory, 'rules.yml');
  // JSON is YAML: no quoting to get wrong.
  fs.writeFileSync(rules, JSON.stringify({ groups: [{ name: 'dashboard', rules: expressions.map((expr, index) => ({ record: `dashboard:query_${index}`, expr })) }] }));
  const check = await run('promtool', ['check', 'rules', rules], { timeoutMs: 30_000 });
  t.is(check.code, 0, `promtool check rules rejected a dashboard query\n${describeRun(check)}`);
  t.regex(check.stdout, new RegExp(`SUCCESS: ${expressions.length} rules found`));
});
