import test from 'ava';
import fc from 'fast-check';
import { AssertionError } from '../../src/common/assert.js';
import { StorageError } from '../../src/common/errors.js';
import { MemoryMetaStore } from '../../src/meta/memory-store.js';
import type { MetaOp, Sublevel } from '../../src/meta/meta-store.js';
import { bytes, del, dump, put, registerMetaConformanceTests } from './conformance.js';

registerMetaConformanceTests(
  'memory',
  async () => {
    const store = new MemoryMetaStore();
    return {
      store,
      reopen: () => Promise.reject(new Error('a memory store cannot be reopened')),
      cleanup: async () => {
        await store.close().catch(() => undefined);
      },
    };
  },
  { reopen: false },
);

const entry = (key: number, value: number): [string, string] => [`map/${bytes(key).toString('hex')}`, bytes(value).toString('hex')];

/** b1 unsynced, b2 synced, b3 and b4 unsynced. */
async function fourBatches(): Promise<MemoryMetaStore> {
  const store = new MemoryMetaStore();
  await store.batch([put('map', bytes(1), bytes(1))], { sync: false });
  await store.batch([put('map', bytes(2), bytes(2))], { sync: true });
  await store.batch([put('map', bytes(3), bytes(3)), del('map', bytes(1))], { sync: false });
  await store.batch([put('map', bytes(4), bytes(4))], { sync: false });
  return store;
}

const THROUGH_B2 = new Map([entry(1, 1), entry(2, 2)]);
const THROUGH_B3 = new Map([entry(2, 2), entry(3, 3)]);
const THROUGH_B4 = new Map([entry(2, 2), entry(3, 3), entry(4, 4)]);

test('crash keeps every batch up to the last synced one and, by default, no later one', async (t) => {
  const store = await fourBatches();
  t.is(store.unsyncedBatchCount, 2);
  t.deepEqual(await dump(store), THROUGH_B4, 'before the crash every batch is visible');
  t.deepEqual(await dump(store.crash()), THROUGH_B2, 'b1 survives because b2 synced it');
});

test('crash can keep all unsynced batches or an exact prefix of them', async (t) => {
  t.deepEqual(await dump((await fourBatches()).crash({ keepUnsynced: 'all' })), THROUGH_B4);
  t.deepEqual(await dump((await fourBatches()).crash({ keepUnsynced: 'none' })), THROUGH_B2);
  t.deepEqual(await dump((await fourBatches()).crash({ keepUnsynced: 1 })), THROUGH_B3);
  t.deepEqual(await dump((await fourBatches()).crash({ keepUnsynced: 2 })), THROUGH_B4);
});

test('a random draw picks the surviving prefix length uniformly from none to all', async (t) => {
  t.deepEqual(await dump((await fourBatches()).crash(() => 0)), THROUGH_B2);
  t.deepEqual(await dump((await fourBatches()).crash(() => 0.5)), THROUGH_B3, 'floor(0.5 * 3) = 1 batch');
  t.deepEqual(await dump((await fourBatches()).crash({ random: () => 0.9999 })), THROUGH_B4);
});

test('an empty synced batch makes every earlier batch durable', async (t) => {
  const store = await fourBatches();
  await store.batch([], { sync: true });
  t.is(store.unsyncedBatchCount, 0);
  t.deepEqual(await dump(store.crash()), THROUGH_B4);
});

test('the crashed store is abandoned; the new one holds durable state and accepts writes', async (t) => {
  const store = await fourBatches();
  const survivor = store.crash({ keepUnsynced: 1 });
  await t.throwsAsync(store.get('map', bytes(2)), { instanceOf: StorageError, code: 'SHUTTING_DOWN' });
  await t.throwsAsync(store.batch([], { sync: true }), { instanceOf: StorageError, code: 'SHUTTING_DOWN' });
  t.throws(() => store.crash(), { instanceOf: AssertionError });
  t.is(survivor.unsyncedBatchCount, 0);
  await survivor.batch([put('map', bytes(5), bytes(5))], { sync: false });
  const again = survivor.crash();
  t.deepEqual(await dump(again), THROUGH_B3, 'what survived one crash survives the next; the new unsynced batch does not');
});

test('a crash after a clean close may still lose unsynced batches', async (t) => {
  const store = await fourBatches();
  await store.close();
  t.deepEqual(await dump(store.crash()), THROUGH_B2);
});

test('crash options are checked', async (t) => {
  const store = await fourBatches();
  t.throws(() => store.crash({ keepUnsynced: 3 }), { instanceOf: AssertionError });
  t.throws(() => store.crash({ keepUnsynced: -1 }), { instanceOf: AssertionError });
  t.throws(() => store.crash({ keepUnsynced: 'all', random: () => 0 }), { instanceOf: AssertionError });
  t.throws(() => store.crash(() => 1), { instanceOf: AssertionError });
  t.deepEqual(await dump(store), THROUGH_B4, 'a refused crash leaves the store as it was');
});

/* A model-based property: random batch sequences with crashes in between. */

type ModelState = Map<string, string>;

interface BatchStep {
  kind: 'batch';
  sync: boolean;
  ops: Array<{ type: 'put' | 'del'; sublevel: Sublevel; key: number }>;
}
interface CrashStep {
  kind: 'crash';
  draw: number;
}

/** Mostly unsynced batches of mostly puts, so that a crash has a few unsynced batches to cut. */
const batchStep: fc.Arbitrary<BatchStep> = fc.record({
  kind: fc.constant('batch' as const),
  sync: fc.integer({ min: 0, max: 3 }).map((n) => n === 0),
  ops: fc.array(
    fc.record({
      type: fc.constantFrom('put' as const, 'put' as const, 'del' as const),
      sublevel: fc.constantFrom<Sublevel>('map', 'chunks'),
      key: fc.integer({ min: 0, max: 5 }),
    }),
    { maxLength: 4 },
  ),
});
/** A uniform draw (fc.double favours values near 0, which would keep almost nothing). */
const crashStep: fc.Arbitrary<CrashStep> = fc.record({
  kind: fc.constant('crash' as const),
  draw: fc.integer({ min: 0, max: 9999 }).map((n) => n / 10000),
});

/** Values carry the batch and operation index, so that a partly applied batch shows. */
function toOps(step: BatchStep, batchIndex: number): MetaOp[] {
  return step.ops.map((op, opIndex) =>
    op.type === 'put' ? put(op.sublevel, bytes(op.key), bytes(batchIndex >> 8, batchIndex & 0xff, opIndex)) : del(op.sublevel, bytes(op.key)),
  );
}

function applyToModel(state: ModelState, ops: MetaOp[]): ModelState {
  const next = new Map(state);
  for (const op of ops) {
    const name = `${op.sublevel}/${Buffer.from(op.key).toString('hex')}`;
    if (op.type === 'put') next.set(name, Buffer.from(op.value).toString('hex'));
    else next.delete(name);
  }
  return next;
}

const canonical = (state: ModelState): string => JSON.stringify([...state].sort());

/** How many crashes kept some but not all of two or more unsynced batches: the telling case. */
let partialPrefixCrashes = 0;

async function checkSequence(steps: Array<BatchStep | CrashStep>): Promise<boolean> {
  let store: MemoryMetaStore = new MemoryMetaStore();
  let durable: ModelState = new Map();
  let unsynced: MetaOp[][] = [];
  let current: ModelState = new Map();
  for (const [index, step] of steps.entries()) {
    if (step.kind === 'batch') {
      const ops = toOps(step, index);
      await store.batch(ops, { sync: step.sync });
      current = applyToModel(current, ops);
      if (step.sync) [durable, unsynced] = [current, []];
      else unsynced.push(ops);
      if (canonical(await dump(store)) !== canonical(current)) return false;
      continue;
    }
    store = store.crash(() => step.draw);
    // The allowed outcomes: the durable state plus a prefix of the unsynced batches, whole.
    const allowed = [canonical(durable)];
    let prefix = durable;
    for (const ops of unsynced) allowed.push(canonical((prefix = applyToModel(prefix, ops))));
    const actual = canonical(await dump(store));
    const kept = allowed.indexOf(actual);
    if (kept < 0) return false;
    if (unsynced.length >= 2 && kept > 0 && allowed.lastIndexOf(actual) < allowed.length - 1) partialPrefixCrashes += 1;
    [durable, current, unsynced] = [await dump(store), await dump(store), []];
  }
  return canonical(await dump(store.crash({ keepUnsynced: 'none' }))) === canonical(durable);
}

test('a crash keeps the synced batches plus a whole-batch prefix of the later ones (property)', async (t) => {
  const step = fc.oneof({ arbitrary: batchStep, weight: 6 }, { arbitrary: crashStep, weight: 1 });
  await fc.assert(fc.asyncProperty(fc.array(step, { minLength: 10, maxLength: 60 }), checkSequence), { numRuns: 300 });
  t.true(partialPrefixCrashes >= 50, `only ${partialPrefixCrashes} crashes kept a strict, non-empty prefix: the property is too weak`);
});

test('a full disk (hostFull): the batch fails with NO_SPACE and changes nothing; writes stay stopped until reopen', async (t) => {
  const store = new MemoryMetaStore();
  await store.batch([put('map', bytes(1), bytes(1))], { sync: true });
  store.hostFull = true;
  await t.throwsAsync(store.batch([put('map', bytes(2), bytes(2))], { sync: true }), { instanceOf: StorageError, code: 'NO_SPACE' });
  t.is(await store.get('map', bytes(2)), undefined);
  store.hostFull = false;
  await t.throwsAsync(store.batch([put('map', bytes(3), bytes(3))], { sync: false }), { code: 'NO_SPACE' }, 'stopped until a reopen');
  await store.reopen();
  t.is(store.writeError, null);
  await store.batch([put('map', bytes(3), bytes(3))], { sync: true });
  t.deepEqual(await store.get('map', bytes(1)), bytes(1));
  t.deepEqual(await store.get('map', bytes(3)), bytes(3));
});
