/**
 * The memory of the Node.js process itself, which `pstorage serve` owns: how much garbage V8 may
 * let pile up, and giving memory back when the array goes idle.
 *
 * V8 collects the old generation when it has grown by a factor since the last collection; on a
 * machine with gigabytes of memory that factor reaches 4, and the write path's metadata batches
 * (short-lived, but often promoted because a commit waits for the disk while holding them) then
 * grew the heap to 190 MB of which 35 MB was live (a unique write at --cache-mb 64). A 30 % growth
 * factor (`--heap-growing-percent`, which V8 reads at every collection, so it can be set at run
 * time) keeps the heap within about 1.3 times what is live, for more frequent but mostly
 * concurrent marking. The young generation grows from two 1 MiB semi-spaces to two of 16 MiB
 * under load and never shrinks back (32 MB resident for good). Kept at 1 MiB, though, a 4 KiB
 * write at QD32 allocates it full every 6 ms or so (about 2.4 KB of short-lived objects per
 * request): 250-280 scavenges per 100,000 requests, 110-250 ms of pauses, 1-2.5 µs of the main
 * thread per request, and each scavenge is a pause that requests wait behind. So it may grow, by
 * V8's own rule (when what survives scavenges adds up to its size), but only to
 * `SEMI_SPACE_LIMIT_BYTES`: the growth factor (read at every growth) is 2 below that and 1 from
 * there on. Measured on the same write (`--trace-gc`, 8 s runs, a loaded machine): 51-66
 * scavenges per 100,000 requests and 44-91 ms of pauses; resident memory 9-11 MB higher under
 * load, 6 MB when idle. Flags given at start (`node --max-semi-space-size=...`) would do as well,
 * but `pstorage serve` runs in the process its caller started, so these are set at run time; and
 * again every `CHECK_MS`, because starting a worker thread (the reduction pool's) puts V8's flags
 * back as they were at start (measured: the young generation grew to 32 MiB after one did).
 *
 * glibc: native memory (LevelDB's memtables and batches, Node's buffers) comes from malloc,
 * which keeps what is freed for reuse. By default it raises its mmap threshold to the largest
 * buffer freed so far (up to 32 MiB) and its trim threshold to twice that, and every thread that
 * allocates gets an arena of its own (libuv's four, V8's, the reduction worker): after a 4 GiB
 * unique write at --cache-mb 64, malloc held 156 MB of which 78 MB was in use, and malloc_trim
 * gave back 44 MB. `tuneNativeMemory` fixes the thresholds (128 KiB and 512 KiB: buffers above
 * 128 KiB are mapped and unmapped on their own, and a heap's free top goes back) and caps the
 * arenas created from then on at two, through mallopt; the same settings as MALLOC_* variables
 * lowered that run's peak from 287 to 230 MB and its idle from 191 to 164 MB, for the same CPU
 * time. This needs the native addon (native/nand-map); without it nothing is tuned.
 *
 * Idle: memory a busy moment needed stays in the process unless something gives it back: V8 does
 * not collect without allocating, freed slabs of the payload pool wait for a collection, mapped
 * image pages stay mapped, and malloc keeps free memory in the middle of its heaps.
 * `IdleReclaimer` watches for a quiet spell (no request admitted and none in flight for
 * `IDLE_MS`) and then gives memory back once: the caller's own trimming, one asynchronous full
 * collection (whose freed pages V8 unmaps in the background), then malloc_trim.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import v8 from 'node:v8';
import vm from 'node:vm';
import type { Logger } from './log.js';
import { trimMalloc, tuneMalloc } from './native.js';

/** Old-generation growth between collections, in percent (V8's default reaches 300). */
export const HEAP_GROWING_PERCENT = 30;
/** Each of the young generation's two semi-spaces grows to this at most (it starts at 1 MiB). */
export const SEMI_SPACE_LIMIT_BYTES = 8 * 1024 * 1024;
/** A quiet spell this long counts as idle... */
export const IDLE_MS = 2000;
/** ...checked this often. */
const CHECK_MS = 500;
/** After the idle collection, malloc_trim waits this long for V8's sweeper to free buffers. */
const TRIM_DELAY_MS = 250;

type GcFunction = (options?: { type?: 'major' | 'minor'; execution?: 'sync' | 'async' }) => Promise<void> | void;

let gcFunction: GcFunction | null | undefined;

/** V8's collector, exposed at run time (`--expose-gc` through setFlagsFromString); null if that fails. */
function collector(): GcFunction | null {
  if (gcFunction !== undefined) return gcFunction;
  try {
    v8.setFlagsFromString('--expose-gc');
    gcFunction = vm.runInNewContext('gc') as GcFunction;
  } catch {
    gcFunction = null;
  }
  return gcFunction;
}

/** glibc's settings for a process that serves an array (see the design note); false if not applied. */
export function tuneNativeMemory(): boolean {
  return tuneMalloc?.(128 * 1024, 512 * 1024, 2) ?? false;
}

/**
 * For a process that serves an array: keep V8's old generation close to what is live, and let the
 * young generation grow to `SEMI_SPACE_LIMIT_BYTES` and no further (see the design note).
 */
export function limitHeapGrowth(percent = HEAP_GROWING_PERCENT): void {
  v8.setFlagsFromString(`--heap-growing-percent=${percent}`);
  const semiSpaceBytes = v8.getHeapSpaceStatistics().find((space) => space.space_name === 'new_space')?.space_size ?? SEMI_SPACE_LIMIT_BYTES;
  v8.setFlagsFromString(`--semi-space-growth-factor=${semiSpaceBytes < SEMI_SPACE_LIMIT_BYTES ? 2 : 1}`);
}

export interface IdleReclaimerOptions {
  /** Called every check (re-applies `limitHeapGrowth`'s flags, see the design note). */
  tick?: () => void;
  /** Requests admitted so far (any counter that moves with activity)... */
  activity: () => number;
  /** ...and whether any is in flight now. */
  busy: () => boolean;
  /** Gives back what the caller holds for reuse; returns the bytes (for the log). */
  reclaim: () => number;
  logger: Logger;
  idleMs?: number;
  checkMs?: number;
}

export class IdleReclaimer {
  private timer: NodeJS.Timeout | null = null;
  private lastActivity = -1;
  private quietSinceMs = 0;
  /** Reclaimed since the last activity: wait for activity before doing it again. */
  private done = false;
  reclaims = 0;

  constructor(private readonly options: IdleReclaimerOptions) {}

  start(): void {
    if (this.timer !== null) return;
    this.timer = setInterval(() => void this.check(), this.options.checkMs ?? CHECK_MS);
    this.timer.unref();
  }

  stop(): void {
    if (this.timer !== null) clearInterval(this.timer);
    this.timer = null;
  }

  private async check(): Promise<void> {
    this.options.tick?.();
    const now = performance.now();
    const activity = this.options.activity();
    if (activity !== this.lastActivity || this.options.busy()) {
      this.lastActivity = activity;
      this.quietSinceMs = now;
      this.done = false;
      return;
    }
    if (this.done || now - this.quietSinceMs < (this.options.idleMs ?? IDLE_MS)) return;
    this.done = true;
    await this.reclaimNow();
  }

  /** Gives memory back now: the caller's trimming, then a full collection. */
  async reclaimNow(): Promise<void> {
    const started = performance.now();
    const before = process.memoryUsage();
    const trimmedBytes = this.options.reclaim();
    await collector()?.({ type: 'major', execution: 'async' });
    // Buffers the collection freed reach free() from V8's background sweeper a little later.
    await sleep(TRIM_DELAY_MS);
    trimMalloc?.();
    const after = process.memoryUsage();
    this.reclaims += 1;
    this.options.logger.debug('idle: memory given back', {
      trimmedBytes,
      heapBytes: [before.heapTotal, after.heapTotal],
      externalBytes: [before.external, after.external],
      ms: Math.round(performance.now() - started),
    });
  }
}
