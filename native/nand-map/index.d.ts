/** A read-only MAP_SHARED mapping of `length` bytes of `fd` from `offset` (page-aligned; at most 4 GiB), unmapped when collected. */
export function map(fd: number, offset: number, length: number): Buffer;
/** madvise(MADV_DONTNEED) over the whole mapping: its pages leave the resident set, not the page cache. */
export function dropResident(mapping: Buffer): void;
