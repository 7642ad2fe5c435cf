#!/usr/bin/python3
"""Bad inputs for the soak: sessions of malformed NBD traffic against a running server.

Usage: soak_bad_inputs.py SOCKET BASE SESSIONS SEED

Each session opens its own connection to the export `default` over the Unix socket and does one
of: garbage instead of a handshake; a handshake option longer than any the server takes; garbage
after a good handshake; or a run of well-formed but invalid requests (unknown command, unknown flags,
ranges past the end, an oversized length, a length of zero, a misaligned write past the end with
its payload, a request with a bad magic). Requests the protocol lets the server answer must be
answered with an error (and the connection must go on: a 4 KiB read of BASE follows each); a bad
magic or garbage must at most close this connection. Writes only ever go past the end of the
export (refused) or into the 1 MiB at BASE, which belongs to this script. After every session a
fresh connection reads BASE back: the server must be alive and the data intact.

Prints one JSON line: sessions, requests (bad inputs sent), errors_answered, closed (connections
the server closed, as allowed), failures (a list of what went wrong).
"""
import json
import os
import random
import socket
import struct
import sys

OPTS_MAGIC = 0x49484156454F5054  # IHAVEOPT
REPLY_MAGIC = 0x3E889045565A9
REQUEST_MAGIC = 0x25609513
SIMPLE_REPLY_MAGIC = 0x67446698
OPT_GO = 7
REP_ACK = 1
REP_INFO = 3
INFO_EXPORT = 0
CMD_READ, CMD_WRITE = 0, 1
MiB = 1 << 20

socket_path, base, sessions, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
rng = random.Random(seed)
stats = {'sessions': 0, 'requests': 0, 'errors_answered': 0, 'closed': 0, 'failures': []}


class Closed(Exception):
    pass


class Client:
    def __init__(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(30)
        self.sock.connect(socket_path)
        self.size = None
        self.cookie = 0

    def recv(self, n):
        data = b''
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                raise Closed()
            data += chunk
        return data

    def greeting(self):
        magic, opts, flags = struct.unpack('>QQH', self.recv(18))
        if magic != 0x4E42444D41474943 or opts != OPTS_MAGIC:
            raise AssertionError('bad greeting')
        self.sock.sendall(struct.pack('>I', 3))  # FIXED_NEWSTYLE | NO_ZEROES

    def go(self):
        self.greeting()
        name = b'default'
        data = struct.pack('>I', len(name)) + name + struct.pack('>H', 0)
        self.sock.sendall(struct.pack('>QII', OPTS_MAGIC, OPT_GO, len(data)) + data)
        while True:
            magic, option, kind, length = struct.unpack('>QIII', self.recv(20))
            payload = self.recv(length)
            if magic != REPLY_MAGIC:
                raise AssertionError('bad option reply magic')
            if kind == REP_INFO and struct.unpack('>H', payload[:2])[0] == INFO_EXPORT:
                self.size = struct.unpack('>Q', payload[2:10])[0]
            elif kind == REP_ACK:
                return
            elif kind & 0x80000000:
                raise AssertionError(f'GO refused: {kind:#x}')

    def request(self, command, offset, length, flags=0, payload=b'', magic=REQUEST_MAGIC):
        self.cookie += 1
        self.sock.sendall(struct.pack('>IHHQQI', magic, flags, command, self.cookie, offset, length) + payload)
        stats['requests'] += 1
        return self.cookie

    def reply(self, cookie, read_bytes=0):
        magic, error, got = struct.unpack('>IIQ', self.recv(16))
        if magic != SIMPLE_REPLY_MAGIC or got != cookie:
            raise AssertionError(f'reply magic {magic:#x} cookie {got} (wanted {cookie})')
        data = self.recv(read_bytes) if error == 0 and read_bytes else b''
        return error, data

    def close(self):
        self.sock.close()


def expect_error(client, label, command, offset, length, flags=0, payload=b''):
    cookie = client.request(command, offset, length, flags, payload)
    error, _ = client.reply(cookie, length if command == CMD_READ else 0)
    if error == 0:
        stats['failures'].append(f'{label}: answered without an error')
    else:
        stats['errors_answered'] += 1


def still_serving(client, label):
    cookie = client.request(CMD_READ, base, 4096)
    error, data = client.reply(cookie, 4096)
    if error != 0 or len(data) != 4096:
        stats['failures'].append(f'{label}: the read after it failed (error {error})')


def session_garbage_handshake():
    client = Client()
    try:
        client.recv(18)
        client.sock.sendall(os.urandom(rng.randint(1, 300)))
        client.sock.shutdown(socket.SHUT_WR)
        while client.sock.recv(4096):
            pass
    except (Closed, OSError):
        pass
    stats['requests'] += 1
    stats['closed'] += 1
    client.close()


def session_huge_option():
    """An option longer than the server takes: its data is skipped and answered with an error
    (EXPORT_NAME, which cannot carry an error, closes); a client that claims 2 GiB and leaves must
    cost the server nothing."""
    client = Client()
    client.greeting()
    option = rng.choice([OPT_GO, 1, 99])
    if rng.random() < 0.3:
        client.sock.sendall(struct.pack('>QII', OPTS_MAGIC, option, 0x7FFFFFFF) + os.urandom(65536))
        stats['requests'] += 1
        client.close()
        return
    length = rng.choice([100_000, 1 << 20])
    client.sock.sendall(struct.pack('>QII', OPTS_MAGIC, option, length) + os.urandom(length))
    stats['requests'] += 1
    try:
        magic, _, kind, reply_length = struct.unpack('>QIII', client.recv(20))
        client.recv(reply_length)
        if magic != REPLY_MAGIC or not kind & 0x80000000:
            stats['failures'].append(f'oversized option {option}: reply {kind:#x} is not an error')
        else:
            stats['errors_answered'] += 1
    except Closed:
        stats['closed'] += 1
        if option != 1:
            stats['failures'].append(f'oversized option {option}: closed instead of an error reply')
    client.close()


def session_invalid_requests():
    client = Client()
    client.go()
    size = client.size
    cases = [
        ('unknown command', lambda: expect_error(client, 'unknown command', rng.choice([13, 99, 0x7FFF]), base, 4096)),
        ('unknown flag', lambda: expect_error(client, 'unknown flag', CMD_READ, base, 4096, flags=0x8000)),
        ('read past the end', lambda: expect_error(client, 'read past the end', CMD_READ, size - 2048, 4096)),
        ('read at a huge offset', lambda: expect_error(client, 'read at a huge offset', CMD_READ, (1 << 63) - 4096, 4096)),
        ('oversized read', lambda: expect_error(client, 'oversized read', CMD_READ, 0, 64 * MiB + 4096)),
        ('write past the end', lambda: expect_error(client, 'write past the end', CMD_WRITE, size - 1000, 3000, payload=os.urandom(3000))),
        ('trim past the end', lambda: expect_error(client, 'trim past the end', 4, size, 4096)),
    ]
    for _ in range(rng.randint(5, 20)):
        label, case = rng.choice(cases)
        case()
        still_serving(client, label)
    if rng.random() < 0.5:
        # A bad magic: the server cannot find the next request boundary, so it may only close.
        client.request(CMD_READ, base, 4096, magic=0xDEADBEEF)
        try:
            client.sock.settimeout(10)
            client.recv(16)
            stats['failures'].append('bad magic: answered instead of closing')
        except Closed:
            stats['closed'] += 1
    client.close()


def session_garbage_after_go():
    client = Client()
    client.go()
    client.sock.sendall(os.urandom(rng.randint(1, 4096)))
    stats['requests'] += 1
    try:
        client.sock.settimeout(10)
        while client.sock.recv(65536):
            pass
        stats['closed'] += 1
    except socket.timeout:
        pass  # garbage that parsed as a request still waiting for its payload
    except OSError:
        stats['closed'] += 1
    client.close()


def check_alive_and_intact(expected):
    client = Client()
    client.go()
    cookie = client.request(CMD_READ, base, MiB)
    stats['requests'] -= 1  # not a bad input
    error, data = client.reply(cookie, MiB)
    client.close()
    if error != 0 or data != expected:
        stats['failures'].append(f'after session {stats["sessions"]}: the script\'s own 1 MiB at BASE read back wrong (error {error})')


# The script's own data, written once and read back after every session.
setup = Client()
setup.go()
own = random.Random(seed).randbytes(MiB)
cookie = setup.request(CMD_WRITE, base, MiB, payload=own)
stats['requests'] -= 1
if setup.reply(cookie)[0] != 0:
    stats['failures'].append('writing the script\'s own 1 MiB failed')
setup.close()

kinds = [session_garbage_handshake, session_huge_option, session_invalid_requests, session_garbage_after_go]
for _ in range(sessions):
    kind = rng.choice(kinds)
    try:
        kind()
    except Exception as error:  # a hang, an unexpected close, a protocol violation
        stats['failures'].append(f'{kind.__name__}: {type(error).__name__}: {error}')
    stats['sessions'] += 1
    try:
        check_alive_and_intact(own)
    except Exception as error:
        stats['failures'].append(f'after {kind.__name__}: the server did not answer a fresh connection: {error}')
        break
print(json.dumps(stats))
