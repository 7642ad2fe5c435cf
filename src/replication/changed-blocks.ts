/**
 * The changed-block record of a pod: which ranges of which volumes differ, or may differ, between
 * the two arrays, in resync chunks of RESYNC_CHUNK_BYTES (64 KiB, 16 logical blocks).
 *
 * An array adds to it (1) every write it accepts while serving the pod alone ("degraded") and
 * (2) every write it applied locally without the peer's confirmation when the link failed (the
 * peer may or may not have it). On reconnection the two records are merged, and the array with
 * the up-to-date copy sends exactly those chunks; a chunk leaves the record only once the other
 * array has applied it, so an interrupted resync resumes with what is left. The record lives in
 * memory: a process restart loses it, and the pod then resyncs every chunk (`markAll`), which is
 * slower but never wrong.
 *
 * Bounds: one entry per 64 KiB chunk that changed, so at most size/64 KiB entries per volume
 * (16 384 for 1 GiB).
 */

export const RESYNC_CHUNK_BYTES = 64 * 1024;

export type ChangedRecordWire = Record<string, number[]>;

export class ChangedBlocks {
  private readonly byVolume = new Map<string, Set<number>>();

  /** Adds the chunks that `[offsetBytes, offsetBytes + lengthBytes)` touches. */
  mark(volume: string, offsetBytes: number, lengthBytes: number): void {
    let chunks = this.byVolume.get(volume);
    if (chunks === undefined) {
      chunks = new Set();
      this.byVolume.set(volume, chunks);
    }
    const first = Math.floor(offsetBytes / RESYNC_CHUNK_BYTES);
    const last = Math.floor((offsetBytes + Math.max(lengthBytes, 1) - 1) / RESYNC_CHUNK_BYTES);
    for (let chunk = first; chunk <= last; chunk++) chunks.add(chunk);
  }

  /** Every chunk of a volume: the record was lost (restart), so everything may differ. */
  markAll(volume: string, sizeBytes: number): void {
    this.mark(volume, 0, sizeBytes);
  }

  /** True when any chunk of the range is in the record. */
  overlaps(volume: string, offsetBytes: number, lengthBytes: number): boolean {
    const chunks = this.byVolume.get(volume);
    if (chunks === undefined || chunks.size === 0) return false;
    const first = Math.floor(offsetBytes / RESYNC_CHUNK_BYTES);
    const last = Math.floor((offsetBytes + Math.max(lengthBytes, 1) - 1) / RESYNC_CHUNK_BYTES);
    for (let chunk = first; chunk <= last; chunk++) if (chunks.has(chunk)) return true;
    return false;
  }

  remove(volume: string, chunk: number): void {
    this.byVolume.get(volume)?.delete(chunk);
  }

  has(volume: string, chunk: number): boolean {
    return this.byVolume.get(volume)?.has(chunk) ?? false;
  }

  get chunkCount(): number {
    let total = 0;
    for (const chunks of this.byVolume.values()) total += chunks.size;
    return total;
  }

  /** The chunks of one volume, in address order (resync copies sequentially). */
  chunksOf(volume: string): number[] {
    return [...(this.byVolume.get(volume) ?? [])].sort((a, b) => a - b);
  }

  volumes(): string[] {
    return [...this.byVolume.keys()];
  }

  forgetVolume(volume: string): void {
    this.byVolume.delete(volume);
  }

  clear(): void {
    this.byVolume.clear();
  }

  toWire(): ChangedRecordWire {
    const out: ChangedRecordWire = {};
    for (const [volume, chunks] of this.byVolume) if (chunks.size > 0) out[volume] = [...chunks];
    return out;
  }

  /** Adds a record received from the peer (the union of both is what must be copied). */
  merge(wire: ChangedRecordWire): void {
    for (const [volume, chunks] of Object.entries(wire)) {
      let mine = this.byVolume.get(volume);
      if (mine === undefined) {
        mine = new Set();
        this.byVolume.set(volume, mine);
      }
      for (const chunk of chunks) if (Number.isSafeInteger(chunk) && chunk >= 0) mine.add(chunk);
    }
  }
}
