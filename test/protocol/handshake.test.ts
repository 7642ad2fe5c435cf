import test from 'ava';
import fc from 'fast-check';
import * as C from '../../src/protocol/constants.js';
import { Handshake, MAX_OPTION_DATA_BYTES, type HandshakeAction, type TlsMode } from '../../src/protocol/handshake.js';
import { MemoryDevice, catalogOf, clientFlags, infoRequest, metaContextRequest, option, parseOptionReplies } from './fixtures.js';

const SIZE = 1 << 20;
const catalog = () =>
  catalogOf(
    { name: 'default', description: 'the default volume', device: new MemoryDevice(SIZE) },
    { name: 'vol@snap', description: 'a snapshot', device: new MemoryDevice(SIZE, true) },
  );

function run(input: Buffer, options: { shuttingDown?: boolean } = {}): { sent: Buffer; actions: HandshakeAction[] } {
  const handshake = new Handshake({ catalog: catalog(), isShuttingDown: () => options.shuttingDown ?? false });
  const actions = handshake.receive(input);
  const sent = Buffer.concat(actions.flatMap((action) => (action.type === 'send' ? [action.bytes] : [])));
  return { sent, actions };
}

function replies(input: Buffer) {
  return parseOptionReplies(run(input).sent);
}

test('greeting advertises fixed newstyle and no zeroes only', (t) => {
  const greeting = new Handshake({ catalog: catalog() }).greeting();
  t.is(greeting.readBigUInt64BE(0), C.NBDMAGIC);
  t.is(greeting.readBigUInt64BE(8), C.IHAVEOPT);
  t.is(greeting.readUInt16BE(16), C.NBD_FLAG_FIXED_NEWSTYLE | C.NBD_FLAG_NO_ZEROES);
});

test('unknown client flags drop the connection', (t) => {
  const { actions } = run(clientFlags(C.NBD_FLAG_C_FIXED_NEWSTYLE | (1 << 5)));
  t.deepEqual(actions.map((a) => a.type), ['close']);
});

test('LIST sends one SERVER reply per export, with descriptions, then ACK', (t) => {
  const got = replies(Buffer.concat([clientFlags(), option(C.NBD_OPT_LIST)]));
  t.deepEqual(got.map((r) => r.type), [C.NBD_REP_SERVER, C.NBD_REP_SERVER, C.NBD_REP_ACK]);
  const first = got[0]!.data;
  const nameBytes = first.readUInt32BE(0);
  t.is(first.subarray(4, 4 + nameBytes).toString(), 'default');
  t.is(first.subarray(4 + nameBytes).toString(), 'the default volume');
});

test('LIST with data is invalid', (t) => {
  const got = replies(Buffer.concat([clientFlags(), option(C.NBD_OPT_LIST, Buffer.from('x'))]));
  t.deepEqual(got.map((r) => r.type), [C.NBD_REP_ERR_INVALID]);
});

test('INFO answers INFO_EXPORT first, then requested infos, ignores unknown ones, then ACK', (t) => {
  const data = infoRequest('default', [C.NBD_INFO_NAME, C.NBD_INFO_DESCRIPTION, C.NBD_INFO_BLOCK_SIZE, 999]);
  const got = replies(Buffer.concat([clientFlags(), option(C.NBD_OPT_INFO, data)]));
  t.deepEqual(got.map((r) => r.type), [C.NBD_REP_INFO, C.NBD_REP_INFO, C.NBD_REP_INFO, C.NBD_REP_INFO, C.NBD_REP_ACK]);
  const exportInfo = got[0]!.data;
  t.is(exportInfo.length, 12);
  t.is(exportInfo.readUInt16BE(0), C.NBD_INFO_EXPORT);
  t.is(exportInfo.readBigUInt64BE(2), BigInt(SIZE));
  const flags = exportInfo.readUInt16BE(10);
  for (const flag of [C.NBD_FLAG_HAS_FLAGS, C.NBD_FLAG_SEND_FLUSH, C.NBD_FLAG_SEND_FUA, C.NBD_FLAG_SEND_TRIM, C.NBD_FLAG_SEND_WRITE_ZEROES, C.NBD_FLAG_SEND_FAST_ZERO, C.NBD_FLAG_CAN_MULTI_CONN, C.NBD_FLAG_SEND_CACHE]) {
    t.true((flags & flag) !== 0, `flag 0x${flag.toString(16)}`);
  }
  t.is(flags & C.NBD_FLAG_SEND_DF, 0, 'DF only after structured replies');
  t.is(flags & C.NBD_FLAG_READ_ONLY, 0);
  t.is(got[1]!.data.subarray(2).toString(), 'default');
  t.is(got[2]!.data.subarray(2).toString(), 'the default volume');
  const sizes = got[3]!.data;
  t.deepEqual([sizes.readUInt16BE(0), sizes.readUInt32BE(2), sizes.readUInt32BE(6), sizes.readUInt32BE(10)], [C.NBD_INFO_BLOCK_SIZE, 1, 4096, 64 * 1024 * 1024]);
});

test('INFO on an unknown export is ERR_UNKNOWN with a message; malformed INFO is ERR_INVALID', (t) => {
  const got = replies(Buffer.concat([clientFlags(), option(C.NBD_OPT_INFO, infoRequest('nope')), option(C.NBD_OPT_INFO, Buffer.from([0, 0, 0, 9, 1]))]));
  t.deepEqual(got.map((r) => r.type), [C.NBD_REP_ERR_UNKNOWN, C.NBD_REP_ERR_INVALID]);
  t.regex(got[0]!.data.toString(), /does not exist/);
});

test('read-only exports advertise READ_ONLY and no write commands', (t) => {
  const got = replies(Buffer.concat([clientFlags(), option(C.NBD_OPT_INFO, infoRequest('vol@snap'))]));
  const flags = got[0]!.data.readUInt16BE(10);
  t.true((flags & C.NBD_FLAG_READ_ONLY) !== 0);
  t.is(flags & (C.NBD_FLAG_SEND_TRIM | C.NBD_FLAG_SEND_WRITE_ZEROES | C.NBD_FLAG_SEND_FAST_ZERO), 0);
});

test('GO enters transmission with the bytes that follow; DF is advertised after STRUCTURED_REPLY', (t) => {
  const trailing = Buffer.from([1, 2, 3]);
  const { actions } = run(Buffer.concat([clientFlags(), option(C.NBD_OPT_STRUCTURED_REPLY), option(C.NBD_OPT_GO, infoRequest('')), trailing]));
  const last = actions.at(-1)!;
  t.is(last.type, 'transmission');
  if (last.type !== 'transmission') return;
  t.is(last.session.exportEntry.name, 'default');
  t.true(last.session.structuredReplies);
  t.true((last.session.transmissionFlags & C.NBD_FLAG_SEND_DF) !== 0);
  t.deepEqual([...last.leftover], [1, 2, 3]);
});

test('EXPORT_NAME replies size, flags and 124 zero bytes unless NO_ZEROES', (t) => {
  for (const [flags, length] of [[C.NBD_FLAG_C_FIXED_NEWSTYLE, 134], [C.NBD_FLAG_C_FIXED_NEWSTYLE | C.NBD_FLAG_C_NO_ZEROES, 10]] as const) {
    const { sent, actions } = run(Buffer.concat([clientFlags(flags), option(C.NBD_OPT_EXPORT_NAME, Buffer.from('default'))]));
    t.is(sent.length, length);
    t.is(sent.readBigUInt64BE(0), BigInt(SIZE));
    t.is(actions.at(-1)!.type, 'transmission');
  }
});

test('EXPORT_NAME of an unknown export closes (the option cannot carry an error)', (t) => {
  const { actions } = run(Buffer.concat([clientFlags(), option(C.NBD_OPT_EXPORT_NAME, Buffer.from('nope'))]));
  t.deepEqual(actions.map((a) => a.type), ['close']);
});

test('ABORT is acknowledged, then the connection closes', (t) => {
  const { sent, actions } = run(Buffer.concat([clientFlags(), option(C.NBD_OPT_ABORT, Buffer.from('ignored'))]));
  t.deepEqual(parseOptionReplies(sent).map((r) => r.type), [C.NBD_REP_ACK]);
  t.is(actions.at(-1)!.type, 'close');
});

test('STRUCTURED_REPLY: ACK once, ERR_INVALID when repeated or with data', (t) => {
  const got = replies(Buffer.concat([clientFlags(), option(C.NBD_OPT_STRUCTURED_REPLY, Buffer.from('x')), option(C.NBD_OPT_STRUCTURED_REPLY), option(C.NBD_OPT_STRUCTURED_REPLY)]));
  t.deepEqual(got.map((r) => r.type), [C.NBD_REP_ERR_INVALID, C.NBD_REP_ACK, C.NBD_REP_ERR_INVALID]);
});

test('unsupported options (unknown numbers; STARTTLS with TLS off gets POLICY, as nbdkit built with TLS) get an error and the next option still parses', (t) => {
  const got = replies(Buffer.concat([clientFlags(), option(C.NBD_OPT_STARTTLS), option(4242, Buffer.from('payload')), option(C.NBD_OPT_EXTENDED_HEADERS), option(C.NBD_OPT_LIST)]));
  t.deepEqual(got.map((r) => r.type), [C.NBD_REP_ERR_POLICY, C.NBD_REP_ERR_UNSUP, C.NBD_REP_ERR_UNSUP, C.NBD_REP_SERVER, C.NBD_REP_SERVER, C.NBD_REP_ACK]);
  t.deepEqual(got.map((r) => r.option).slice(0, 3), [C.NBD_OPT_STARTTLS, 4242, C.NBD_OPT_EXTENDED_HEADERS]);
});

test('an oversized option is skipped without buffering and answered, and the stream stays in step', (t) => {
  const big = Buffer.alloc(MAX_OPTION_DATA_BYTES + 10);
  const got = replies(Buffer.concat([clientFlags(), option(C.NBD_OPT_LIST, big), option(99, big), option(C.NBD_OPT_STRUCTURED_REPLY)]));
  t.deepEqual(got.map((r) => r.type), [C.NBD_REP_ERR_TOO_BIG, C.NBD_REP_ERR_UNSUP, C.NBD_REP_ACK]);
});

test('meta contexts: LIST with no query or a namespace, SET needs structured replies, ignores base: and unknown names', (t) => {
  const got = replies(
    Buffer.concat([
      clientFlags(),
      option(C.NBD_OPT_LIST_META_CONTEXT, metaContextRequest('default', [])),
      option(C.NBD_OPT_LIST_META_CONTEXT, metaContextRequest('default', ['base:'])),
      option(C.NBD_OPT_SET_META_CONTEXT, metaContextRequest('default', ['base:allocation'])),
      option(C.NBD_OPT_STRUCTURED_REPLY),
      option(C.NBD_OPT_SET_META_CONTEXT, metaContextRequest('default', ['base:', 'base:xyz', 'qemu:dirty-bitmap:a', 'base:allocation'])),
      option(C.NBD_OPT_SET_META_CONTEXT, metaContextRequest('nope', ['base:allocation'])),
      option(C.NBD_OPT_SET_META_CONTEXT, Buffer.from([0, 0, 0, 200])),
    ]),
  );
  t.deepEqual(got.map((r) => r.type), [
    C.NBD_REP_META_CONTEXT, C.NBD_REP_ACK,
    C.NBD_REP_META_CONTEXT, C.NBD_REP_ACK,
    C.NBD_REP_ERR_INVALID,
    C.NBD_REP_ACK,
    C.NBD_REP_META_CONTEXT, C.NBD_REP_ACK,
    C.NBD_REP_ERR_UNKNOWN,
    C.NBD_REP_ERR_INVALID,
  ]);
  const selected = got[6]!.data;
  t.true(selected.readUInt32BE(0) > 0);
  t.is(selected.subarray(4).toString(), 'base:allocation');
});

test('SET_META_CONTEXT applies only to the export chosen by GO; a failed SET clears earlier contexts', (t) => {
  const setFor = (name: string) => option(C.NBD_OPT_SET_META_CONTEXT, metaContextRequest(name, ['base:allocation']));
  const go = (name: string) => option(C.NBD_OPT_GO, infoRequest(name));
  const session = (input: Buffer) => {
    const last = run(input).actions.at(-1)!;
    return last.type === 'transmission' ? last.session : undefined;
  };
  t.is(session(Buffer.concat([clientFlags(), option(C.NBD_OPT_STRUCTURED_REPLY), setFor('default'), go('default')]))!.metaContexts.size, 1);
  t.is(session(Buffer.concat([clientFlags(), option(C.NBD_OPT_STRUCTURED_REPLY), setFor('default'), go('vol@snap')]))!.metaContexts.size, 0);
  t.is(session(Buffer.concat([clientFlags(), option(C.NBD_OPT_STRUCTURED_REPLY), setFor('default'), setFor('nope'), go('default')]))!.metaContexts.size, 0);
});

test('while shutting down, options get ERR_SHUTDOWN except ABORT', (t) => {
  const { sent } = run(Buffer.concat([clientFlags(), option(C.NBD_OPT_LIST), option(C.NBD_OPT_GO, infoRequest('default')), option(C.NBD_OPT_ABORT)]), { shuttingDown: true });
  t.deepEqual(parseOptionReplies(sent).map((r) => r.type), [C.NBD_REP_ERR_SHUTDOWN, C.NBD_REP_ERR_SHUTDOWN, C.NBD_REP_ACK]);
});

test('the same actions whether bytes arrive whole or one at a time', (t) => {
  const input = Buffer.concat([
    clientFlags(),
    option(C.NBD_OPT_LIST),
    option(77, Buffer.from('zz')),
    option(C.NBD_OPT_STRUCTURED_REPLY),
    option(C.NBD_OPT_SET_META_CONTEXT, metaContextRequest('default', ['base:allocation'])),
    option(C.NBD_OPT_GO, infoRequest('default', [C.NBD_INFO_BLOCK_SIZE])),
    Buffer.from([9, 9]),
  ]);
  const whole = new Handshake({ catalog: catalog() }).receive(input);
  const byteWise = new Handshake({ catalog: catalog() });
  const pieces: HandshakeAction[] = [];
  for (const byte of input) if (!byteWise.finished) pieces.push(...byteWise.receive(Buffer.from([byte])));
  const sends = (actions: HandshakeAction[]) => Buffer.concat(actions.flatMap((a) => (a.type === 'send' ? [a.bytes] : [])));
  t.deepEqual(sends(pieces), sends(whole));
  t.is(whole.at(-1)!.type, 'transmission');
  t.is(pieces.at(-1)!.type, 'transmission');
});

test('property: random client bytes never throw and never hang', (t) => {
  let sends = 0;
  t.notThrows(() => fc.assert(
    fc.property(fc.array(fc.oneof(
      fc.uint8Array({ maxLength: 64, size: 'max' }),
      fc.tuple(fc.integer({ min: 0, max: 12 }), fc.uint8Array({ maxLength: 40 })).map(([type, data]) => new Uint8Array(option(type, Buffer.from(data)))),
    ), { maxLength: 20 }), fc.boolean(), (chunks, withHeader) => {
      const handshake = new Handshake({ catalog: catalog() });
      if (withHeader) handshake.receive(Buffer.concat([clientFlags(), option(C.NBD_OPT_STRUCTURED_REPLY)]));
      for (const chunk of chunks) {
        if (handshake.finished) break;
        const actions = handshake.receive(Buffer.from(chunk));
        for (const action of actions) if (action.type === 'send') sends += 1;
      }
    }),
    { numRuns: 2000 },
  ));
  t.true(sends > 0, 'some random inputs reached option replies');
});

// ---- STARTTLS and access lists (NBD.md section 3) ------------------------------------------------

const tlsCatalog = () =>
  catalogOf(
    { name: 'default', description: 'open', device: new MemoryDevice(SIZE) },
    { name: 'secret', description: 'alice only', device: new MemoryDevice(SIZE), accessList: ['alice'] },
  );

/** Runs `before` in plain text, STARTTLS (if the mode gives ACK) as `identity`, then `after`: the reply types of each part. */
function tlsRun(mode: TlsMode, before: Buffer[], after: Buffer[] = [], identity: string | null = null): { before: number[]; after: number[]; started: boolean } {
  const handshake = new Handshake({ catalog: tlsCatalog(), tlsMode: mode });
  const types = (actions: HandshakeAction[]) => parseOptionReplies(Buffer.concat(actions.flatMap((a) => (a.type === 'send' ? [a.bytes] : a.type === 'starttls' ? [a.reply] : [])))).map((r) => r.type);
  const first = handshake.receive(Buffer.concat([clientFlags(), ...before]));
  const started = first.some((a) => a.type === 'starttls');
  if (!started) return { before: types(first), after: [], started };
  handshake.tlsEstablished(identity);
  return { before: types(first), after: types(handshake.receive(Buffer.concat(after))), started };
}

const LIST = option(C.NBD_OPT_LIST);
const STARTTLS = option(C.NBD_OPT_STARTTLS);
const infoFor = (name: string) => option(C.NBD_OPT_INFO, infoRequest(name));

const tlsTable: Array<[string, TlsMode, Buffer[], Buffer[], string | null, number[], number[]]> = [
  ['NOTLS: STARTTLS gets POLICY, never TLS_REQD', 'off', [STARTTLS, LIST], [], null, [C.NBD_REP_ERR_POLICY, C.NBD_REP_SERVER, C.NBD_REP_ACK], []],
  ['FORCEDTLS: LIST, INFO, STRUCTURED_REPLY and unknown options get TLS_REQD before STARTTLS', 'require', [LIST, infoFor('default'), option(C.NBD_OPT_STRUCTURED_REPLY), option(99), STARTTLS], [LIST], null, [C.NBD_REP_ERR_TLS_REQD, C.NBD_REP_ERR_TLS_REQD, C.NBD_REP_ERR_TLS_REQD, C.NBD_REP_ERR_TLS_REQD, C.NBD_REP_ACK], [C.NBD_REP_SERVER, C.NBD_REP_ACK]],
  ['STARTTLS with data is invalid, then a proper one is accepted', 'on', [option(C.NBD_OPT_STARTTLS, Buffer.from('x')), STARTTLS], [], null, [C.NBD_REP_ERR_INVALID, C.NBD_REP_ACK], []],
  ['a second STARTTLS is invalid', 'on', [STARTTLS], [STARTTLS], 'alice', [C.NBD_REP_ACK], [C.NBD_REP_ERR_INVALID]],
  ['structured replies are forgotten after STARTTLS', 'on', [option(C.NBD_OPT_STRUCTURED_REPLY), STARTTLS], [option(C.NBD_OPT_SET_META_CONTEXT, metaContextRequest('default', ['base:allocation']))], null, [C.NBD_REP_ACK, C.NBD_REP_ACK], [C.NBD_REP_ERR_INVALID]],
  ['plain clients neither see nor open an access-listed export', 'on', [LIST, infoFor('secret'), option(C.NBD_OPT_LIST_META_CONTEXT, metaContextRequest('secret', []))], [], null, [C.NBD_REP_SERVER, C.NBD_REP_ACK, C.NBD_REP_ERR_UNKNOWN, C.NBD_REP_ERR_UNKNOWN], []],
  ['a TLS client not on the list neither sees nor opens it', 'on', [STARTTLS], [LIST, infoFor('secret')], 'bob', [C.NBD_REP_ACK], [C.NBD_REP_SERVER, C.NBD_REP_ACK, C.NBD_REP_ERR_UNKNOWN]],
  ['an anonymous TLS client neither sees nor opens it', 'on', [STARTTLS], [LIST, infoFor('secret')], null, [C.NBD_REP_ACK], [C.NBD_REP_SERVER, C.NBD_REP_ACK, C.NBD_REP_ERR_UNKNOWN]],
  ['the identity on the list sees and opens it', 'on', [STARTTLS], [LIST, infoFor('secret')], 'alice', [C.NBD_REP_ACK], [C.NBD_REP_SERVER, C.NBD_REP_SERVER, C.NBD_REP_ACK, C.NBD_REP_INFO, C.NBD_REP_ACK]],
];

for (const [title, mode, before, after, identity, expectBefore, expectAfter] of tlsTable) {
  test(`TLS: ${title}`, (t) => {
    const got = tlsRun(mode, before, after, identity);
    t.deepEqual(got.before, expectBefore);
    t.deepEqual(got.after, expectAfter);
  });
}

test('TLS: EXPORT_NAME before STARTTLS in FORCEDTLS mode closes (it cannot carry an error)', (t) => {
  const handshake = new Handshake({ catalog: tlsCatalog(), tlsMode: 'require' });
  const actions = handshake.receive(Buffer.concat([clientFlags(), option(C.NBD_OPT_EXPORT_NAME, Buffer.from('default'))]));
  t.deepEqual(actions.map((a) => a.type), ['close']);
});

test('TLS: bytes sent after STARTTLS before its reply close the connection (they would bypass TLS)', (t) => {
  const handshake = new Handshake({ catalog: tlsCatalog(), tlsMode: 'on' });
  const actions = handshake.receive(Buffer.concat([clientFlags(), STARTTLS, Buffer.from([0x16, 0x03, 0x01])]));
  t.deepEqual(actions.map((a) => a.type), ['close']);
});
