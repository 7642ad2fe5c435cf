#!/usr/bin/python3
"""NBD conformance checks against a running pstorage server, driven by python3-libnbd and by a
small raw-socket client for the parts libnbd 1.14 cannot send (SET_META_CONTEXT on its own,
unknown options and commands, EXPORT_NAME, DISC).

Usage: /usr/bin/python3 nbd_conformance.py SOCKET_PATH [GROUP ...]

Groups: handshake, raw-protocol, bad-requests, multi-conn, simple-replies (default: all). Each
group writes only inside its own 1 GiB region of the export, so groups may run at the same time
against one server. Every check prints PASS or FAIL with the reason; the script ends with a
summary and exits 1 if any check failed (2 on bad usage).

The rules checked are the NBD spec's (doc/proto.md, our paraphrase in NBD.md). Where the spec
leaves a choice (zero-length requests) any allowed answer is accepted, but the connection must
keep working afterwards.
"""
import errno
import hashlib
import os
import random
import socket
import struct
import sys
import traceback

import nbd

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
EXPORT_BYTES = 16 * GiB
MAX_PAYLOAD_BYTES = 64 * MiB
GRAIN_BYTES = 4 * KiB  # the backend's zero-detection grain (reads report holes at this size)

# Each group owns one region of the export.
REGION_BASE = {
    'handshake': 1 * GiB,
    'raw-protocol': 2 * GiB,
    'bad-requests': 3 * GiB,
    'multi-conn': 4 * GiB,
    'simple-replies': 5 * GiB,
}
GROUPS = list(REGION_BASE)


class CheckFailed(Exception):
    pass


def expect(condition, message):
    if not condition:
        raise CheckFailed(message)


def errno_names(values):
    return '/'.join(errno.errorcode.get(v, str(v)) for v in values)


def expect_errno(label, want, action):
    """Runs action(); it must fail with an nbd.Error whose errno is one of `want`."""
    want = want if isinstance(want, (tuple, list, set)) else (want,)
    try:
        action()
    except nbd.Error as error:
        expect(error.errnum in want,
               f'{label}: expected {errno_names(want)}, got {error.errno} ({error.string})')
        return
    raise CheckFailed(f'{label}: expected {errno_names(want)}, but the request succeeded')


def expect_ok_or_errno(label, allowed, action):
    """Runs action(); success is fine, and so is an nbd.Error with one of `allowed`."""
    try:
        action()
        return 'ok'
    except nbd.Error as error:
        expect(error.errnum in allowed,
               f'{label}: expected success or {errno_names(allowed)}, got {error.errno} ({error.string})')
        return errno.errorcode.get(error.errnum, str(error.errnum))


def expect_bytes(label, got, want):
    got = bytes(got)
    if got == want:
        return
    expect(len(got) == len(want), f'{label}: got {len(got)} bytes, expected {len(want)}')
    first = next(i for i in range(len(want)) if got[i] != want[i])
    raise CheckFailed(f'{label}: data differs first at byte {first} of {len(want)} '
                      f'(got 0x{got[first]:02x}, expected 0x{want[first]:02x})')


def connect(socket_path, structured=True, contexts=(), strict=True, export='default'):
    h = nbd.NBD()
    h.set_request_structured_replies(structured)
    for context in contexts:
        h.add_meta_context(context)
    h.connect_uri(f'nbd+unix:///{export}?socket={socket_path}')
    if not strict:
        h.set_strict_mode(0)
    return h


class Prober:
    """After a bad request, proves that a handle still reads and writes correctly."""

    def __init__(self, h, base):
        self.h = h
        self.base = base
        self.count = 0

    def __call__(self, label):
        # Unaligned offset and length, so this also exercises read-modify-write.
        offset = self.base + self.count * 16 * KiB + 7
        self.count += 1
        data = os.urandom(4 * KiB + 13)
        try:
            self.h.pwrite(data, offset)
            got = self.h.pread(len(data), offset)
        except nbd.Error as error:
            raise CheckFailed(f'after {label}: the connection no longer works: {error.string}')
        expect_bytes(f'after {label}: round trip on the same connection', got, data)


# ---- Registry ------------------------------------------------------------------------------

CHECKS = []


def check(group):
    def register(fn):
        CHECKS.append((group, fn.__name__, fn))
        return fn
    return register


class Context:
    def __init__(self, socket_path):
        self.socket_path = socket_path
        self.state = {}


# ---- handshake (libnbd opt mode) -----------------------------------------------------------

def opt_mode_handle(ctx):
    h = nbd.NBD()
    h.set_opt_mode(True)
    h.connect_uri(f'nbd+unix:///default?socket={ctx.socket_path}')
    expect(h.aio_is_negotiating(), 'opt mode: handle is not negotiating after connect')
    return h


@check('handshake')
def opt_list_names_exports(ctx):
    h = opt_mode_handle(ctx)
    exports = []
    count = h.opt_list(lambda name, description: exports.append((name, description)) or 0)
    expect(count == len(exports), f'opt_list returned {count} but called back {len(exports)} times')
    names = [name for name, _ in exports]
    expect('default' in names, f'opt_list: "default" missing from {names}')
    description = dict(exports)['default']
    expect(description != '' and str(EXPORT_BYTES) in description,
           f'opt_list: description of default is {description!r}')
    expect(h.aio_is_negotiating(), 'opt_list ended the negotiation')
    h.opt_abort()


@check('handshake')
def opt_info_default_and_empty_name(ctx):
    h = opt_mode_handle(ctx)
    h.set_full_info(True)  # asks for NBD_INFO_NAME and NBD_INFO_DESCRIPTION too
    for name in ('default', ''):
        h.set_export_name(name)
        h.opt_info()
        expect(h.get_size() == EXPORT_BYTES, f'opt_info({name!r}): size {h.get_size()}')
        expect(h.get_canonical_export_name() == 'default',
               f'opt_info({name!r}): canonical name {h.get_canonical_export_name()!r}')
        expect(str(EXPORT_BYTES) in h.get_export_description(),
               f'opt_info({name!r}): description {h.get_export_description()!r}')
        sizes = (h.get_block_size(nbd.SIZE_MINIMUM), h.get_block_size(nbd.SIZE_PREFERRED),
                 h.get_block_size(nbd.SIZE_MAXIMUM))
        expect(sizes == (1, 4096, MAX_PAYLOAD_BYTES), f'opt_info({name!r}): block sizes {sizes}')
        flags = {'flush': h.can_flush(), 'fua': h.can_fua(), 'trim': h.can_trim(), 'zero': h.can_zero(),
                 'fast_zero': h.can_fast_zero(), 'df': h.can_df(), 'multi_conn': h.can_multi_conn(),
                 'cache': h.can_cache(), 'read_only': h.is_read_only()}
        want = dict(flush=True, fua=True, trim=True, zero=True, fast_zero=True, df=True,
                    multi_conn=True, cache=True, read_only=False)
        expect(flags == want, f'opt_info({name!r}): flags {flags}, expected {want}')
        expect(h.aio_is_negotiating(), 'opt_info ended the negotiation')
    h.opt_abort()


@check('handshake')
def opt_info_unknown_export_fails(ctx):
    h = opt_mode_handle(ctx)
    h.set_export_name('no-such-export')
    # NBD_REP_ERR_UNKNOWN, which libnbd reports as ENOENT.
    expect_errno('opt_info(no-such-export)', errno.ENOENT, h.opt_info)
    expect(h.aio_is_negotiating(), 'a failed opt_info must leave the handshake going')
    h.set_export_name('default')
    h.opt_info()
    expect(h.get_size() == EXPORT_BYTES, 'opt_info(default) after a failed one: wrong size')
    h.opt_abort()


@check('handshake')
def opt_list_meta_context(ctx):
    h = opt_mode_handle(ctx)
    for queries, want in (((), ['base:allocation']), (('base:',), ['base:allocation']),
                          (('base:allocation',), ['base:allocation']), (('nosuchns:thing',), [])):
        h.clear_meta_contexts()
        for query in queries:
            h.add_meta_context(query)
        seen = []
        count = h.opt_list_meta_context(lambda name: seen.append(name) or 0)
        expect(seen == want and count == len(want),
               f'opt_list_meta_context{queries}: got {seen} (count {count}), expected {want}')
    h.opt_abort()


@check('handshake')
def set_meta_context_then_go(ctx):
    # libnbd 1.14 has no opt_set_meta_context: it sends SET_META_CONTEXT as part of opt_info and
    # opt_go when contexts were added. (The raw-protocol group checks the option on its own.)
    h = opt_mode_handle(ctx)
    h.add_meta_context('base:allocation')
    h.add_meta_context('nosuchns:ignored')
    h.opt_info()
    expect(h.can_meta_context('base:allocation'), 'opt_info with base:allocation: context not selected')
    h.opt_go()
    expect(not h.aio_is_negotiating() and h.aio_is_ready(), 'opt_go did not enter transmission')
    expect(h.get_nr_meta_contexts() == 2, 'libnbd lost the requested contexts')
    expect(h.can_meta_context('base:allocation'), 'after opt_go: base:allocation not negotiated')
    expect(not h.can_meta_context('nosuchns:ignored'), 'after opt_go: an unknown context was selected')
    base = REGION_BASE['handshake']
    data = os.urandom(64 * KiB)
    h.pwrite(data, base + 64 * KiB)
    extents = []

    def on_extents(context, offset, entries, error):
        extents.append((context, offset, list(entries)))
        return 0

    h.block_status(256 * KiB, base, on_extents)
    expect(len(extents) == 1 and extents[0][0] == 'base:allocation',
           f'block_status: expected one base:allocation reply, got {extents}')
    entries = extents[0][2]
    pairs = list(zip(entries[0::2], entries[1::2]))
    covered = 0
    for length, flags in pairs:
        expect(length > 0 and length % 512 == 0, f'block_status: bad extent length {length} in {pairs}')
        wanted = 0 if base + 64 * KiB <= base + covered < base + 128 * KiB else nbd.STATE_HOLE | nbd.STATE_ZERO
        expect(flags == wanted, f'block_status: extent at +{covered} has flags {flags}, expected {wanted}: {pairs}')
        covered += length
    expect(covered >= 256 * KiB, f'block_status: extents cover only {covered} bytes: {pairs}')
    extents.clear()
    h.block_status(256 * KiB, base + 64 * KiB, on_extents, nbd.CMD_FLAG_REQ_ONE)
    entries = extents[0][2]
    expect(len(entries) == 2 and 0 < entries[0] <= 256 * KiB and entries[1] == 0,
           f'block_status REQ_ONE: expected exactly one data extent, got {entries}')
    h.shutdown()


@check('handshake')
def opt_abort_ends_cleanly(ctx):
    h = opt_mode_handle(ctx)
    h.opt_abort()
    expect(h.aio_is_closed(), 'opt_abort: handle not closed')
    # The server must be unaffected.
    other = connect(ctx.socket_path)
    expect(other.get_size() == EXPORT_BYTES, 'a new connection after opt_abort failed')
    other.shutdown()


@check('handshake')
def structured_reads_use_holes_and_df(ctx):
    h = connect(ctx.socket_path)
    base = REGION_BASE['handshake'] + 16 * MiB
    data = os.urandom(8 * KiB)
    h.pwrite(data, base + 16 * KiB)
    expected = bytes(16 * KiB) + data + bytes(16 * KiB)
    chunks = []

    def on_chunk(subbuf, offset, status, error):
        chunks.append((offset, len(subbuf), status))
        return 0

    got = h.pread_structured(len(expected), base, on_chunk)
    expect_bytes('structured read over holes', got, expected)
    chunks.sort()
    at = base
    merged = []  # the server may split a run into several chunks; only the runs matter
    for offset, length, status in chunks:
        expect(offset == at, f'structured read: chunks overlap or leave gaps: {chunks}')
        at += length
        if merged and merged[-1][2] == status:
            merged[-1][1] += length
        else:
            merged.append([offset, length, status])
    expect(at == base + len(expected), f'structured read: chunks do not cover the request: {chunks}')
    want = [[base, 16 * KiB, nbd.READ_HOLE], [base + 16 * KiB, 8 * KiB, nbd.READ_DATA], [base + 24 * KiB, 16 * KiB, nbd.READ_HOLE]]
    expect(merged == want, f'structured read: expected a hole, the data, a hole; got chunks {chunks}')
    chunks.clear()
    got = h.pread_structured(len(expected), base, on_chunk, nbd.CMD_FLAG_DF)
    expect_bytes('DF read over holes', got, expected)
    expect(chunks == [(base, len(expected), nbd.READ_DATA)],
           f'DF read: expected one data chunk, got {chunks}')
    h.shutdown()


# ---- raw-protocol (our own socket client) --------------------------------------------------

NBDMAGIC = 0x4e42444d41474943
IHAVEOPT = 0x49484156454F5054
OPT_REPLY_MAGIC = 0x3e889045565a9
REQUEST_MAGIC = 0x25609513
SIMPLE_REPLY_MAGIC = 0x67446698
STRUCTURED_REPLY_MAGIC = 0x668e33ef
OPT = dict(EXPORT_NAME=1, ABORT=2, LIST=3, INFO=6, GO=7, STRUCTURED_REPLY=8, LIST_META_CONTEXT=9,
           SET_META_CONTEXT=10)
REP_ACK, REP_SERVER, REP_INFO, REP_META_CONTEXT = 1, 2, 3, 4
REP_ERR_UNSUP, REP_ERR_INVALID, REP_ERR_UNKNOWN = 0x80000001, 0x80000003, 0x80000006
INFO_EXPORT, INFO_NAME, INFO_BLOCK_SIZE = 0, 1, 3
CMD_READ, CMD_WRITE, CMD_DISC, CMD_BLOCK_STATUS = 0, 1, 2, 7
FLAG_HAS_FLAGS, FLAG_SEND_DF = 1 << 0, 1 << 7
REPLY_TYPE_NONE, REPLY_TYPE_OFFSET_DATA, REPLY_TYPE_OFFSET_HOLE = 0, 1, 2
REPLY_TYPE_BLOCK_STATUS, REPLY_TYPE_ERROR = 5, 32769


class RawClient:
    def __init__(self, socket_path, client_flags=3):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(10)
        self.sock.connect(socket_path)
        magic, opt_magic, flags = struct.unpack('>QQH', self.recv(18))
        expect(magic == NBDMAGIC and opt_magic == IHAVEOPT, 'greeting: bad magic')
        self.handshake_flags = flags
        self.sock.sendall(struct.pack('>I', client_flags))

    def recv(self, n):
        out = b''
        while len(out) < n:
            piece = self.sock.recv(n - len(out))
            if not piece:
                raise CheckFailed(f'server closed the connection while {n - len(out)} more bytes were expected')
            out += piece
        return out

    def closed_by_server(self):
        """True if the server closes the connection (EOF) within the socket timeout."""
        try:
            while True:
                piece = self.sock.recv(4096)
                if not piece:
                    return True
        except (ConnectionResetError, BrokenPipeError):
            return True
        except socket.timeout:
            return False

    def send_option(self, option, data=b''):
        self.sock.sendall(struct.pack('>QII', IHAVEOPT, option, len(data)) + data)

    def option_reply(self, option):
        magic, opt, reply_type, length = struct.unpack('>QIII', self.recv(20))
        expect(magic == OPT_REPLY_MAGIC, f'option reply: bad magic 0x{magic:x}')
        expect(opt == option, f'option reply: for option {opt}, expected {option}')
        return reply_type, self.recv(length)

    def option(self, option, data=b''):
        """Sends one option and collects its replies up to the final one (ACK or an error)."""
        self.send_option(option, data)
        replies = []
        while True:
            reply_type, body = self.option_reply(option)
            replies.append((reply_type, body))
            if reply_type == REP_ACK or reply_type & 0x80000000:
                return replies

    def request(self, command, cookie, offset=0, length=0, flags=0, payload=b''):
        self.sock.sendall(struct.pack('>IHHQQI', REQUEST_MAGIC, flags, command, cookie, offset, length) + payload)

    def simple_reply(self, cookie, data_bytes=0):
        magic, error, got_cookie = struct.unpack('>IIQ', self.recv(16))
        expect(magic == SIMPLE_REPLY_MAGIC, f'expected a simple reply, got magic 0x{magic:x}')
        expect(got_cookie == cookie, f'simple reply: cookie 0x{got_cookie:x}, expected 0x{cookie:x}')
        return error, (self.recv(data_bytes) if error == 0 and data_bytes else b'')

    def structured_reply(self, cookie):
        """All chunks of one structured reply, as (type, payload) pairs."""
        chunks = []
        while True:
            magic, flags, chunk_type, got_cookie, length = struct.unpack('>IHHQI', self.recv(20))
            expect(magic == STRUCTURED_REPLY_MAGIC, f'expected a structured reply, got magic 0x{magic:x}')
            expect(got_cookie == cookie, f'structured reply: cookie 0x{got_cookie:x}, expected 0x{cookie:x}')
            chunks.append((chunk_type, self.recv(length)))
            if flags & 1:
                return chunks


def meta_context_request(export, queries):
    name = export.encode()
    body = struct.pack('>I', len(name)) + name + struct.pack('>I', len(queries))
    for query in queries:
        body += struct.pack('>I', len(query.encode())) + query.encode()
    return body


def info_request(export, infos):
    name = export.encode()
    return struct.pack('>I', len(name)) + name + struct.pack('>H', len(infos)) + b''.join(struct.pack('>H', i) for i in infos)


def parse_infos(label, replies):
    expect(replies[-1][0] == REP_ACK, f'{label}: final reply is 0x{replies[-1][0]:x}, not ACK')
    infos = {}
    for reply_type, body in replies[:-1]:
        expect(reply_type == REP_INFO, f'{label}: unexpected reply type 0x{reply_type:x}')
        infos[struct.unpack('>H', body[:2])[0]] = body[2:]
    expect(INFO_EXPORT in infos, f'{label}: no NBD_INFO_EXPORT')
    return infos


@check('raw-protocol')
def raw_greeting_and_option_errors(ctx):
    c = RawClient(ctx.socket_path)
    expect(c.handshake_flags == 3, f'handshake flags 0x{c.handshake_flags:x}: expected FIXED_NEWSTYLE|NO_ZEROES only')
    replies = c.option(99, b'12345')
    expect(replies == [(REP_ERR_UNSUP, replies[0][1])], f'unknown option: got {replies}, expected ERR_UNSUP')
    replies = c.option(OPT['LIST'], b'junk')
    expect(replies[-1][0] == REP_ERR_INVALID, f'LIST with data: got 0x{replies[-1][0]:x}, expected ERR_INVALID')
    replies = c.option(OPT['SET_META_CONTEXT'], meta_context_request('default', ['base:allocation']))
    expect(replies[-1][0] == REP_ERR_INVALID,
           f'SET_META_CONTEXT before STRUCTURED_REPLY: got 0x{replies[-1][0]:x}, expected ERR_INVALID')
    replies = c.option(OPT['INFO'], info_request('no-such-export', []))
    expect([r[0] for r in replies] == [REP_ERR_UNKNOWN], f'INFO for an unknown export: got {replies}')
    replies = c.option(OPT['INFO'], b'\x00\x00\x00\x09abc')  # name length beyond the data
    expect(replies[-1][0] == REP_ERR_INVALID, f'malformed INFO: got 0x{replies[-1][0]:x}, expected ERR_INVALID')
    # The stream is still in step: LIST works.
    replies = c.option(OPT['LIST'])
    names = [body[4:4 + struct.unpack('>I', body[:4])[0]].decode() for t, body in replies if t == REP_SERVER]
    expect(replies[-1][0] == REP_ACK and 'default' in names, f'LIST after errors: got {replies}')
    replies = c.option(OPT['ABORT'])
    expect(replies[0][0] == REP_ACK, f'ABORT: got {replies}')
    expect(c.closed_by_server(), 'server did not close after ABORT')


@check('raw-protocol')
def raw_set_meta_context_info_go_and_commands(ctx):
    c = RawClient(ctx.socket_path)
    expect(c.option(OPT['STRUCTURED_REPLY'])[-1][0] == REP_ACK, 'STRUCTURED_REPLY not acknowledged')
    replies = c.option(OPT['LIST_META_CONTEXT'], meta_context_request('default', []))
    listed = [(struct.unpack('>I', b[:4])[0], b[4:].decode()) for t, b in replies if t == REP_META_CONTEXT]
    expect(replies[-1][0] == REP_ACK and listed == [(0, 'base:allocation')], f'LIST_META_CONTEXT: got {replies}')
    # base: alone and unknown namespaces MUST be ignored by SET.
    replies = c.option(OPT['SET_META_CONTEXT'], meta_context_request(
        'default', ['base:', 'nosuchns:x', 'base:nosuchthing', 'base:allocation']))
    expect(replies[-1][0] == REP_ACK, f'SET_META_CONTEXT: final reply 0x{replies[-1][0]:x}')
    selected = [(struct.unpack('>I', b[:4])[0], b[4:].decode()) for t, b in replies if t == REP_META_CONTEXT]
    expect(len(selected) == 1 and selected[0][1] == 'base:allocation',
           f'SET_META_CONTEXT: selected {selected}, expected base:allocation only')
    context_id = selected[0][0]
    infos = parse_infos('INFO', c.option(OPT['INFO'], info_request('default', [INFO_BLOCK_SIZE, INFO_NAME, 0x7777])))
    size, flags = struct.unpack('>QH', infos[INFO_EXPORT])
    expect(size == EXPORT_BYTES and flags & FLAG_HAS_FLAGS and flags & FLAG_SEND_DF,
           f'INFO_EXPORT: size {size} flags 0x{flags:x}')
    expect(struct.unpack('>III', infos[INFO_BLOCK_SIZE]) == (1, 4096, MAX_PAYLOAD_BYTES),
           f'INFO_BLOCK_SIZE: {infos[INFO_BLOCK_SIZE].hex()}')
    expect(infos[INFO_NAME] == b'default', f'INFO_NAME: {infos[INFO_NAME]!r}')
    expect(0x7777 not in infos, 'an unknown info request was answered')
    go = parse_infos('GO', c.option(OPT['GO'], info_request('default', [INFO_BLOCK_SIZE, INFO_NAME, 0x7777])))
    expect(go == infos, 'GO answered differently from INFO with the same request')

    base = REGION_BASE['raw-protocol']
    data = os.urandom(4096)
    c.request(CMD_WRITE, 1, base, len(data), payload=data)
    expect(c.simple_reply(1) == (0, b''), 'WRITE failed')
    cookie = 0xdeadbeefcafef00d  # 64-bit cookies are echoed unchanged
    c.request(CMD_BLOCK_STATUS, cookie, base, 8192)
    chunks = c.structured_reply(cookie)
    expect(len(chunks) == 1 and chunks[0][0] == REPLY_TYPE_BLOCK_STATUS, f'BLOCK_STATUS: chunks {chunks}')
    got_id, length0, flags0 = struct.unpack('>III', chunks[0][1][:12])
    expect(got_id == context_id, f'BLOCK_STATUS: context id {got_id}, expected {context_id}')
    expect(length0 == 4096 and flags0 == 0, f'BLOCK_STATUS: first extent {length0}/{flags0}, expected 4096 of data')
    c.request(99, 7, 0, 0)  # unknown command
    chunks = c.structured_reply(7)
    expect(chunks[-1][0] == REPLY_TYPE_ERROR and struct.unpack('>I', chunks[-1][1][:4])[0] == errno.EINVAL,
           f'unknown command: expected an EINVAL error chunk, got {chunks}')
    c.request(CMD_READ, 8, base, 8192)
    chunks = c.structured_reply(8)
    got = bytearray(8192)
    for chunk_type, body in chunks:
        offset = struct.unpack('>Q', body[:8])[0] - base
        if chunk_type == REPLY_TYPE_OFFSET_DATA:
            got[offset:offset + len(body) - 8] = body[8:]
        else:
            expect(chunk_type == REPLY_TYPE_OFFSET_HOLE, f'READ: unexpected chunk type {chunk_type}')
    expect_bytes('raw READ after an unknown command', got, data + bytes(4096))
    c.request(CMD_DISC, 9)
    expect(c.closed_by_server(), 'server did not close the connection after DISC')


@check('raw-protocol')
def raw_export_name_and_simple_replies(ctx):
    c = RawClient(ctx.socket_path, client_flags=1)  # FIXED_NEWSTYLE without NO_ZEROES
    c.send_option(OPT['EXPORT_NAME'], b'')  # the empty name is the default export
    size, flags = struct.unpack('>QH', c.recv(10))
    expect(c.recv(124) == bytes(124), 'EXPORT_NAME: the 124 padding bytes are not zero')
    expect(size == EXPORT_BYTES, f'EXPORT_NAME: size {size}')
    expect(flags & FLAG_HAS_FLAGS and not flags & FLAG_SEND_DF, f'EXPORT_NAME: flags 0x{flags:x} (DF needs structured replies)')
    c.request(99, 3)
    expect(c.simple_reply(3)[0] == errno.EINVAL, 'unknown command on a simple-reply connection: expected EINVAL')
    c.request(CMD_READ, 4, 0, 0, flags=1 << 2)  # DF without structured replies
    expect(c.simple_reply(4)[0] == errno.EINVAL, 'DF read on a simple-reply connection: expected EINVAL')
    base = REGION_BASE['raw-protocol'] + 1 * MiB
    c.request(CMD_READ, 5, base, 4096)
    expect(c.simple_reply(5, 4096) == (0, bytes(4096)), 'simple READ of a hole: expected 4096 zero bytes')
    # Over the advertised maximum (64 MiB): EINVAL; a write's payload is consumed, so the stream
    # stays in step and nothing under it was written.
    c.request(CMD_READ, 7, base, MAX_PAYLOAD_BYTES + 1)
    expect(c.simple_reply(7)[0] == errno.EINVAL, 'READ of 64 MiB + 1: expected EINVAL')
    c.request(CMD_WRITE, 8, base, MAX_PAYLOAD_BYTES + 1, payload=b'\xee' * (MAX_PAYLOAD_BYTES + 1))
    expect(c.simple_reply(8)[0] == errno.EINVAL, 'WRITE of 64 MiB + 1: expected EINVAL')
    c.request(CMD_READ, 9, base, 4096)
    expect(c.simple_reply(9, 4096) == (0, bytes(4096)), 'after the refused WRITE: the stream is in step and the hole still reads as zeros')
    c.request(CMD_DISC, 6)
    expect(c.closed_by_server(), 'server did not close the connection after DISC')

    c = RawClient(ctx.socket_path)
    c.send_option(OPT['EXPORT_NAME'], b'no-such-export')
    expect(c.closed_by_server(), 'EXPORT_NAME of an unknown export must end the session')
    c = RawClient(ctx.socket_path, client_flags=0x80000003)
    expect(c.closed_by_server(), 'unknown client flags must make the server drop the connection')


# ---- bad-requests (libnbd, strict mode off) ------------------------------------------------

def bad_handles(ctx):
    """The connections shared by every bad-requests check (so errors accumulate on them)."""
    if 'main' not in ctx.state:
        base = REGION_BASE['bad-requests']
        main = connect(ctx.socket_path, contexts=['base:allocation'], strict=False)
        expect(main.get_strict_mode() == 0, 'could not turn strict mode off')
        other = connect(ctx.socket_path)
        other_data = os.urandom(256 * KiB)
        other.pwrite(other_data, base + 512 * MiB)
        ctx.state.update(main=main, probe=Prober(main, base + 256 * MiB), other=other,
                         other_data=other_data, other_probe=Prober(other, base + 768 * MiB))
    return ctx.state['main'], ctx.state['probe']


def check_other_connection(ctx, label):
    other = ctx.state['other']
    expect_bytes(f'after {label}: the second connection reads its data',
                 other.pread(len(ctx.state['other_data']), REGION_BASE['bad-requests'] + 512 * MiB),
                 ctx.state['other_data'])
    ctx.state['other_probe'](f'{label} (second connection)')


def bad_request(ctx, label, want, action):
    h, probe = bad_handles(ctx)
    expect_errno(label, want, action)
    probe(label)
    check_other_connection(ctx, label)


@check('bad-requests')
def read_past_end(ctx):
    h, _ = bad_handles(ctx)
    bad_request(ctx, 'read crossing the end', errno.EINVAL, lambda: h.pread(4096, EXPORT_BYTES - 100))
    bad_request(ctx, 'read starting at the end', errno.EINVAL, lambda: h.pread(1, EXPORT_BYTES))
    bad_request(ctx, 'read far past the end', errno.EINVAL, lambda: h.pread(512, EXPORT_BYTES * 2))
    expect_bytes('read of the last byte', h.pread(1, EXPORT_BYTES - 1), b'\0')


@check('bad-requests')
def write_past_end(ctx):
    h, _ = bad_handles(ctx)
    tail = os.urandom(100)
    h.pwrite(tail, EXPORT_BYTES - 100)
    bad_request(ctx, 'write crossing the end', errno.ENOSPC, lambda: h.pwrite(bytes(4096), EXPORT_BYTES - 100))
    bad_request(ctx, 'write at the end', errno.ENOSPC, lambda: h.pwrite(b'x', EXPORT_BYTES))
    expect_bytes('the part of a rejected write inside the export', h.pread(100, EXPORT_BYTES - 100), tail)


@check('bad-requests')
def trim_past_end(ctx):
    h, _ = bad_handles(ctx)
    bad_request(ctx, 'trim crossing the end', errno.EINVAL, lambda: h.trim(8192, EXPORT_BYTES - 4096))


@check('bad-requests')
def zero_past_end(ctx):
    h, _ = bad_handles(ctx)
    tail = os.urandom(4096)
    h.pwrite(tail, EXPORT_BYTES - 4096)
    bad_request(ctx, 'write-zeroes crossing the end', errno.ENOSPC, lambda: h.zero(8192, EXPORT_BYTES - 4096))
    expect_bytes('the part of a rejected write-zeroes inside the export', h.pread(4096, EXPORT_BYTES - 4096), tail)


@check('bad-requests')
def unknown_and_invalid_flags(ctx):
    h, _ = bad_handles(ctx)
    base = REGION_BASE['bad-requests']
    before = os.urandom(4096)
    h.pwrite(before, base)
    bad_request(ctx, 'read with unknown flag 1<<7', errno.EINVAL, lambda: h.pread(512, base, flags=1 << 7))
    bad_request(ctx, 'read with REQ_ONE', errno.EINVAL, lambda: h.pread(512, base, flags=nbd.CMD_FLAG_REQ_ONE))
    bad_request(ctx, 'write with NO_HOLE', errno.EINVAL, lambda: h.pwrite(bytes(4096), base, flags=nbd.CMD_FLAG_NO_HOLE))
    bad_request(ctx, 'trim with FAST_ZERO', errno.EINVAL, lambda: h.trim(4096, base, flags=nbd.CMD_FLAG_FAST_ZERO))
    expect_bytes('data under rejected write/trim', h.pread(4096, base), before)
    # FUA is valid on every command once advertised.
    h.pwrite(before, base, flags=nbd.CMD_FLAG_FUA)
    h.flush(flags=nbd.CMD_FLAG_FUA)
    h.cache(4096, base)


@check('bad-requests')
def df_read_on_simple_reply_connection(ctx):
    h = connect(ctx.socket_path, structured=False, strict=False)
    expect(not h.get_structured_replies_negotiated() and not h.can_df(), 'simple-reply connection offers DF')
    probe = Prober(h, REGION_BASE['bad-requests'] + 900 * MiB)
    expect_errno('DF read without structured replies', errno.EINVAL, lambda: h.pread(512, 0, flags=nbd.CMD_FLAG_DF))
    probe('DF read without structured replies')
    h.shutdown()


@check('bad-requests')
def zero_length_requests(ctx):
    h, probe = bad_handles(ctx)
    base = REGION_BASE['bad-requests'] + 4 * MiB
    results = {}
    for label, action in (('read', lambda: h.pread(0, base)), ('write', lambda: h.pwrite(b'', base)),
                          ('trim', lambda: h.trim(0, base)), ('zero', lambda: h.zero(0, base)),
                          ('block status', lambda: h.block_status(0, base, lambda *a: 0)),
                          ('read at the end', lambda: h.pread(0, EXPORT_BYTES))):
        results[label] = expect_ok_or_errno(f'zero-length {label}', (errno.EINVAL,), action)
        probe(f'zero-length {label}')
    print(f'    zero-length requests: {results}')


@check('bad-requests')
def unaligned_requests_round_trip(ctx):
    h, probe = bad_handles(ctx)
    base = REGION_BASE['bad-requests'] + 8 * MiB
    size = 64 * KiB
    model = bytearray(os.urandom(size))
    h.pwrite(bytes(model), base)
    rng = random.Random(20240601)
    writes = [(1, 1), (4097, 4095), (4090, 10000), (8191, 3), (size - 5, 5), (12345, 1), (0, 4097)]
    writes += [(rng.randrange(size - 9000), rng.randrange(1, 9000)) for _ in range(20)]
    for offset, length in writes:
        data = os.urandom(length)
        h.pwrite(data, base + offset)
        model[offset:offset + length] = data
        # Re-read a window around the write: neighbours must be untouched (read-modify-write).
        lo, hi = max(0, offset - 4099), min(size, offset + length + 4099)
        expect_bytes(f'unaligned write of {length} at +{offset}: window', h.pread(hi - lo, base + lo), bytes(model[lo:hi]))
    for offset, length in [(4094, 5), (1, 8190), (size - 1, 1)] + [(rng.randrange(size - 5000), rng.randrange(1, 5000)) for _ in range(20)]:
        expect_bytes(f'unaligned read of {length} at +{offset}', h.pread(length, base + offset), bytes(model[offset:offset + length]))
    h.zero(5000, base + 4095)
    model[4095:9095] = bytes(5000)
    expect_bytes('unaligned write-zeroes', h.pread(size, base), bytes(model))
    # A few bytes into a hole, away from anything written.
    hole = base + 1 * MiB
    h.pwrite(b'\x01\x02\x03', hole + 4094)
    expect_bytes('3 bytes written into a hole', h.pread(12 * KiB, hole), bytes(4094) + b'\x01\x02\x03' + bytes(12 * KiB - 4097))
    probe('unaligned requests')


@check('bad-requests')
def oversized_requests(ctx):
    h, probe = bad_handles(ctx)
    base = REGION_BASE['bad-requests'] + 64 * MiB
    # Requests over the maximum are refused in raw_export_name_and_simple_replies: libnbd itself
    # will not send more than 64 MiB.
    # 40 MiB: what nbd-tester-client's integrityhuge mode sends (more than the 32 MiB a client
    # that negotiated nothing may assume); nbdkit and nbd-server accept it.
    huge = os.urandom(40 * MiB)
    h.pwrite(huge, base)
    expect(hashlib.sha256(h.pread(40 * MiB, base)).digest() == hashlib.sha256(huge).digest(), 'a 40 MiB write/read did not round-trip')
    big = os.urandom(MAX_PAYLOAD_BYTES)
    h.pwrite(big, base)
    got = h.pread(MAX_PAYLOAD_BYTES, base)
    expect(hashlib.sha256(got).digest() == hashlib.sha256(big).digest(), 'a 64 MiB write/read (the maximum) did not round-trip')
    probe('maximum-size requests')


@check('bad-requests')
def block_status_without_meta_context(ctx):
    h = connect(ctx.socket_path, strict=False)
    expect(h.get_structured_replies_negotiated() and not h.can_meta_context('base:allocation'),
           'connection unexpectedly has a meta context')
    probe = Prober(h, REGION_BASE['bad-requests'] + 920 * MiB)
    expect_errno('block status without a meta context', errno.EINVAL, lambda: h.block_status(4096, 0, lambda *a: 0))
    probe('block status without a meta context')
    h.shutdown()


def status_flags(h, length, offset):
    """base:allocation flags over [offset, offset+length), as a list of (length, flags)."""
    pairs = []

    def on_extents(context, _offset, entries, _error):
        pairs.extend(zip(entries[0::2], entries[1::2]))
        return 0

    h.block_status(length, offset, on_extents)
    return pairs


@check('bad-requests')
def fast_zero_with_no_hole(ctx):
    h, probe = bad_handles(ctx)
    base = REGION_BASE['bad-requests'] + 128 * MiB
    data = os.urandom(64 * KiB)
    h.pwrite(data, base)
    # FAST_ZERO: the server either zeroes (fast) or fails at once with ENOTSUP and changes nothing.
    outcome = expect_ok_or_errno('FAST_ZERO|NO_HOLE write-zeroes', (errno.ENOTSUP,),
                                 lambda: h.zero(16 * KiB, base, flags=nbd.CMD_FLAG_FAST_ZERO | nbd.CMD_FLAG_NO_HOLE))
    print(f'    FAST_ZERO|NO_HOLE: {outcome}')
    probe('FAST_ZERO|NO_HOLE write-zeroes')
    check_other_connection(ctx, 'FAST_ZERO|NO_HOLE write-zeroes')
    model = bytearray(data)
    if outcome == 'ok':
        model[0:16 * KiB] = bytes(16 * KiB)
    expect_bytes(f'after FAST_ZERO|NO_HOLE ({outcome})', h.pread(len(data), base), bytes(model))
    h.zero(16 * KiB, base + 16 * KiB, flags=nbd.CMD_FLAG_FAST_ZERO)  # may punch a hole: fast, must succeed
    h.zero(16 * KiB, base + 40 * KiB, flags=nbd.CMD_FLAG_NO_HOLE)
    model[16 * KiB:32 * KiB] = bytes(16 * KiB)
    model[40 * KiB:56 * KiB] = bytes(16 * KiB)
    expect_bytes('after FAST_ZERO and NO_HOLE zeroing', h.pread(len(data), base), bytes(model))
    # NO_HOLE: the range stays provisioned, so base:allocation must not call it a hole.
    for length, flags in status_flags(h, 16 * KiB, base + 40 * KiB):
        expect(not flags & nbd.STATE_HOLE, f'NO_HOLE write-zeroes left a hole (flags {flags})')


@check('bad-requests')
def second_connection_unaffected(ctx):
    bad_handles(ctx)
    check_other_connection(ctx, 'all bad requests')
    ctx.state['main'].shutdown()
    ctx.state['other'].shutdown()


# ---- multi-conn ----------------------------------------------------------------------------

@check('multi-conn')
def write_flush_read_across_connections(ctx):
    handles = [connect(ctx.socket_path) for _ in range(3)]
    for h in handles:
        expect(h.can_multi_conn(), 'CAN_MULTI_CONN not advertised')
    h1, h2, h3 = handles
    base = REGION_BASE['multi-conn']
    for round_ in range(8):
        offset = base + round_ * 1 * MiB + 512
        expect_bytes(f'round {round_}: read before the write', h3.pread(64 * KiB, offset), bytes(64 * KiB))
        data = os.urandom(64 * KiB)
        h1.pwrite(data, offset)  # returns once the server replied
        h2.flush()
        expect_bytes(f'round {round_}: write on 1, flush on 2, read on 3', h3.pread(len(data), offset), data)
        newer = os.urandom(64 * KiB)
        h2.pwrite(newer, offset, flags=nbd.CMD_FLAG_FUA)
        expect_bytes(f'round {round_}: FUA write on 2, read on 1', h1.pread(len(newer), offset), newer)
        h3.zero(len(newer), offset)
        h1.flush()
        expect_bytes(f'round {round_}: zero on 3, flush on 1, read on 2', h2.pread(len(newer), offset), bytes(len(newer)))
    for h in handles:
        h.shutdown()


# ---- simple-replies (as the Linux kernel client) -------------------------------------------

@check('simple-replies')
def simple_reply_reads_and_writes(ctx):
    h = connect(ctx.socket_path, structured=False)
    expect(not h.get_structured_replies_negotiated(), 'structured replies were negotiated anyway')
    expect(not h.can_df() and not h.can_meta_context('base:allocation'), 'DF or a meta context offered without structured replies')
    expect(h.can_flush() and h.can_fua() and h.can_trim() and h.can_zero(), 'FLUSH/FUA/TRIM/ZERO not advertised')
    base = REGION_BASE['simple-replies']
    island = os.urandom(4096)
    h.pwrite(island, base + 1 * MiB)
    h.pwrite(b'pstorage', base + 1536 * KiB + 3)
    expected = bytearray(3 * MiB)
    expected[1 * MiB:1 * MiB + 4096] = island
    expected[1536 * KiB + 3:1536 * KiB + 11] = b'pstorage'
    expect_bytes('simple read covering holes', h.pread(len(expected), base), bytes(expected))
    expect_bytes('simple read of a hole only', h.pread(64 * KiB, base + 2 * MiB), bytes(64 * KiB))

    # Random reads and writes against a model, including unaligned ones.
    rng = random.Random(7)
    size = 4 * MiB
    start = base + 8 * MiB
    model = bytearray(size)
    for step in range(60):
        offset = rng.randrange(size - 1)
        length = rng.randrange(1, min(256 * KiB, size - offset))
        kind = rng.choice(['write', 'write', 'read', 'zero', 'fua'])
        if kind in ('write', 'fua'):
            data = os.urandom(length)
            h.pwrite(data, start + offset, flags=nbd.CMD_FLAG_FUA if kind == 'fua' else 0)
            model[offset:offset + length] = data
        elif kind == 'zero':
            h.zero(length, start + offset)
            model[offset:offset + length] = bytes(length)
        else:
            expect_bytes(f'step {step}: simple read of {length} at +{offset}', h.pread(length, start + offset), bytes(model[offset:offset + length]))
    h.flush()
    expect_bytes('simple read of the whole model', h.pread(size, start), bytes(model))

    # Many requests in flight at once, as the kernel sends them; replies may come out of order.
    chunk = 128 * KiB
    payloads = [os.urandom(chunk) for _ in range(32)]
    cookies = [h.aio_pwrite(nbd.Buffer.from_bytearray(bytearray(p)), start + size + i * chunk) for i, p in enumerate(payloads)]
    while h.aio_in_flight() > 0:
        h.poll(-1)
    expect(all(h.aio_command_completed(c) for c in cookies), 'an in-flight write did not complete')
    buffers = [nbd.Buffer(chunk) for _ in payloads]
    cookies = [h.aio_pread(b, start + size + i * chunk) for i, b in enumerate(buffers)]
    while h.aio_in_flight() > 0:
        h.poll(-1)
    expect(all(h.aio_command_completed(c) for c in cookies), 'an in-flight read did not complete')
    for i, (buffer, payload) in enumerate(zip(buffers, payloads)):
        expect_bytes(f'in-flight read {i}', buffer.to_bytearray(), payload)
    h.trim(1 * MiB, start)
    h.shutdown()


# ---- Runner --------------------------------------------------------------------------------

def main(argv):
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    socket_path, groups = argv[1], argv[2:] or GROUPS
    unknown = [g for g in groups if g not in GROUPS]
    if unknown:
        print(f'unknown group(s) {unknown}; choose from {GROUPS}', file=sys.stderr)
        return 2
    ctx = Context(socket_path)
    failures = []
    ran = 0
    for group, name, fn in CHECKS:
        if group not in groups:
            continue
        ran += 1
        try:
            fn(ctx)
            print(f'PASS {group}/{name}', flush=True)
        except CheckFailed as error:
            failures.append(f'{group}/{name}: {error}')
            print(f'FAIL {group}/{name}: {error}', flush=True)
        except Exception as error:  # an unexpected exception is a failure too, with its trace
            failures.append(f'{group}/{name}: {type(error).__name__}: {error}')
            print(f'FAIL {group}/{name}: unexpected {type(error).__name__}: {error}', flush=True)
            traceback.print_exc(file=sys.stdout)
    print(f'\nSUMMARY: {ran - len(failures)} of {ran} checks passed ({", ".join(groups)})')
    for failure in failures:
        print(f'  FAILED {failure}')
    return 1 if failures or ran == 0 else 0


if __name__ == '__main__':
    sys.exit(main(sys.argv))
