/**
 * The native helpers (native/nand-map, a Node-API addon built at install), or null where the addon
 * was not built: every caller has a pure JavaScript path and uses the addon only to go faster.
 * `copyRecords` is null for an addon built before it existed (`npm rebuild pstorage-nand-map`),
 * and so are `readRecords`, `tuneMalloc`, `trimMalloc` and `adviseHugePages`.
 *
 * The addon is loaded from this repository's own native/ directory first, which is where the
 * `file:` dependency points in an ordinary install: a checkout sharing another's node_modules (a
 * git worktree) then runs the addon built from its own sources, not the other's.
 */
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';

type Addon = typeof import('pstorage-nand-map');

/** Functions newer than some built addons (see native/nand-map/index.d.ts). */
interface MallocFunctions {
  tuneMalloc?: (mmapThresholdBytes: number, trimThresholdBytes: number, arenaMax: number) => boolean;
  trimMalloc?: () => boolean;
  adviseHugePages?: (array: ArrayBufferView) => number;
}

export const nandMap: (Addon & MallocFunctions) | null = (() => {
  const require = createRequire(import.meta.url);
  for (const id of [fileURLToPath(new URL('../../../native/nand-map/index.cjs', import.meta.url)), 'pstorage-nand-map']) {
    try {
      return require(id) as Addon & MallocFunctions;
    } catch {
      // Not built there: try the next.
    }
  }
  return null;
})();

export const copyRecords: Addon['copyRecords'] | null = typeof nandMap?.copyRecords === 'function' ? nandMap.copyRecords : null;
export const readRecords: Addon['readRecords'] | null = typeof nandMap?.readRecords === 'function' ? nandMap.readRecords : null;
export const tuneMalloc: MallocFunctions['tuneMalloc'] | null = typeof nandMap?.tuneMalloc === 'function' ? nandMap.tuneMalloc : null;
export const trimMalloc: MallocFunctions['trimMalloc'] | null = typeof nandMap?.trimMalloc === 'function' ? nandMap.trimMalloc : null;
/** Transparent huge pages for a large table read at random (see the addon's index.d.ts), or null. */
export const adviseHugePages: MallocFunctions['adviseHugePages'] | null = typeof nandMap?.adviseHugePages === 'function' ? nandMap.adviseHugePages : null;

/** `hashInto` plus the incompressibility sample of a 4 KiB block (see the addon's index.d.ts); null for an addon built before it existed. */
export const hashAndSample: Addon['hashAndSample'] | null = typeof nandMap?.hashAndSample === 'function' ? nandMap.hashAndSample : null;

/** XXH64 into a buffer, low 32 bits returned (no BigInt); null for an addon built before it existed. */
export const hashInto: Addon['hashInto'] | null = typeof nandMap?.hashInto === 'function' ? nandMap.hashInto : null;

/** Fill, header and checksum of a page in one call (see the addon's index.d.ts); null for an addon built before it existed. */
export const sealPageNative: Addon['sealPage'] | null = typeof nandMap?.sealPage === 'function' ? nandMap.sealPage : null;

/** Pattern, hash and sample of a run of blocks in one call (see the addon's index.d.ts); null for an addon built before it existed. */
export const reduceRun: Addon['reduceRun'] | null = typeof nandMap?.reduceRun === 'function' ? nandMap.reduceRun : null;
