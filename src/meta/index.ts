/** The metadata layer: the `MetaStore` interface, its LevelDB and in-memory stores, key codecs. */
export * from './meta-store.js';
export * from './keys.js';
export { LevelMetaStore, type LevelMetaStoreOptions, DEFAULT_CACHE_BYTES, DEFAULT_WRITE_BUFFER_BYTES } from './level-store.js';
export { MemoryMetaStore, type MetaCrashOptions } from './memory-store.js';
