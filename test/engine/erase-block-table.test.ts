/**
 * Which free erase block the FTL opens next (EraseBlockTable.pickFree): the least-worn, or, with a
 * warm-wear slack, the most recently freed one while it is at most that many cycles ahead.
 */
import test from 'ava';
import { BlockState, EraseBlockTable } from '../../src/ftl/erase-block-table.js';

function table(counts: number[], slack: number): EraseBlockTable {
  const t = new EraseBlockTable(counts.length, 1024);
  counts.forEach((count, block) => (t.eraseCount[block] = count));
  t.rebuildFreeHeap();
  t.warmWearSlack = slack;
  return t;
}

/** Opens `block` (it must be what pickFree gave) and frees it again after `erases` more cycles. */
function cycle(t: EraseBlockTable, block: number, erases: number): void {
  t.setState(block, BlockState.Open);
  t.setState(block, BlockState.Full);
  t.eraseCount[block] += erases;
  t.setState(block, BlockState.Free);
}

test('without a slack the least-worn free block is opened (lowest index among equals)', (t) => {
  const blocks = table([3, 1, 2, 1], 0);
  t.is(blocks.pickFree(), 1);
  blocks.setState(1, BlockState.Open);
  t.is(blocks.pickFree(), 3);
  blocks.setState(3, BlockState.Open);
  cycle(blocks, 1, 0); // freed again, still at 1
  t.is(blocks.pickFree(), 1);
});

test('with a slack the most recently freed block is opened first, until it is more than the slack ahead', (t) => {
  const blocks = table([0, 0, 0, 0, 0, 0], 2);
  t.is(blocks.pickFree(), 0, 'nothing freed yet: least-worn');
  blocks.setState(0, BlockState.Open);
  t.is(blocks.pickFree(), 1);
  blocks.setState(1, BlockState.Open);
  cycle(blocks, 0, 1);
  cycle(blocks, 1, 1);
  t.is(blocks.pickFree(), 1, 'newest freed first');
  blocks.setState(1, BlockState.Open);
  t.is(blocks.pickFree(), 0, 'then the one freed before it');
  blocks.setState(0, BlockState.Open);
  cycle(blocks, 0, 1); // at 2: still within 2 of the least-worn free (0)
  t.is(blocks.pickFree(), 0);
  blocks.setState(0, BlockState.Open);
  cycle(blocks, 0, 1); // at 3: more than 2 ahead
  t.is(blocks.pickFree(), 2, 'too far ahead: the least-worn block instead');
  blocks.setState(2, BlockState.Open);
  t.is(blocks.pickFree(), 3, 'and the stale entry of block 0 is not used again');
});

test('picking never returns a block that is not free, however the two orders go stale', (t) => {
  const blocks = table(Array.from({ length: 64 }, () => 0), 4);
  let seed = 7;
  const random = (n: number) => ((seed = (seed * 1103515245 + 12345) % 2 ** 31) % n);
  const open: number[] = [];
  for (let step = 0; step < 5000; step++) {
    if (open.length > 0 && (blocks.freeBlocks === 0 || random(2) === 0)) {
      const block = open.splice(random(open.length), 1)[0]!;
      cycle(blocks, block, 1 + random(2));
      continue;
    }
    const block = blocks.pickFree();
    t.true(block >= 0 && blocks.state[block] === BlockState.Free, `step ${step}: picked ${block}`);
    blocks.setState(block, BlockState.Open);
    open.push(block);
  }
});
