/**
 * Pattern removal: a logical block made of one repeated 1-, 2-, 4- or 8-byte word (all zeroes
 * included) is stored as that word in the volume map and costs no NAND. A repeated 1-, 2- or
 * 4-byte word is also a repeated 8-byte word, so one check covers all four.
 */

export interface Pattern {
  high: number;
  low: number;
}

/** The repeated 8-byte word of `block`, or null if it is not one word repeated. */
export function detectPattern(block: Buffer): Pattern | null {
  if (block.length < 8 || block.length % 8 !== 0) return null;
  // Cheap rejection first: most blocks differ within their first 16 bytes.
  if (block.length >= 16 && block.readUInt32LE(0) !== block.readUInt32LE(8)) return null;
  if (block.compare(block, 8, block.length, 0, block.length - 8) !== 0) return null;
  return { high: block.readUInt32BE(0), low: block.readUInt32BE(4) };
}

/** A block of `lengthBytes` filled with the pattern's word. */
export function expandPattern(pattern: Pattern, lengthBytes: number): Buffer {
  const word = Buffer.alloc(8);
  word.writeUInt32BE(pattern.high >>> 0, 0);
  word.writeUInt32BE(pattern.low >>> 0, 4);
  return Buffer.alloc(lengthBytes, word);
}
