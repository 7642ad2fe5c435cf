/**
 * Asynchronous replication for disaster recovery (`pstorage replicate VOLUME --to HOST:PORT`):
 * each run takes a snapshot of the volume, sends only what changed since the last snapshot that
 * reached the target, and the target keeps its copy as a snapshot of the same name. RPO = the
 * interval between runs.
 *
 * Protocol, on an authenticated link (peer-link.ts) to the target's replication listener:
 *   async-begin  {volume, sizeBytes, base}  target: creates the volume if missing (same size); with
 *                a base, checks it holds VOLUME@base (else BASE_MISSING: the sender starts over
 *                with a full copy)
 *   async-write  {o, l, z, lz4} + data      one piece (at most PIECE_BYTES), packed as pod writes
 *                are (write-packing.ts): zeroes as a header (z), LZ4 when it pays (lz4), else raw
 *   async-commit {snapshot}                 target: flush, snapshot VOLUME@snapshot, drop its older
 *                                           replication snapshots; only then does the sender move
 *                                           its base forward and drop its own older snapshot
 * A run that fails half-way leaves the target's last snapshot intact (the volume itself may hold
 * part of the new data; its snapshot is the consistent copy) and the sender's base unchanged, so
 * the next run sends the same changes again.
 */
import type { BlockDevice } from '../common/block-device.js';
import { StorageError } from '../common/errors.js';
import type { LinkMessage } from './link-protocol.js';
import type { PeerLink } from './peer-link.js';
import { packWrite, unpackWrite } from './write-packing.js';

export const PIECE_BYTES = 1024 * 1024;
const WINDOW = 8;
export const SNAPSHOT_PREFIX = 'repl-';

export interface ChangedRange {
  offsetBytes: number;
  lengthBytes: number;
}

/** What async replication needs from the array (serve.ts adapts FlashArray). */
export interface SnapshotArray {
  device(name: string): BlockDevice | undefined;
  createVolume(name: string, sizeBytes: number): Promise<unknown>;
  createSnapshot(volume: string, name: string): Promise<unknown>;
  deleteSnapshot(volume: string, name: string): Promise<unknown>;
  snapshotNames(volume: string): Promise<string[]>;
  /** Ranges written between two snapshots of a volume. */
  diff(volume: string, from: string, to: string): Promise<ChangedRange[]>;
}

export interface ReplicateResult {
  volume: string;
  snapshot: string;
  base: string | null;
  changedBytes: number;
  sentBytes: number;
  durationMs: number;
}

function pieces(ranges: ChangedRange[]): ChangedRange[] {
  const out: ChangedRange[] = [];
  for (const range of ranges) {
    for (let at = range.offsetBytes; at < range.offsetBytes + range.lengthBytes; at += PIECE_BYTES) {
      out.push({ offsetBytes: at, lengthBytes: Math.min(PIECE_BYTES, range.offsetBytes + range.lengthBytes - at) });
    }
  }
  return out;
}

/** Sender: one run, over `link`. `base` is the last snapshot the target confirmed, or null. */
export async function sendChanges(array: SnapshotArray, link: PeerLink, volume: string, base: string | null): Promise<ReplicateResult> {
  const startedMs = Date.now();
  const source = array.device(volume);
  if (source === undefined) throw StorageError.notFound(`no volume ${volume}; "pstorage volume list" shows them`);
  const snapshot = `${SNAPSHOT_PREFIX}${new Date().toISOString().replace(/[-:.]/g, '').replace('T', '-').slice(0, 19)}-${Math.floor(Math.random() * 1e4)}`;
  await array.createSnapshot(volume, snapshot);
  let usedBase = base !== null && (await array.snapshotNames(volume)).includes(base) ? base : null;
  try {
    await link.ask({ type: 'async-begin', volume, sizeBytes: source.sizeBytes, base: usedBase });
  } catch (error) {
    if (usedBase === null || !(error as Error).message.includes('BASE_MISSING')) throw error;
    usedBase = null;
    await link.ask({ type: 'async-begin', volume, sizeBytes: source.sizeBytes, base: null });
  }
  const ranges = usedBase === null ? [{ offsetBytes: 0, lengthBytes: source.sizeBytes }] : await array.diff(volume, usedBase, snapshot);
  const view = array.device(`${volume}@${snapshot}`)!;
  const sentBefore = link.sentDataBytes;
  let changedBytes = 0;
  const work = pieces(ranges);
  let next = 0;
  const worker = async () => {
    while (next < work.length) {
      const piece = work[next++]!;
      changedBytes += piece.lengthBytes;
      const extents = await view.read(piece.offsetBytes, piece.lengthBytes);
      let at = piece.offsetBytes;
      for (const extent of extents) {
        const packed = extent.data === null ? null : packWrite(extent.data.subarray(0, extent.lengthBytes));
        await link.ask({ type: 'async-write', o: at, l: extent.lengthBytes, z: packed?.z ?? true, lz4: packed?.lz4 ?? false }, packed?.bytes ?? null);
        at += extent.lengthBytes;
      }
    }
  };
  await Promise.all(Array.from({ length: WINDOW }, worker));
  await link.ask({ type: 'async-commit', snapshot });
  // The target holds `snapshot` now: it is the new base; older replication snapshots go.
  for (const name of await array.snapshotNames(volume)) {
    if (name.startsWith(SNAPSHOT_PREFIX) && name !== snapshot) await array.deleteSnapshot(volume, name).catch(() => undefined);
  }
  return { volume, snapshot, base: usedBase, changedBytes, sentBytes: link.sentDataBytes - sentBefore, durationMs: Date.now() - startedMs };
}

/** Receiver: serves one sender on `link` after its async-begin. */
export class ChangesReceiver {
  private volume = '';
  private device: BlockDevice | undefined;

  constructor(
    private readonly array: SnapshotArray,
    private readonly link: PeerLink,
  ) {
    link.onMessage = (message) => void this.handle(message);
  }

  /** Takes over the link with its first frame (async-begin). */
  accept(first: LinkMessage): void {
    void this.handle(first);
  }

  private async handle({ header, data }: LinkMessage): Promise<void> {
    try {
      if (header.type === 'async-begin') await this.begin(header);
      else if (header.type === 'async-write') await this.write(header, data);
      else if (header.type === 'async-commit') await this.commit(String(header.snapshot));
      else throw StorageError.invalidArgument(`unexpected frame ${header.type} in an async replication`);
      this.link.reply(header.id, null);
    } catch (error) {
      this.link.reply(header.id, error);
    }
  }

  private async begin(header: LinkMessage['header']): Promise<void> {
    const volume = String(header.volume);
    const sizeBytes = Number(header.sizeBytes);
    let device = this.array.device(volume);
    if (device === undefined) {
      await this.array.createVolume(volume, sizeBytes);
      device = this.array.device(volume)!;
    }
    if (device.sizeBytes !== sizeBytes) throw StorageError.invalidArgument(`the target's volume ${volume} is ${device.sizeBytes} bytes, the source's ${sizeBytes}: resize one of them`);
    if (header.base !== null && !(await this.array.snapshotNames(volume)).includes(String(header.base))) {
      throw StorageError.notFound(`BASE_MISSING: the target has no ${volume}@${String(header.base)}`);
    }
    this.volume = volume;
    this.device = device;
  }

  private async write(header: LinkMessage['header'], data: Buffer | null): Promise<void> {
    const device = this.device;
    if (device === undefined) throw StorageError.invalidArgument('async-write before async-begin');
    const offsetBytes = Number(header.o);
    const lengthBytes = Number(header.l);
    if (!Number.isSafeInteger(offsetBytes) || !Number.isSafeInteger(lengthBytes) || offsetBytes < 0 || offsetBytes + lengthBytes > device.sizeBytes) {
      throw StorageError.outOfRange('async-write outside the volume');
    }
    if (header.z === true) {
      await device.writeZeroes(offsetBytes, lengthBytes, { fua: false, noHole: false, fastZero: false });
      return;
    }
    const bytes = unpackWrite(header, data, lengthBytes);
    if (bytes === null || bytes.length !== lengthBytes) throw StorageError.invalidArgument('async-write payload does not match its length');
    await device.write(offsetBytes, bytes, { fua: false });
  }

  private async commit(snapshot: string): Promise<void> {
    await this.device!.flush();
    await this.array.createSnapshot(this.volume, snapshot);
    for (const name of await this.array.snapshotNames(this.volume)) {
      if (name.startsWith(SNAPSHOT_PREFIX) && name !== snapshot) await this.array.deleteSnapshot(this.volume, name).catch(() => undefined);
    }
  }
}
