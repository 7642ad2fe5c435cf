/** The parts of `fs-native-extensions` (which ships no types) that the NAND layer uses. */
declare module 'fs-native-extensions' {
  /** Punches a hole (Linux: fallocate PUNCH_HOLE | KEEP_SIZE); the range then reads as zeros. */
  export function trim(fd: number, offset: number, length: number): Promise<void>;
  /** Takes an advisory lock without waiting (Linux: an OFD lock); false when someone else holds it. */
  export function tryLock(fd: number, offset?: number, length?: number, options?: { shared?: boolean }): boolean;
  export function unlock(fd: number, offset?: number, length?: number): void;
}
