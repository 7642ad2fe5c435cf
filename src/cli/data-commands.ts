/**
 * `pstorage import FILE VOLUME` and `pstorage export VOLUME[@SNAPSHOT] FILE`: copy a raw image in
 * or out, through the running server's API (PUT/GET /api/v1/volumes/{name}/data) or directly on
 * the data directory when no server runs, with a progress bar on a terminal.
 *
 * Export writes a sparse file: all-zero 4 KiB blocks are skipped (the file offset moves past
 * them) and the file is truncated to the volume size at the end, so holes stay holes. FILE "-"
 * writes to standard output instead (not sparse). Import reads FILE ("-": standard input) and
 * refuses an image larger than the volume before writing anything.
 */
import fs from 'node:fs';
import type { Readable } from 'node:stream';
import { StorageError } from '../common/errors.js';
import { formatBytes } from '../common/size.js';
import * as ops from '../mgmt/operations.js';
import { BLOCK_BYTES, exportFrom, importInto, isZero, tooLarge } from '../mgmt/volume-data.js';
import { apiError, callApi, download, openLocal, upload } from './api-client.js';
import { printJson } from './output.js';
import { ProgressBar } from './progress.js';

const enc = encodeURIComponent;

/** Writes a stream of bytes to a file from offset 0, leaving holes where 4 KiB blocks are zero. */
export class SparseFileWriter {
  private carry: Buffer = Buffer.alloc(0);
  private positionBytes = 0;
  /** Bytes actually written (not skipped). */
  dataBytes = 0;

  private constructor(private readonly handle: fs.promises.FileHandle | null) {}

  /** `-` is standard output (written in full, not sparse). */
  static async open(file: string): Promise<SparseFileWriter> {
    if (file === '-') return new SparseFileWriter(null);
    try {
      return new SparseFileWriter(await fs.promises.open(file, 'w'));
    } catch (error) {
      throw StorageError.invalidArgument(`cannot write ${file} (${(error as NodeJS.ErrnoException).code ?? (error as Error).message}); give a path in a writable directory, or "-" for standard output`, error);
    }
  }

  get doneBytes(): number {
    return this.positionBytes + this.carry.length;
  }

  async push(chunk: Buffer): Promise<void> {
    if (this.handle === null) {
      if (!process.stdout.write(chunk)) await new Promise((resolve) => process.stdout.once('drain', resolve));
      this.positionBytes += chunk.length;
      return;
    }
    const data = this.carry.length === 0 ? chunk : Buffer.concat([this.carry, chunk]);
    const whole = data.length - (data.length % BLOCK_BYTES);
    await this.writeNonZero(data.subarray(0, whole));
    this.carry = Buffer.from(data.subarray(whole));
  }

  /** Writes runs of non-zero blocks of `data` (whole blocks) at the current position, skips the rest. */
  private async writeNonZero(data: Buffer): Promise<void> {
    let runStart = -1;
    for (let at = 0; at <= data.length; at += BLOCK_BYTES) {
      const zero = at === data.length || isZero(data, at, at + BLOCK_BYTES);
      if (!zero && runStart < 0) runStart = at;
      if (zero && runStart >= 0) {
        await this.handle!.write(data, runStart, at - runStart, this.positionBytes + runStart);
        this.dataBytes += at - runStart;
        runStart = -1;
      }
    }
    this.positionBytes += data.length;
  }

  /** Writes what is left and sets the file's length (a trailing hole included). */
  async finish(): Promise<void> {
    if (this.handle === null) return;
    const tail = this.carry;
    if (tail.length > 0 && !isZero(tail, 0, tail.length)) {
      await this.handle.write(tail, 0, tail.length, this.positionBytes);
      this.dataBytes += tail.length;
    }
    this.positionBytes += tail.length;
    this.carry = Buffer.alloc(0);
    await this.handle.truncate(this.positionBytes);
    await this.handle.sync();
    await this.handle.close();
  }

  async abort(): Promise<void> {
    await this.handle?.close().catch(() => undefined);
  }
}

async function imageSize(file: string): Promise<number | null> {
  if (file === '-') return null;
  try {
    const stat = await fs.promises.stat(file);
    if (!stat.isFile()) throw StorageError.invalidArgument(`${file} is not a regular file; give a raw image file, or "-" for standard input`);
    return stat.size;
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') throw StorageError.notFound(`${file} does not exist; give the path of a raw image`);
    throw error;
  }
}

function openSource(file: string): Readable {
  return file === '-' ? process.stdin : fs.createReadStream(file, { highWaterMark: 1024 * 1024 });
}

function rate(bytes: number, ms: number): string {
  return `${formatBytes(bytes / Math.max(0.001, ms / 1000))}/s`;
}

export async function importCommand(dataDir: string, file: string, volume: string, options: { json: boolean }): Promise<void> {
  if (volume.includes('@')) throw StorageError.invalidArgument(`${volume} is a snapshot, which is read-only; import into a volume (clone the snapshot first if you want a copy of it)`);
  const sizeBytes = await imageSize(file);
  const started = Date.now();
  const progress = new ProgressBar(`importing ${file} into ${volume}`, sizeBytes ?? 0);
  let writtenBytes: number;
  const info = await callApi(dataDir, 'GET', `/api/v1/volumes/${enc(volume)}`);
  if (info !== null) {
    if (info.status >= 400) throw apiError(info);
    const volumeBytes = (info.body as ops.VolumeInfo).sizeBytes;
    if (sizeBytes !== null && sizeBytes > volumeBytes) throw tooLarge(sizeBytes, volume, volumeBytes);
    const route = `/api/v1/volumes/${enc(volume)}/data`;
    const response = await upload(dataDir, route, openSource(file), sizeBytes, (done) => progress.update(done));
    if (response === null) throw StorageError.io('the pstorage server went away during the import; run the import again');
    if (response.status >= 400) throw apiError(response);
    writtenBytes = (response.body as { writtenBytes: number }).writtenBytes;
  } else {
    const array = await openLocal(dataDir);
    try {
      const device = ops.deviceFor(array, volume);
      if (sizeBytes !== null && sizeBytes > device.sizeBytes) throw tooLarge(sizeBytes, volume, device.sizeBytes);
      writtenBytes = await importInto(device, volume, openSource(file), (done) => progress.update(done));
    } finally {
      await array.close();
    }
  }
  progress.finish();
  const ms = Date.now() - started;
  if (options.json) return printJson({ file, volume, writtenBytes, durationMs: ms });
  process.stdout.write(`imported ${file} into ${volume}: ${formatBytes(writtenBytes)} (${writtenBytes} bytes) in ${(ms / 1000).toFixed(1)} s, ${rate(writtenBytes, ms)}\n`);
}

export async function exportCommand(dataDir: string, name: string, file: string, options: { json: boolean }): Promise<void> {
  if (options.json && file === '-') throw StorageError.invalidArgument('--json needs a FILE: standard output already carries the image');
  const started = Date.now();
  const remote = await download(dataDir, `/api/v1/volumes/${enc(name)}/data`);
  let writer: SparseFileWriter | null = null;
  let sizeBytes: number;
  try {
    if (remote !== null) {
      sizeBytes = remote.sizeBytes;
      writer = await SparseFileWriter.open(file);
      const progress = new ProgressBar(`exporting ${name} to ${file}`, sizeBytes);
      for await (const chunk of remote.body) {
        await writer.push(chunk as Buffer);
        progress.update(writer.doneBytes);
      }
      progress.finish();
      if (writer.doneBytes !== sizeBytes) throw StorageError.io(`the export of ${name} stopped after ${writer.doneBytes} of ${sizeBytes} bytes (see the server's log); run it again`);
    } else {
      const array = await openLocal(dataDir);
      try {
        const device = ops.deviceFor(array, name);
        sizeBytes = device.sizeBytes;
        writer = await SparseFileWriter.open(file);
        const progress = new ProgressBar(`exporting ${name} to ${file}`, sizeBytes);
        for await (const chunk of exportFrom(device)) {
          await writer.push(chunk);
          progress.update(writer.doneBytes);
        }
        progress.finish();
      } finally {
        await array.close();
      }
    }
    await writer.finish();
  } catch (error) {
    await writer?.abort();
    throw error;
  }
  const ms = Date.now() - started;
  const summary = { volume: name, file, sizeBytes, dataBytes: writer.dataBytes, durationMs: ms };
  if (options.json) return printJson(summary);
  const where = file === '-' ? process.stderr : process.stdout;
  const sparse = file === '-' ? '' : `, ${formatBytes(writer.dataBytes)} of data (zero blocks left as holes)`;
  where.write(`exported ${name} to ${file === '-' ? 'standard output' : file}: ${formatBytes(sizeBytes)} (${sizeBytes} bytes)${sparse} in ${(ms / 1000).toFixed(1)} s, ${rate(sizeBytes, ms)}\n`);
}
