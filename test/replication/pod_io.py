#!/usr/bin/python3
"""NBD clients for the ActiveCluster tests (python3-libnbd; run with /usr/bin/python3).

  acked-writer URI START LENGTH LOG SECONDS  QD1 writes of distinct 4 KiB blocks (content derived
                                             from a counter) until error or SECONDS; after each
                                             acknowledged write, appends "offset counter" to LOG.
  check URI LOG                              reads back the last acknowledged content of every
                                             block in LOG; prints JSON {checked, bad}.
  probe URI OFFSET SECONDS                   QD1 4 KiB writes for SECONDS; prints JSON with every
                                             gap over 5 ms between two acknowledged writes
                                             ([start epoch ms, length ms]) and the error count.
  write URI OFFSET LENGTH BYTE               one write of LENGTH bytes of BYTE; exit 1 on error.
"""
import hashlib
import json
import sys
import time

import nbd

BLOCK = 4096


def block_for(counter):
    seed = hashlib.sha256(str(counter).encode()).digest()
    return (seed * (BLOCK // len(seed)))[:BLOCK]


def connect(uri):
    handle = nbd.NBD()
    handle.connect_uri(uri)
    return handle


def acked_writer(uri, start, length, log_path, seconds):
    handle = connect(uri)
    blocks = length // BLOCK
    counter = 0
    deadline = time.time() + seconds
    with open(log_path, "w", buffering=1) as log:
        while time.time() < deadline:
            offset = start + (counter * 7919 % blocks) * BLOCK
            try:
                handle.pwrite(block_for(counter), offset)
            except Exception as error:  # the array went away: stop, the log has what was acknowledged
                print(json.dumps({"written": counter, "error": str(error)}))
                return
            log.write(f"{offset} {counter}\n")
            counter += 1
    print(json.dumps({"written": counter, "error": None}))


def check(uri, log_path):
    last = {}
    with open(log_path) as log:
        for line in log:
            parts = line.split()
            if len(parts) == 2:
                last[int(parts[0])] = int(parts[1])
    handle = connect(uri)
    bad = 0
    for offset, counter in last.items():
        if handle.pread(BLOCK, offset) != block_for(counter):
            bad += 1
    print(json.dumps({"checked": len(last), "bad": bad}))


def probe(uri, offset, seconds):
    handle = connect(uri)
    data = bytes([0x5A]) * BLOCK
    handle.pwrite(data, offset)
    deadline = time.time() + seconds
    last_ok = time.time()
    gaps, errors, writes = [], 0, 0
    while time.time() < deadline:
        try:
            handle.pwrite(data, offset)
        except Exception:
            errors += 1
            time.sleep(0.01)
            continue
        now = time.time()
        writes += 1
        if (now - last_ok) * 1000 > 5:
            gaps.append([last_ok * 1000, (now - last_ok) * 1000])
        last_ok = now
    print(json.dumps({"gaps": gaps, "errors": errors, "writes": writes}))


def write(uri, offset, length, byte):
    handle = connect(uri)
    handle.pwrite(bytes([byte]) * length, offset)
    handle.flush()


def main():
    command, args = sys.argv[1], sys.argv[2:]
    if command == "acked-writer":
        acked_writer(args[0], int(args[1]), int(args[2]), args[3], float(args[4]))
    elif command == "check":
        check(args[0], args[1])
    elif command == "probe":
        probe(args[0], int(args[1]), float(args[2]))
    elif command == "write":
        try:
            write(args[0], int(args[1]), int(args[2]), int(args[3]))
        except Exception as error:
            print(str(error))
            sys.exit(1)
    else:
        sys.exit(f"unknown command {command}")


if __name__ == "__main__":
    main()
