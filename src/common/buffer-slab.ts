/**
 * Small buffers carved from big slabs. `Buffer.allocUnsafe(4096)` costs about 2 µs here (a 4 KiB
 * request is too big for Node's 8 KiB pool, so each one is its own allocation, tracked by the
 * garbage collector as external memory); a view of a slab costs a tenth of that. Used for read
 * replies, whose buffers live only until the socket has written them.
 *
 * A slab is freed by the garbage collector once no view of it is left, so a view kept for long
 * keeps its whole slab (1 MiB) alive: do not use it for buffers that are kept.
 */
const SLAB_BYTES = 1024 * 1024;
/** Larger requests get their own buffer. */
const MAX_VIEW_BYTES = SLAB_BYTES / 8;

export class BufferSlab {
  private slab = Buffer.allocUnsafeSlow(SLAB_BYTES);
  private at = 0;

  /** `lengthBytes` of uninitialised memory. */
  take(lengthBytes: number): Buffer {
    if (lengthBytes > MAX_VIEW_BYTES) return Buffer.allocUnsafe(lengthBytes);
    if (this.at + lengthBytes > SLAB_BYTES) {
      this.slab = Buffer.allocUnsafeSlow(SLAB_BYTES);
      this.at = 0;
    }
    const view = this.slab.subarray(this.at, this.at + lengthBytes);
    this.at += (lengthBytes + 7) & ~7; // 8-byte aligned, so typed-array views of it work
    return view;
  }
}
