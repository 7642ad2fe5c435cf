#!/usr/bin/python3
"""NBD client steps for the host-full test (host-full.test.ts), one connection per call.

Usage: /usr/bin/python3 host_full_client.py URI COMMAND ARGS...

Data is written in 1 MiB chunks; chunk i of stream SEED holds random.Random(SEED * 1000003 + i)
bytes (incompressible and unique, so every chunk costs its size on the host file system and none
deduplicates), so any chunk can be checked later from its seed and index alone.

Commands (each prints one JSON line):
  write FIRST_MIB COUNT SEED     write chunks FIRST..FIRST+COUNT-1 (chunk k at FIRST_MIB + k MiB)
                                 until one fails; then FLUSH at once.
                                 {"acked": N, "writeError": errno name or null, "flushError": ...}
  try-write MIB SEED             one chunk: {"error": errno name or null}
  flush                          {"error": errno name or null}
  trim FIRST_MIB COUNT_MIB       {"error": errno name or null}
  verify FIRST_MIB COUNT SEED [zeros|either]
                                 compare chunks; with "zeros" expect zeros, with "either" accept,
                                 per 4 KiB block, the chunk's data or zeros (a write never flushed
                                 before a crash). {"mismatches": [...at most 10 descriptions...]}
Exit code 0 unless the client itself failed.
"""
import json
import random
import sys

import nbd

MiB = 1 << 20
BLOCK = 4096


def chunk(seed, index):
    return random.Random(seed * 1000003 + index).randbytes(MiB)


def errno_name(error):
    return error.errno if error.errno is not None else error.string


def say(**fields):
    print(json.dumps(fields), flush=True)


def main():
    uri, command, args = sys.argv[1], sys.argv[2], sys.argv[3:]
    h = nbd.NBD()
    h.connect_uri(uri)
    if command == 'write':
        first, count, seed = int(args[0]), int(args[1]), int(args[2])
        acked, write_error, flush_error = 0, None, None
        for k in range(count):
            try:
                h.pwrite(chunk(seed, k), (first + k) * MiB)
            except nbd.Error as error:
                write_error = errno_name(error)
                break
            acked += 1
        try:
            h.flush()
        except nbd.Error as error:
            flush_error = errno_name(error)
        say(acked=acked, writeError=write_error, flushError=flush_error)
    elif command == 'try-write':
        try:
            h.pwrite(chunk(int(args[1]), 0), int(args[0]) * MiB)
            say(error=None)
        except nbd.Error as error:
            say(error=errno_name(error))
    elif command == 'flush':
        try:
            h.flush()
            say(error=None)
        except nbd.Error as error:
            say(error=errno_name(error))
    elif command == 'trim':
        try:
            h.trim(int(args[1]) * MiB, int(args[0]) * MiB)
            say(error=None)
        except nbd.Error as error:
            say(error=errno_name(error))
    elif command == 'verify':
        first, count, seed = int(args[0]), int(args[1]), int(args[2])
        mode = args[3] if len(args) > 3 else 'data'
        zero = bytes(BLOCK)
        mismatches = []
        for k in range(count):
            got = h.pread(MiB, (first + k) * MiB)
            want = chunk(seed, k)
            for at in range(0, MiB, BLOCK):
                block = got[at:at + BLOCK]
                if mode == 'zeros':
                    ok = block == zero
                elif mode == 'either':
                    ok = block == zero or block == want[at:at + BLOCK]
                else:
                    ok = block == want[at:at + BLOCK]
                if not ok and len(mismatches) < 10:
                    mismatches.append('chunk %d (MiB %d) block %d: %s' % (k, first + k, at // BLOCK, 'zeros' if block == zero else 'other bytes'))
        say(mismatches=mismatches)
    else:
        raise SystemExit('unknown command ' + command)
    h.shutdown()


if __name__ == '__main__':
    main()
