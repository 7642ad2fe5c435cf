/**
 * Bulk copy of a whole volume image in and out (`pstorage import` / `pstorage export`, and the
 * API's `PUT|GET /api/v1/volumes/{name}/data`).
 *
 * Import writes a byte stream sequentially from offset 0. Memory is bounded: at most one
 * STEP_BYTES buffer is filled while the source is paused (the caller iterates the source with
 * `for await`, which applies backpressure), then written before more is read. Runs of all-zero
 * 4 KiB logical blocks become WRITE_ZEROES (an unmap: no NAND, no map entry where the volume was
 * already empty), the rest plain writes; the volume is flushed at the end, so a finished import
 * is durable. Bytes past the end of the volume are refused before anything past the end is read.
 *
 * Export reads STEP_BYTES at a time; holes come back as zero bytes (the stream is raw), and the
 * consumer decides what to do with them (the CLI writes a sparse file).
 */
import { concatReadExtents, type BlockDevice } from '../common/block-device.js';
import { StorageError } from '../common/errors.js';
import { formatBytes, MiB } from '../common/size.js';

export const STEP_BYTES = 4 * MiB;
export const BLOCK_BYTES = 4096;

export function tooLarge(imageBytes: number, volume: string, volumeBytes: number): StorageError {
  return StorageError.outOfRange(
    `the image (${imageBytes} bytes, ${formatBytes(imageBytes)}) is larger than volume "${volume}" (${volumeBytes} bytes, ${formatBytes(volumeBytes)}); ` +
      `grow it first with "pstorage volume resize ${volume} --size ${imageBytes}"`,
  );
}

const ZERO_BLOCK = Buffer.alloc(BLOCK_BYTES);

/** True when `buffer[from, to)` (at most one logical block) holds only zero bytes. */
export function isZero(buffer: Buffer, from: number, to: number): boolean {
  return buffer.subarray(from, to).equals(ZERO_BLOCK.subarray(0, to - from));
}

/** Writes `data` at `offsetBytes`: zero runs of logical blocks as WRITE_ZEROES, the rest as writes. */
async function writeStep(device: BlockDevice, offsetBytes: number, data: Buffer): Promise<void> {
  const zeroAt = (at: number) => isZero(data, at, Math.min(at + BLOCK_BYTES, data.length));
  let runStart = 0;
  let runZero = zeroAt(0);
  for (let at = BLOCK_BYTES; at < data.length; at += BLOCK_BYTES) {
    const zero = zeroAt(at);
    if (zero === runZero) continue;
    await writeRun(device, offsetBytes + runStart, data.subarray(runStart, at), runZero);
    runStart = at;
    runZero = zero;
  }
  await writeRun(device, offsetBytes + runStart, data.subarray(runStart), runZero);
}

function writeRun(device: BlockDevice, offsetBytes: number, run: Buffer, zero: boolean): Promise<void> {
  if (zero) return device.writeZeroes(offsetBytes, run.length, { fua: false, noHole: false, fastZero: false });
  return device.write(offsetBytes, run, { fua: false });
}

/**
 * Copies `source` onto `device` from offset 0 and flushes. `name` is for messages;
 * `onProgress` gets the bytes written so far. Returns the number of bytes written.
 */
export async function importInto(device: BlockDevice, name: string, source: AsyncIterable<Buffer | string>, onProgress?: (doneBytes: number) => void): Promise<number> {
  if (device.readOnly) throw StorageError.readOnly(`${name} is a snapshot and cannot be written; import into a volume (clone the snapshot first if you need a copy)`);
  const step = Buffer.allocUnsafe(STEP_BYTES);
  let filled = 0;
  let written = 0;
  const writeFilled = async (): Promise<void> => {
    if (filled === 0) return;
    if (written + filled > device.sizeBytes) throw tooLarge(written + filled, name, device.sizeBytes);
    await writeStep(device, written, step.subarray(0, filled));
    written += filled;
    filled = 0;
    onProgress?.(written);
  };
  for await (const piece of source) {
    const chunk = typeof piece === 'string' ? Buffer.from(piece) : piece;
    for (let used = 0; used < chunk.length; ) {
      const n = Math.min(chunk.length - used, STEP_BYTES - filled);
      chunk.copy(step, filled, used, used + n);
      filled += n;
      used += n;
      if (filled === STEP_BYTES) await writeFilled();
    }
  }
  await writeFilled();
  await device.flush();
  return written;
}

/** The device's content, STEP_BYTES at a time (holes as zero bytes). */
export async function* exportFrom(device: BlockDevice): AsyncGenerator<Buffer> {
  const sizeBytes = device.sizeBytes;
  for (let offset = 0; offset < sizeBytes; offset += STEP_BYTES) {
    const length = Math.min(STEP_BYTES, sizeBytes - offset);
    yield concatReadExtents(await device.read(offset, length), length);
  }
}
