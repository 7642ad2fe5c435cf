/**
 * The metadata store conformance suite: the rules of `MetaStore` (see `src/meta/meta-store.ts`),
 * registered as ava tests against any implementation, as abstract-level's suite runs against every
 * `level` store. Crash behaviour differs by implementation and is tested beside each of them.
 */
import test from 'ava';
import type { ExecutionContext } from 'ava';
import fc from 'fast-check';
import { AssertionError } from '../../src/common/assert.js';
import { StorageError } from '../../src/common/errors.js';
import { SUBLEVELS } from '../../src/meta/meta-store.js';
import type { IterateRange, MetaOp, MetaStore, Sublevel } from '../../src/meta/meta-store.js';

export interface MetaHarness {
  store: MetaStore;
  /** Closes the store and opens the same data again (only where `reopen` is supported). */
  reopen(): Promise<MetaStore>;
  /** Closes the store if it is still open and removes whatever the factory created. */
  cleanup(): Promise<void>;
}

export type MetaFactory = () => Promise<MetaHarness>;

export interface Capabilities {
  /** The store persists across close and open (LevelDB), so the reopen cases apply. */
  reopen: boolean;
}

export const bytes = (...values: number[]): Buffer => Buffer.from(values);
export const put = (sublevel: Sublevel, key: Uint8Array, value: Uint8Array): MetaOp => ({ type: 'put', sublevel, key, value });
export const del = (sublevel: Sublevel, key: Uint8Array): MetaOp => ({ type: 'del', sublevel, key });

/** Entries as hex pairs, so that a failed comparison prints readably. */
export async function collect(iterable: AsyncIterable<[Buffer, Buffer]>): Promise<Array<[string, string]>> {
  const entries: Array<[string, string]> = [];
  for await (const [key, value] of iterable) entries.push([key.toString('hex'), value.toString('hex')]);
  return entries;
}

/** Every entry of every sublevel, as `sublevel/keyhex -> valuehex`. */
export async function dump(store: MetaStore): Promise<Map<string, string>> {
  const state = new Map<string, string>();
  for (const sublevel of SUBLEVELS) {
    for (const [key, value] of await collect(store.iterate(sublevel))) state.set(`${sublevel}/${key}`, value);
  }
  return state;
}

const shuttingDown = { instanceOf: StorageError, code: 'SHUTTING_DOWN' };
const misuse = { instanceOf: AssertionError };

/** The model of `iterate`: filter, sort by unsigned bytes, reverse, limit. */
function expectedRange(keys: Buffer[], range: IterateRange): string[] {
  let selected = keys
    .filter((key) => (range.gte === undefined || Buffer.compare(key, range.gte) >= 0) && (range.lt === undefined || Buffer.compare(key, range.lt) < 0))
    .sort(Buffer.compare);
  if (range.reverse) selected = selected.reverse();
  if (range.limit !== undefined) selected = selected.slice(0, range.limit);
  return selected.map((key) => key.toString('hex'));
}

async function iteratedKeys(store: MetaStore, sublevel: Sublevel, range?: IterateRange): Promise<string[]> {
  return (await collect(store.iterate(sublevel, range))).map(([key]) => key);
}

type Body = (t: ExecutionContext, harness: MetaHarness) => Promise<void>;

export function registerMetaConformanceTests(name: string, factory: MetaFactory, capabilities: Capabilities): void {
  const run = (title: string, body: Body): void => {
    test(`${name}: ${title}`, async (t) => {
      const harness = await factory();
      try {
        await body(t, harness);
      } finally {
        await harness.cleanup();
      }
    });
  };
  for (const [title, body] of Object.entries(CASES)) run(title, body);
  if (capabilities.reopen) for (const [title, body] of Object.entries(REOPEN_CASES)) run(title, body);
}

/** Keys chosen to catch signed comparison, length-before-content order and prefix confusion. */
const TRICKY_KEYS = [[], [0], [0, 0], [0, 1], [1], [1, 0], [0x21], [0x7f], [0x80], [0x80, 0], [0xfe, 0xff], [0xff], [0xff, 0], [0xff, 0xff]].map((key) => Buffer.from(key));

const CASES: Record<string, Body> = {
  'put, get and del round trip in every sublevel': async (t, { store }) => {
    for (const sublevel of SUBLEVELS) {
      const key = bytes(1, 2, 3);
      t.is(await store.get(sublevel, key), undefined, `${sublevel} starts empty`);
      await store.batch([put(sublevel, key, Buffer.from(`value of ${sublevel}`))], { sync: false });
      t.deepEqual(await store.get(sublevel, key), Buffer.from(`value of ${sublevel}`), sublevel);
      await store.batch([del(sublevel, key)], { sync: true });
      t.is(await store.get(sublevel, key), undefined, `${sublevel} after del`);
    }
  },

  'empty keys, empty values and Uint8Array views round trip': async (t, { store }) => {
    const backing = new Uint8Array([9, 9, 7, 8, 9, 9]);
    const viewKey = backing.subarray(2, 4);
    const viewValue = new Uint8Array(backing.buffer, 1, 4);
    await store.batch([put('map', bytes(), bytes(5)), put('map', bytes(1), bytes()), put('map', viewKey, viewValue)], { sync: false });
    t.deepEqual(await store.get('map', bytes()), bytes(5));
    t.deepEqual(await store.get('map', bytes(1)), bytes());
    t.deepEqual(await store.get('map', bytes(7, 8)), bytes(9, 7, 8, 9), 'only the bytes of the view are used');
    t.deepEqual(await collect(store.iterate('map')), [
      ['', '05'],
      ['01', ''],
      ['0708', '09070809'],
    ]);
  },

  'sublevels are isolated from each other': async (t, { store }) => {
    const key = bytes(0x21, 0x6d);
    await store.batch(
      SUBLEVELS.map((sublevel, index) => put(sublevel, key, bytes(index))),
      { sync: false },
    );
    await store.batch([put('chunks', bytes(0xff, 0xff), bytes(0xcc)), put('erase-blocks', bytes(), bytes(0xee))], { sync: false });
    for (const [index, sublevel] of SUBLEVELS.entries()) t.deepEqual(await store.get(sublevel, key), bytes(index), sublevel);
    t.deepEqual(await iteratedKeys(store, 'chunks'), ['216d', 'ffff'], 'chunks holds only its own keys');
    t.deepEqual(await iteratedKeys(store, 'erase-blocks'), ['', '216d']);
    t.deepEqual(await iteratedKeys(store, 'snapshots', { reverse: true }), ['216d']);
    await store.batch([del('map', key)], { sync: false });
    t.is(await store.get('map', key), undefined);
    t.deepEqual(await store.get('volumes', key), bytes(SUBLEVELS.indexOf('volumes')), 'a del in one sublevel leaves the others');
  },

  'a batch across sublevels is visible once it resolves': async (t, { store }) => {
    await store.batch([put('volumes', bytes(1), bytes(1))], { sync: false });
    await store.batch(
      [put('map', bytes(1), bytes(2)), put('chunks', bytes(1), bytes(3)), del('volumes', bytes(1)), put('fingerprints', bytes(1), bytes(4))],
      { sync: true },
    );
    t.deepEqual(await store.getMany('map', [bytes(1)]), [bytes(2)]);
    t.deepEqual(await store.get('chunks', bytes(1)), bytes(3));
    t.is(await store.get('volumes', bytes(1)), undefined);
    t.deepEqual(await store.get('fingerprints', bytes(1)), bytes(4));
  },

  'a batch with a bad operation applies none of its operations': async (t, { store }) => {
    const bad = { type: 'put', sublevel: 'map', key: 'not bytes', value: bytes(1) } as unknown as MetaOp;
    await t.throwsAsync(store.batch([put('chunks', bytes(1), bytes(1)), put('map', bytes(2), bytes(2)), bad], { sync: true }), misuse);
    const unknownSublevel = { type: 'put', sublevel: 'nope', key: bytes(3), value: bytes(3) } as unknown as MetaOp;
    await t.throwsAsync(store.batch([put('volumes', bytes(3), bytes(3)), unknownSublevel], { sync: false }), misuse);
    t.deepEqual(await dump(store), new Map(), 'nothing of either batch is visible');
    await store.batch([put('map', bytes(4), bytes(4))], { sync: false });
    t.deepEqual(await dump(store), new Map([['map/04', '04']]), 'the store still works');
  },

  'within a batch a later operation on a key wins': async (t, { store }) => {
    await store.batch([put('map', bytes(1), bytes(1)), put('map', bytes(1), bytes(2)), put('map', bytes(2), bytes(1)), del('map', bytes(2)), del('map', bytes(3)), put('map', bytes(3), bytes(3))], {
      sync: false,
    });
    t.deepEqual(await store.getMany('map', [bytes(1), bytes(2), bytes(3)]), [bytes(2), undefined, bytes(3)]);
  },

  'iterate honours byte order, bounds, limit and reverse': async (t, { store }) => {
    // A fixed permutation (5 is coprime with the 14 keys), so that insertion order is not sorted.
    const shuffled = TRICKY_KEYS.map((_, index) => TRICKY_KEYS[(index * 5) % TRICKY_KEYS.length]!);
    for (let i = 0; i < shuffled.length; i += 3) {
      await store.batch(shuffled.slice(i, i + 3).map((key) => put('map', key, Buffer.concat([bytes(0xaa), key]))), { sync: false });
    }
    const ranges: IterateRange[] = [
      {},
      { reverse: true },
      { gte: bytes(0, 1) },
      { lt: bytes(0x80) },
      { gte: bytes(1), lt: bytes(0xff) },
      { gte: bytes(1), lt: bytes(0xff), reverse: true },
      { limit: 3 },
      { limit: 3, reverse: true },
      { gte: bytes(0x21), lt: bytes(0xff, 0xff), limit: 4, reverse: true },
      { gte: bytes(0x21), limit: 2 },
      { limit: 0 },
      { gte: bytes(0x80), lt: bytes(0x80) },
      { gte: bytes(0xff), lt: bytes(0x10) },
      { gte: bytes(0xff, 0xff, 0) },
    ];
    for (const range of ranges) t.deepEqual(await iteratedKeys(store, 'map', range), expectedRange(TRICKY_KEYS, range), JSON.stringify(range));
    const [first] = await collect(store.iterate('map', { gte: bytes(0x80), limit: 1 }));
    t.deepEqual(first, ['80', 'aa80'], 'values come with their keys');
  },

  'iterate matches a sorted model for random keys and ranges': async (t, { store }) => {
    const key = fc.uint8Array({ maxLength: 3 }).map((array) => Buffer.from(array));
    const range = fc.record(
      { gte: key, lt: key, limit: fc.integer({ min: 0, max: 12 }), reverse: fc.boolean() },
      { requiredKeys: [] },
    );
    await fc.assert(
      fc.asyncProperty(fc.uniqueArray(key, { maxLength: 20, selector: (k) => k.toString('hex') }), fc.array(range, { minLength: 1, maxLength: 4 }), async (keys, ranges) => {
        await store.batch(keys.map((k) => put('chunks', k, k)), { sync: false });
        try {
          for (const r of ranges) {
            if ((await iteratedKeys(store, 'chunks', r)).join() !== expectedRange(keys, r).join()) return false;
          }
          return true;
        } finally {
          await store.batch(keys.map((k) => del('chunks', k)), { sync: false });
        }
      }),
      { numRuns: 60 },
    );
    t.deepEqual(await dump(store), new Map(), 'every run cleaned up after itself');
  },

  'getMany returns values in the order asked and undefined for missing keys': async (t, { store }) => {
    await store.batch([put('fingerprints', bytes(1), bytes(10)), put('fingerprints', bytes(3), bytes(30)), put('map', bytes(2), bytes(20))], { sync: false });
    t.deepEqual(await store.getMany('fingerprints', [bytes(3), bytes(2), bytes(1), bytes(3), bytes()]), [bytes(30), undefined, bytes(10), bytes(30), undefined]);
    t.deepEqual(await store.getMany('fingerprints', []), []);
  },

  'batches called without awaiting take effect and resolve in call order': async (t, { store }) => {
    const resolved: number[] = [];
    const writes = Array.from({ length: 60 }, (_, index) =>
      store
        .batch([put('super', bytes(0), bytes(index)), put('volumes', bytes(index), bytes(index))], { sync: index % 7 === 3 })
        .then(() => resolved.push(index)),
    );
    await Promise.all(writes);
    t.deepEqual(await store.get('super', bytes(0)), bytes(59), 'the last batch called wins');
    t.is((await collect(store.iterate('volumes'))).length, 60);
    t.deepEqual(resolved, Array.from({ length: 60 }, (_, index) => index));
  },

  'an empty batch resolves, synced or not': async (t, { store }) => {
    await store.batch([put('map', bytes(1), bytes(1))], { sync: false });
    await store.batch([], { sync: false });
    await store.batch([], { sync: true });
    await Promise.all([store.batch([put('map', bytes(2), bytes(2))], { sync: false }), store.batch([], { sync: true }), store.batch([], { sync: false })]);
    t.deepEqual(await dump(store), new Map([['map/01', '01'], ['map/02', '02']]), 'the barrier writes nothing visible');
  },

  'buffers are copied on the way in and on the way out': async (t, { store }) => {
    const key = bytes(1);
    const value = bytes(1, 1);
    const first = store.batch([put('map', key, value)], { sync: false });
    // The second batch is called while the first may still be in flight, so it may be queued.
    const queuedKey = bytes(2);
    const queuedValue = bytes(2, 2);
    const second = store.batch([put('map', queuedKey, queuedValue)], { sync: false });
    key[0] = 9;
    value[0] = 9;
    queuedKey[0] = 9;
    queuedValue[0] = 9;
    await Promise.all([first, second]);
    t.deepEqual(await dump(store), new Map([['map/01', '0101'], ['map/02', '0202']]));
    const got = (await store.get('map', bytes(1)))!;
    got[0] = 7;
    const [many] = await store.getMany('map', [bytes(2)]);
    many![0] = 7;
    for await (const [iteratedKey, iteratedValue] of store.iterate('map')) {
      iteratedKey[0] = 7;
      iteratedValue[0] = 7;
    }
    t.deepEqual(await dump(store), new Map([['map/01', '0101'], ['map/02', '0202']]), 'callers cannot change stored bytes');
  },

  'an iteration reads a snapshot taken when it starts': async (t, { store }) => {
    const count = 600;
    const key = (index: number): Buffer => Buffer.from([index >> 8, index & 0xff]);
    await store.batch(Array.from({ length: count }, (_, index) => put('map', key(index * 2), bytes(1))), { sync: false });
    const iterator = store.iterate('map')[Symbol.asyncIterator]();
    const seen: string[] = [];
    const first = await iterator.next();
    t.false(first.done);
    seen.push(first.value[0].toString('hex'));
    await store.batch([put('map', key(3), bytes(2)), del('map', key(1100)), put('map', key(1198), bytes(3)), put('map', key(5000), bytes(4))], { sync: false });
    for (let next = await iterator.next(); !next.done; next = await iterator.next()) {
      seen.push(next.value[0].toString('hex'));
      if (next.value[0].equals(key(1198))) t.deepEqual(next.value[1], bytes(1), 'the old value of a key changed meanwhile');
    }
    t.deepEqual(seen, Array.from({ length: count }, (_, index) => key(index * 2).toString('hex')));
  },

  'misuse fails an assertion': async (t, { store }) => {
    await t.throwsAsync(store.batch([put('map', bytes(1), bytes(1))], {} as { sync: boolean }), misuse, 'sync has no default');
    await t.throwsAsync(store.get('nope' as Sublevel, bytes(1)), misuse);
    await t.throwsAsync(collect(store.iterate('map', { limit: -1 })), misuse);
    await t.throwsAsync(collect(store.iterate('map', { limit: 1.5 })), misuse);
    t.deepEqual(await dump(store), new Map());
  },

  'calls after close reject with SHUTTING_DOWN': async (t, { store }) => {
    await store.batch([put('map', bytes(1), bytes(1))], { sync: true });
    await store.close();
    await t.throwsAsync(store.get('map', bytes(1)), shuttingDown);
    await t.throwsAsync(store.getMany('map', [bytes(1)]), shuttingDown);
    await t.throwsAsync(store.batch([put('map', bytes(2), bytes(2))], { sync: true }), shuttingDown);
    await t.throwsAsync(collect(store.iterate('map')), shuttingDown);
    await t.throwsAsync(store.close(), shuttingDown);
  },

  'close waits for batches already called': async (t, harness) => {
    const writes = Array.from({ length: 20 }, (_, index) => harness.store.batch([put('map', bytes(index), bytes(index))], { sync: index === 19 }));
    await harness.store.close();
    const settled = await Promise.allSettled(writes);
    t.deepEqual(
      settled.map((outcome) => outcome.status),
      Array.from({ length: 20 }, () => 'fulfilled'),
    );
  },
};

const REOPEN_CASES: Record<string, Body> = {
  'reopen keeps synced and unsynced batches in every sublevel': async (t, harness) => {
    await harness.store.batch(
      SUBLEVELS.map((sublevel, index) => put(sublevel, bytes(index), bytes(index, 1))),
      { sync: true },
    );
    await harness.store.batch([put('map', bytes(0xff), bytes(2)), del('super', bytes(0))], { sync: false });
    const before = await dump(harness.store);
    const reopened = await harness.reopen();
    t.deepEqual(await dump(reopened), before);
    t.is(before.size, SUBLEVELS.length, 'seven puts, one more, one del');
    await reopened.batch([put('map', bytes(0xff), bytes(3))], { sync: true });
    t.deepEqual(await reopened.get('map', bytes(0xff)), bytes(3));
  },
};
