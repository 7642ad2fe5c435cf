/**
 * The backend seam: what an NBD export needs from whatever stores the data.
 *
 * The protocol and server layers see only this interface, so the storage engine replaced the
 * first (sparse-file) backend without touching protocol code. The server uses `submit` (one
 * request object and one callback, no promise per request); the promise methods are the same
 * operations for everything else (management, tests). Offsets and lengths are bytes,
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

/** Commands of `IoRequest`. */
export const enum IoCommand {
  Read = 0,
  Write = 1,
  Trim = 2,
  WriteZeroes = 3,
  Flush = 4,
  Cache = 5,
}

/** A read's result: the whole range in one buffer (holes as zeros), and its extents. */
export interface ReadResult {
  data: Buffer;
  /** Pieces of `data` in order; `data: null` marks a hole (reads as zeros). */
  extents: ReadExtent[];
}

/**
 * One request on the fast path (`BlockDevice.submit`): no promise per request. The device sets
 * `result` for reads and calls `done` exactly once, with `error` null on success (a StorageError
 * otherwise). `done` may be called before `submit` returns (a read served from memory).
 */
export interface IoRequest {
  command: IoCommand;
  offsetBytes: number;
  lengthBytes: number;
  /** The payload of a write (`lengthBytes` long). */
  data: Buffer | null;
  fua: boolean;
  noHole: boolean;
  fastZero: boolean;
  result: ReadResult | null;
  /**
   * For a read: a buffer of exactly `lengthBytes` that the device may fill and return as the
   * result's data (the caller pools them; null: the device allocates).
   */
  readInto?: Buffer | null;
  done(request: IoRequest, error: unknown): void;
}

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
  /**
   * The fast path for READ, WRITE, TRIM, WRITE_ZEROES, FLUSH and CACHE: the same operations as the
   * methods above, with the same durability rules, completed through `request.done`. Requests
   * that change data take effect in the order they are submitted.
   */
  submit(request: IoRequest): void;
}

/** `submit` for a device that implements the promise methods (simple devices, test fixtures). */
export function submitThroughPromises(device: BlockDevice, request: IoRequest): void {
  const { offsetBytes, lengthBytes, fua } = request;
  let work: Promise<unknown>;
  switch (request.command) {
    case IoCommand.Read:
      work = device.read(offsetBytes, lengthBytes).then((extents) => {
        request.result = { data: concatReadExtents(extents, lengthBytes), extents };
      });
      break;
    case IoCommand.Write:
      work = device.write(offsetBytes, request.data!, { fua });
      break;
    case IoCommand.Trim:
      work = device.trim(offsetBytes, lengthBytes, { fua });
      break;
    case IoCommand.WriteZeroes:
      work = device.writeZeroes(offsetBytes, lengthBytes, { fua, noHole: request.noHole, fastZero: request.fastZero });
      break;
    case IoCommand.Flush:
      work = device.flush();
      break;
    default:
      work = device.cache(offsetBytes, lengthBytes);
  }
  work.then(
    () => request.done(request, null),
    (error: unknown) => request.done(request, error),
  );
}

/** Runs one request through `submit` and returns its promise (for callers that want one). */
export function submitAsync(device: BlockDevice, request: Omit<IoRequest, 'done' | 'result'>): Promise<ReadResult | null> {
  return new Promise((resolve, reject) => {
    const full: IoRequest = {
      ...request,
      result: null,
      done: (finished, error) => (error === null ? resolve(finished.result) : reject(error)),
    };
    device.submit(full);
  });
}

/** An export as the handshake sees it. */
export interface ExportEntry {
  name: string;
  description: string;
  device: BlockDevice;
  /**
   * Client identities (TLS certificate common names or PSK usernames) allowed to see this export;
   * undefined: everyone. An export with a list is never served to plain (non-TLS) clients.
   */
  accessList?: readonly string[];
}

/**
 * Name to export. `lookup('')` returns the default export. Synchronous: the handshake answers
 * INFO/GO from an in-memory registry.
 */
export interface ExportCatalog {
  list(): Array<{ name: string; description: string; accessList?: readonly string[] }>;
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
