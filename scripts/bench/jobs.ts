/**
 * The benchmark's job matrix and the fio command lines that run it. Pure data and pure functions:
 * nothing here starts a process, so the matrix can be read (and tested) on its own.
 *
 * Volume layout. Every server exports a volume of the same size; the benchmark uses three
 * regions of `regionBytes` each at the start of it:
 *
 *   region          offset      written by                          used by
 *   main            0           preconditioning (all servers)        the matrix jobs
 *   dedup-source    1 x region  preconditioning, seeded (pstorage)   nothing: it is the original
 *   data            2 x region  preconditioning (pstorage)           the data-pattern jobs
 *
 * The "duplicate" job writes the data region with the very same fio seed, block size, depth and
 * offsets as the dedup-source preconditioning, so every logical block it writes is a byte-for-byte
 * copy of one already stored. The filesystem jobs later make ext4 over the start of the volume;
 * they run after the block jobs, so they never disturb them.
 */

export type ServerId = 'pstorage' | 'nbdkit-memory' | 'nbdkit-file';
/** The A B C order of the alternation; each job runs A B C, the next C B A, and so on. */
export const SERVER_IDS: readonly ServerId[] = ['pstorage', 'nbdkit-memory', 'nbdkit-file'];
export const REFERENCE_SERVER_IDS: readonly ServerId[] = ['nbdkit-memory', 'nbdkit-file'];

export type DataPattern = 'unique' | 'duplicate' | 'zeros' | 'compressible';
export type RegionName = 'main' | 'dedup-source' | 'data';
export type ReadWrite = 'randread' | 'randwrite' | 'randrw' | 'read' | 'write';
export type JobGroup = 'matrix' | 'data' | 'filesystem';
export type Preconditioning = 'rand4k' | 'seq1m';

export interface JobSpec {
  id: string;
  title: string;
  /** A short name for chart axes, when the title is too long for one. */
  chartLabel?: string;
  group: JobGroup;
  rw: ReadWrite;
  blockBytes: number;
  /** Queue depth per connection. */
  iodepth: number;
  /** NBD connections (fio numjobs; for filesystem jobs, fio processes on the same file). */
  connections: number;
  readPercent?: number;
  data: DataPattern;
  region: RegionName;
  servers: readonly ServerId[];
  /** For pstorage-only jobs: the matrix job the nbdkit servers ran instead, for the ratios. */
  baselineJobId?: string;
  /** Writes the region once (capped by the runtime) instead of running for the whole runtime. */
  sizeBounded?: boolean;
}

const KiB = 1024;
const MiB = 1024 * KiB;

function matrixJob(id: string, title: string, rw: ReadWrite, blockBytes: number, iodepth: number, extra: Partial<JobSpec> = {}): JobSpec {
  return { id, title, group: 'matrix', rw, blockBytes, iodepth, connections: 1, data: 'unique', region: 'main', servers: SERVER_IDS, ...extra };
}

function dataJob(data: DataPattern, title: string, chartLabel: string): JobSpec {
  return {
    id: `data-${data}`,
    title,
    chartLabel,
    group: 'data',
    rw: 'randwrite',
    blockBytes: 4 * KiB,
    iodepth: 32,
    connections: 1,
    data,
    region: 'data',
    servers: ['pstorage'],
    baselineJobId: 'randwrite-4k-qd32',
    sizeBounded: data === 'duplicate',
  };
}

/** The same matrix for every server (issue item 1), in the order it runs. */
export const MATRIX_JOBS: readonly JobSpec[] = [
  matrixJob('randread-4k-qd1', '4 KiB random read, QD1', 'randread', 4 * KiB, 1),
  matrixJob('randread-4k-qd32', '4 KiB random read, QD32', 'randread', 4 * KiB, 32),
  matrixJob('randwrite-4k-qd1', '4 KiB random write, QD1', 'randwrite', 4 * KiB, 1),
  matrixJob('randwrite-4k-qd32', '4 KiB random write, QD32', 'randwrite', 4 * KiB, 32),
  matrixJob('randrw70-4k-qd32', '4 KiB random 70% read / 30% write, QD32', 'randrw', 4 * KiB, 32, { readPercent: 70 }),
  matrixJob('read-128k-qd8', '128 KiB sequential read, QD8', 'read', 128 * KiB, 8),
  matrixJob('write-128k-qd8', '128 KiB sequential write, QD8', 'write', 128 * KiB, 8),
  // "QD32 over 4 connections": 32 requests in flight in total, 8 on each connection, so it
  // compares directly with the single-connection QD32 job.
  matrixJob('randwrite-4k-qd32-4conn', '4 KiB random write, QD32 over 4 connections (4 x QD8)', 'randwrite', 4 * KiB, 8, { connections: 4 }),
];

/** pstorage only: what its data reduction sees. All 4 KiB random writes at QD32 on the data region. */
export const DATA_JOBS: readonly JobSpec[] = [
  dataJob('unique', 'unique data', 'unique'),
  dataJob('duplicate', 'a second copy of data already stored', 'duplicate (2nd copy)'),
  dataJob('zeros', 'all-zero blocks', 'zeros'),
  dataJob('compressible', 'compressible data', 'compressible'),
];

/** Filesystem end to end (issue item 2): ext4 on nbdfuse + loop, fio libaio direct. */
export const FILESYSTEM_JOBS: readonly JobSpec[] = [
  { id: 'fs-randwrite-4k-qd16', title: 'ext4: 4 KiB random write, QD16', group: 'filesystem', rw: 'randwrite', blockBytes: 4 * KiB, iodepth: 16, connections: 1, data: 'unique', region: 'main', servers: SERVER_IDS },
  { id: 'fs-write-1m-qd8', title: 'ext4: 1 MiB sequential write, QD8', group: 'filesystem', rw: 'write', blockBytes: MiB, iodepth: 8, connections: 1, data: 'unique', region: 'main', servers: SERVER_IDS },
  { id: 'fs-read-1m-qd8', title: 'ext4: 1 MiB sequential read, QD8', group: 'filesystem', rw: 'read', blockBytes: MiB, iodepth: 8, connections: 1, data: 'unique', region: 'main', servers: SERVER_IDS },
];

export function regionOffsetBytes(region: RegionName, regionBytes: number): number {
  const index: Record<RegionName, number> = { main: 0, 'dedup-source': 1, data: 2 };
  return index[region] * regionBytes;
}

/** Bytes of the volume the block jobs touch; the volume must be at least this large. */
export function layoutBytes(regionBytes: number): number {
  return 3 * regionBytes;
}

/** Sequential jobs report MiB/s as their headline figure, small random ones IOPS. */
export function headlineUnit(job: JobSpec): 'IOPS' | 'MiB/s' {
  return job.blockBytes >= 64 * KiB ? 'MiB/s' : 'IOPS';
}

export interface FioTarget {
  /** `--ioengine=nbd --uri=...` or `--ioengine=libaio --direct=1 --filename=...`. */
  engineArgs: string[];
  offsetBytes: number;
  sizeBytes: number;
}

export interface FioRunSettings {
  runtimeSeconds: number;
  outputPath: string;
  /** Seed shared by the dedup source and the duplicate job. */
  duplicateSeed: number;
  compressPercent: number;
}

/** Engine arguments for an NBD URI; fio accepts `--uri` only after `--ioengine=nbd`. */
export function nbdTarget(uri: string, offsetBytes: number, sizeBytes: number): FioTarget {
  return { engineArgs: ['--ioengine=nbd', `--uri=${uri}`], offsetBytes, sizeBytes };
}

export function fileTarget(filePath: string, sizeBytes: number): FioTarget {
  return { engineArgs: ['--ioengine=libaio', '--direct=1', `--filename=${filePath}`], offsetBytes: 0, sizeBytes };
}

/** fio's buffer options for each data pattern. */
export function dataArgs(data: DataPattern, settings: Pick<FioRunSettings, 'duplicateSeed' | 'compressPercent'>): string[] {
  switch (data) {
    case 'unique':
      return ['--refill_buffers=1', '--randrepeat=0'];
    case 'duplicate':
      // A fixed seed replays both the buffer contents and the offsets of the dedup source.
      return ['--refill_buffers=1', '--randrepeat=1', `--randseed=${settings.duplicateSeed}`];
    case 'zeros':
      // scramble_buffers would stamp offsets and times into every 512 bytes: turn it off.
      return ['--zero_buffers=1', '--scramble_buffers=0'];
    case 'compressible':
      return ['--refill_buffers=1', '--randrepeat=0', `--buffer_compress_percentage=${settings.compressPercent}`];
  }
}

/** The complete fio argument list for one measured run of `job`. */
export function fioArgs(job: JobSpec, target: FioTarget, settings: FioRunSettings): string[] {
  const args = [
    `--name=${job.id}`,
    ...target.engineArgs,
    `--rw=${job.rw}`,
    `--bs=${job.blockBytes}`,
    `--iodepth=${job.iodepth}`,
    `--numjobs=${job.connections}`,
    '--group_reporting=1',
    `--offset=${target.offsetBytes}`,
    `--size=${target.sizeBytes}`,
    `--runtime=${settings.runtimeSeconds}`,
    ...(job.sizeBounded ? [] : ['--time_based=1']),
    ...dataArgs(job.data, settings),
    '--lat_percentiles=1',
    '--percentile_list=50:99:99.9',
    '--output-format=json',
    `--output=${settings.outputPath}`,
  ];
  if (job.readPercent !== undefined) args.push(`--rwmixread=${job.readPercent}`, '--unified_rw_reporting=mixed');
  return args;
}

/**
 * The preconditioning write: every logical block of the region written exactly once (fio's
 * random map), with 4 KiB random writes at QD32, or 1 MiB sequential writes at QD8 for `seq1m`.
 */
export function preconditionArgs(method: Preconditioning, target: FioTarget, outputPath: string, data: DataPattern, duplicateSeed: number): string[] {
  const [rw, blockBytes, iodepth] = method === 'rand4k' ? ['randwrite', 4 * KiB, 32] : ['write', MiB, 8];
  return [
    '--name=precondition',
    ...target.engineArgs,
    `--rw=${rw}`,
    `--bs=${blockBytes}`,
    `--iodepth=${iodepth}`,
    `--offset=${target.offsetBytes}`,
    `--size=${target.sizeBytes}`,
    ...dataArgs(data, { duplicateSeed, compressPercent: 0 }),
    '--output-format=json',
    `--output=${outputPath}`,
  ];
}

/** The dedup source must be written exactly as the duplicate job writes: same job, no time limit. */
export function dedupSourceArgs(target: FioTarget, outputPath: string, duplicateSeed: number): string[] {
  const job = DATA_JOBS.find((candidate) => candidate.data === 'duplicate')!;
  const args = fioArgs(job, target, { runtimeSeconds: 0, outputPath, duplicateSeed, compressPercent: 0 });
  return args.filter((arg) => !arg.startsWith('--runtime=')).map((arg) => (arg.startsWith('--name=') ? '--name=dedup-source' : arg));
}

export const PRECONDITIONING_TEXT: Record<Preconditioning, string> = {
  rand4k:
    'every logical block of the test region written once with unique data by 4 KiB random writes at QD32 (fio randwrite, random map), on a fresh volume, before any measurement',
  seq1m: 'the test region written once with unique data by 1 MiB sequential writes at QD8, on a fresh volume, before any measurement',
};
