import test from 'ava';
import fc from 'fast-check';
import * as C from '../../src/protocol/constants.js';
import { RequestDecoder, validateRequest, type NbdRequest, type RequestContext, type RequestEvent } from '../../src/protocol/transmission.js';
import { request } from './fixtures.js';

const SIZE = 1 << 20;
const MAX = 64 * 1024 * 1024;
const base: RequestContext = { sizeBytes: SIZE, readOnly: false, structuredReplies: true, metaContextCount: 1, maxPayloadBytes: MAX, minimumBlockBytes: 1 };

function req(type: number, fields: Partial<NbdRequest> = {}): NbdRequest {
  return { flags: 0, type, cookie: 7n, offset: 0n, length: 4096, ...fields };
}

// One row per rule of NBD.md section 11 (and sections 6-7): [name, request, context changes, expected errno].
const RULES: Array<[string, NbdRequest, Partial<RequestContext>, number]> = [
  ['read in range', req(C.NBD_CMD_READ), {}, C.NBD_OK],
  ['read past the end', req(C.NBD_CMD_READ, { offset: BigInt(SIZE - 100) }), {}, C.NBD_EINVAL],
  ['read with offset beyond 2^63', req(C.NBD_CMD_READ, { offset: 0xffffffffffffffffn }), {}, C.NBD_EINVAL],
  ['write past the end', req(C.NBD_CMD_WRITE, { offset: BigInt(SIZE) }), {}, C.NBD_ENOSPC],
  ['write zeroes past the end', req(C.NBD_CMD_WRITE_ZEROES, { offset: BigInt(SIZE - 1), length: 2 }), {}, C.NBD_ENOSPC],
  ['trim past the end', req(C.NBD_CMD_TRIM, { offset: BigInt(SIZE), length: 1 }), {}, C.NBD_EINVAL],
  ['cache past the end', req(C.NBD_CMD_CACHE, { offset: BigInt(SIZE), length: 1 }), {}, C.NBD_EINVAL],
  ['block status past the end', req(C.NBD_CMD_BLOCK_STATUS, { offset: BigInt(SIZE) }), {}, C.NBD_EINVAL],
  ['write on a read-only export', req(C.NBD_CMD_WRITE), { readOnly: true }, C.NBD_EPERM],
  ['trim on a read-only export', req(C.NBD_CMD_TRIM), { readOnly: true }, C.NBD_EPERM],
  ['write zeroes on a read-only export', req(C.NBD_CMD_WRITE_ZEROES), { readOnly: true }, C.NBD_EPERM],
  ['read on a read-only export', req(C.NBD_CMD_READ), { readOnly: true }, C.NBD_OK],
  ['flush on a read-only export', req(C.NBD_CMD_FLUSH, { length: 0 }), { readOnly: true }, C.NBD_OK],
  ['unknown command', req(42), {}, C.NBD_EINVAL],
  ['unknown flag', req(C.NBD_CMD_READ, { flags: 1 << 9 }), {}, C.NBD_EINVAL],
  ['NO_HOLE on WRITE', req(C.NBD_CMD_WRITE, { flags: C.NBD_CMD_FLAG_NO_HOLE }), {}, C.NBD_EINVAL],
  ['DF on WRITE', req(C.NBD_CMD_WRITE, { flags: C.NBD_CMD_FLAG_DF }), {}, C.NBD_EINVAL],
  ['DF without structured replies', req(C.NBD_CMD_READ, { flags: C.NBD_CMD_FLAG_DF }), { structuredReplies: false }, C.NBD_EINVAL],
  ['DF with structured replies', req(C.NBD_CMD_READ, { flags: C.NBD_CMD_FLAG_DF }), {}, C.NBD_OK],
  ['REQ_ONE on READ', req(C.NBD_CMD_READ, { flags: C.NBD_CMD_FLAG_REQ_ONE }), {}, C.NBD_EINVAL],
  ['FAST_ZERO on TRIM', req(C.NBD_CMD_TRIM, { flags: C.NBD_CMD_FLAG_FAST_ZERO }), {}, C.NBD_EINVAL],
  ['FUA on every command', req(C.NBD_CMD_CACHE, { flags: C.NBD_CMD_FLAG_FUA }), {}, C.NBD_OK],
  ['NO_HOLE and FAST_ZERO on WRITE_ZEROES', req(C.NBD_CMD_WRITE_ZEROES, { flags: C.NBD_CMD_FLAG_NO_HOLE | C.NBD_CMD_FLAG_FAST_ZERO }), {}, C.NBD_OK],
  ['flush with a length', req(C.NBD_CMD_FLUSH, { length: 1 }), {}, C.NBD_EINVAL],
  ['flush with an offset', req(C.NBD_CMD_FLUSH, { offset: 1n, length: 0 }), {}, C.NBD_EINVAL],
  ['read above the maximum payload', req(C.NBD_CMD_READ, { length: MAX + 1 }), { sizeBytes: 2 * MAX }, C.NBD_EINVAL],
  ['read of exactly 64 MiB', req(C.NBD_CMD_READ, { length: MAX }), { sizeBytes: 2 * MAX }, C.NBD_OK],
  ['trim above the maximum payload (length-only command)', req(C.NBD_CMD_TRIM, { length: MAX * 2 }), { sizeBytes: 4 * MAX }, C.NBD_OK],
  ['block status without structured replies', req(C.NBD_CMD_BLOCK_STATUS), { structuredReplies: false }, C.NBD_EINVAL],
  ['block status without a meta context', req(C.NBD_CMD_BLOCK_STATUS), { metaContextCount: 0 }, C.NBD_EINVAL],
  ['block status of zero length', req(C.NBD_CMD_BLOCK_STATUS, { length: 0 }), {}, C.NBD_EINVAL],
  ['zero-length read', req(C.NBD_CMD_READ, { length: 0 }), {}, C.NBD_OK],
  ['zero-length write at the end', req(C.NBD_CMD_WRITE, { offset: BigInt(SIZE), length: 0 }), {}, C.NBD_OK],
  ['unaligned read with minimum block size 1', req(C.NBD_CMD_READ, { offset: 3n, length: 5 }), {}, C.NBD_OK],
  ['unaligned read with minimum block size 512', req(C.NBD_CMD_READ, { offset: 3n, length: 512 }), { minimumBlockBytes: 512 }, C.NBD_EINVAL],
];

for (const [name, request, changes, expected] of RULES) {
  test(`validate: ${name}`, (t) => {
    const rejection = validateRequest(request, { ...base, ...changes });
    t.is(rejection?.errno ?? C.NBD_OK, expected, rejection?.message);
  });
}

function decodeAll(decoder: RequestDecoder, chunks: Buffer[]): RequestEvent[] {
  return chunks.flatMap((chunk) => decoder.push(chunk));
}

const stream = Buffer.concat([
  request(C.NBD_CMD_WRITE, { cookie: 1n, offset: 4096n, payload: Buffer.alloc(5000, 0xab) }),
  request(C.NBD_CMD_READ, { cookie: 0xffffffffffffffffn, offset: 1n, length: 9 }),
  request(C.NBD_CMD_WRITE, { cookie: 3n, length: 100, payload: Buffer.alloc(100, 1) }),
  request(C.NBD_CMD_FLUSH, { cookie: 4n }),
  request(C.NBD_CMD_DISC, { cookie: 5n }),
]);

test('decoder: the same events whole and one byte at a time', (t) => {
  const whole = decodeAll(new RequestDecoder(MAX), [stream]);
  const bytes = decodeAll(new RequestDecoder(MAX), [...stream].map((byte) => Buffer.from([byte])));
  t.is(whole.length, 5);
  t.deepEqual(bytes, whole);
  const first = whole[0]!;
  t.is(first.type, 'request');
  if (first.type === 'request') {
    t.is(first.payload!.length, 5000);
    t.is(first.request.offset, 4096n);
  }
  t.is(whole[1]!.type === 'request' && whole[1]!.request.cookie, 0xffffffffffffffffn, 'cookies are echoed unchanged');
});

test('decoder: an oversized write is skipped whole before its error is reported', (t) => {
  const decoder = new RequestDecoder(1024);
  const big = request(C.NBD_CMD_WRITE, { cookie: 9n, length: 5000, payload: Buffer.alloc(5000, 7) });
  const events = decodeAll(decoder, [big.subarray(0, 100), big.subarray(100), request(C.NBD_CMD_FLUSH, { cookie: 10n })]);
  t.deepEqual(events.map((e) => e.type), ['oversized-write', 'request']);
  t.true(events[1]!.type === 'request' && events[1]!.request.cookie === 10n);
  t.true(decoder.bufferedBytes === 0);
});

test('decoder: a bad magic is fatal and nothing is decoded after it', (t) => {
  const bad = Buffer.from(request(C.NBD_CMD_READ));
  bad.writeUInt32BE(0xdeadbeef, 0);
  const decoder = new RequestDecoder(MAX);
  t.deepEqual(decoder.push(Buffer.concat([bad, request(C.NBD_CMD_FLUSH)])).map((e) => e.type), ['fatal']);
  t.deepEqual(decoder.push(request(C.NBD_CMD_FLUSH)), []);
});

test('property: any chunking of a request stream gives the same events', (t) => {
  t.notThrows(() =>
    fc.assert(
      fc.property(fc.array(fc.integer({ min: 1, max: stream.length }), { maxLength: 12 }), (cuts) => {
        const points = [...new Set(cuts)].sort((a, b) => a - b);
        const chunks: Buffer[] = [];
        let last = 0;
        for (const point of points) {
          chunks.push(stream.subarray(last, point));
          last = point;
        }
        chunks.push(stream.subarray(last));
        const events = decodeAll(new RequestDecoder(MAX), chunks);
        return JSON.stringify(events, (_k, v) => (typeof v === 'bigint' ? v.toString() : v)) === JSON.stringify(decodeAll(new RequestDecoder(MAX), [stream]), (_k, v) => (typeof v === 'bigint' ? v.toString() : v));
      }),
      { numRuns: 500 },
    ),
  );
});

test('property: transient chunks (one reused read buffer) give the same events, and nothing refers to the buffer', (t) => {
  const expected = JSON.stringify(decodeAll(new RequestDecoder(MAX), [stream]), (_k, v) => (typeof v === 'bigint' ? v.toString() : v));
  t.notThrows(() =>
    fc.assert(
      fc.property(fc.array(fc.integer({ min: 1, max: stream.length }), { maxLength: 12 }), (cuts) => {
        const points = [...new Set(cuts)].sort((a, b) => a - b);
        points.push(stream.length);
        const readBuffer = Buffer.alloc(stream.length);
        const decoder = new RequestDecoder(MAX);
        const events: RequestEvent[] = [];
        let last = 0;
        for (const point of points) {
          const count = stream.copy(readBuffer, 0, last, point);
          events.push(...decoder.push(readBuffer.subarray(0, count), true));
          readBuffer.fill(0xee); // the next read overwrites it
          last = point;
        }
        return JSON.stringify(events, (_k, v) => (typeof v === 'bigint' ? v.toString() : v)) === expected;
      }),
      { numRuns: 500 },
    ),
  );
});

test('property: random bytes only ever produce typed events', (t) => {
  const types = new Set<string>();
  t.notThrows(() =>
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 400, size: 'max' }), fc.boolean(), (bytes, withMagic) => {
        const input = Buffer.from(bytes);
        if (withMagic && input.length >= 4) input.writeUInt32BE(C.NBD_REQUEST_MAGIC, 0);
        for (const event of new RequestDecoder(64).push(input)) {
          types.add(event.type);
          if (event.type === 'request') validateRequest(event.request, base);
        }
      }),
      { numRuns: 3000 },
    ),
  );
  t.true(types.has('fatal'));
});

test('property: admission refusals hold requests in order and resume() gives the same events, over transient chunks', (t) => {
  const expected = JSON.stringify(decodeAll(new RequestDecoder(MAX), [stream]), (_k, v) => (typeof v === 'bigint' ? v.toString() : v));
  t.notThrows(() =>
    fc.assert(
      fc.property(fc.array(fc.integer({ min: 1, max: stream.length }), { maxLength: 12 }), fc.array(fc.boolean(), { minLength: 40, maxLength: 40 }), fc.array(fc.boolean(), { minLength: 13, maxLength: 13 }), (cuts, answers, resumes) => {
        const points = [...new Set(cuts)].sort((a, b) => a - b);
        points.push(stream.length);
        let asked = 0;
        const admitted: bigint[] = [];
        const decoder = new RequestDecoder(MAX, Buffer.allocUnsafe, (request) => {
          const yes = answers[asked++ % answers.length]!;
          if (yes) admitted.push(request.cookie);
          return yes;
        });
        const readBuffer = Buffer.alloc(stream.length);
        const events: RequestEvent[] = [];
        let last = 0;
        for (const point of points) {
          const count = stream.copy(readBuffer, 0, last, point);
          events.push(...decoder.push(readBuffer.subarray(0, count), true));
          readBuffer.fill(0xee);
          last = point;
          // Nothing is reported past a held request.
          if (decoder.holding && events.some((event) => event.type === 'request' && !admitted.includes(event.request.cookie))) return false;
          if (resumes[points.indexOf(point)]!) events.push(...decoder.resume());
        }
        for (let i = 0; i < 100 && decoder.holding; i++) events.push(...decoder.resume());
        return !decoder.holding && JSON.stringify(events, (_k, v) => (typeof v === 'bigint' ? v.toString() : v)) === expected;
      }),
      { numRuns: 500 },
    ),
  );
});

test('decoder: a held WRITE has no payload gathered for it until admitted', (t) => {
  let allocations = 0;
  let admit = false;
  const decoder = new RequestDecoder(MAX, (lengthBytes) => {
    allocations += 1;
    return Buffer.allocUnsafe(lengthBytes);
  }, () => admit);
  const write = request(C.NBD_CMD_WRITE, { cookie: 9n, length: 8192, payload: Buffer.alloc(8192, 7) });
  t.deepEqual(decoder.push(write.subarray(0, 100), true), []);
  t.true(decoder.holding);
  t.deepEqual(decoder.push(write.subarray(100), true), []);
  t.is(allocations, 0, 'no payload buffer while held');
  t.deepEqual(decoder.resume(), [], 'still refused');
  admit = true;
  const events = decoder.resume();
  t.false(decoder.holding);
  t.is(events.length, 1);
  const event = events[0]!;
  t.true(event.type === 'request' && event.request.cookie === 9n && event.payload!.equals(Buffer.alloc(8192, 7)));
});
