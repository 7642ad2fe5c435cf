/**
 * Prometheus metrics of a real `pstorage serve` (issue: observability, part 1): a known number of
 * NBD requests of each kind on two volumes, driven by python3-libnbd, must show up exactly in the
 * per-volume counters, bytes and latency histograms, and two fio jobs at once on two volumes must be
 * counted within 1 % of fio's own request counts; the exposition must pass `promtool check
 * metrics`; `--metrics-listen` serves GET /metrics and 404 for anything else, with no token; the
 * management API serves the same route on its socket, and on TCP only with the bearer token.
 */
import { spawn } from 'node:child_process';
import http from 'node:http';
import test from 'ava';
import { apiRequest, apiSocketOf } from '../cli/cli-run.js';
import { SYSTEM_PYTHON, describeRun, mustRun, requireTools, run, startServer, stopServer } from '../helpers/interop.js';
import { parseExposition, sample } from '../helpers/exposition.js';
import { PSTORAGE_BIN, type PstorageProcess } from '../helpers/pstorage-process.js';

const KiB = 1024;

interface Traffic {
  writes: number;
  writeBytes: number;
  reads: number;
  readBytes: number;
  trims: number;
  trimBytes: number;
  zeroes: number;
  zeroBytes: number;
  flushes: number;
  /** Reads past the end of the volume (strict mode off): rejected with EINVAL. */
  badReads: number;
}

/** A python3-libnbd client that makes exactly the requests `traffic` lists, one at a time. */
const CLIENT = `
import json, sys, nbd
uri, spec = sys.argv[1], json.loads(sys.argv[2])
h = nbd.NBD()
h.set_strict_mode(0)
h.connect_uri(uri)
size = h.get_size()
data = bytes(range(256)) * (spec['writeBytes'] // 256)
for i in range(spec['writes']):
    h.pwrite(data, i * spec['writeBytes'])
for i in range(spec['reads']):
    h.pread(spec['readBytes'], i * spec['readBytes'])
for i in range(spec['trims']):
    h.trim(spec['trimBytes'], (1 << 30) + i * spec['trimBytes'])
for i in range(spec['zeroes']):
    h.zero(spec['zeroBytes'], (1 << 29) + i * spec['zeroBytes'])
for i in range(spec['flushes']):
    h.flush()
failed = 0
for i in range(spec['badReads']):
    try:
        h.pread(4096, size)
    except nbd.Error:
        failed += 1
h.shutdown()
print(json.dumps({'failed': failed}))
`;

/** A python3-libnbd client that attaches, says so, and leaves when its standard input closes. */
const HOLDER = `
import sys, nbd
h = nbd.NBD()
h.connect_uri(sys.argv[1])
print('attached', flush=True)
sys.stdin.read()
h.shutdown()
`;

const DEFAULT_TRAFFIC: Traffic = { writes: 200, writeBytes: 4 * KiB, reads: 150, readBytes: 4 * KiB, trims: 10, trimBytes: 64 * KiB, zeroes: 5, zeroBytes: 8 * KiB, flushes: 3, badReads: 2 };
const SECOND_TRAFFIC: Traffic = { writes: 40, writeBytes: 64 * KiB, reads: 25, readBytes: 128 * KiB, trims: 0, trimBytes: 4 * KiB, zeroes: 7, zeroBytes: 4 * KiB, flushes: 1, badReads: 0 };


function httpGet(target: { socketPath: string } | { port: number }, route: string, options: { method?: string; headers?: Record<string, string> } = {}): Promise<{ status: number; contentType: string; body: string }> {
  return new Promise((resolve, reject) => {
    const where = 'socketPath' in target ? { socketPath: target.socketPath } : { host: '127.0.0.1', port: target.port };
    const request = http.request({ ...where, method: options.method ?? 'GET', path: route, headers: options.headers }, (response) => {
      const chunks: Buffer[] = [];
      response.on('data', (chunk: Buffer) => chunks.push(chunk));
      response.on('end', () => resolve({ status: response.statusCode ?? 0, contentType: String(response.headers['content-type'] ?? ''), body: Buffer.concat(chunks).toString('utf8') }));
    });
    request.on('error', reject);
    request.end();
  });
}

/** The TCP port a log line `msg` of the server reports (`tcp: "HOST:PORT"`). */
function loggedPort(server: PstorageProcess, msg: string): number {
  for (const line of server.logs().split('\n')) {
    if (!line.includes(`"msg":"${msg}"`)) continue;
    const tcp = (JSON.parse(line) as { tcp: string | null }).tcp;
    if (tcp !== null) return Number(tcp.split(':').pop());
  }
  throw new Error(`no "${msg}" line with a TCP address in the log:\n${server.logs()}`);
}

async function drive(server: PstorageProcess, volume: string, traffic: Traffic): Promise<void> {
  const result = await mustRun(SYSTEM_PYTHON, ['-c', CLIENT, server.unixUri(volume), JSON.stringify(traffic)], { timeoutMs: 120_000 });
  const { failed } = JSON.parse(result.stdout.trim().split('\n').pop()!) as { failed: number };
  if (failed !== traffic.badReads) throw new Error(`expected ${traffic.badReads} failed reads past the end, got ${failed}\n${describeRun(result)}`);
}

test('per-volume request, byte, error and latency metrics match the NBD traffic; promtool accepts the exposition', async (t) => {
  requireTools([SYSTEM_PYTHON, 'promtool']);
  const token = `metrics-token-${process.pid}`;
  const server = await startServer(t, { args: ['--metrics-listen', '127.0.0.1:0', '--api-listen', '127.0.0.1:0'], env: { PSTORAGE_API_TOKEN: token } });
  const metricsPort = loggedPort(server, 'metrics listening');
  const apiSocket = { socketPath: apiSocketOf(server.dataDir) };
  t.is((await apiRequest(apiSocket, 'POST', '/api/v1/volumes', { body: { name: 'second', size: '4G' } })).status, 201);

  // A volume nobody attached to yet already has its series, at zero.
  const before = parseExposition((await httpGet({ port: metricsPort }, '/metrics')).body);
  t.is(sample(before, 'pstorage_nbd_requests_total', { volume: 'second', op: 'write' }), 0);
  t.is(sample(before, 'pstorage_nbd_connections', { volume: 'second' }), 0);

  await drive(server, 'default', DEFAULT_TRAFFIC);
  await drive(server, 'second', SECOND_TRAFFIC);

  const scrape = await httpGet({ port: metricsPort }, '/metrics');
  t.is(scrape.status, 200);
  t.regex(scrape.contentType, /^text\/plain; version=0\.0\.4/);
  const samples = parseExposition(scrape.body);
  for (const [volume, traffic] of [['default', DEFAULT_TRAFFIC], ['second', SECOND_TRAFFIC]] as const) {
    const expected: Record<string, { requests: number; bytes: number }> = {
      read: { requests: traffic.reads + traffic.badReads, bytes: traffic.reads * traffic.readBytes },
      write: { requests: traffic.writes, bytes: traffic.writes * traffic.writeBytes },
      trim: { requests: traffic.trims, bytes: traffic.trims * traffic.trimBytes },
      write_zeroes: { requests: traffic.zeroes, bytes: traffic.zeroes * traffic.zeroBytes },
      flush: { requests: traffic.flushes, bytes: 0 },
    };
    for (const [op, { requests, bytes }] of Object.entries(expected)) {
      const labels = { volume, op };
      t.is(sample(samples, 'pstorage_nbd_requests_total', labels), requests, `${volume} ${op} requests`);
      t.is(sample(samples, 'pstorage_nbd_bytes_total', labels), bytes, `${volume} ${op} bytes`);
      t.is(sample(samples, 'pstorage_nbd_request_duration_seconds_count', labels), requests, `${volume} ${op} histogram count`);
      t.is(sample(samples, 'pstorage_nbd_request_duration_seconds_bucket', { ...labels, le: '+Inf' }), requests, `${volume} ${op} +Inf bucket`);
      const sumSeconds = sample(samples, 'pstorage_nbd_request_duration_seconds_sum', labels);
      t.true(sumSeconds >= 0 && sumSeconds <= requests * 10, `${volume} ${op} latency sum ${sumSeconds} s`);
      if (requests > 0) t.true(sumSeconds > 0, `${volume} ${op} took some time`);
    }
    t.is(sample(samples, 'pstorage_nbd_connections', { volume }), 0, 'the clients have left');
    t.is(sample(samples, 'pstorage_nbd_requests_in_flight', { volume }), 0);
  }
  // Buckets are cumulative: never decreasing, ending at the count.
  const readBuckets = [...samples].filter(([name]) => name.startsWith('pstorage_nbd_request_duration_seconds_bucket{') && name.includes('op="write"') && name.includes('volume="default"'));
  t.is(readBuckets.length, 20, '19 bounds (10 µs to 10 s) and +Inf');
  const ordered = readBuckets.map(([name, value]) => ({ le: Number(/le="([^"]+)"/.exec(name)![1]!.replace('+Inf', 'Infinity')), value })).sort((a, b) => a.le - b.le);
  t.is(ordered[0]!.le, 1e-5);
  t.is(ordered[18]!.le, 10);
  for (let i = 1; i < ordered.length; i++) t.true(ordered[i]!.value >= ordered[i - 1]!.value, `bucket le=${ordered[i]!.le} is cumulative`);
  t.is(sample(samples, 'pstorage_nbd_errors_total', { volume: 'default', op: 'read', errno: 'EINVAL' }), DEFAULT_TRAFFIC.badReads);
  t.false([...samples.keys()].some((name) => name.startsWith('pstorage_nbd_errors_total{') && name.includes('volume="second"')), 'no errors on the second volume');

  // Array-wide figures, from the same numbers as GET /api/v1/metrics.
  type Latency = { requests: number; bytes: number; p50Ms: number | null; p99Ms: number | null; p999Ms: number | null };
  const stats = (await apiRequest(apiSocket, 'GET', '/api/v1/metrics')).body as {
    logicalBytes: number;
    capacityBytes: number;
    provisionedBytes: number;
    volumes: Array<{ name: string; io?: { read: Latency; write: Latency } }>;
  };
  // ...and `pstorage stats` gets each volume's read and write percentiles since the start.
  for (const [volume, traffic] of [['default', DEFAULT_TRAFFIC], ['second', SECOND_TRAFFIC]] as const) {
    const latency = stats.volumes.find((entry) => entry.name === volume)?.io;
    t.truthy(latency, `${volume} has latency figures`);
    t.is(latency!.write.requests, traffic.writes);
    t.is(latency!.read.requests, traffic.reads + traffic.badReads);
    t.is(latency!.write.bytes, traffic.writes * traffic.writeBytes);
    t.is(latency!.read.bytes, traffic.reads * traffic.readBytes);
    for (const op of ['read', 'write'] as const) {
      const { p50Ms, p99Ms, p999Ms } = latency![op];
      t.true(p50Ms !== null && p99Ms !== null && p999Ms !== null && p50Ms <= p99Ms && p99Ms <= p999Ms, `${volume} ${op}: ${p50Ms} <= ${p99Ms} <= ${p999Ms} ms`);
      t.true(p999Ms! < 10_000, `${volume} ${op} p99.9 under 10 s`);
    }
  }
  t.is(sample(samples, 'pstorage_usable_bytes'), stats.capacityBytes);
  t.is(sample(samples, 'pstorage_provisioned_bytes'), stats.provisionedBytes);
  t.true(sample(samples, 'pstorage_logical_bytes') > 0);
  for (const kind of ['pattern', 'dedup', 'compression', 'thin']) t.true(sample(samples, 'pstorage_saved_bytes', { kind }) >= 0, kind);
  t.true(sample(samples, 'pstorage_saved_bytes', { kind: 'thin' }) > 0, 'thin volumes save most of their size');
  const health = sample(samples, 'pstorage_flash_health_ratio');
  t.true(health > 0 && health <= 1, `health ${health}`);
  t.true(sample(samples, 'pstorage_recovery_seconds') >= 0);
  t.true(sample(samples, 'pstorage_host_written_bytes_total') >= DEFAULT_TRAFFIC.writes * DEFAULT_TRAFFIC.writeBytes);
  for (const name of ['pstorage_physical_bytes', 'pstorage_free_bytes', 'pstorage_data_reduction_ratio', 'pstorage_write_amplification', 'pstorage_gc_runs_total', 'pstorage_gc_relocated_bytes_total', 'pstorage_flash_warm_programmed_bytes_total', 'pstorage_flash_erase_cycles_min', 'pstorage_flash_erase_cycles_mean', 'pstorage_flash_erase_cycles_max', 'pstorage_flash_retired_erase_blocks']) {
    t.true(Number.isFinite(sample(samples, name)), name);
  }
  t.true(sample(samples, 'process_resident_memory_bytes') > 0, 'process metrics are there too');
  // The clients flushed: each flush is a metadata commit, in the histogram and in the counter.
  const commits = sample(samples, 'pstorage_metadata_commits_total');
  t.true(commits >= DEFAULT_TRAFFIC.flushes + SECOND_TRAFFIC.flushes, `${commits} commits`);
  t.is(sample(samples, 'pstorage_metadata_commit_duration_seconds_count'), commits);
  t.is(sample(samples, 'pstorage_metadata_commit_duration_seconds_bucket', { le: '+Inf' }), commits);
  t.is(sample(samples, 'pstorage_metadata_commit_duration_seconds_bucket', { le: '0.0001' }) <= commits, true);
  t.true(sample(samples, 'pstorage_metadata_commit_duration_seconds_sum') > 0);
  t.is(sample(samples, 'pstorage_metadata_commit_failures_total'), 0);
  for (const cache of ['map', 'chunk']) {
    t.true(sample(samples, 'pstorage_cache_hits_total', { cache }) > 0, `${cache} cache hits`);
    t.true(sample(samples, 'pstorage_cache_misses_total', { cache }) >= 0, `${cache} cache misses`);
    t.true(sample(samples, 'pstorage_cache_bytes', { cache }) > 0, `${cache} cache bytes`);
    t.true(sample(samples, 'pstorage_cache_dirty_bytes', { cache }) >= 0, `${cache} dirty bytes`);
  }
  t.true(sample(samples, 'pstorage_gc_seconds_total') >= 0);

  const lint = await run('promtool', ['check', 'metrics'], { input: scrape.body, timeoutMs: 30_000 });
  t.is(lint.code, 0, `promtool check metrics found problems\n${describeRun(lint)}`);

  await stopServer(t, server);
});

test('after fio traffic on two volumes the per-volume counters match fio\'s request counts, and each histogram counts them all', async (t) => {
  requireTools(['fio']);
  const server = await startServer(t, { args: ['--metrics-listen', '127.0.0.1:0'] });
  const metricsPort = loggedPort(server, 'metrics listening');
  t.is((await apiRequest({ socketPath: apiSocketOf(server.dataDir) }, 'POST', '/api/v1/volumes', { body: { name: 'second', size: '1G' } })).status, 201);
  // Both at once, as two clients would: 4 KiB random writes on one, 64 KiB random reads and writes on the other.
  const jobs = [
    { volume: 'default', args: ['--rw=randwrite', '--bs=4k', '--iodepth=16'] },
    { volume: 'second', args: ['--rw=randrw', '--rwmixread=60', '--bs=64k', '--iodepth=4'] },
  ];
  const results = await Promise.all(jobs.map(({ volume, args }) => mustRun('fio', [`--name=${volume}`, '--ioengine=nbd', `--uri=${server.unixUri(volume)}`, ...args, '--size=64M', '--time_based=1', '--runtime=2', '--output-format=json'], { timeoutMs: 60_000 })));
  const samples = parseExposition((await httpGet({ port: metricsPort }, '/metrics')).body);
  results.forEach((result, index) => {
    const volume = jobs[index]!.volume;
    // fio prints a line of its own ("fio: connected to ...") before the JSON.
    const job = (JSON.parse(result.stdout.slice(result.stdout.indexOf('{'))) as { jobs: Array<Record<'read' | 'write', { total_ios: number; io_bytes: number }>> }).jobs[0]!;
    for (const op of ['read', 'write'] as const) {
      const fioRequests = job[op].total_ios;
      const counted = sample(samples, 'pstorage_nbd_requests_total', { volume, op });
      t.true(Math.abs(counted - fioRequests) <= Math.max(1, fioRequests * 0.01), `${volume} ${op}: ${counted} counted, fio ${fioRequests}`);
      t.true(Math.abs(sample(samples, 'pstorage_nbd_bytes_total', { volume, op }) - job[op].io_bytes) <= Math.max(64 * KiB, job[op].io_bytes * 0.01), `${volume} ${op} bytes`);
      t.is(sample(samples, 'pstorage_nbd_request_duration_seconds_count', { volume, op }), counted, `${volume} ${op} histogram count`);
    }
    t.true(job.write.total_ios > 0, `${volume}: fio wrote (${job.write.total_ios} requests)`);
  });
  t.is(results.length, 2);
  await stopServer(t, server);
});

test('--metrics-listen serves only GET /metrics, without a token; the management API serves /metrics with its token rules', async (t) => {
  const token = `metrics-token-${process.pid}`;
  const server = await startServer(t, { args: ['--metrics-listen', '127.0.0.1:0', '--api-listen', '127.0.0.1:0'], env: { PSTORAGE_API_TOKEN: token } });
  const metrics = { port: loggedPort(server, 'metrics listening') };
  const apiTcp = { port: loggedPort(server, 'management API listening') };

  t.is((await httpGet(metrics, '/metrics')).status, 200);
  t.is((await httpGet(metrics, '/metrics?name[]=x')).status, 200, 'a query string is ignored');
  for (const route of ['/', '/metrics/', '/api/v1/volumes', '/api/v1/metrics', '/favicon.ico']) t.is((await httpGet(metrics, route)).status, 404, route);
  t.is((await httpGet(metrics, '/metrics', { method: 'POST' })).status, 404, 'POST');
  t.is((await httpGet(metrics, '/metrics', { method: 'DELETE' })).status, 404, 'DELETE');

  const viaSocket = await httpGet({ socketPath: apiSocketOf(server.dataDir) }, '/metrics');
  t.is(viaSocket.status, 200);
  t.regex(viaSocket.contentType, /^text\/plain; version=0\.0\.4/);
  t.regex(viaSocket.body, /^pstorage_nbd_requests_total\{volume="default",op="read"\} 0$/m);
  t.is((await httpGet(apiTcp, '/metrics')).status, 401, 'the TCP API wants its token for /metrics too');
  const viaTcp = await httpGet(apiTcp, '/metrics', { headers: { authorization: `Bearer ${token}` } });
  t.is(viaTcp.status, 200);
  t.regex(viaTcp.body, /^# TYPE pstorage_nbd_request_duration_seconds histogram$/m);

  // Two clients attached (and idle) count as two connections of their volume until they leave.
  const holders = [0, 1].map(() => spawn(SYSTEM_PYTHON, ['-c', HOLDER, server.unixUri('default')], { stdio: ['pipe', 'pipe', 'inherit'] }));
  t.teardown(() => holders.forEach((holder) => holder.kill('SIGKILL')));
  await Promise.all(holders.map((holder) => new Promise<void>((resolve, reject) => {
    holder.stdout!.setEncoding('utf8').once('data', () => resolve());
    holder.once('exit', (code) => reject(new Error(`the holding client exited (${code}) before attaching`)));
  })));
  const attached = parseExposition((await httpGet(metrics, '/metrics')).body);
  t.is(sample(attached, 'pstorage_nbd_connections', { volume: 'default' }), 2);
  await Promise.all(holders.map((holder) => new Promise((resolve) => {
    holder.once('exit', resolve);
    holder.stdin!.end();
  })));
  // The server sees each client's close a moment after the client has exited.
  let connections = -1;
  for (let tries = 0; tries < 100 && connections !== 0; tries++) {
    if (tries > 0) await new Promise((resolve) => setTimeout(resolve, 50));
    connections = sample(parseExposition((await httpGet(metrics, '/metrics')).body), 'pstorage_nbd_connections', { volume: 'default' });
  }
  t.is(connections, 0, 'the clients have left');

  await stopServer(t, server);
});

test('--metrics-listen rejects a malformed address before opening the array', async (t) => {
  const result = await run(process.execPath, [PSTORAGE_BIN, 'serve', '--data-dir', '/nonexistent/never-made', '--socket', '/nonexistent/x.sock', '--metrics-listen', 'localhost'], { timeoutMs: 30_000 });
  t.is(result.code, 2, describeRun(result));
  t.regex(result.stderr, /invalid --metrics-listen "localhost": use HOST:PORT/);
});

test('pstorage stats shows each volume\'s read and write percentiles; pstorage top refreshes rates and percentiles, and says when no server runs', async (t) => {
  requireTools([SYSTEM_PYTHON]);
  const server = await startServer(t);
  await drive(server, 'default', { ...SECOND_TRAFFIC, writes: 30, reads: 20 });
  const stats = await mustRun(process.execPath, [PSTORAGE_BIN, 'stats', '--data-dir', server.dataDir]);
  const statsRow = stats.stdout.split('\n').find((line) => line.startsWith('default '));
  t.regex(stats.stdout, /READ p50\/p99\/p99\.9 +WRITES +WRITE p50\/p99\/p99\.9/);
  // 20 reads and 30 writes, and three percentiles of each in milliseconds.
  t.regex(statsRow ?? '', /^default +16 GiB +[\d.]+ \S+ +20 +[\d.]+ \/ [\d.]+ \/ [\d.]+ ms +30 +[\d.]+ \/ [\d.]+ \/ [\d.]+ ms$/, stats.stdout);

  // Not a terminal: one table per refresh, and --count ends it.
  const top = await mustRun(process.execPath, [PSTORAGE_BIN, 'top', '--data-dir', server.dataDir, '--count', '2', '--interval', '0.2'], { timeoutMs: 30_000 });
  const tables = top.stdout.split('pstorage top: ').slice(1);
  t.is(tables.length, 2, top.stdout);
  t.regex(tables[0]!, /VOLUME +MAPPED +READ\/s +READ MiB\/s +READ p50\/p99\/p99\.9 +WRITE\/s/);
  t.regex(tables[0]!, /\ndefault +[\d.]+ \S+ +- +- +[\d.]+ \/ [\d.]+ \/ [\d.]+ ms +- +- +[\d.]+ \/ /, 'no rates before a second sample');
  t.regex(tables[1]!, /\ndefault +[\d.]+ \S+ +0\.0 +0\.0 +[\d.]+ \/ [\d.]+ \/ [\d.]+ ms +0\.0 +0\.0 +[\d.]+ \/ /, 'idle: rates of zero');

  const bad = await run(process.execPath, [PSTORAGE_BIN, 'top', '--data-dir', server.dataDir, '--interval', '0']);
  t.is(bad.code, 2);
  t.regex(bad.stderr, /--interval must be between 0\.1 and 3600 seconds/);
  await stopServer(t, server);
  const none = await run(process.execPath, [PSTORAGE_BIN, 'top', '--data-dir', server.dataDir, '--count', '1']);
  t.is(none.code, 2);
  t.regex(none.stderr, /no server is running on .*pstorage serve --data-dir/);
});
