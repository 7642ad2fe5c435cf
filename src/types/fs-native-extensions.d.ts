// fs-native-extensions ships no types; these are the calls pstorage uses.
declare module 'fs-native-extensions' {
  export function trim(fd: number, offset: number, length: number): Promise<void>;
  export function trimSync(fd: number, offset: number, length: number): void;
  export function tryLock(fd: number, offset?: number, length?: number, opts?: { shared?: boolean }): boolean;
  export function unlock(fd: number, offset?: number, length?: number): void;
}
