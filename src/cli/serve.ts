/**
 * `pstorage serve`: open (or create) the data directory and serve its volumes over NBD until
 * SIGINT/SIGTERM, then shut down gracefully: finish running requests, refuse new ones with
 * ESHUTDOWN, flush, and exit 0.
 */
import path from 'node:path';
import { createLogger, fdLineWriter } from '../common/log.js';
import { IdleReclaimer, limitHeapGrowth, tuneNativeMemory } from '../common/process-memory.js';
import { formatBytes } from '../common/size.js';
import { Analytics, sampleIntervalFromEnv } from '../mgmt/analytics.js';
import { ApiServer, API_SOCKET_NAME, checkApiSocketPath, isLoopback } from '../mgmt/api-server.js';
import { MetricsServer } from '../mgmt/metrics-server.js';
import { PrometheusMetrics } from '../mgmt/prometheus.js';
import { IoStats } from '../server/io-stats.js';
import { NbdServer, type ListenAddress } from '../server/nbd-server.js';
import type { TlsServerConfig } from '../server/tls.js';
import { DEFAULT_VOLUME_BYTES, DEFAULT_VOLUME_NAME, FlashArray, type ArrayOptions } from '../volume/flash-array.js';
import { createSnapshot, deleteSnapshot, deleteVolume, diff, listSnapshots } from '../volume/snapshots.js';
import { ReplicationService } from '../replication/replication-service.js';
import type { TcpAddress } from './listen-address.js';

export interface ServeOptions {
  dataDir: string;
  listen: TcpAddress | null;
  socketPath: string | null;
  array: ArrayOptions;
  /** Optional loopback TCP listener for the management API, with its bearer token. */
  apiListen?: { address: TcpAddress; token: string } | null;
  /** Optional plain HTTP listener serving only GET /metrics (Prometheus), no token. */
  metricsListen?: TcpAddress | null;
  /** STARTTLS on the NBD listeners (checked credentials, see tls-files.ts); null: no TLS. */
  tls?: TlsServerConfig | null;
  /** ActiveCluster: the array-to-array link listener and its shared secret (replication/). */
  replication?: { listen: TcpAddress | null; secret: Buffer | null };
}

export async function serve(options: ServeOptions): Promise<void> {
  const logger = createLogger({ component: 'pstorage' });
  // The process is the array's from here on: its heap and malloc settings follow the budget.
  limitHeapGrowth();
  if (!tuneNativeMemory()) logger.debug('malloc settings left alone (no glibc, or the native addon is missing or older)');
  const dataDir = path.resolve(options.dataDir);
  checkApiSocketPath(path.join(dataDir, API_SOCKET_NAME)); // before anything is created
  const sampleIntervalMs = sampleIntervalFromEnv(); // likewise: a bad value stops here
  const startedAt = process.hrtime.bigint();
  const { array, created, recoveryMs } = await FlashArray.open(dataDir, logger, options.array);
  if (created) await array.createVolume(DEFAULT_VOLUME_NAME, DEFAULT_VOLUME_BYTES);
  logger.info(created ? 'data directory created' : 'data directory opened', {
    dataDir,
    volumes: array.list().map((volume) => volume.name),
    recoveryMs: Math.round(recoveryMs * 10) / 10,
    openMs: Math.round((Number(process.hrtime.bigint() - startedAt) / 1e6) * 10) / 10,
    capacityBytes: array.ftl.usableBytes,
  });

  const ioStats = new IoStats();
  const metrics = new PrometheusMetrics(array, ioStats, { recoveryMs });
  // Capacity history: a sample now, then every 5 minutes (PSTORAGE_ANALYTICS_INTERVAL_MS) on an unref'd timer (mgmt/analytics.ts).
  const analytics = await Analytics.open(array, { sampleIntervalMs });
  analytics.start();
  // Pods: pod volumes are exported through the replication catalog; every other volume as before.
  const replication = await ReplicationService.open(
    {
      list: () => array.list(),
      lookup: (name) => array.lookup(name),
      device: (name) => (name === '' ? undefined : array.lookup(name)?.device),
      createVolume: (name, sizeBytes) => array.createVolume(name, sizeBytes),
      deleteVolume: (name) => deleteVolume(array, name, { force: false }),
      createSnapshot: (volume, name) => createSnapshot(array, volume, name),
      deleteSnapshot: (volume, name) => deleteSnapshot(array, volume, name),
      snapshotNames: async (volume) => (await listSnapshots(array, volume)).map((snapshot) => snapshot.name),
      diff: (volume, from, to) => diff(array, `${volume}@${from}`, `${volume}@${to}`),
    },
    logger.child({ component: 'replication' }),
    { dataDir, listen: options.replication?.listen ?? null, secret: options.replication?.secret ?? null },
  ).catch(async (error: unknown) => {
    await analytics.close().catch(() => undefined);
    await array.close();
    throw error;
  });
  if (replication.listenAddress !== null) logger.info('replication listening', { tcp: `${formatHost(replication.listenAddress.host)}:${replication.listenAddress.port}`, arrayId: replication.arrayId });
  const api = new ApiServer(array, logger.child({ component: 'api' }), metrics, analytics, replication);
  const metricsServer = new MetricsServer(metrics, logger.child({ component: 'metrics' }));
  await api.listen(path.join(dataDir, API_SOCKET_NAME));
  let apiPort: number | null = null;
  let metricsPort: number | null = null;
  try {
    if (options.apiListen) apiPort = await api.listenTcp(options.apiListen.address, options.apiListen.token);
    if (options.metricsListen) metricsPort = await metricsServer.listen(options.metricsListen);
  } catch (error) {
    await metricsServer.close();
    await api.close();
    await analytics.close().catch(() => undefined);
    await array.close();
    throw error;
  }
  logger.info('management API listening', { unix: path.join(dataDir, API_SOCKET_NAME), tcp: apiPort === null ? null : `${formatHost(options.apiListen!.address.host)}:${apiPort}` });
  if (metricsPort !== null) {
    const host = options.metricsListen!.host;
    logger.info('metrics listening', { tcp: `${formatHost(host)}:${metricsPort}`, path: '/metrics' });
    if (!isLoopback(host)) logger.warn('the metrics listener has no token and is not on a loopback address: anyone who can reach it can read volume names and I/O counters', { host });
  }
  const server = new NbdServer({ catalog: replication, logger, maxInFlightBytes: array.memory.inFlightBytes, maxConnectionInFlightBytes: array.memory.connectionInFlightBytes, ioStats, tls: options.tls ?? null });
  // Once quiet, what a busy moment needed goes back: pooled buffers, mapped image pages, V8's garbage.
  limitHeapGrowth(); // again: the reduction workers started since reset V8's flags
  const reclaimer = new IdleReclaimer({
    tick: () => {
      limitHeapGrowth();
      array.balanceMemory();
    },
    activity: () => server.inFlight.admitted + array.commits,
    busy: () => server.inFlight.inFlightBytes > 0 || array.scheduler.depth > 0,
    reclaim: () => server.trimMemory() + array.dropMappedPages(),
    logger: logger.child({ component: 'memory' }),
  });
  reclaimer.start();
  const bound: ListenAddress[] = [];
  if (options.listen !== null) bound.push(await server.listen(options.listen));
  if (options.socketPath !== null) bound.push(await server.listen({ path: path.resolve(options.socketPath) }));
  // Signals are handled from here on, before "listening" is logged: a supervisor (or a test) that
  // sends SIGTERM as soon as it sees that line got Node's default action, an exit by signal with
  // no clean shutdown, when the handlers were installed after it.
  let stopping = false;
  const stop = (signal: string): void => {
    if (stopping) {
      logger.warn('second signal: exiting without a clean shutdown', { signal });
      process.exit(1);
    }
    stopping = true;
    logger.info('shutting down', { signal, connections: server.connectionCount });
    void (async () => {
      reclaimer.stop();
      await server.close();
      await replication.close();
      await metricsServer.close();
      await api.close();
      await analytics.close().catch((error: unknown) => logger.warn('the last capacity sample was not written', { error: (error as Error).message }));
      await array.close();
      logger.info('stopped cleanly');
      process.exit(0);
    })().catch((error: unknown) => {
      logger.error('shutdown failed', { error: (error as Error).message });
      process.exit(1);
    });
  };
  process.on('SIGINT', () => stop('SIGINT'));
  process.on('SIGTERM', () => stop('SIGTERM'));
  const scheme = options.tls?.mode === 'require' ? 'nbds' : 'nbd';
  const urls = bound.map((address) => ('path' in address ? `${scheme}+unix:///default?socket=${address.path}` : `${scheme}://${formatHost(address.host)}:${address.port}/default`));
  logger.info('listening', {
    tls: options.tls?.mode ?? 'off',
    tcp: bound.filter((a): a is { host: string; port: number } => 'port' in a).map((a) => `${formatHost(a.host)}:${a.port}`),
    unix: bound.filter((a): a is { path: string } => 'path' in a).map((a) => a.path),
  });
  const defaultVolume = array.lookup('');
  if (defaultVolume !== undefined) {
    // Not process.stdout: a closed pipe there must not end the array (see fdLineWriter).
    fdLineWriter(1)(`pstorage: serving ${array.list().length} volume(s); default volume ${formatBytes(defaultVolume.device.sizeBytes)} at ${urls.join(' and ')}\n`);
  }
}

function formatHost(host: string): string {
  return host.includes(':') ? `[${host}]` : host;
}
