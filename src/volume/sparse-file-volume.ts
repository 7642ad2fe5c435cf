/**
 * Sparse-file volume: the backend that serves exports until the storage engine lands.
 *
 * What it owns: one sparse file per volume (`volumes/NAME.img` in the data directory), sized to
 * the volume. It is the one place outside nand/ and meta/ that touches the disk, and it goes away
 * when the engine replaces it behind the same `BlockDevice` interface.
 *
 * Invariants and behaviour:
 * - Reads return the file's bytes; 4 KiB-aligned all-zero runs are reported as holes, so
 *   structured READ replies use OFFSET_HOLE and BLOCK_STATUS reports them as HOLE|ZERO. The file
 *   has no allocation map of its own (Node cannot SEEK_HOLE), so "hole" here means "reads as
 *   zeroes", which is what clients act on.
 * - TRIM and WRITE_ZEROES punch holes over the 4 KiB-aligned interior of the range; WRITE_ZEROES
 *   writes explicit zeroes at unaligned edges (and everywhere, with NO_HOLE).
 * - Durability: positional writes go to the page cache; `flush()` and FUA call fdatasync, which
 *   covers every write that completed before it on any connection (one shared fd).
 * - On crash: the kernel keeps whatever reached the page cache; the file never holds another
 *   offset's data, because every write is positional.
 */
import fs from 'node:fs/promises';
import { trim as punchHole } from 'fs-native-extensions';
import { assert } from '../common/assert.js';
import {
  BASE_ALLOCATION,
  STATE_HOLE,
  STATE_ZERO,
  type BlockDevice,
  type ReadExtent,
  type StatusExtent,
  type WriteOptions,
  type ZeroOptions,
} from '../common/block-device.js';
import { StorageError, fromSystemError } from '../common/errors.js';

const ZERO_GRAIN_BYTES = 4096;
/** BLOCK_STATUS reads at most this much per request; the reply may describe less than asked. */
const STATUS_SCAN_BYTES = 8 * 1024 * 1024;
const ZERO_BUFFER = Buffer.alloc(1024 * 1024);

export class SparseFileVolume implements BlockDevice {
  readonly metaContexts = [BASE_ALLOCATION];
  readonly readOnly = false;

  private constructor(
    private readonly handle: fs.FileHandle,
    private size: number,
    readonly path: string,
  ) {}

  static async create(path: string, sizeBytes: number): Promise<SparseFileVolume> {
    try {
      const handle = await fs.open(path, 'wx+');
      await handle.truncate(sizeBytes);
      await handle.sync();
      return new SparseFileVolume(handle, sizeBytes, path);
    } catch (error) {
      throw fromSystemError(error, `creating ${path}`);
    }
  }

  static async open(path: string, sizeBytes: number): Promise<SparseFileVolume> {
    try {
      const handle = await fs.open(path, 'r+');
      const { size } = await handle.stat();
      if (size !== sizeBytes) await handle.truncate(sizeBytes);
      return new SparseFileVolume(handle, sizeBytes, path);
    } catch (error) {
      throw fromSystemError(error, `opening ${path}`);
    }
  }

  get sizeBytes(): number {
    return this.size;
  }

  async read(offsetBytes: number, lengthBytes: number): Promise<ReadExtent[]> {
    this.checkRange(offsetBytes, lengthBytes);
    const data = await this.readBytes(offsetBytes, lengthBytes);
    return splitZeroRuns(data, offsetBytes).map((run) => ({
      lengthBytes: run.lengthBytes,
      data: run.zero ? null : data.subarray(run.startBytes, run.startBytes + run.lengthBytes),
    }));
  }

  async write(offsetBytes: number, data: Buffer, options: WriteOptions): Promise<void> {
    this.checkRange(offsetBytes, data.length);
    await this.writeBytes(offsetBytes, data);
    if (options.fua) await this.flush();
  }

  async trim(offsetBytes: number, lengthBytes: number, options: WriteOptions): Promise<void> {
    this.checkRange(offsetBytes, lengthBytes);
    const { start, end } = alignedInterior(offsetBytes, lengthBytes);
    if (end > start) await this.punch(start, end - start);
    if (options.fua) await this.flush();
  }

  async writeZeroes(offsetBytes: number, lengthBytes: number, options: ZeroOptions): Promise<void> {
    this.checkRange(offsetBytes, lengthBytes);
    if (options.noHole && options.fastZero) {
      // Provisioned zeroes cost a full write here, which is not faster than a write.
      throw StorageError.notSupported('zeroing without holes is not faster than writing on a sparse-file volume');
    }
    const { start, end } = options.noHole ? { start: offsetBytes, end: offsetBytes } : alignedInterior(offsetBytes, lengthBytes);
    if (end > start) {
      await this.writeZeroRange(offsetBytes, start - offsetBytes);
      await this.punch(start, end - start);
      await this.writeZeroRange(end, offsetBytes + lengthBytes - end);
    } else {
      await this.writeZeroRange(offsetBytes, lengthBytes);
    }
    if (options.fua) await this.flush();
  }

  async flush(): Promise<void> {
    try {
      await this.handle.datasync();
    } catch (error) {
      throw fromSystemError(error, `syncing ${this.path}`);
    }
  }

  async blockStatus(context: string, offsetBytes: number, lengthBytes: number): Promise<StatusExtent[]> {
    assert(context === BASE_ALLOCATION, `unknown meta context ${context}`);
    this.checkRange(offsetBytes, lengthBytes);
    const scanBytes = Math.min(lengthBytes, STATUS_SCAN_BYTES);
    const data = await this.readBytes(offsetBytes, scanBytes);
    return splitZeroRuns(data, offsetBytes).map((run) => ({
      lengthBytes: run.lengthBytes,
      flags: run.zero ? STATE_HOLE | STATE_ZERO : 0,
    }));
  }

  async cache(offsetBytes: number, lengthBytes: number): Promise<void> {
    this.checkRange(offsetBytes, lengthBytes);
    // A hint only; the page cache already does read-ahead for a sparse file.
  }

  async resize(sizeBytes: number): Promise<void> {
    try {
      await this.handle.truncate(sizeBytes);
      this.size = sizeBytes;
    } catch (error) {
      throw fromSystemError(error, `resizing ${this.path}`);
    }
  }

  async close(): Promise<void> {
    await this.flush();
    await this.handle.close();
  }

  private checkRange(offsetBytes: number, lengthBytes: number): void {
    assert(Number.isSafeInteger(offsetBytes) && offsetBytes >= 0 && lengthBytes >= 0, 'bad range');
    if (offsetBytes + lengthBytes > this.size) {
      throw StorageError.outOfRange(`range ${offsetBytes}+${lengthBytes} is beyond the volume end (${this.size})`);
    }
  }

  private async readBytes(offsetBytes: number, lengthBytes: number): Promise<Buffer> {
    const data = Buffer.allocUnsafe(lengthBytes);
    let done = 0;
    try {
      while (done < lengthBytes) {
        const { bytesRead } = await this.handle.read(data, done, lengthBytes - done, offsetBytes + done);
        if (bytesRead === 0) break;
        done += bytesRead;
      }
    } catch (error) {
      throw fromSystemError(error, `reading ${this.path}`);
    }
    data.fill(0, done);
    return data;
  }

  private async writeBytes(offsetBytes: number, data: Buffer): Promise<void> {
    let done = 0;
    try {
      while (done < data.length) {
        const { bytesWritten } = await this.handle.write(data, done, data.length - done, offsetBytes + done);
        done += bytesWritten;
      }
    } catch (error) {
      throw fromSystemError(error, `writing ${this.path}`);
    }
  }

  private async writeZeroRange(offsetBytes: number, lengthBytes: number): Promise<void> {
    for (let at = 0; at < lengthBytes; at += ZERO_BUFFER.length) {
      await this.writeBytes(offsetBytes + at, ZERO_BUFFER.subarray(0, Math.min(ZERO_BUFFER.length, lengthBytes - at)));
    }
  }

  private async punch(offsetBytes: number, lengthBytes: number): Promise<void> {
    try {
      await punchHole(this.handle.fd, offsetBytes, lengthBytes);
    } catch (error) {
      throw fromSystemError(error, `punching a hole in ${this.path}`);
    }
  }
}

function alignedInterior(offsetBytes: number, lengthBytes: number): { start: number; end: number } {
  const start = Math.ceil(offsetBytes / ZERO_GRAIN_BYTES) * ZERO_GRAIN_BYTES;
  const end = Math.floor((offsetBytes + lengthBytes) / ZERO_GRAIN_BYTES) * ZERO_GRAIN_BYTES;
  return { start, end: Math.max(start, end) };
}

interface Run {
  startBytes: number;
  lengthBytes: number;
  zero: boolean;
}

/**
 * Splits `data` (which starts at device offset `baseBytes`) into alternating data and zero runs,
 * looking at whole 4 KiB device-aligned grains; partial grains at the edges count as data.
 */
export function splitZeroRuns(data: Buffer, baseBytes: number): Run[] {
  const runs: Run[] = [];
  let at = 0;
  while (at < data.length) {
    const grainEnd = Math.min(data.length, (Math.floor((baseBytes + at) / ZERO_GRAIN_BYTES) + 1) * ZERO_GRAIN_BYTES - baseBytes);
    const whole = grainEnd - at === ZERO_GRAIN_BYTES;
    const zero = whole && isZero(data, at, grainEnd);
    const last = runs[runs.length - 1];
    if (last !== undefined && last.zero === zero) last.lengthBytes += grainEnd - at;
    else runs.push({ startBytes: at, lengthBytes: grainEnd - at, zero });
    at = grainEnd;
  }
  return runs;
}

function isZero(data: Buffer, start: number, end: number): boolean {
  return data.compare(ZERO_BUFFER, 0, end - start, start, end) === 0;
}
