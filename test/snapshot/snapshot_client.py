#!/usr/bin/python3
"""libnbd probes of snapshot exports (test/snapshot/snapshot-nbd.test.ts).

Usage: /usr/bin/python3 snapshot_client.py MODE URI [ARGS]

Modes (each prints one JSON object on stdout):
  readonly URI          the export's read-only flag, and the errno of a 4 KiB write twice: with
                        libnbd's strict mode (the client refuses it itself) and with strict mode
                        off, so that the request reaches the server and its reply is what counts;
                        then reads 4 KiB to show the connection is still in step.
  changed URI CONTEXT   negotiates the meta context CONTEXT only, walks BLOCK_STATUS over the
                        whole export and prints the byte ranges whose status has bit 0 set
                        (merged), plus the contexts the server agreed to.
"""
import errno
import json
import sys

import nbd


def errno_name(error):
    return errno.errorcode.get(error.errno, str(error.errno)) if error.errno else None


def readonly(uri):
    h = nbd.NBD()
    h.connect_uri(uri)
    out = {'is_read_only': bool(h.is_read_only()), 'size': h.get_size()}
    try:
        h.pwrite(b'\x5a' * 4096, 0)
        out['strict_errno'] = None
    except nbd.Error as error:
        out['strict_errno'] = errno_name(error)
    h.set_strict_mode(0)
    try:
        h.pwrite(b'\x5a' * 4096, 0)
        out['server_errno'] = None
    except nbd.Error as error:
        out['server_errno'] = errno_name(error)
    out['read_after'] = len(h.pread(4096, 0))
    h.shutdown()
    print(json.dumps(out))


def changed(uri, context):
    h = nbd.NBD()
    h.add_meta_context(context)
    h.connect_uri(uri)
    agreed = bool(h.can_meta_context(context))
    size = h.get_size()
    ranges = []
    offset = 0
    while offset < size:
        entries = []

        def callback(metacontext, at, extents, err):
            if metacontext == context:
                entries.extend(extents)
            return 0

        h.block_status(min(size - offset, 1 << 30), offset, callback)
        if not entries:
            raise SystemExit('BLOCK_STATUS returned no extent for %s at %d' % (context, offset))
        for i in range(0, len(entries), 2):
            length, flags = entries[i], entries[i + 1]
            length = min(length, size - offset)
            if flags & 1:
                if ranges and ranges[-1][0] + ranges[-1][1] == offset:
                    ranges[-1][1] += length
                else:
                    ranges.append([offset, length])
            offset += length
            if offset >= size:
                break
    h.shutdown()
    print(json.dumps({'agreed': agreed, 'ranges': [{'offsetBytes': o, 'lengthBytes': n} for o, n in ranges]}))


def main():
    mode, uri = sys.argv[1], sys.argv[2]
    if mode == 'readonly':
        readonly(uri)
    elif mode == 'changed':
        changed(uri, sys.argv[3])
    else:
        raise SystemExit('unknown mode ' + mode)


if __name__ == '__main__':
    main()
