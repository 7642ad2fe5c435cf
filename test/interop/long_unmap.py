#!/usr/bin/env python3
"""Latency of other clients while one connection TRIMs (or zeroes) a large range of unique data,
or writes it in 64 MiB requests.

Usage: long_unmap.py SOCKET MIB (trim|zero|write64)
trim, zero: fills MIB MiB with unique data, flushes, then unmaps it all in one request on one
connection while a second connection reads 4 KiB outside the range in a loop. write64: writes MIB
MiB of unique data in 64 MiB requests while the second connection reads. Prints one JSON line: how
long the long requests took, how many reads completed meanwhile, their p50/p99/max latency in
ms, whether the range reads back as expected (zeros, or what was written) and whether the data
beside it is intact afterwards.
"""
import json
import os
import sys
import threading
import time

import nbd

MiB = 1 << 20
socket_path, mib, kind = sys.argv[1], int(sys.argv[2]), sys.argv[3]
uri = f'nbd+unix:///default?socket={socket_path}'
size = mib * MiB

writer = nbd.NBD()
writer.connect_uri(uri)
if kind != 'write64':
    for offset in range(0, size, 4 * MiB):
        writer.pwrite(os.urandom(4 * MiB), offset)
beside = os.urandom(64 * 1024)
writer.pwrite(beside, size + MiB)
writer.flush()

reader = nbd.NBD()
reader.connect_uri(uri)
reader.pread(4096, size + MiB)  # warm
latencies = []
result = {}


written = {}


def unmap():
    started = time.perf_counter()
    if kind == 'trim':
        writer.trim(size, 0)
    elif kind == 'zero':
        writer.zero(size, 0, nbd.CMD_FLAG_NO_HOLE)
    else:
        for offset in range(0, size, 64 * MiB):
            written[offset] = os.urandom(64 * MiB)
            writer.pwrite(written[offset], offset)
    result['unmap_s'] = time.perf_counter() - started


thread = threading.Thread(target=unmap)
thread.start()
while thread.is_alive():
    started = time.perf_counter()
    reader.pread(4096, size + MiB)
    latencies.append((time.perf_counter() - started) * 1000)
thread.join()
latencies.sort()
result.update(
    reads=len(latencies),
    p50_ms=latencies[len(latencies) // 2] if latencies else None,
    p99_ms=latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] if latencies else None,
    max_ms=latencies[-1] if latencies else None,
    over_120_ms=sum(1 for latency in latencies if latency > 120),
    zeros=all(writer.pread(4 * MiB, offset) == (written[offset][:4 * MiB] if written else bytes(4 * MiB)) for offset in range(0, size, 64 * MiB)),
    beside_intact=reader.pread(len(beside), size + MiB) == beside,
)
print(json.dumps(result))
