#!/usr/bin/python3
"""Workload driver for the real-process crash test (test/crash/process-crash.test.ts).

Usage:
  /usr/bin/python3 crash_workload.py run  --uri URI --journal FILE --seed N --cycle N [options]
  /usr/bin/python3 crash_workload.py dump --uri URI --out FILE --region-blocks N

`run` writes to a region of the export over several connections with many requests in flight,
until the server dies (the test kills it with SIGKILL) or --max-seconds pass. Every request is
recorded in a journal, a text file with one record per line, in the order the client saw things:

  S <seed> <cycle> <regionBlocks>         header
  W <id> <conn> <kind> <fua> <offset> <length>   mutation issued (written before it is sent)
  F <id> <conn>                           FLUSH issued (written before it is sent)
  A <id>                                  request <id> replied to with success
  E <id> <errno>                          request <id> failed (errno 0 = failed locally)
  X <reason>                              the client stopped issuing (server gone, or time up)

Kinds: D data (512-byte granular), P pattern (whole logical blocks, one repeated 8-byte word),
S shared data (whole logical blocks whose content comes from a pool of SHARED_POOL blocks used
by the whole run, so that a deduplicating engine shares chunks between logical blocks and across
cycles; the W record ends with the pool key of its first block, the next blocks take the next
keys), Z WRITE_ZEROES, N WRITE_ZEROES with NO_HOLE, T TRIM (whole logical blocks only, so that
trimmed blocks read as zeroes). The version a D or P mutation writes is cycle * 2^20 + id, so it
is unique in the whole run and no journal needs to be read to decode a block.

No two mutations that touch the same logical block are ever in flight together, so each block
has one order of writes and the checker can list the contents it may hold after a crash.

The content codec (data_sector, pattern_block) must stay identical to crash-content.ts.

`dump` reads the region back (after the restart) into a file for the checker.
"""
import argparse
import hashlib
import os
import random
import select
import struct
import sys
import time

import nbd

SECTOR_BYTES = 512
LBA_BYTES = 4096
SECTORS_PER_LBA = LBA_BYTES // SECTOR_BYTES
DATA_MAGIC = b'PSCR'
DATA_HEADER = struct.Struct('>4sIIII')  # magic, seed, lba, sector, version
SHARED_MAGIC = b'PSSH'  # same header layout: magic, seed, pool key, sector, 0
SHARED_POOL = 64
PATTERN_TAG = 0xA5000000
VERSION_CYCLE_SHIFT = 20
MAX_OPS_PER_CYCLE = (1 << VERSION_CYCLE_SHIFT) - 1


def data_sector(seed, lba, sector, version):
    """512 bytes: a header naming the sector, then bytes derived from it (every third version
    repeats a 41-byte stretch, so a compressing codec sees compressible data too)."""
    return derived_sector(DATA_HEADER.pack(DATA_MAGIC, seed, lba, sector, version), version % 3 == 0)


def shared_sector(seed, key, sector):
    """Sector `sector` of shared pool block `key` (odd keys compressible)."""
    return derived_sector(DATA_HEADER.pack(SHARED_MAGIC, seed, key, sector, 0), key % 2 == 1)


def derived_sector(header, compressible):
    body_bytes = SECTOR_BYTES - DATA_HEADER.size
    if compressible:
        body = (hashlib.shake_256(header).digest(41) * 12)[:body_bytes]
    else:
        body = hashlib.shake_256(header).digest(body_bytes)
    return header + body


def pattern_block(lba, version):
    """4 KiB made of one 8-byte word: tag | lba, then the version (what a pattern-detecting
    engine stores in the map entry instead of on NAND)."""
    return struct.pack('>II', PATTERN_TAG | lba, version) * (LBA_BYTES // 8)


def payload(kind, seed, version, offset, length, key):
    if kind == 'P':
        first = offset // LBA_BYTES
        return b''.join(pattern_block(first + i, version) for i in range(length // LBA_BYTES))
    if kind == 'S':
        return b''.join(shared_sector(seed, key + i // SECTORS_PER_LBA, i % SECTORS_PER_LBA) for i in range(length // SECTOR_BYTES))
    first_sector = offset // SECTOR_BYTES
    parts = []
    for s in range(first_sector, first_sector + length // SECTOR_BYTES):
        parts.append(data_sector(seed, s // SECTORS_PER_LBA, s % SECTORS_PER_LBA, version))
    return b''.join(parts)


class Workload:
    def __init__(self, args):
        self.args = args
        self.rng = random.Random(f'{args.seed}/{args.cycle}')
        self.journal = open(args.journal, 'w', buffering=1 << 16)
        self.journal.write(f'S {args.seed} {args.cycle} {args.region_blocks}\n')
        self.handles = []
        self.inflight = []  # per connection
        self.busy = set()  # logical blocks with a mutation in flight
        self.flush_inflight = 0
        self.next_id = 1
        self.stopped = None
        self.stats = {'issued': 0, 'acked': 0, 'failed': 0, 'flushes': 0, 'flushesAcked': 0, 'maxReplyMs': 0}
        self.issued_at = {}

    def connect(self):
        for _ in range(self.args.connections):
            h = nbd.NBD()
            h.connect_uri(self.args.uri)
            self.handles.append(h)
            self.inflight.append(0)

    # ---- Choosing requests -----------------------------------------------------------------

    def pick_lba_range(self, max_blocks):
        rng = self.rng
        count = rng.choice([1, 1, 1, 1, 2, 3, 4, max_blocks])
        count = min(count, max_blocks)
        limit = self.args.region_blocks
        # Two fifths of the requests go to a hot eighth of the region, so blocks get several
        # versions within one cycle; the rest spread over all of it.
        if rng.random() < 0.4:
            limit = max(count, self.args.region_blocks // 8)
        first = rng.randrange(0, limit - count + 1)
        return first, count

    def choose(self):
        """Returns (kind, fua, offset, length) for the next mutation (the pool key of an S write
        is drawn when it is issued)."""
        rng = self.rng
        r = rng.random()
        fua = rng.random() < 0.05
        if r < 0.45:
            first, count = self.pick_lba_range(8)
            return 'D', fua, first * LBA_BYTES, count * LBA_BYTES
        if r < 0.55:
            first, count = self.pick_lba_range(4)
            return 'S', fua, first * LBA_BYTES, count * LBA_BYTES
        if r < 0.67:
            # Sub-block writes: read-modify-write in the engine, may straddle two blocks.
            start = rng.randrange(0, self.args.region_blocks * SECTORS_PER_LBA - 16)
            if rng.random() < 0.4:
                start = rng.randrange(0, (self.args.region_blocks // 8) * SECTORS_PER_LBA)
            return 'D', fua, start * SECTOR_BYTES, rng.randint(1, 12) * SECTOR_BYTES
        if r < 0.75:
            first, count = self.pick_lba_range(4)
            return 'P', fua, first * LBA_BYTES, count * LBA_BYTES
        if r < 0.83:
            kind = 'N' if rng.random() < 0.5 else 'Z'
            if rng.random() < 0.5:
                first, count = self.pick_lba_range(16)
                return kind, fua, first * LBA_BYTES, count * LBA_BYTES
            start = rng.randrange(0, self.args.region_blocks * SECTORS_PER_LBA - 24)
            return kind, fua, start * SECTOR_BYTES, rng.randint(1, 24) * SECTOR_BYTES
        if r < 0.90:
            first, count = self.pick_lba_range(16)
            return 'T', fua, first * LBA_BYTES, count * LBA_BYTES
        first, count = self.pick_lba_range(32)
        return 'D', fua, first * LBA_BYTES, count * LBA_BYTES

    # ---- Issuing ---------------------------------------------------------------------------

    def version_of(self, op_id):
        return (self.args.cycle << VERSION_CYCLE_SHIFT) | op_id

    def on_reply(self, op_id, conn, lbas, error):
        # libnbd passes the errno of a failed command (0 on success). This runs inside
        # aio_notify_*, so the reply is recorded before anything else is issued.
        err = error.value if hasattr(error, 'value') else int(error)
        if self.stopped is None:
            reply_ms = int((time.monotonic() - self.issued_at.pop(op_id)) * 1000)
            self.stats['maxReplyMs'] = max(self.stats['maxReplyMs'], reply_ms)
        if err == 0:
            self.journal.write(f'A {op_id}\n')
        else:
            self.journal.write(f'E {op_id} {err}\n')
        self.inflight[conn] -= 1
        if lbas is None:
            self.flush_inflight -= 1
            self.stats['flushesAcked' if err == 0 else 'failed'] += 1
        else:
            self.busy.difference_update(lbas)
            self.stats['acked' if err == 0 else 'failed'] += 1
        return 1

    def issue_mutation(self):
        kind, fua, offset, length = self.choose()
        lbas = range(offset // LBA_BYTES, (offset + length - 1) // LBA_BYTES + 1)
        if any(lba in self.busy for lba in lbas):
            return False
        conn = self.rng.randrange(len(self.handles))
        op_id = self.next_id
        self.next_id += 1
        h = self.handles[conn]
        key = ''
        if kind == 'S':
            key = self.rng.randrange(0, SHARED_POOL - length // LBA_BYTES + 1)
        self.journal.write(f'W {op_id} {conn} {kind} {1 if fua else 0} {offset} {length}{f" {key}" if kind == "S" else ""}\n')
        self.journal.flush()
        self.issued_at[op_id] = time.monotonic()
        lba_set = set(lbas)
        callback = lambda error, i=op_id, c=conn, l=lba_set: self.on_reply(i, c, l, error)
        flags = nbd.CMD_FLAG_FUA if fua else 0
        if kind in ('D', 'P', 'S'):
            data = payload(kind, self.args.seed, self.version_of(op_id), offset, length, key)
            h.aio_pwrite(nbd.Buffer.from_bytearray(bytearray(data)), offset, completion=callback, flags=flags)
        elif kind in ('Z', 'N'):
            h.aio_zero(length, offset, completion=callback, flags=flags | (nbd.CMD_FLAG_NO_HOLE if kind == 'N' else 0))
        else:
            h.aio_trim(length, offset, completion=callback, flags=flags)
        self.busy.update(lba_set)
        self.inflight[conn] += 1
        self.stats['issued'] += 1
        return True

    def issue_flush(self):
        conn = self.rng.randrange(len(self.handles))
        op_id = self.next_id
        self.next_id += 1
        self.journal.write(f'F {op_id} {conn}\n')
        self.journal.flush()
        self.issued_at[op_id] = time.monotonic()
        callback = lambda error, i=op_id, c=conn: self.on_reply(i, c, None, error)
        self.handles[conn].aio_flush(completion=callback)
        self.inflight[conn] += 1
        self.flush_inflight += 1
        self.stats['flushes'] += 1

    # ---- Main loop -------------------------------------------------------------------------

    def fill(self, now):
        if now >= self.next_flush_at and self.flush_inflight < 2:
            self.issue_flush()
            self.next_flush_at = now + self.rng.uniform(0.01, self.args.flush_interval_max)
        per_conn = self.args.inflight
        for _ in range(4 * per_conn * len(self.handles)):
            if sum(self.inflight) >= per_conn * len(self.handles) or self.next_id >= MAX_OPS_PER_CYCLE:
                return
            self.issue_mutation()

    def poll_once(self, timeout_ms):
        poller = select.poll()
        fds = {}
        for h in self.handles:
            if h.aio_is_dead() or h.aio_is_closed():
                continue
            direction = h.aio_get_direction()
            events = 0
            if direction & nbd.AIO_DIRECTION_READ:
                events |= select.POLLIN
            if direction & nbd.AIO_DIRECTION_WRITE:
                events |= select.POLLOUT
            fd = h.aio_get_fd()
            fds[fd] = h
            poller.register(fd, events)
        if not fds:
            return False
        for fd, revents in poller.poll(timeout_ms):
            h = fds[fd]
            if revents & (select.POLLIN | select.POLLHUP | select.POLLERR):
                h.aio_notify_read()
            elif revents & select.POLLOUT:
                h.aio_notify_write()
        return True

    def run(self):
        self.connect()
        sys.stdout.write('ready\n')
        sys.stdout.flush()
        started = time.monotonic()
        deadline = started + self.args.max_seconds
        self.next_flush_at = started + self.rng.uniform(0.01, self.args.flush_interval_max)
        try:
            while self.stopped is None:
                now = time.monotonic()
                if now >= deadline:
                    self.stopped = 'time'
                    break
                self.fill(now)
                self.poll_once(5)
        except nbd.Error as error:
            self.stopped = f'server gone: {error}'.replace('\n', ' ')
        self.journal.write(f'X {self.stopped}\n')
        now = time.monotonic()
        self.stats['oldestPendingMs'] = int(max((now - t for t in self.issued_at.values()), default=0) * 1000)
        self.drain()
        self.journal.flush()
        os.fsync(self.journal.fileno())
        self.journal.close()
        stats = ' '.join(f'{k}={v}' for k, v in self.stats.items())
        sys.stdout.write(f'stopped ({self.stopped}) {stats}\n')

    def drain(self):
        """Collects the replies still arriving, until every connection is dead or idle (bounded)."""
        until = time.monotonic() + (self.args.drain_seconds)
        while time.monotonic() < until and sum(self.inflight) > 0:
            try:
                if not self.poll_once(20):
                    break
            except nbd.Error:
                pass


def dump(args):
    h = nbd.NBD()
    h.connect_uri(args.uri)
    step = 256 * 1024
    total = args.region_blocks * LBA_BYTES
    with open(args.out, 'wb') as out:
        for offset in range(0, total, step):
            out.write(h.pread(min(step, total - offset), offset))
    h.shutdown()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    sub = parser.add_subparsers(dest='mode', required=True)
    run = sub.add_parser('run')
    run.add_argument('--uri', required=True)
    run.add_argument('--journal', required=True)
    run.add_argument('--seed', type=int, required=True)
    run.add_argument('--cycle', type=int, required=True)
    run.add_argument('--region-blocks', type=int, default=2048)
    run.add_argument('--connections', type=int, default=2)
    run.add_argument('--inflight', type=int, default=8, help='requests in flight per connection')
    run.add_argument('--flush-interval-max', type=float, default=0.2, help='seconds')
    run.add_argument('--max-seconds', type=float, default=30)
    run.add_argument('--drain-seconds', type=float, default=2)
    d = sub.add_parser('dump')
    d.add_argument('--uri', required=True)
    d.add_argument('--out', required=True)
    d.add_argument('--region-blocks', type=int, default=2048)
    args = parser.parse_args()
    if args.mode == 'dump':
        dump(args)
        return
    if args.cycle >= 1 << (32 - VERSION_CYCLE_SHIFT):
        parser.error('cycle too large for the version encoding')
    Workload(args).run()


if __name__ == '__main__':
    main()
