#!/usr/bin/python3
"""Writes one 4 KiB block to many offsets over several NBD connections, all requests in flight.

Usage: concurrent_writes.py URI CONNECTIONS PER_CONNECTION SEED BASE_OFFSET STRIDE

Every connection is opened first; then, released together by a barrier, one thread per connection
issues all its writes with aio_pwrite before waiting for any reply, so the server holds
CONNECTIONS x PER_CONNECTION writes of the same block at once. Then one FLUSH (the export is
multi-conn, so it covers every connection), and every copy is read back and compared.
Prints one JSON line: {"writes": N, "maxInFlight": M, "mismatches": K}; exits 1 on any error.
Runs under /usr/bin/python3 (python3-libnbd).
"""
import json
import random
import sys
import threading

import nbd


def main():
    uri, connections, per_connection, seed, base, stride = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], int(sys.argv[5]), int(sys.argv[6])
    block = random.Random(seed).randbytes(4096)
    handles = []
    for _ in range(connections):
        handle = nbd.NBD()
        handle.connect_uri(uri)
        handles.append(handle)
    barrier = threading.Barrier(connections)
    in_flight = [0] * connections
    errors = []

    def offset_of(k, i):
        return base + (k * per_connection + i) * stride

    def worker(k):
        try:
            handle = handles[k]
            buffer = nbd.Buffer.from_bytearray(bytearray(block))
            barrier.wait()
            cookies = [handle.aio_pwrite(buffer, offset_of(k, i)) for i in range(per_connection)]
            in_flight[k] = handle.aio_in_flight()
            while handle.aio_in_flight() > 0:
                handle.poll(-1)
            for cookie in cookies:
                if not handle.aio_command_completed(cookie):
                    raise RuntimeError(f"write {cookie} did not complete")
        except Exception as error:  # reported below, the test fails
            errors.append(f"connection {k}: {error}")

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        print("\n".join(errors), file=sys.stderr)
        sys.exit(1)
    handles[0].flush()
    mismatches = 0
    for k in range(connections):
        for i in range(per_connection):
            if handles[k].pread(4096, offset_of(k, i)) != block:
                mismatches += 1
    for handle in handles:
        handle.shutdown()
    print(json.dumps({"writes": connections * per_connection, "maxInFlight": max(in_flight), "mismatches": mismatches}))


if __name__ == "__main__":
    main()
