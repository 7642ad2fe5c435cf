#!/usr/bin/env bash
# vm-failover-test.sh: a Linux guest's mounted ext4 on an ActiveCluster pod volume survives the
# death of the array it writes through (issue 15: "fsck -n clean" after a failover to B).
#
# Starts, on loopback only: an etcd mediator (free ports, its own data directory), arrays A and B
# (`pstorage serve` with replication listeners and a shared secret), pod `pod` created on A with B
# as its peer, and a pod volume `vol` on both. Then boots the qemu guest of scripts/vm-test.sh
# (the shared host side is scripts/vm/host-lib.sh) with /init running scripts/vm/guest-failover.sh:
# the guest attaches vol through A (10.0.2.2:PORT_A, /dev/nbd0) and through B (/dev/nbd1) and
# joins them in a dm-multipath device whose first path group is A (or, --both-paths, one group
# of both), makes ext4 on it, mounts it,
# writes files and keeps writing. When the guest prints PSTORAGE-GUEST-WAIT: kill-a, this script
# checks both arrays are in sync, SIGKILLs A, and answers "killed"; the guest's I/O fails over to
# B while the writer runs on. The guest then unmounts, attaches B alone, runs e2fsck -fn (must
# be clean) and checks the sha256 of every file whose sync had returned. This script checks that
# B went on as the survivor (pod state degraded) and stops cleanly at SIGTERM.
#
# Usage: scripts/vm-failover-test.sh [--quick] [--both-paths] [--timeout S] [--keep]
#   --quick         fewer and smaller files (the default test run uses it)
#   --both-paths    the guest's I/O goes through A and B by turns (one multipath group), so writes
#                   through B may be on their way to A, the pod's leader, when A dies
#   --timeout S     give up on the guest after S seconds and kill qemu (default 600)
#   --keep          keep the work directory (console log, server and etcd logs, data directories)
# Environment: PSTORAGE_VM_CACHE as for scripts/vm-test.sh (the downloaded kernel).
# Exit status: 0 only when the guest printed PSTORAGE-GUEST-RESULT: PASS, B was degraded (alone,
# serving) after the kill and B stopped with exit code 0; the last line is "vm-failover-test:
# PASS" or "vm-failover-test: FAIL: ..." lines.
# Needs root (or sudo) for apt-get when packages are missing; installs them on first use.
set -euo pipefail

REPO_ROOT=$(cd "$(dirname "$0")/.." && pwd)
VM_DIR=$REPO_ROOT/scripts/vm
LOG_PREFIX=vm-failover-test
# shellcheck source=scripts/vm/host-lib.sh
. "$VM_DIR/host-lib.sh"
DEBIAN_PACKAGES=("${GUEST_DEBIAN_PACKAGES[@]}" etcd-server)

POD=pod
VOLUME=vol
VOLUME_SIZE=512M
BOTH_PATHS=0
script_option() {
  case $1 in
    --both-paths) BOTH_PATHS=1 ;;
    *) return 1 ;;
  esac
}
parse_options "$@"

# --- cleanup ------------------------------------------------------------------------------------

ETCD_PID=""
A_PID=""
B_PID=""
stop_started_processes() {
  local pid
  for pid in "$A_PID" "$B_PID" "$ETCD_PID"; do
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid" 2>/dev/null || true; fi
  done
}
begin_run pstorage-vm-failover

# --- the cluster --------------------------------------------------------------------------------

# free_ports N: N TCP ports the kernel says are free now on 127.0.0.1 (bound to 0, then released).
free_ports() {
  # shellcheck disable=SC2016 # JavaScript, not shell
  node -e '
    const net = require("net");
    const servers = Array.from({ length: Number(process.argv[1]) }, () => net.createServer());
    Promise.all(servers.map((s) => new Promise((resolve) => s.listen(0, "127.0.0.1", () => resolve(s.address().port)))))
      .then((ports) => { console.log(ports.join(" ")); servers.forEach((s) => s.close()); });' "$1"
}

ETCD_URL=""
start_etcd() {
  local client_port peer_port i
  read -r client_port peer_port < <(free_ports 2)
  ETCD_URL=http://127.0.0.1:$client_port
  etcd --name mediator --data-dir "$WORK/etcd" \
    --listen-client-urls "$ETCD_URL" --advertise-client-urls "$ETCD_URL" \
    --listen-peer-urls "http://127.0.0.1:$peer_port" --initial-advertise-peer-urls "http://127.0.0.1:$peer_port" \
    --initial-cluster "mediator=http://127.0.0.1:$peer_port" --log-level error > "$WORK/etcd.log" 2>&1 &
  ETCD_PID=$!
  for ((i = 0; i < 150; i++)); do
    if node -e 'fetch(process.argv[1] + "/health").then((r) => r.text()).then((t) => process.exit(t.includes("\"health\":\"true\"") ? 0 : 1), () => process.exit(1))' "$ETCD_URL"; then
      return 0
    fi
    kill -0 "$ETCD_PID" 2>/dev/null || die "etcd exited at start: $(cat "$WORK/etcd.log")"
    sleep 0.1
  done
  die "etcd did not become healthy within 15 s"
}

A_PORT=""
B_PORT=""
B_REPLICATION_PORT=""
start_arrays() {
  head -c 32 /dev/urandom > "$WORK/link.secret"
  chmod 600 "$WORK/link.secret"
  local a_replication
  read -r a_replication B_REPLICATION_PORT < <(free_ports 2)
  start_pstorage "$WORK/a" --data-dir "$WORK/a" --listen 127.0.0.1:0 --capacity 4G --cache-mb 256 \
    --replication-listen "127.0.0.1:$a_replication" --replication-secret-file "$WORK/link.secret"
  A_PID=$STARTED_PID A_PORT=$STARTED_PORT
  start_pstorage "$WORK/b" --data-dir "$WORK/b" --listen 127.0.0.1:0 --capacity 4G --cache-mb 256 \
    --replication-listen "127.0.0.1:$B_REPLICATION_PORT" --replication-secret-file "$WORK/link.secret"
  B_PID=$STARTED_PID B_PORT=$STARTED_PORT
}

cli() { # cli DATA_DIR ARGS...: a pstorage command that must succeed
  local dir=$1
  shift
  node "$REPO_ROOT/bin/pstorage.js" "$@" --data-dir "$dir" 2>> "$WORK/cli.log" || die "pstorage $* failed: $(tail -n 5 "$WORK/cli.log")"
}

pod_state() { # pod_state DATA_DIR: the pod's state as that array sees it
  # shellcheck disable=SC2016 # JavaScript, not shell
  cli "$1" pod status "$POD" --json | node -e 'let s = ""; process.stdin.on("data", (d) => (s += d)).on("end", () => console.log(JSON.parse(s).state))'
}

# wait_pod_state DATA_DIR STATE SECONDS: sets POD_STATE; false when it was not reached in time.
POD_STATE=""
wait_pod_state() {
  local deadline=$((SECONDS + $3))
  for (( ; ; )); do
    POD_STATE=$(pod_state "$1")
    [ "$POD_STATE" = "$2" ] && return 0
    ((SECONDS < deadline)) || return 1
    sleep 0.2
  done
}

make_pod() {
  cli "$WORK/a" pod create "$POD" --peer "127.0.0.1:$B_REPLICATION_PORT" --mediator "$ETCD_URL" > /dev/null
  cli "$WORK/a" volume create "$VOLUME" --size "$VOLUME_SIZE" --pod "$POD" > /dev/null
  wait_pod_state "$WORK/a" in-sync 30 || die "A: pod $POD is $POD_STATE, not in-sync, 30 s after creation"
  wait_pod_state "$WORK/b" in-sync 30 || die "B: pod $POD is $POD_STATE, not in-sync, 30 s after creation"
}

# --- the kill -----------------------------------------------------------------------------------

PROBLEMS=()
KILL_REPORT=""
B_AFTER_KILL=""
on_guest_wait() {
  local tag=$1 before_a before_b killed_at degraded_ms
  if [ "$tag" != kill-a ]; then
    PROBLEMS+=("the guest asked for '$tag', which this script does not know")
    echo "unknown" >&"$CONSOLE_IN"
    return 0
  fi
  before_a=$(pod_state "$WORK/a")
  before_b=$(pod_state "$WORK/b")
  [ "$before_a $before_b" = "in-sync in-sync" ] || PROBLEMS+=("before the kill the pod was not in sync: A $before_a, B $before_b")
  killed_at=$EPOCHREALTIME
  kill -KILL "$A_PID"
  wait "$A_PID" 2>/dev/null || true
  A_PID=""
  echo "killed" >&"$CONSOLE_IN"
  log "array A SIGKILLed while the guest writes (pod was: A $before_a, B $before_b)"
  # The guest goes on meanwhile; B must decide to go on alone (it asks the mediator).
  if wait_pod_state "$WORK/b" degraded 15; then
    degraded_ms=$(awk -v a="$killed_at" -v b="$EPOCHREALTIME" 'BEGIN { printf "%d", (b - a) * 1000 }')
    KILL_REPORT="B degraded (serving alone) at most ${degraded_ms} ms after the SIGKILL of A (polled)"
  else
    PROBLEMS+=("B did not go on alone within 15 s of the kill: pod state $POD_STATE")
  fi
  log "${KILL_REPORT:-B: $POD_STATE}"
}

# --- main ---------------------------------------------------------------------------------------

prepare_host
prepare_guest

step_begin cluster
start_etcd
start_arrays
make_pod
log "etcd $ETCD_URL (pid $ETCD_PID); A 127.0.0.1:$A_PORT (pid $A_PID); B 127.0.0.1:$B_PORT (pid $B_PID); pod $POD in sync, volume $VOLUME $VOLUME_SIZE"
step_end

step_begin guest
append="console=ttyS0 quiet loglevel=4 panic=-1 pstorage_test=failover pstorage_host=10.0.2.2"
append+=" pstorage_port=$A_PORT pstorage_port_b=$B_PORT pstorage_export=$VOLUME pstorage_mode=$MODE"
[ "$BOTH_PATHS" = 0 ] || append+=" pstorage_paths=both"
boot_guest "$WORK/initramfs.cpio" "$append"
step_end "${GUEST_RESULT:-no result}"

step_begin stop-b
B_AFTER_KILL=$(pod_state "$WORK/b")
B_EXIT=0
kill -TERM "$B_PID"
wait "$B_PID" || B_EXIT=$?
B_PID=""
# (Braces: bash reports a job killed by a signal on its own standard error.)
{
  kill -KILL "$ETCD_PID"
  wait "$ETCD_PID" || true
} 2>/dev/null
ETCD_PID=""
step_end "exit code $B_EXIT"
report_server_log "$WORK/b.log" "array B"

((${#GUEST_TIMINGS[@]} == 0)) || log "guest steps (seconds): $(printf '%s; ' "${GUEST_TIMINGS[@]}")"
log_timings
[ -z "$KILL_REPORT" ] || log "failover: $KILL_REPORT"

[ "$GUEST_RESULT" = PASS ] || PROBLEMS+=("guest result: ${GUEST_RESULT:-none (see the console above)}")
[ -n "$KILL_REPORT" ] || PROBLEMS+=("the guest never got to the kill of A, or B did not go on alone")
[ "$B_AFTER_KILL" = degraded ] || PROBLEMS+=("B's pod state at the end is '$B_AFTER_KILL', not degraded")
[ "$B_EXIT" = 0 ] || PROBLEMS+=("array B exited with code $B_EXIT after SIGTERM")
finish "${PROBLEMS[@]}"
