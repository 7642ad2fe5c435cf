/** The NAND device layer: the device seam, its memory and file implementations, fault injection. */
export {
  DEFAULT_ENDURANCE_CYCLES,
  DEFAULT_PAGE_BYTES,
  DEFAULT_PAGES_PER_ERASE_BLOCK,
  NandFault,
  capacityBytes,
  eraseBlockBytes,
  geometryForCapacity,
  isNandFault,
  nandFaultError,
  needsEraseBeforeReuse,
  validateGeometry,
} from './nand-device.js';
export type { NandBlockInfo, NandCounters, NandDevice, NandFaultKind, NandGeometry } from './nand-device.js';
export { NandDeviceBase } from './nand-device-base.js';
export { MemoryNand } from './memory-nand.js';
export type { CrashOptions } from './memory-nand.js';
export { FileNand, IMAGE_FILE_NAME, SPARE_FILE_NAME } from './file-nand.js';
export type { FileNandOpenOptions } from './file-nand.js';
export { FaultyNand } from './faulty-nand.js';
export type { FaultRates, FaultyNandOptions, InjectedFaultCounts } from './faulty-nand.js';
export { SeededRandom, randomSeed } from './seeded-random.js';
