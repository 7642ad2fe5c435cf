/**
 * The native helpers (native/nand-map, a Node-API addon built at install), or null where the addon
 * was not built: every caller has a pure JavaScript path and uses the addon only to go faster.
 * `copyRecords` is null for an addon built before it existed (`npm rebuild pstorage-nand-map`).
 */
import { createRequire } from 'node:module';

type Addon = typeof import('pstorage-nand-map');

export const nandMap: Addon | null = (() => {
  try {
    return createRequire(import.meta.url)('pstorage-nand-map') as Addon;
  } catch {
    return null;
  }
})();

export const copyRecords: Addon['copyRecords'] | null = typeof nandMap?.copyRecords === 'function' ? nandMap.copyRecords : null;

/** XXH64 into a buffer, low 32 bits returned (no BigInt); null for an addon built before it existed. */
export const hashInto: Addon['hashInto'] | null = typeof nandMap?.hashInto === 'function' ? nandMap.hashInto : null;
