/**
 * The array link without arrays: framing (whole, and one byte at a time), mutual authentication
 * (the right secret links; a wrong one is refused on both sides, and no frame gets through), and
 * the resync-source decision table.
 */
import { randomBytes } from 'node:crypto';
import net from 'node:net';
import test from 'ava';
import { encodeFrame, FrameDecoder } from '../../src/replication/link-protocol.js';
import { PeerLink } from '../../src/replication/peer-link.js';
import { decide } from '../../src/replication/pod.js';
import { packWrite, unpackWrite } from '../../src/replication/write-packing.js';

const SECRET = Buffer.from('0123456789abcdef0123456789abcdef');

test('synchronous writes cross the link reduced: zeroes as a header, compressible data as LZ4, random data as it is; a bad payload is refused', (t) => {
  const zeros = Buffer.alloc(64 * 1024);
  t.like(packWrite(zeros), { z: true, lz4: false, bytes: null });
  t.deepEqual(unpackWrite({ type: 'rep', z: true }, null, zeros.length), zeros);

  const text = Buffer.alloc(64 * 1024);
  for (let at = 0; at < text.length; at += 64) text.write(`line ${at} of a log file, mostly the same words\n`.padEnd(64, ' '), at, 'latin1');
  const packed = packWrite(text);
  t.true(packed.lz4 && packed.bytes!.length < text.length / 4, `compressed to ${packed.bytes!.length} bytes`);
  t.deepEqual(unpackWrite({ type: 'rep', lz4: true }, packed.bytes, text.length), text);

  const random = randomBytes(64 * 1024);
  const plain = packWrite(random);
  t.like(plain, { z: false, lz4: false });
  t.is(plain.bytes, random, 'random data is sent as it is (not even tried)');
  t.is(unpackWrite({ type: 'rep' }, random, random.length), random);

  t.throws(() => unpackWrite({ type: 'rep', lz4: true }, packed.bytes, text.length + 4096), { message: /compressed write of 65536 bytes for 69632/ });
  t.throws(() => unpackWrite({ type: 'rep', z: true }, null, 2 ** 40), { message: /packed write of/ });

  // Zeros are found over several of the comparison's 64 KiB slices, and one byte anywhere is data.
  const large = Buffer.alloc(200 * 1024 + 3);
  t.true(packWrite(large).z);
  for (const at of [0, 65535, 65536, 131072 + 17, large.length - 1]) {
    large[at] = 1;
    t.false(packWrite(large).z, `a non-zero byte at ${at}`);
    large[at] = 0;
  }
});

test('frames decode the same whole and one byte at a time, payload intact', (t) => {
  const payload = Buffer.alloc(10_000, 7);
  const bytes = Buffer.concat([...encodeFrame({ type: 'rep', o: 4096 }, payload), ...encodeFrame({ type: 'ping' }, null)]);
  const whole = new FrameDecoder().push(bytes);
  const decoder = new FrameDecoder();
  const split = [];
  for (let i = 0; i < bytes.length; i++) split.push(...decoder.push(bytes.subarray(i, i + 1)));
  for (const messages of [whole, split]) {
    t.is(messages.length, 2);
    t.deepEqual(messages[0]!.header, { type: 'rep', o: 4096 });
    t.true(messages[0]!.data!.equals(payload));
    t.is(messages[1]!.data, null);
  }
});

test('a frame over the bounds is refused (CORRUPT), not buffered', (t) => {
  const prefix = Buffer.alloc(8);
  prefix.writeUInt32BE(16, 0);
  prefix.writeUInt32BE(0xffffffff, 4);
  t.throws(() => new FrameDecoder().push(prefix), { message: /out of bounds/ });
});

async function listener(secret: Buffer): Promise<{ port: number; accepted: Promise<PeerLink>; close: () => void }> {
  let resolveAccepted!: (link: PeerLink) => void;
  let rejectAccepted!: (error: unknown) => void;
  const accepted = new Promise<PeerLink>((resolve, reject) => ((resolveAccepted = resolve), (rejectAccepted = reject)));
  accepted.catch(() => undefined);
  const server = net.createServer((socket) => PeerLink.accept(socket, secret, 'array-b').then(resolveAccepted, rejectAccepted));
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return { port: (server.address() as net.AddressInfo).port, accepted, close: () => server.close() };
}

test('the same secret links both ways, and requests get their replies', async (t) => {
  const side = await listener(SECRET);
  t.teardown(side.close);
  const dialled = await PeerLink.dial({ host: '127.0.0.1', port: side.port }, SECRET, 'array-a');
  const accepted = await side.accepted;
  t.is(dialled.peerArrayId, 'array-b');
  t.is(accepted.peerArrayId, 'array-a');
  accepted.onMessage = ({ header, data }) => accepted.reply(header.id, null, { echoed: data!.length });
  const reply = await dialled.ask({ type: 'echo' }, Buffer.alloc(4096));
  t.is(reply.header.echoed, 4096);
  dialled.close();
  accepted.close();
});

test('a wrong secret is refused on both sides', async (t) => {
  const side = await listener(SECRET);
  t.teardown(side.close);
  const wrong = Buffer.from('fedcba9876543210fedcba9876543210');
  await t.throwsAsync(PeerLink.dial({ host: '127.0.0.1', port: side.port }, wrong, 'intruder'), { message: /refused|secret/ });
  await t.throwsAsync(side.accepted, { message: /wrong replication secret/ });
});

test('an impostor listener without the secret is refused by the dialler', async (t) => {
  const side = await listener(Buffer.from('not-the-secret-not-the-secret!!'));
  t.teardown(side.close);
  await t.throwsAsync(PeerLink.dial({ host: '127.0.0.1', port: side.port }, SECRET, 'array-a'));
});

test('resync source: the survivor, else the array not out of date, else the leader; records merged', (t) => {
  const base = { stale: false, survivor: false, leaderId: 'a', changed: {} };
  const table: Array<[Partial<typeof base>, Partial<typeof base>, string]> = [
    [{ survivor: true }, {}, 'a'],
    [{}, { survivor: true }, 'b'],
    [{ stale: true }, {}, 'b'],
    [{}, { stale: true }, 'a'],
    [{}, { leaderId: 'b' }, 'b'],
    [{ leaderId: 'b' }, { leaderId: 'a' }, 'a'],
  ];
  for (const [dialler, acceptor, source] of table) {
    t.is(decide({ ...base, arrayId: 'a', ...dialler }, { ...base, arrayId: 'b', ...acceptor }).sourceId, source, JSON.stringify([dialler, acceptor]));
  }
  const merged = decide({ ...base, arrayId: 'a', changed: { v: [1, 2] } }, { ...base, arrayId: 'b', changed: { v: [2, 3], w: [0] } }).changed;
  t.deepEqual(merged.v!.sort(), [1, 2, 3]);
  t.deepEqual(merged.w, [0]);
});
