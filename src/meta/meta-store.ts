/**
 * The metadata store: the one interface through which the storage engine reads and commits its
 * metadata. The engine never sees LevelDB; it sees named sublevels of raw byte keys and values.
 *
 * What it owns: nine keyspaces (`Sublevel`), each sorted by unsigned byte order of its keys.
 * Keys and values are opaque bytes; the engine encodes them (big-endian keys from `keys.ts`, so
 * byte order is numeric order).
 *
 * The commit point is `batch(ops, { sync })`:
 *   - A batch is atomic across sublevels: after a crash it is there whole or not at all.
 *   - Batches take effect in call order, even when the caller does not await one before calling
 *     the next. A batch resolves only once every batch called before it has been applied.
 *   - `sync: true` means that when the promise resolves, this batch and every batch called before
 *     it are on stable storage. `sync: false` batches are applied (visible to reads once resolved)
 *     but may be lost in a crash; if they are, every later batch is lost too (the write-ahead log
 *     is sequential, so a crash keeps a prefix of the batch sequence, never a later batch without
 *     an earlier one). An empty batch with `sync: true` is a durability barrier for all earlier
 *     batches: that is what the engine calls on NBD FLUSH when it has nothing new to write.
 *   - `sync` has no default: every call site says which it wants.
 *
 * Reads (`get`, `getMany`, `iterate`) see every batch that has resolved; a batch still in flight
 * may or may not be visible. `iterate` reads from a consistent snapshot taken when iteration
 * starts (at the first `next()`), so writes made while iterating are not seen.
 *
 * Returned buffers belong to the caller, and the store copies what it is given before `batch`
 * returns, so either side may reuse its buffers at once.
 *
 * Misuse (an unknown sublevel, a key that is not bytes, a missing `sync`) is a programmer error
 * and fails an assertion. Disk failures are `StorageError` `IO`, a full disk is `NO_SPACE`, a
 * damaged store is `CORRUPT`, and any call after `close()` rejects with `SHUTTING_DOWN`.
 *
 * A failed batch stops writes (`writeError`): every later batch, and every batch already waiting,
 * rejects with the same error until `reopen()` has succeeded. LevelDB may leave a torn record at
 * the end of its log when an append fails (ENOSPC part way through a write), and it goes on
 * appending behind it: those later batches, synced or not, are then lost when the log is replayed
 * (measured: three synced batches written after a failed one were all gone after a reopen).
 * Reopening replays the log up to the torn record and starts a new log. Reads go on meanwhile;
 * calls made while the store reopens wait for it, and an iteration open across it fails.
 */
import { assert, fail } from '../common/assert.js';
import type { StorageError } from '../common/errors.js';

export type Sublevel = 'super' | 'volumes' | 'snapshots' | 'map' | 'chunks' | 'erase-blocks' | 'fingerprints' | 'journal' | 'analytics';

/**
 * Every sublevel, in a fixed order. 'analytics' (capacity history and write ages, mgmt/analytics.ts)
 * is no part of the engine's metadata: nothing the data path reads, and `inspect repair` may drop it.
 */
export const SUBLEVELS: readonly Sublevel[] = ['super', 'volumes', 'snapshots', 'map', 'chunks', 'erase-blocks', 'fingerprints', 'journal', 'analytics'];

export type MetaOp =
  | { type: 'put'; sublevel: Sublevel; key: Uint8Array; value: Uint8Array }
  | { type: 'del'; sublevel: Sublevel; key: Uint8Array };

/** An op whose key and value are copies the caller cannot change (`copyOp`). */
export type CopiedOp = { type: 'put'; sublevel: Sublevel; key: Buffer; value: Buffer } | { type: 'del'; sublevel: Sublevel; key: Buffer };

/** A copy of `op` that owns its bytes: for a store that keeps an op past the call that gave it. */
export function copyOp(op: MetaOp): CopiedOp {
  const key = Buffer.from(op.key);
  return op.type === 'put' ? { type: 'put', sublevel: op.sublevel, key, value: Buffer.from(op.value) } : { type: 'del', sublevel: op.sublevel, key };
}

export interface BatchOptions {
  /** Durable when the batch resolves (true), or applied but losable in a crash (false). */
  sync: boolean;
}

/** Bounds of an iteration: `gte` inclusive, `lt` exclusive; `limit` counts entries yielded. */
export interface IterateRange {
  gte?: Uint8Array;
  lt?: Uint8Array;
  limit?: number;
  reverse?: boolean;
}

export interface MetaStore {
  get(sublevel: Sublevel, key: Uint8Array): Promise<Buffer | undefined>;
  getMany(sublevel: Sublevel, keys: Uint8Array[]): Promise<Array<Buffer | undefined>>;
  /**
   * One atomic batch: the commit point. `sync: true` means durable when it resolves. The caller
   * hands the operations' keys and values over: they may be read until the batch resolves, so
   * they must not change meanwhile (every caller builds fresh buffers for them).
   */
  batch(ops: MetaOp[], options: BatchOptions): Promise<void>;
  /** Keys in byte order within one sublevel; bounds optional; limit optional. */
  iterate(sublevel: Sublevel, range?: IterateRange): AsyncIterable<[Buffer, Buffer]>;
  /** The error of the batch that failed, while writes are stopped (see above); else null. */
  readonly writeError: StorageError | null;
  /** Closes and opens the store again; on success writes resume. Rejects if the open fails (retry later). */
  reopen(): Promise<void>;
  close(): Promise<void>;
}

const SUBLEVEL_SET: ReadonlySet<string> = new Set(SUBLEVELS);

export function isSublevel(name: unknown): name is Sublevel {
  return typeof name === 'string' && SUBLEVEL_SET.has(name);
}

export function checkSublevel(sublevel: Sublevel): void {
  if (!(isSublevel(sublevel))) fail(`unknown metadata sublevel ${String(sublevel)}`);
}

export function checkKey(key: Uint8Array): void {
  assert(key instanceof Uint8Array, 'a metadata key must be a Uint8Array');
}

/**
 * Checks a whole batch before any of it is applied, so that a bad operation can never leave half
 * a batch behind.
 */
export function checkBatch(ops: MetaOp[], options: BatchOptions): void {
  assert(Array.isArray(ops), 'a metadata batch must be an array of operations');
  assert(typeof options?.sync === 'boolean', 'a metadata batch needs an explicit { sync: true | false }');
  for (const op of ops) {
    if (!(op.type === 'put' || op.type === 'del')) fail(`unknown metadata operation type ${String((op as { type?: unknown }).type)}`);
    checkSublevel(op.sublevel);
    checkKey(op.key);
    if (op.type === 'put') assert(op.value instanceof Uint8Array, 'a metadata value must be a Uint8Array');
  }
}

export function checkRange(range: IterateRange): void {
  if (range.gte !== undefined) checkKey(range.gte);
  if (range.lt !== undefined) checkKey(range.lt);
  if (range.limit !== undefined) {
    if (!(Number.isSafeInteger(range.limit) && range.limit >= 0)) fail(`iteration limit ${range.limit} must be a whole number >= 0`);
  }
}
