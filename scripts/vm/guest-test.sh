#!/bin/sh
# guest-test.sh: the real Linux kernel NBD client against a pstorage export, run from inside a
# Linux guest (the qemu initramfs of scripts/vm-test.sh, or the Vagrant box of vagrant/).
#
# Usage: guest-test.sh [--quick] [--wait-host] [--device /dev/nbdN]
#                      [--tls-dir DIR --tls-hostname NAME --tls-export NAME] HOST PORT [EXPORT]
#
#   --quick      skip the fio jobs (the filesystem rounds still run)
#   --wait-host  before and after each fstrim, and with the ext4 filesystem frozen under a write
#                load (tag "snapshot": the host takes a snapshot, which the guest then fscks on
#                /dev/nbd1), print "PSTORAGE-GUEST-WAIT: <tag>" and read one line from standard
#                input (scripts/vm-test.sh answers on the serial console)
#   --tls-dir DIR        run the XFS round over TLS: nbd-client -cacertfile DIR/ca-cert.pem
#                        -certfile DIR/client-cert.pem -keyfile DIR/client-key.pem (paths
#                        without spaces), on the export --tls-export, checking the server's
#                        certificate against --tls-hostname. That export must admit only this
#                        client's certificate (`pstorage volume access NAME --allow CN`): the
#                        round first checks that a plain attach of it is refused, so an attach
#                        that succeeds cannot have quietly gone without TLS
#
# What it proves, per filesystem (ext4 over a 512-byte-block connection, then XFS over a
# `-b 4096` connection): mkfs, mount, write files of known sha256, sync, umount, an offline
# check (e2fsck -fn / xfs_repair -n), disconnect, reconnect, verify the files from the device,
# delete one file and fstrim, check again, remount and verify the remaining files. Then (unless
# --quick) fio writes the raw device with libaio, O_DIRECT and crc32c verification. With --tls-dir
# the XFS round runs on the TLS export instead of EXPORT.
#
# Output contract, read by scripts/vm-test.sh (other lines are for people):
#   PSTORAGE-GUEST-INFO: <what> key=value ...     what the kernel client negotiated
#   PSTORAGE-GUEST-STEP: <step> <seconds> s       one line per passed step
#   PSTORAGE-GUEST-WAIT: <tag> [key=value ...]    only with --wait-host
#   PSTORAGE-GUEST-RESULT: PASS | FAIL <step>     exactly once, always the last marker
#
# Needs root, POSIX sh, nbd-client (nbd.ko), e2fsprogs, util-linux or busybox (mount, fstrim,
# blockdev), sha256sum, awk; xfsprogs and fio are used when present (a missing xfsprogs skips the
# XFS round; a missing fio fails the full mode, since the fio jobs are part of the test).
set -u

QUICK=0
WAIT_HOST=0
DEV=/dev/nbd0
TLS_DIR=
TLS_HOSTNAME=
TLS_EXPORT=
usage() {
  echo "usage: $0 [--quick] [--wait-host] [--device /dev/nbdN] [--tls-dir DIR --tls-hostname NAME --tls-export NAME] HOST PORT [EXPORT]" >&2
  exit 2
}
while [ $# -gt 0 ]; do
  case $1 in
    --quick) QUICK=1 ;;
    --wait-host) WAIT_HOST=1 ;;
    --device) [ $# -ge 2 ] || usage; DEV=$2; shift ;;
    --tls-dir) [ $# -ge 2 ] || usage; TLS_DIR=$2; shift ;;
    --tls-hostname) [ $# -ge 2 ] || usage; TLS_HOSTNAME=$2; shift ;;
    --tls-export) [ $# -ge 2 ] || usage; TLS_EXPORT=$2; shift ;;
    --) shift; break ;;
    -*) usage ;;
    *) break ;;
  esac
  shift
done
if [ $# -lt 2 ] || [ $# -gt 3 ]; then usage; fi
if [ -n "$TLS_DIR$TLS_HOSTNAME$TLS_EXPORT" ] && { [ -z "$TLS_DIR" ] || [ -z "$TLS_HOSTNAME" ] || [ -z "$TLS_EXPORT" ]; }; then
  echo "$0: --tls-dir, --tls-hostname and --tls-export go together" >&2
  usage
fi
HOST=$1
PORT=$2
EXPORT=${3:-default}
NAME=${DEV##*/}
SYS=/sys/block/$NAME
MNT=${PSTORAGE_GUEST_MNT:-/mnt/pstorage-test}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/pstorage-guest.XXXXXX") || exit 1
# Files written per round: sizes chosen to cover whole MiBs, an odd tail and a tiny file; the
# trim file is deleted before fstrim so the host can see the array give the space back.
TRIM_FILE_MIB=32

now() { awk '{ print $1 }' /proc/uptime; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }
say() { echo "pstorage-guest: $*"; }

STARTED_AT=$(now)
CURRENT_STEP=setup

# --- failure handling -------------------------------------------------------------------------

cleanup() {
  umount "$MNT" 2>/dev/null
  if [ -e "$SYS/pid" ]; then nbd-client -d "$DEV" >/dev/null 2>&1; fi
  rm -rf "$WORK"
}

show_kernel_messages() { # show_kernel_messages all|problems
  # The kernel logs NBD and filesystem errors (I/O errors, "Other side returned error", corrupt
  # metadata, timeouts) that a passing run should still surface: after a failure show everything
  # about the device, after a pass only what looks like a problem.
  if [ "$1" = all ]; then pattern='nbd|i/o error|ext4-fs|xfs|blk_update|critical|corrupt'
  else pattern='i/o error|error|corrupt|timed out|critical|fail|warn'; fi
  dmesg 2>/dev/null | grep -i -E "$pattern" | grep -v -i -E 'command line|ACPI|PCI|microcode' \
    | tail -n 40 | sed 's/^/pstorage-guest: dmesg: /'
}

fail() {
  say "step $CURRENT_STEP FAILED${1:+: $1}"
  show_kernel_messages all
  cleanup
  echo "PSTORAGE-GUEST-RESULT: FAIL $CURRENT_STEP"
  exit 1
}

# step NAME COMMAND...: run one step, time it, and stop the whole test at the first failure.
step() {
  CURRENT_STEP=$1
  shift
  step_started_at=$(now)
  "$@" || fail
  echo "PSTORAGE-GUEST-STEP: $CURRENT_STEP $(elapsed "$step_started_at" "$(now)") s"
}

wait_host() {
  [ "$WAIT_HOST" = 1 ] || return 0
  echo "PSTORAGE-GUEST-WAIT: $*"
  read -r _reply || return 1
}

# --- NBD connection ---------------------------------------------------------------------------

load_nbd() {
  [ -e "$SYS" ] && return 0
  modprobe nbd || return 1
  i=0
  while [ ! -e "$SYS" ]; do
    i=$((i + 1)); [ $i -le 50 ] || return 1; sleep 0.1
  done
}

# The export the current round attaches, and whether over TLS (set by fs_round).
ROUND_EXPORT=$EXPORT
ROUND_TLS=0

# connect [BLOCK_SIZE]: attach $DEV to $ROUND_EXPORT; the kernel then owns the socket. Over TLS,
# nbd-client does STARTTLS and the TLS handshake itself and leaves a daemon of its own relaying
# between the kernel's end of a socket pair and the TLS session (the kernel speaks no TLS).
connect() {
  block_size_args=
  [ -n "${1:-}" ] && block_size_args="-b $1"
  tls_args=
  if [ "$ROUND_TLS" = 1 ]; then
    tls_args="-cacertfile $TLS_DIR/ca-cert.pem -certfile $TLS_DIR/client-cert.pem"
    tls_args="$tls_args -keyfile $TLS_DIR/client-key.pem -tlshostname $TLS_HOSTNAME"
  fi
  # shellcheck disable=SC2086 # option words (the paths have no spaces, see the usage)
  nbd-client "$HOST" "$PORT" "$DEV" -N "$ROUND_EXPORT" $block_size_args $tls_args || return 1
  i=0
  while [ "$(cat "$SYS/size")" = 0 ]; do
    i=$((i + 1)); [ $i -le 100 ] || return 1; sleep 0.1
  done
}

disconnect() {
  nbd-client -d "$DEV" || return 1
  # Wait until the kernel has let go of the device, or the next connect finds it busy.
  i=0
  while [ -e "$SYS/pid" ] || [ "$(cat "$SYS/size")" != 0 ]; do
    i=$((i + 1)); [ $i -le 100 ] || return 1; sleep 0.1
  done
}

# What the kernel made of the server's handshake: size, block sizes, and the queue limits that
# follow from the transmission flags (write_cache "write back" = FLUSH, fua = FUA, discard = TRIM,
# write_zeroes = WRITE_ZEROES, ro = READ_ONLY). debugfs shows the raw flags when it is mounted.
report_negotiated() {
  q=$SYS/queue
  echo "PSTORAGE-GUEST-INFO: $1 size_bytes=$(( $(cat "$SYS/size") * 512 ))" \
    "logical_block_size=$(cat "$q/logical_block_size") physical_block_size=$(cat "$q/physical_block_size")" \
    "max_hw_sectors_kb=$(cat "$q/max_hw_sectors_kb") read_only=$(cat "$SYS/ro")"
  echo "PSTORAGE-GUEST-INFO: $1 write_cache='$(cat "$q/write_cache")' fua=$(cat "$q/fua" 2>/dev/null || echo n/a)" \
    "discard_granularity=$(cat "$q/discard_granularity") discard_max_bytes=$(cat "$q/discard_max_bytes")" \
    "write_zeroes_max_bytes=$(cat "$q/write_zeroes_max_bytes" 2>/dev/null || echo n/a)"
  flags=/sys/kernel/debug/nbd/$NAME/flags
  if [ -r "$flags" ]; then
    echo "PSTORAGE-GUEST-INFO: $1 kernel view of the flags: $(grep -v -e '^$' -e '^Known flags' "$flags" | tr '\n' ' ')"
  fi
  return 0
}

# --- filesystem round -------------------------------------------------------------------------

# Both mkfs discard the whole device first (their default), as they do for users: one TRIM of
# 16 GiB split into requests of up to 4 GiB.
make_fs() {
  case $1 in
    # The inode tables are left to lazy init, and noinit_itable (at mount) keeps the kernel from
    # zeroing 16 GiB worth of them in the background while the test runs.
    ext4) mkfs.ext4 -F -q "$DEV" ;;
    xfs) mkfs.xfs -f -q "$DEV" ;;
  esac
}

mount_fs() {
  mkdir -p "$MNT" || return 1
  case $1 in
    ext4) mount -t ext4 -o noinit_itable "$DEV" "$MNT" ;;
    xfs) mount -t xfs "$DEV" "$MNT" ;;
  esac
}

# The offline checkers are read-only here (-n) and must find nothing to fix; their full report is
# shown only when they do.
check_fs() {
  case $1 in
    ext4) e2fsck -fn "$DEV" > "$WORK/check.log" 2>&1 ;;
    xfs) xfs_repair -n "$DEV" > "$WORK/check.log" 2>&1 ;;
  esac
  status=$?
  [ $status -eq 0 ] || { cat "$WORK/check.log"; say "$1 check exited with status $status"; return 1; }
  say "$1 check clean: $(grep -v '^ *$' "$WORK/check.log" | tail -n 1)"
}

write_files() {
  dd if=/dev/urandom of="$MNT/random-8m" bs=1048576 count=8 2>/dev/null || return 1
  dd if=/dev/urandom of="$MNT/random-odd" bs=1000 count=1234 2>/dev/null || return 1
  echo "pstorage kernel path $(date)" > "$MNT/small.txt" || return 1
  mkdir -p "$MNT/dir/sub" && cp "$MNT/small.txt" "$MNT/dir/sub/copy.txt" || return 1
  dd if=/dev/urandom of="$MNT/trim-me" bs=1048576 count=$TRIM_FILE_MIB 2>/dev/null || return 1
  (cd "$MNT" && sha256sum random-8m random-odd small.txt dir/sub/copy.txt > "$WORK/keep.sha256" \
    && sha256sum trim-me > "$WORK/trim.sha256") || return 1
  sync
}

verify_files() {
  (cd "$MNT" && sha256sum -c "$WORK/keep.sha256" && sha256sum -c "$WORK/trim.sha256")
}

verify_kept_files() {
  (cd "$MNT" && sha256sum -c "$WORK/keep.sha256") || return 1
  [ ! -e "$MNT/trim-me" ]
}

# Delete the big file and trim the filesystem's free space; with --wait-host the host measures the
# array's physical space on both sides of the fstrim.
delete_and_trim() {
  # ext4 gives a deleted file's blocks back to its free-space bitmaps when the journal commit that
  # freed them completes, which may be after the first sync returns; fstrim skips blocks still in
  # use. (Seen on kernel 6.1.0-57 on a busy host: ext4 fstrim trimmed 15.6 GiB, none of it the file.)
  rm "$MNT/trim-me" && sync && sleep 1 && sync || return 1
  wait_host "$1-pre-trim deleted_bytes=$((TRIM_FILE_MIB * 1048576))" || return 1
  fstrim -v "$MNT" || return 1
  wait_host "$1-post-trim" || return 1
}

# Snapshot under load (ext4, with --wait-host): a writer keeps writing to the mounted filesystem;
# the guest freezes it (fsfreeze: the journal is flushed, writes block), the host takes
# `pstorage snapshot create EXPORT guest-snap`, the guest thaws it, the writer runs on, and the
# snapshot export EXPORT@guest-snap, attached read-only on a second device, must fsck clean.
SNAP_DEV=/dev/nbd1
snapshot_under_load() {
  [ "$WAIT_HOST" = 1 ] || return 0
  command -v fsfreeze >/dev/null 2>&1 || { say "fsfreeze is not installed"; return 1; }
  : > "$WORK/load-on"
  (
    i=0
    while [ -e "$WORK/load-on" ]; do
      dd if=/dev/urandom of="$MNT/load-$((i % 4))" bs=64k count=16 conv=fsync 2>/dev/null
      i=$((i + 1))
    done
  ) &
  writer=$!
  sleep 1
  if ! fsfreeze -f "$MNT"; then rm -f "$WORK/load-on"; wait "$writer"; return 1; fi
  wait_host "snapshot name=guest-snap"
  taken=$?
  fsfreeze -u "$MNT"
  sleep 1
  rm -f "$WORK/load-on"
  wait "$writer"
  [ "$taken" = 0 ] || return 1
  nbd-client "$HOST" "$PORT" "$SNAP_DEV" -N "${EXPORT:-default}@guest-snap" -readonly || return 1
  e2fsck -fn "$SNAP_DEV"
  checked=$?
  nbd-client -d "$SNAP_DEV" >/dev/null 2>&1
  [ "$checked" = 0 ]
}

# The TLS round's export admits only this guest's certificate: a plain (non-TLS) client is told
# it does not exist. So if this is refused and the TLS attach then works, the TLS attach did not
# fall back to plain NBD (the host also checks its log for the TLS session).
plain_attach_refused() {
  if nbd-client "$HOST" "$PORT" "$DEV" -N "$ROUND_EXPORT" > "$WORK/plain-attach.log" 2>&1; then
    say "a plain (non-TLS) attach of '$ROUND_EXPORT' succeeded; the server must refuse it"
    return 1
  fi
  say "plain attach of '$ROUND_EXPORT' refused, as it must be: $(tr '\n' ' ' < "$WORK/plain-attach.log")"
}

fs_round() { # fs_round FS [BLOCK_SIZE] [tls]
  fs=$1
  bs=${2:-}
  ROUND_EXPORT=$EXPORT
  ROUND_TLS=0
  if [ "${3:-}" = tls ]; then
    ROUND_EXPORT=$TLS_EXPORT
    step "$fs-plain-attach-refused" plain_attach_refused
    ROUND_TLS=1
  fi
  step "$fs-connect" connect "$bs"
  report_negotiated "$fs-connection${bs:+ (-b $bs)}$([ "$ROUND_TLS" = 1 ] && echo " over TLS to '$ROUND_EXPORT'")"
  step "$fs-mkfs" make_fs "$fs"
  step "$fs-mount" mount_fs "$fs"
  step "$fs-write" write_files
  step "$fs-umount" umount "$MNT"
  step "$fs-check" check_fs "$fs"
  step "$fs-disconnect" disconnect
  step "$fs-reconnect" connect "$bs"
  step "$fs-mount-again" mount_fs "$fs"
  step "$fs-verify" verify_files
  [ "$fs" = ext4 ] && step "$fs-snapshot-under-load" snapshot_under_load
  step "$fs-trim" delete_and_trim "$fs"
  step "$fs-umount-after-trim" umount "$MNT"
  step "$fs-check-after-trim" check_fs "$fs"
  step "$fs-mount-after-trim" mount_fs "$fs"
  step "$fs-verify-after-trim" verify_kept_files
  step "$fs-final-umount" umount "$MNT"
  step "$fs-final-disconnect" disconnect
  ROUND_EXPORT=$EXPORT
  ROUND_TLS=0
}

# --- fio on the raw device --------------------------------------------------------------------

# run_fio NAME fio-options...: a short job with crc32c verification of everything it wrote (fio
# reads it all back after the write phase; its "read:" line is that verify pass).
run_fio() {
  job=$1
  shift
  fio --name="$job" --filename="$DEV" --direct=1 --ioengine=libaio --verify=crc32c \
    --verify_fatal=1 --do_verify=1 "$@" > "$WORK/fio-$job.log" 2>&1
  status=$?
  # The per-job summary lines: IOPS and bandwidth for the write phase and the verify reads.
  grep -E 'IOPS=|err=|verify|error' "$WORK/fio-$job.log" | sed "s/^/pstorage-guest: fio $job: /"
  [ $status -eq 0 ] || { cat "$WORK/fio-$job.log"; return 1; }
}

fio_round() {
  command -v fio >/dev/null 2>&1 || { say "fio is not installed"; CURRENT_STEP=fio-missing; fail; }
  step fio-connect connect
  report_negotiated "fio-connection"
  # Bounded by size, not --runtime: a runtime limit would also cut the verify pass short and
  # leave part of what was written unchecked.
  # The sequential job crosses the 4 GiB mark, where 32-bit offset bugs would show.
  step fio-randwrite-4k run_fio randwrite-4k --rw=randwrite --bs=4k --iodepth=16 --size=32m
  step fio-seqwrite-128k run_fio seqwrite-128k --rw=write --bs=128k --iodepth=8 --offset=4064m --size=64m
  step fio-disconnect disconnect
}

# --- main -------------------------------------------------------------------------------------

say "kernel $(uname -r); server $HOST:$PORT export '$EXPORT'; device $DEV; mode $([ $QUICK = 1 ] && echo quick || echo full)${TLS_DIR:+; XFS round over TLS to '$TLS_EXPORT' (server name $TLS_HOSTNAME)}"
[ "$(id -u)" = 0 ] || { say "must run as root"; fail "not root"; }
step load-nbd load_nbd
if [ -e "$SYS/pid" ]; then CURRENT_STEP=device-free; fail "$DEV is already connected"; fi

fs_round ext4
if command -v mkfs.xfs >/dev/null 2>&1 && command -v xfs_repair >/dev/null 2>&1; then
  grep -qw xfs /proc/filesystems || modprobe xfs 2>/dev/null
  fs_round xfs 4096 ${TLS_DIR:+tls}
elif [ -n "$TLS_DIR" ]; then
  CURRENT_STEP=xfs-missing; fail "the TLS round is the XFS round: xfsprogs is needed"
else
  say "xfsprogs not installed: XFS round skipped"
fi
[ "$QUICK" = 1 ] || fio_round

show_kernel_messages problems
rm -rf "$WORK"
echo "PSTORAGE-GUEST-STEP: total $(elapsed "$STARTED_AT" "$(now)") s"
echo "PSTORAGE-GUEST-RESULT: PASS"
