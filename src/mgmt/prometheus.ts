/**
 * The array's metrics in the Prometheus text format (0.0.4), served at `GET /metrics` on the
 * management API and, with `pstorage serve --metrics-listen`, on a plain HTTP listener of its own
 * (metrics-server.ts).
 *
 * Nothing here runs on the I/O path. Per-request figures are recorded by the NBD connections into
 * the typed arrays of server/io-stats.ts and read here, at scrape time; array-wide figures come
 * from `FlashArray.stats()` (the document behind `GET /api/v1/metrics` and `pstorage stats
 * --json`), computed once per scrape. The engine's own timings and counters (metadata commit
 * durations in a common/latency-histogram.ts histogram, page-cache and read-mapping hits and
 * misses, GC time) are plain numbers it increments where the work happens anyway; they too are
 * read only here. prom-client renders the text. Of the usual process metrics only
 * `process_cpu_seconds_total` and `process_resident_memory_bytes` are given, read at scrape time:
 * prom-client's default set (its GC observer and event-loop monitor run all the time once
 * started) cost 4-7 % of 4 KiB read throughput and CPU when scraped once a second, against 1-2 %
 * without it (alternating fio runs, see the commit message).
 *
 * Naming: every metric starts `pstorage_`, is in base units (bytes, seconds, ratios 0..1), and
 * counters end `_total`. A per-volume series carries the label `volume` (the export name, so a
 * snapshot exported as `VOLUME@SNAP` gets its own series); the I/O series also carry `op` (read,
 * write, trim, write_zeroes, flush) and errors `errno` (the NBD error name); cache series carry
 * `cache` (map, chunk, nand_mapping). The series of a
 * deleted volume are dropped at the next scrape once nothing is attached to it.
 */
import { Gauge, Registry, type Metric } from 'prom-client';
import { BUCKETS_PER_OP, IO_ERRNOS, IO_OPS, LATENCY_BUCKETS_SECONDS, type ExportIoStats, type IoStats } from '../server/io-stats.js';
import type { CacheStats, FlashArray } from '../volume/flash-array.js';

/** The part of `FlashArray.stats()` read here (see README, "pstorage stats --json"). */
interface StatsDocument {
  logicalBytes: number;
  physicalBytes: number;
  hostBytesWritten: number;
  nandBytesWritten: number;
  writeAmplification: number;
  capacityBytes: number;
  freeBytes: number;
  provisionedBytes: number;
  dataReductionRatio: number;
  reduction: {
    patternBytesSaved: number;
    dedupBytesSaved: number;
    compressionBytesSaved: number;
    thinProvisioningBytesSaved: number;
    compressionRatio: number;
  };
  volumes: Array<{ name: string; sizeBytes: number; logicalBytes: number }>;
  flash: {
    eraseBlocks: number;
    freeEraseBlocks: number;
    badEraseBlocks: number;
    peMin: number;
    peMean: number;
    peMax: number;
    flashHealthPercent: number;
    relocatedBytes: number;
    erases: number;
    gcRuns: number;
    warmProgrammedBytes: number;
  };
}

type Labels = Record<string, string>;
interface Sample {
  value: number;
  labels?: Labels;
  /** For a histogram's `_bucket`, `_sum` and `_count` lines. */
  metricName?: string;
}

/**
 * A metric whose samples are made at scrape time from counters kept elsewhere. prom-client's own
 * Counter and Histogram keep their values themselves (an `inc` or `observe` per event, with a
 * label lookup each time); this has the same `get()` its registry renders, and no state.
 */
class ScrapeCollector {
  readonly aggregator = 'sum';

  constructor(
    readonly name: string,
    readonly help: string,
    readonly type: 'counter' | 'gauge' | 'histogram',
    private readonly samples: () => Sample[],
  ) {}

  get(): { name: string; help: string; type: string; aggregator: string; values: Sample[] } {
    return { name: this.name, help: this.help, type: this.type, aggregator: this.aggregator, values: this.samples() };
  }

  reset(): void {
    // Nothing kept here: the values live in the engine and the I/O statistics.
  }
}

export interface StartupFacts {
  /** How long opening the data directory took (recovery included) when this process started. */
  recoveryMs: number;
}

export class PrometheusMetrics {
  readonly registry = new Registry();
  /** `array.stats()` as of the scrape under way (taken once per scrape, read by every gauge). */
  private stats: StatsDocument | null = null;

  constructor(
    private readonly array: FlashArray,
    readonly io: IoStats,
    startup: StartupFacts,
  ) {
    this.registerArrayMetrics(startup);
    this.registerMetadataMetrics();
    this.registerIoMetrics();
    this.collector('process_cpu_seconds_total', 'User and system CPU time of the server process, in seconds.', 'counter', () => {
      const { user, system } = process.cpuUsage();
      return [{ value: (user + system) / 1e6 }];
    });
    this.collector('process_resident_memory_bytes', 'Resident memory of the server process.', 'gauge', () => [{ value: process.memoryUsage.rss() }]);
  }

  get contentType(): string {
    return this.registry.contentType;
  }

  /** The whole exposition, as of now. */
  async render(): Promise<string> {
    this.stats = this.array.stats() as unknown as StatsDocument;
    // Every volume has series from its start (zeros), and those of deleted volumes go.
    const exportNames = new Set(this.array.list().map((entry) => entry.name));
    this.io.prune((name) => exportNames.has(name));
    for (const volume of this.array.volumes.values()) this.io.forExport(volume.record.name);
    return this.registry.metrics();
  }

  private get current(): StatsDocument {
    if (this.stats === null) throw new Error('metrics collected outside render()');
    return this.stats;
  }

  private gauge(name: string, help: string, value: (stats: StatsDocument) => number): void {
    const self = this;
    new Gauge({
      name,
      help,
      registers: [this.registry],
      collect() {
        this.set(value(self.current));
      },
    });
  }

  private collector(name: string, help: string, type: 'counter' | 'gauge' | 'histogram', samples: () => Sample[]): void {
    this.registry.registerMetric(new ScrapeCollector(name, help, type, samples) as unknown as Metric);
  }

  private registerArrayMetrics(startup: StartupFacts): void {
    const self = this;
    this.gauge('pstorage_logical_bytes', 'Bytes of volume address space mapped (holding data or a pattern).', (s) => s.logicalBytes);
    this.gauge('pstorage_physical_bytes', 'NAND bytes holding live data (stored chunks and their record headers).', (s) => s.physicalBytes);
    this.gauge('pstorage_usable_bytes', 'Usable NAND capacity, after over-provisioning, the GC reserve and retired erase blocks.', (s) => s.capacityBytes);
    this.gauge('pstorage_free_bytes', 'Usable NAND capacity not holding live data.', (s) => s.freeBytes);
    this.gauge('pstorage_provisioned_bytes', 'Sum of the volume sizes (thin: may exceed the usable capacity).', (s) => s.provisionedBytes);
    this.gauge('pstorage_data_reduction_ratio', 'Logical bytes per physical byte (0 while nothing is stored).', (s) => s.dataReductionRatio);
    this.gauge('pstorage_compression_ratio', 'Uncompressed bytes per stored byte of the live chunks (0 while there are none).', (s) => s.reduction.compressionRatio);
    new Gauge({
      name: 'pstorage_saved_bytes',
      help: 'Bytes that data reduction saves, by kind: pattern (zero and repeated-word blocks), dedup, compression, thin (provisioned but never written).',
      labelNames: ['kind'],
      registers: [this.registry],
      collect() {
        const reduction = self.current.reduction;
        this.set({ kind: 'pattern' }, reduction.patternBytesSaved);
        this.set({ kind: 'dedup' }, reduction.dedupBytesSaved);
        this.set({ kind: 'compression' }, reduction.compressionBytesSaved);
        this.set({ kind: 'thin' }, reduction.thinProvisioningBytesSaved);
      },
    });
    this.gauge('pstorage_write_amplification', 'NAND bytes programmed per host byte written, over the array\'s life (0 before any write).', (s) => s.writeAmplification);
    const counter = (name: string, help: string, value: (stats: StatsDocument) => number) => this.collector(name, help, 'counter', () => [{ value: value(this.current) }]);
    counter('pstorage_host_written_bytes_total', 'Bytes hosts have written (WRITE payloads), over the array\'s life.', (s) => s.hostBytesWritten);
    counter('pstorage_nand_written_bytes_total', 'Bytes programmed into NAND pages (host data, GC relocation, headers, padding), over the array\'s life.', (s) => s.nandBytesWritten);
    counter('pstorage_flash_warm_programmed_bytes_total', 'Bytes programmed, since start, over image pages the host kept from an erase (cheap to write into).', (s) => s.flash.warmProgrammedBytes);
    counter('pstorage_gc_runs_total', 'Garbage-collection runs.', (s) => s.flash.gcRuns);
    counter('pstorage_gc_relocated_bytes_total', 'Live bytes garbage collection moved to other erase blocks.', (s) => s.flash.relocatedBytes);
    counter('pstorage_flash_erases_total', 'Erase-block erases.', (s) => s.flash.erases);
    this.gauge('pstorage_flash_erase_cycles_min', 'Fewest program/erase cycles of any erase block.', (s) => s.flash.peMin);
    this.gauge('pstorage_flash_erase_cycles_mean', 'Mean program/erase cycles of the erase blocks.', (s) => s.flash.peMean);
    this.gauge('pstorage_flash_erase_cycles_max', 'Most program/erase cycles of any erase block.', (s) => s.flash.peMax);
    this.gauge('pstorage_flash_erase_blocks', 'Erase blocks in the array.', (s) => s.flash.eraseBlocks);
    this.gauge('pstorage_flash_free_erase_blocks', 'Erased erase blocks ready to be written.', (s) => s.flash.freeEraseBlocks);
    this.gauge('pstorage_flash_retired_erase_blocks', 'Erase blocks retired (bad, or being retired) after failures or wear.', (s) => s.flash.badEraseBlocks);
    this.gauge('pstorage_flash_health_ratio', 'Endurance left: 1 - mean P/E cycles / rated cycles (1 when new; pstorage stats shows it as flashHealthPercent).', (s) => s.flash.flashHealthPercent / 100);
    this.collector('pstorage_gc_seconds_total', 'Wall time garbage-collection runs took (relocating live data and the commit after it), since the server started.', 'counter', () => [{ value: this.array.ftl.counters.gcMs / 1000 }]);
    this.gauge('pstorage_recovery_seconds', 'Time opening the data directory took at this process\'s start, recovery included.', () => startup.recoveryMs / 1000);
    const perVolume = (pick: (volume: StatsDocument['volumes'][number]) => number) => () => this.current.volumes.map((volume) => ({ labels: { volume: volume.name }, value: pick(volume) }));
    this.collector('pstorage_volume_size_bytes', 'Virtual size of each volume.', 'gauge', perVolume((volume) => volume.sizeBytes));
    this.collector('pstorage_volume_logical_bytes', 'Bytes of each volume\'s address space mapped.', 'gauge', perVolume((volume) => volume.logicalBytes));
  }

  /** Metadata commits and the metadata caches: read from the engine's counters at scrape time. */
  private registerMetadataMetrics(): void {
    const commits = this.array.commitDurations;
    this.collector('pstorage_metadata_commits_total', 'Metadata commits (NAND sync, then one LevelDB batch), successful or not, since the server started.', 'counter', () => [{ value: commits.count }]);
    this.collector('pstorage_metadata_commit_failures_total', 'Metadata commits that failed (their data stays in memory for the next one).', 'counter', () => [{ value: this.array.commitFailures }]);
    this.collector('pstorage_metadata_commit_duration_seconds', 'Time a metadata commit took, from making NAND durable to the end of its LevelDB batch, successful or not.', 'histogram', () =>
      histogramSamples([], 'pstorage_metadata_commit_duration_seconds', commits.boundsSeconds, commits.buckets, 0, commits.sumMs / 1000, {}),
    );
    const perCache = (value: (cache: CacheStats) => number | null) => () => {
      const samples: Sample[] = [];
      for (const cache of this.array.cacheStats()) {
        const figure = value(cache);
        if (figure !== null) samples.push({ labels: { cache: cache.cache }, value: figure });
      }
      return samples;
    };
    const caches = 'cache: map (volume-map pages), chunk (chunk-table pages), nand_mapping (erase blocks of the memory-mapped NAND image, when mapped)';
    this.collector('pstorage_cache_hits_total', `Lookups served from memory, by ${caches}.`, 'counter', perCache((cache) => cache.hits));
    this.collector('pstorage_cache_misses_total', `Lookups not served from memory: map and chunk pages read from LevelDB, NAND reads of erase blocks not mapped; by ${caches}.`, 'counter', perCache((cache) => cache.misses));
    this.collector('pstorage_cache_bytes', `Bytes held, by ${caches}.`, 'gauge', perCache((cache) => cache.bytes));
    this.collector('pstorage_cache_dirty_bytes', 'Bytes of cached map and chunk pages changed since they were last written to LevelDB (approximate: dirty pages times the page size), by cache.', 'gauge', perCache((cache) => cache.dirtyBytes));
  }

  private registerIoMetrics(): void {
    const each = (sample: (stats: ExportIoStats, op: number) => Sample): (() => Sample[]) => () => {
      const samples: Sample[] = [];
      for (const stats of this.io.exports()) for (let op = 0; op < IO_OPS.length; op++) samples.push(sample(stats, op));
      return samples;
    };
    const labels = (stats: ExportIoStats, op: number): Labels => ({ volume: stats.name, op: IO_OPS[op]! });
    this.collector('pstorage_nbd_requests_total', 'NBD requests completed (successfully or not), by volume and operation.', 'counter', each((stats, op) => ({ labels: labels(stats, op), value: stats.requests[op]! })));
    this.collector('pstorage_nbd_bytes_total', 'Bytes read, written, trimmed or zeroed by NBD requests that succeeded, by volume and operation.', 'counter', each((stats, op) => ({ labels: labels(stats, op), value: stats.bytes[op]! })));
    this.collector('pstorage_nbd_errors_total', 'NBD requests answered with an error, by volume, operation and NBD error (only those that occurred).', 'counter', () => {
      const samples: Sample[] = [];
      for (const stats of this.io.exports()) {
        for (let op = 0; op < IO_OPS.length; op++) {
          for (let errno = 0; errno < IO_ERRNOS.length; errno++) {
            const count = stats.errorCount(op, errno);
            if (count > 0) samples.push({ labels: { ...labels(stats, op), errno: IO_ERRNOS[errno]! }, value: count });
          }
        }
      }
      return samples;
    });
    this.collector('pstorage_nbd_request_duration_seconds', 'Time from an NBD request\'s dispatch (its payload read) to its reply being queued, by volume and operation.', 'histogram', () => {
      const samples: Sample[] = [];
      for (const stats of this.io.exports()) {
        for (let op = 0; op < IO_OPS.length; op++) {
          histogramSamples(samples, 'pstorage_nbd_request_duration_seconds', LATENCY_BUCKETS_SECONDS, stats.latencyBuckets, op * BUCKETS_PER_OP, stats.latencySumMs[op]! / 1000, labels(stats, op));
        }
      }
      return samples;
    });
    const perExport = (value: (stats: ExportIoStats) => number) => () => this.io.exports().map((stats) => ({ labels: { volume: stats.name }, value: value(stats) }));
    this.collector('pstorage_nbd_requests_in_flight', 'NBD data requests being served now, by volume.', 'gauge', perExport((stats) => stats.inFlight));
    this.collector('pstorage_nbd_connections', 'NBD connections attached now, by volume.', 'gauge', perExport((stats) => stats.connections));
  }
}

/**
 * One histogram's lines, appended to `samples`: cumulative `_bucket`s (with `le`), then `_sum` and
 * `_count`. Its bucket counts (not cumulative, +Inf last) are `buckets[at]` to `buckets[at + bounds.length]`.
 */
function histogramSamples(samples: Sample[], name: string, boundsSeconds: readonly number[], buckets: Float64Array, at: number, sumSeconds: number, labels: Labels): Sample[] {
  let cumulative = 0;
  for (let bucket = 0; bucket <= boundsSeconds.length; bucket++) {
    cumulative += buckets[at + bucket]!;
    const le = bucket < boundsSeconds.length ? String(boundsSeconds[bucket]) : '+Inf';
    samples.push({ metricName: `${name}_bucket`, labels: { ...labels, le }, value: cumulative });
  }
  samples.push({ metricName: `${name}_sum`, labels, value: sumSeconds });
  samples.push({ metricName: `${name}_count`, labels, value: cumulative });
  return samples;
}
