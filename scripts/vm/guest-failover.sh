#!/bin/sh
# guest-failover.sh: a mounted ext4 on an ActiveCluster pod volume stays consistent in a Linux
# guest while the array it is attached to dies (run by scripts/vm-failover-test.sh in its qemu
# initramfs, whose host SIGKILLs array A when asked).
#
# Usage: guest-failover.sh [--quick] [--both-paths] HOST PORT_A PORT_B EXPORT
#
# How the guest fails over: the kernel NBD client cannot move a device to another server
# (nbd-client -persist only reconnects to the same one, and only while nbd-client runs), and an
# ext4 whose device returns EIO aborts its journal. So the guest does what a host attached to two
# arrays does with SCSI or NVMe paths: device-mapper multipath. The pod volume is attached twice,
# through A on /dev/nbd0 and through B on /dev/nbd1 (both arrays export it read-write), and a
# dm-multipath table made with dmsetup (no multipathd: the kernel target alone) joins them. By
# default the two are separate priority groups, A first, so all I/O goes to A; with --both-paths
# they are one group, and I/O alternates between A and B (writes through B travel to A, the
# pod's leader, and back). When A dies its socket closes, nbd fails the requests on nbd0 with EIO
# (those already sent, once A's connection times out: see attach), dm-multipath marks that path
# failed and resubmits the same requests to B, which holds them while it asks the mediator and
# then serves them as the survivor. ext4 above never sees an error. (No queue_if_no_path: if B
# failed too, ext4 would be told, and this test would fail rather than hang.)
#
# Steps: attach both, make the multipath device, mkfs.ext4, mount, write seed files; then two
# writers write files one after the other (64 KiB ones, and 2 MiB ones with O_DIRECT), each with
# fsync and a global sync, and record its name, sha256 (of the data meant to be written, kept in
# this guest's tmpfs) and the time only after the sync returned. After some files they ask the
# host to kill A (PSTORAGE-GUEST-WAIT: kill-a) and go on writing; once enough files are synced after the kill, it stops, checks that
# the filesystem is still mounted read-write with no ext4 error and that path A is the failed
# one, unmounts, detaches everything, attaches B alone on a fresh connection, runs e2fsck -fn
# (must be clean), mounts it read-only and checks every recorded file's sha256.
#
# Output contract (read by scripts/vm-failover-test.sh):
#   PSTORAGE-GUEST-INFO: <what> key=value ...     what was measured
#   PSTORAGE-GUEST-STEP: <step> <seconds> s       one line per passed step
#   PSTORAGE-GUEST-WAIT: kill-a                   the host kills A, then answers with one line
#   PSTORAGE-GUEST-RESULT: PASS | FAIL <step>     exactly once, always the last marker
set -u

QUICK=0
BOTH_PATHS=0
while [ $# -gt 0 ]; do
  case $1 in
    --quick) QUICK=1 ;;
    --both-paths) BOTH_PATHS=1 ;;
    *) break ;;
  esac
  shift
done
if [ $# -ne 4 ]; then
  echo "usage: $0 [--quick] [--both-paths] HOST PORT_A PORT_B EXPORT" >&2
  exit 2
fi
HOST=$1
PORT_A=$2
PORT_B=$3
EXPORT=$4
DEV_A=/dev/nbd0
DEV_B=/dev/nbd1
MAP=pod
MAP_DEV=/dev/mapper/$MAP
MNT=/mnt/failover
WORK=$(mktemp -d /tmp/failover.XXXXXX) || exit 1
MANIFEST=$WORK/synced # "SECONDS NAME SHA256" per file, appended only once the file is synced
# Seed files (1 MiB each); files the writer syncs before asking for the kill; files it must sync
# after the host answered (with A dead); how long those may take at most.
if [ "$QUICK" = 1 ]; then
  SEED_FILES=4 BEFORE_KILL=8 AFTER_KILL=12 AFTER_KILL_MAX_S=60
else
  SEED_FILES=32 BEFORE_KILL=40 AFTER_KILL=60 AFTER_KILL_MAX_S=120
fi

now() { awk '{ print $1 }' /proc/uptime; }
say() { echo "pstorage-guest: $*"; }
STARTED_AT=$(now)
STEP=setup

fail() {
  say "step $STEP FAILED${1:+: $1}"
  dmsetup status "$MAP" 2>/dev/null | sed 's/^/pstorage-guest: dmsetup status: /'
  dmesg | grep -i -E 'nbd|multipath|ext4|i/o error|blk_update' | tail -n 40 | sed 's/^/pstorage-guest: dmesg: /'
  rm -f "$WORK/writer-on"
  echo "PSTORAGE-GUEST-RESULT: FAIL $STEP"
  exit 1
}

step() { # step NAME COMMAND...: stop at the first failure
  STEP=$1
  shift
  step_started_at=$(now)
  "$@" || fail
  echo "PSTORAGE-GUEST-STEP: $STEP $(awk -v a="$step_started_at" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }') s"
}

# attach DEVICE PORT [TIMEOUT_S]: the pod volume through one array, 4 KiB blocks (both paths of a
# multipath device must agree on the block size).
#
# The timeout is what makes a dead path fail: when a server dies, the kernel client fails the
# requests it had not sent yet, but those already sent wait for their reply, for ever unless the
# connection has a timeout (seen here: "Possible stuck request ... Runtime 30 seconds" and a hung
# sync, with A long dead). With -t they fail after it with EIO, and dm-multipath resubmits them to
# B. So A's connection has one, and it bounds the pause the guest sees when writes were in flight
# at the kill. B's has none: B is the last path, and a slow answer from it on this shared host
# must not fail it too (a B that never answers still fails the test, at the writer's deadline).
A_TIMEOUT_S=5
attach() {
  nbd-client "$HOST" "$2" "$1" -N "$EXPORT" -b 4096 ${3:+-t "$3"} || return 1
  i=0
  while [ "$(cat "/sys/block/${1##*/}/size")" = 0 ]; do
    i=$((i + 1)); [ $i -le 100 ] || return 1; sleep 0.1
  done
}

detach() { # detach DEVICE: also for a device whose server is gone
  nbd-client -d "$1" >/dev/null 2>&1
  i=0
  while [ "$(cat "/sys/block/${1##*/}/size")" != 0 ]; do
    i=$((i + 1)); [ $i -le 100 ] || return 1; sleep 0.1
  done
}

# Two priority groups of one path each (round-robin is only the selector within a group): group
# 1 is A, where I/O goes while A works; group 2 is B. Or, with --both-paths, one group of both,
# taking turns every 16 I/Os. Table: start length multipath #features features
# #hw-handler-args #groups first-group, then per group: selector #selector-args #paths
# #path-args, then path repeat-count per path.
#
# queue_mode bio: the default request-based mode hands requests to nbd's queue from dm's, whose
# dispatch runs inside an RCU read-side section, while nbd (a BLK_MQ_F_BLOCKING driver) may sleep
# in sendmsg: Debian's 6.1 kernel then warns "Voluntary context switch within RCU read-side
# critical section" (seen here during mkfs). Bio-based multipath submits bios to nbd like any
# filesystem does.
make_multipath() {
  [ "$(blockdev --getsz "$DEV_A")" = "$(blockdev --getsz "$DEV_B")" ] || { say "A and B export different sizes"; return 1; }
  sectors=$(blockdev --getsz "$DEV_A")
  a=$(cat /sys/block/nbd0/dev) b=$(cat /sys/block/nbd1/dev)
  if [ "$BOTH_PATHS" = 1 ]; then groups="1 1 round-robin 0 2 1 $a 16 $b 16"
  else groups="2 1 round-robin 0 1 1 $a 1 round-robin 0 1 1 $b 1"; fi
  table="0 $sectors multipath 2 queue_mode bio 0 $groups"
  say "dm table: $table"
  dmsetup create "$MAP" --table "$table" || return 1
  dmsetup mknodes "$MAP" 2>/dev/null
  [ -b "$MAP_DEV" ] || { say "$MAP_DEV did not appear"; return 1; }
  say "dmsetup status: $(dmsetup status "$MAP")"
}

write_seed() {
  i=0
  while [ $i -lt $SEED_FILES ]; do
    dd if=/dev/urandom of="$WORK/seed" bs=1048576 count=1 2>/dev/null || return 1
    cp "$WORK/seed" "$MNT/seed-$i" || return 1
    echo "$(now) seed-$i $(sha256sum < "$WORK/seed" | cut -d' ' -f1)" >> "$WORK/seed.list"
    i=$((i + 1))
  done
  sync || return 1
  cat "$WORK/seed.list" >> "$MANIFEST"
}

# writer PREFIX BLOCK_BYTES BLOCKS [DD_FLAG]: in the background until $WORK/writer-on is removed,
# writes file after file of random data, each synced (fsync, then a global sync for its
# directory entry) before its line goes into the manifest. A failed write or sync ends it and
# leaves its error in $WORK/writer.err.
writer() {
  n=0
  while [ -e "$WORK/writer-on" ]; do
    name=$1-$n
    dd if=/dev/urandom of="$WORK/$1.next" bs="$2" count="$3" 2>/dev/null || { echo "urandom for $name" >> "$WORK/writer.err"; return; }
    dd if="$WORK/$1.next" of="$MNT/$name" bs="$2" conv=fsync ${4:+oflag=$4} 2>"$WORK/$1.err" \
      || { echo "write $name: $(cat "$WORK/$1.err")" >> "$WORK/writer.err"; return; }
    sync || { echo "sync after $name failed" >> "$WORK/writer.err"; return; }
    echo "$(now) $name $(sha256sum < "$WORK/$1.next" | cut -d' ' -f1)" >> "$MANIFEST"
    n=$((n + 1))
  done
}

written() {
  count=$(grep -c ' w-' "$MANIFEST" 2>/dev/null)
  echo "${count:-0}"
}

# wait_written COUNT MAX_SECONDS: until the writer has synced COUNT files in all
wait_written() {
  deadline=$(awk -v a="$(now)" -v b="$2" 'BEGIN { print a + b }')
  while [ "$(written)" -lt "$1" ]; do
    [ -e "$WORK/writer.err" ] && { say "the writer failed: $(cat "$WORK/writer.err")"; return 1; }
    awk -v a="$(now)" -v b="$deadline" 'BEGIN { exit !(a > b) }' && { say "only $(written) of $1 files synced within $2 s"; return 1; }
    sleep 0.1
  done
}

# Two writers: "w", small files one after the other, whose pauses the report measures; and "s",
# 2 MiB files in 256 KiB direct writes, so that writes are in flight on A when it dies.
start_writers() {
  : > "$WORK/writer-on"
  writer w 65536 1 &
  W_PID=$!
  writer s 262144 8 direct &
  S_PID=$!
  wait_written "$BEFORE_KILL" 120
}

KILL_ASKED_AT=""
KILL_DONE_AT=""
kill_a() {
  KILL_ASKED_AT=$(now)
  echo "PSTORAGE-GUEST-WAIT: kill-a"
  read -r reply || return 1
  KILL_DONE_AT=$(now)
  say "host: $reply"
  [ "$reply" = "killed" ]
}

write_after_kill() {
  target=$(( $(written) + AFTER_KILL ))
  wait_written "$target" "$AFTER_KILL_MAX_S" || return 1
  rm -f "$WORK/writer-on"
  wait "$W_PID" "$S_PID"
  [ ! -e "$WORK/writer.err" ] || { say "the writer failed: $(cat "$WORK/writer.err")"; return 1; }
}

# The filesystem went through it: still mounted read-write, and the kernel logged no ext4 error.
still_healthy() {
  grep -q " $MNT ext4 rw[ ,]" /proc/mounts || { say "ext4 is no longer mounted read-write: $(grep " $MNT " /proc/mounts)"; return 1; }
  if dmesg | grep -q -E 'EXT4-fs (error|warning)|Aborting journal'; then
    dmesg | grep -E 'EXT4-fs|journal' | sed 's/^/pstorage-guest: dmesg: /'
    return 1
  fi
}

# The path through A is failed and the path through B active: the writes after the kill went to B.
# Status: ... #groups first-group then per group: state #ps-status-args #paths #path-args, then
# per path: device A|F fail-count [selector args].
paths_switched() {
  status=$(dmsetup status "$MAP") || return 1
  say "dmsetup status after the kill: $status"
  a=$(cat /sys/block/nbd0/dev) b=$(cat /sys/block/nbd1/dev)
  echo "$status" | grep -q " $a F " || { say "path A ($a) is not marked failed"; return 1; }
  echo "$status" | grep -q " $b A " || { say "path B ($b) is not active"; return 1; }
}

# What the guest saw: the pause in the small-file writer around the moment dm-multipath failed
# path A (the kernel's timestamp, on the same clock as /proc/uptime): from the last file synced
# before it to the first synced after it; next to the longest pause before the kill request, for
# scale. And the kernel's own account of the switch.
report_failover() {
  failed_at=$(dmesg | grep -m 1 'Failing path' | sed 's/^\[ *\([0-9.]*\)\].*/\1/')
  awk -v asked="$KILL_ASKED_AT" -v answered="$KILL_DONE_AT" -v failed="${failed_at:-0}" '
    / w-/ {
      if (last != "") {
        if ($1 <= asked && $1 - last > before) before = $1 - last
        if (last <= failed && $1 > failed && pause == "") pause = $1 - last
      }
      last = $1; n++
    }
    END {
      printf "PSTORAGE-GUEST-INFO: failover pause_s=%.2f path_a_failed_s=%.2f longest_pause_before_kill_s=%.2f", pause, failed, before
      printf " kill_asked_s=%.2f kill_answered_s=%.2f writes=%d\n", asked, answered, n
    }' "$MANIFEST"
  dmesg | grep -i -E 'nbd|multipath' | sed 's/^/pstorage-guest: dmesg: /'
}

# Kernel warnings and oopses (a "cut here" block each), shown whole; counted in the report.
kernel_warnings() {
  dmesg | awk '/cut here/ { on = 1 } on { print "pstorage-guest: dmesg: " $0 } /end trace/ { on = 0 }'
  warnings=$(dmesg | grep -c 'cut here')
  echo "PSTORAGE-GUEST-INFO: kernel warnings=$warnings"
  [ "$warnings" = 0 ]
}

teardown_multipath() {
  umount "$MNT" || return 1
  dmsetup remove "$MAP" || return 1
  detach "$DEV_A" || return 1
  detach "$DEV_B"
}

check_b() {
  e2fsck -fn "$DEV_B" > "$WORK/fsck.log" 2>&1
  status=$?
  sed 's/^/pstorage-guest: e2fsck: /' "$WORK/fsck.log"
  [ $status -eq 0 ] || { say "e2fsck -fn exited with status $status"; return 1; }
}

# Every file whose sync returned, read back from B alone (a fresh connection, nothing cached).
verify_on_b() {
  mount -t ext4 -o ro "$DEV_B" "$MNT" || return 1
  bad=0 checked=0 after_kill=0
  while read -r at name sum; do
    got=$(sha256sum < "$MNT/$name" | cut -d' ' -f1)
    if [ "$got" != "$sum" ]; then say "$name: sha256 $got, expected $sum"; bad=$((bad + 1)); fi
    checked=$((checked + 1))
    awk -v a="$at" -v k="$KILL_ASKED_AT" 'BEGIN { exit !(a > k) }' && after_kill=$((after_kill + 1))
  done < "$MANIFEST"
  echo "PSTORAGE-GUEST-INFO: verified files=$checked synced_after_kill_request=$after_kill bad=$bad"
  umount "$MNT" || return 1
  [ $bad -eq 0 ] && [ $checked -gt 0 ]
}

say "kernel $(uname -r); pod volume '$EXPORT' through A $HOST:$PORT_A and B $HOST:$PORT_B; mode $([ $QUICK = 1 ] && echo quick || echo full); I/O through $([ $BOTH_PATHS = 1 ] && echo "both paths" || echo "A, then B")"
mkdir -p "$MNT"
step modules sh -c 'modprobe nbd && modprobe dm_multipath && modprobe dm_round_robin'
step attach-a attach "$DEV_A" "$PORT_A" "$A_TIMEOUT_S"
step attach-b attach "$DEV_B" "$PORT_B"
step multipath make_multipath
step mkfs mkfs.ext4 -F -q "$MAP_DEV"
step mount mount -t ext4 -o noinit_itable "$MAP_DEV" "$MNT"
step seed write_seed
step write-through-a start_writers
step kill-a kill_a
step write-through-b write_after_kill
step still-healthy still_healthy
step paths-switched paths_switched
report_failover
step no-kernel-warnings kernel_warnings
step teardown teardown_multipath
step attach-b-alone attach "$DEV_B" "$PORT_B"
step fsck-b check_b
step verify-b verify_on_b
step detach-b detach "$DEV_B"
rm -rf "$WORK"
echo "PSTORAGE-GUEST-STEP: total $(awk -v a="$STARTED_AT" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }') s"
echo "PSTORAGE-GUEST-RESULT: PASS"
