/**
 * Audit: checks every metadata structure against the others and against the NAND image, like an
 * fsck that tests and operators can run (`pstorage inspect audit`). It changes nothing.
 *
 * Checks:
 * - every map entry that names a chunk names a live chunk, and each chunk's refcount equals the
 *   number of map entries naming it;
 * - each volume's mapped-block count equals its map (blocks a repair marked lost count as mapped);
 * - every live chunk's record reads back from NAND with the right chunk id, length and checksum;
 * - per erase block, the valid bytes in the summary equal the record bytes of the live chunks the
 *   chunk table places there, and no live chunk sits in a free or bad block.
 *
 * It runs on a checkpoint (every dirty page written back first), so LevelDB holds everything.
 */
import { BlockState } from '../ftl/erase-block-table.js';
import { LogStream, type PhysicalAddress } from '../ftl/log-stream.js';
import { decodeU64Key, decodeVolumeMapKey, volumeMapRange } from '../meta/keys.js';
import { CHUNKS_PER_PAGE, ChunkPage } from './chunk-table.js';
import type { FlashArray } from './flash-array.js';
import { EntryKind, LBAS_PER_MAP_PAGE, MapPage } from './map-page.js';

export interface AuditReport {
  ok: boolean;
  problems: string[];
  volumes: number;
  mappedBlocks: number;
  liveChunks: number;
  checkedRecords: number;
  eraseBlocks: number;
  durationMs: number;
}

const MAX_PROBLEMS = 1000;
const READ_BATCH = 256;

export async function auditArray(array: FlashArray): Promise<AuditReport> {
  const started = process.hrtime.bigint();
  await array.checkpoint();
  const problems: string[] = [];
  const report = (problem: string) => {
    if (problems.length < MAX_PROBLEMS) problems.push(problem);
  };
  const references = await countReferences(array, report);
  const { liveChunks, checkedRecords, validByBlock } = await checkChunks(array, references, report);
  for (const [chunkId, count] of references) {
    report(`chunk ${chunkId} is referenced ${count} time(s) by volume maps but is not in the chunk table`);
  }
  checkEraseBlocks(array, validByBlock, report);
  const mappedBlocks = [...array.volumes.values()].reduce((sum, volume) => sum + volume.record.mappedBlocks, 0);
  return {
    ok: problems.length === 0,
    problems,
    volumes: array.volumes.size,
    mappedBlocks,
    liveChunks,
    checkedRecords,
    eraseBlocks: array.ftl.table.blockCount,
    durationMs: Math.round(Number(process.hrtime.bigint() - started) / 1e6),
  };
}

/** Walks every map layer: chunk id → number of layer entries naming it. */
async function countReferences(array: FlashArray, report: (problem: string) => void): Promise<Map<number, number>> {
  const references = new Map<number, number>();
  for await (const [key, value] of array.meta.iterate('map')) {
    const { volumeId: layerId, mapPageIndex } = decodeVolumeMapKey(key);
    if (!array.layers.has(layerId)) {
      report(`map page ${mapPageIndex} belongs to layer ${layerId}, which no volume or snapshot uses`);
      continue;
    }
    const page = MapPage.decode(value);
    for (let slot = 0; slot < LBAS_PER_MAP_PAGE; slot++) {
      if (page.kind(slot) !== EntryKind.Chunk) continue;
      const chunkId = page.chunkId(slot);
      references.set(chunkId, (references.get(chunkId) ?? 0) + 1);
    }
  }
  for (const volume of array.volumes.values()) {
    await checkMappedCount(array, volume.name, volume.chain(), volume.record.sizeBytes, volume.record.mappedBlocks, report);
  }
  for (const snapshot of array.snapshots.values()) {
    const view = array.snapshotView(snapshot);
    await checkMappedCount(array, view.name, view.chain(), snapshot.sizeBytes, snapshot.mappedBlocks, report);
  }
  return references;
}

/** Resolves a chain (top layer first) and compares its mapped blocks with the recorded count. */
async function checkMappedCount(array: FlashArray, name: string, chain: readonly number[], sizeBytes: number, recorded: number, report: (problem: string) => void): Promise<void> {
  const resolved = new Map<number, EntryKind>();
  for (const layerId of chain) {
    for await (const [key, value] of array.meta.iterate('map', volumeMapRange(layerId))) {
      const { mapPageIndex } = decodeVolumeMapKey(key);
      const page = MapPage.decode(value);
      for (let slot = 0; slot < LBAS_PER_MAP_PAGE; slot++) {
        const kind = page.kind(slot);
        const lba = mapPageIndex * LBAS_PER_MAP_PAGE + slot;
        if (kind === EntryKind.Absent || resolved.has(lba)) continue;
        resolved.set(lba, kind);
      }
    }
  }
  let mapped = 0;
  for (const [lba, kind] of resolved) {
    if (kind !== EntryKind.Chunk && kind !== EntryKind.Pattern && kind !== EntryKind.Lost) continue;
    if (lba * 4096 >= sizeBytes) continue; // beyond a shrunken end: unreachable
    mapped += 1;
  }
  if (mapped !== recorded) report(`${name} records ${recorded} mapped blocks but its layers resolve to ${mapped}`);
}

/** Walks the chunk table: refcounts against references, and every record read back from NAND. */
async function checkChunks(array: FlashArray, references: Map<number, number>, report: (problem: string) => void) {
  const validByBlock = new Map<number, number>();
  let liveChunks = 0;
  let checkedRecords = 0;
  let batch: Array<{ address: PhysicalAddress; chunkId: number; storedBytes: number }> = [];
  const flushBatch = async () => {
    const requests = batch;
    batch = [];
    try {
      await array.ftl.readRecords(requests);
      checkedRecords += requests.length;
    } catch {
      for (const request of requests) {
        try {
          await array.ftl.readRecords([request]);
          checkedRecords += 1;
        } catch (error) {
          report(`chunk ${request.chunkId}: ${(error as Error).message}`);
        }
      }
    }
  };
  for await (const [key, value] of array.meta.iterate('chunks')) {
    const pageIndex = decodeU64Key(key);
    const page = ChunkPage.decode(value);
    for (let slot = 0; slot < CHUNKS_PER_PAGE; slot++) {
      const refcount = page.refcount[slot]!;
      if (refcount === 0) continue;
      const chunkId = pageIndex * CHUNKS_PER_PAGE + slot;
      liveChunks += 1;
      const referenced = references.get(chunkId) ?? 0;
      references.delete(chunkId);
      if (referenced !== refcount) report(`chunk ${chunkId} has refcount ${refcount} but ${referenced} reference(s)`);
      const block = page.block[slot]!;
      const storedBytes = page.stored[slot]!;
      validByBlock.set(block, (validByBlock.get(block) ?? 0) + LogStream.recordBytes(storedBytes));
      batch.push({ address: { block, offsetBytes: page.offset[slot]! }, chunkId, storedBytes });
      if (batch.length >= READ_BATCH) await flushBatch();
    }
  }
  if (batch.length > 0) await flushBatch();
  return { liveChunks, checkedRecords, validByBlock };
}

function checkEraseBlocks(array: FlashArray, validByBlock: Map<number, number>, report: (problem: string) => void): void {
  const table = array.ftl.table;
  for (let block = 0; block < table.blockCount; block++) {
    const expected = validByBlock.get(block) ?? 0;
    const recorded = table.validBytes[block]!;
    if (expected !== recorded) report(`erase block ${block}: summary says ${recorded} valid bytes, live chunks add up to ${expected}`);
    const state = table.state[block];
    if (expected > 0 && (state === BlockState.Free || state === BlockState.Bad)) {
      report(`erase block ${block} is ${state === BlockState.Free ? 'free' : 'bad'} but holds ${expected} bytes of live chunks`);
    }
  }
}
