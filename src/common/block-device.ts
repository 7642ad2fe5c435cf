/**
 * The backend seam: what an NBD export needs from whatever stores the data.
 *
 * The protocol and server layers see only this interface, so the storage engine replaced the
 * first (sparse-file) backend without touching protocol code. Offsets and lengths are bytes,
 * already checked against `sizeBytes` by the caller; a backend still asserts them. Every operation may
 * throw a `StorageError`; nothing else is expected to escape.
 *
 * Durability: `write`, `trim` and `writeZeroes` with `fua: true` resolve only once their effect is
 * on stable storage. `flush()` resolves once every operation that resolved before `flush()` was
 * called is on stable storage. One device object is shared by every connection to the export, so a
 * flush on one connection covers writes completed on all of them (NBD CAN_MULTI_CONN).
 */

/** A piece of a read: `data` is the bytes, or `null` when the piece reads as zeroes (a hole). */
export interface ReadExtent {
  lengthBytes: number;
  data: Buffer | null;
}

/** `base:allocation` status bits, as the NBD spec defines them. */
export const STATE_HOLE = 1;
export const STATE_ZERO = 2;

/** One block-status descriptor: a run of bytes sharing the same status flags. */
export interface StatusExtent {
  lengthBytes: number;
  flags: number;
}

export interface WriteOptions {
  fua: boolean;
}

export interface ZeroOptions extends WriteOptions {
  /** The range must stay allocated (NBD_CMD_FLAG_NO_HOLE). */
  noHole: boolean;
  /** Fail with NOT_SUPPORTED, leaving the data unchanged, unless zeroing is faster than writing. */
  fastZero: boolean;
}

export const BASE_ALLOCATION = 'base:allocation';

export interface BlockDevice {
  /** Current size; it may grow while the device is open (volume resize). */
  readonly sizeBytes: number;
  readonly readOnly: boolean;
  /** Meta contexts this device answers in `blockStatus` (always includes base:allocation). */
  readonly metaContexts: readonly string[];

  read(offsetBytes: number, lengthBytes: number): Promise<ReadExtent[]>;
  write(offsetBytes: number, data: Buffer, options: WriteOptions): Promise<void>;
  trim(offsetBytes: number, lengthBytes: number, options: WriteOptions): Promise<void>;
  writeZeroes(offsetBytes: number, lengthBytes: number, options: ZeroOptions): Promise<void>;
  flush(): Promise<void>;
  /**
   * Status of the range for one meta context. May describe less than the range (at least one
   * extent, starting at `offsetBytes`) and may not describe past the device end.
   */
  blockStatus(context: string, offsetBytes: number, lengthBytes: number): Promise<StatusExtent[]>;
  /** A prefetch hint (NBD_CMD_CACHE). */
  cache(offsetBytes: number, lengthBytes: number): Promise<void>;
}

/** An export as the handshake sees it. */
export interface ExportEntry {
  name: string;
  description: string;
  device: BlockDevice;
}

/**
 * Name to export. `lookup('')` returns the default export. Synchronous: the handshake answers
 * INFO/GO from an in-memory registry.
 */
export interface ExportCatalog {
  list(): Array<{ name: string; description: string }>;
  lookup(name: string): ExportEntry | undefined;
}

/** Flattens read extents into one buffer (holes become zeroes), for simple replies. */
export function concatReadExtents(extents: ReadExtent[], lengthBytes: number): Buffer {
  if (extents.length === 1 && extents[0]!.data !== null && extents[0]!.data.length === lengthBytes) {
    return extents[0]!.data;
  }
  const out = Buffer.alloc(lengthBytes);
  let at = 0;
  for (const extent of extents) {
    if (extent.data !== null) extent.data.copy(out, at, 0, extent.lengthBytes);
    at += extent.lengthBytes;
  }
  return out;
}
