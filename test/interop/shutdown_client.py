#!/usr/bin/python3
"""NBD clients that stay connected while pstorage is shut down (graceful shutdown test).

Usage: /usr/bin/python3 shutdown_client.py MODE URI

Modes (each prints one JSON line when ready, and one JSON line with its result at the end):
  idle         write and flush known data, print {"ready", "sha256"}, wait for a line on stdin,
               then try one more read and report whether the server had closed the connection;
  negotiating  stay in the handshake (opt mode, after opt_list), wait for a line on stdin, then
               try opt_info and report the outcome;
  busy         write 64 KiB chunks back to back until the server goes away; report how many were
               acknowledged ({"acked": N});
  verify N     after a restart: check the idle client's data and the busy client's first N chunks.
Exit code 0 unless the client itself failed (verify: any mismatch is exit 1).
"""
import hashlib
import json
import sys

import nbd

KiB = 1024
MiB = 1024 * KiB
IDLE_OFFSET = 0
IDLE_BYTES = 2 * MiB
BUSY_OFFSET = 1024 * MiB
BUSY_CHUNK_BYTES = 64 * KiB
BUSY_READY_AFTER = 16


def idle_data():
    return b''.join(hashlib.sha256(b'idle %d' % i).digest() for i in range(IDLE_BYTES // 32))


def busy_chunk(index):
    return hashlib.sha256(b'busy %d' % index).digest() * (BUSY_CHUNK_BYTES // 32)


def say(**fields):
    print(json.dumps(fields), flush=True)


def connect(uri, opt_mode=False):
    h = nbd.NBD()
    h.set_opt_mode(opt_mode)
    h.connect_uri(uri)
    return h


def idle(uri):
    h = connect(uri)
    data = idle_data()
    h.pwrite(data[:MiB], IDLE_OFFSET)
    h.pwrite(data[MiB:], IDLE_OFFSET + MiB, nbd.CMD_FLAG_FUA)
    h.flush()
    say(ready=True, sha256=hashlib.sha256(data).hexdigest())
    sys.stdin.readline()
    try:
        h.pread(4096, IDLE_OFFSET)
        say(after='read succeeded')
    except nbd.Error as error:
        say(after='error', errnum=error.errnum, message=error.string)


def negotiating(uri):
    h = connect(uri, opt_mode=True)
    exports = []
    h.opt_list(lambda name, description: exports.append(name) or 0)
    say(ready=True, exports=exports)
    sys.stdin.readline()
    try:
        h.opt_info()
        say(after='opt_info succeeded')
    except nbd.Error as error:
        say(after='error', errnum=error.errnum, message=error.string)


def busy(uri):
    h = connect(uri)
    acked = 0
    try:
        while True:
            h.pwrite(busy_chunk(acked), BUSY_OFFSET + acked * BUSY_CHUNK_BYTES)
            acked += 1
            if acked == BUSY_READY_AFTER:
                say(ready=True)
    except nbd.Error as error:
        if acked < BUSY_READY_AFTER:
            raise
        say(acked=acked, errnum=error.errnum, message=error.string)


def verify(uri, chunks):
    h = connect(uri)
    problems = []
    if bytes(h.pread(IDLE_BYTES, IDLE_OFFSET)) != idle_data():
        problems.append('the idle client\'s flushed data is not there')
    for index in range(chunks):
        if bytes(h.pread(BUSY_CHUNK_BYTES, BUSY_OFFSET + index * BUSY_CHUNK_BYTES)) != busy_chunk(index):
            problems.append(f'acknowledged busy chunk {index} of {chunks} is not there')
            break
    h.shutdown()
    say(ok=not problems, problems=problems)
    return 1 if problems else 0


def main(argv):
    if len(argv) < 3 or argv[1] not in ('idle', 'negotiating', 'busy', 'verify'):
        print(__doc__, file=sys.stderr)
        return 2
    mode, uri = argv[1], argv[2]
    if mode == 'verify':
        return verify(uri, int(argv[3]))
    {'idle': idle, 'negotiating': negotiating, 'busy': busy}[mode](uri)
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv))
