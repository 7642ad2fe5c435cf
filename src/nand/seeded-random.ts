/**
 * A tiny seeded pseudo-random generator (mulberry32: 32-bit state, period 2^32), so that fault
 * injection and simulations replay exactly from a printed seed. Not for anything secret.
 *
 * It lives here until `src/common/` gets a shared one; nothing in it is NAND specific.
 */
import { randomInt } from 'node:crypto';
import { StorageError } from '../common/errors.js';

export class SeededRandom {
  private state: number;

  constructor(readonly seed: number) {
    if (!Number.isSafeInteger(seed) || seed < 0 || seed > 0xffffffff) {
      throw StorageError.invalidArgument(`random seed ${seed} is not allowed: use a whole number from 0 to ${0xffffffff}`);
    }
    this.state = seed;
  }

  /** The next number in [0, 1). */
  next(): number {
    this.state = (this.state + 0x6d2b79f5) >>> 0;
    let mixed = this.state;
    mixed = Math.imul(mixed ^ (mixed >>> 15), mixed | 1);
    mixed ^= mixed + Math.imul(mixed ^ (mixed >>> 7), mixed | 61);
    return ((mixed ^ (mixed >>> 14)) >>> 0) / 0x100000000;
  }

  /** A whole number in [0, maxExclusive). */
  nextInt(maxExclusive: number): number {
    return Math.floor(this.next() * maxExclusive);
  }
}

/** A fresh seed, for runs that were not given one (record it so the run can replay). */
export function randomSeed(): number {
  return randomInt(0, 0x100000000);
}
