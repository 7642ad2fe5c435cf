# host-lib.sh: what the host-side guest tests share (sourced by scripts/vm-test.sh and
# scripts/vm-failover-test.sh; not run on its own): log lines and step timing, the Debian packages,
# Debian's cloud kernel unpacked into a cache, starting `pstorage serve`, and booting the qemu guest
# with its serial console read line by line; and the options, work directory and cleanup they have
# in common.
#
# The sourcing script sets LOG_PREFIX (its name in log lines), REPO_ROOT and VM_DIR (scripts/vm)
# before sourcing this, then DEBIAN_PACKAGES (GUEST_DEBIAN_PACKAGES below and its own), and calls
# parse_options and begin_run. It defines script_option (its own options), stop_started_processes
# (for the cleanup) and on_guest_wait TAG [key=value...], called for each "PSTORAGE-GUEST-WAIT:"
# line, which must answer the guest with a line on the console (`echo go >&"$CONSOLE_IN"`).

# What the guest's initramfs (scripts/vm/build-initramfs.sh) and qemu need on this host, and the
# kernel the guest boots.
GUEST_DEBIAN_PACKAGES=(qemu-system-x86 busybox-static kmod cpio nbd-client e2fsprogs xfsprogs fio util-linux
  coreutils dmsetup)
KERNEL_META_PACKAGE=linux-image-cloud-amd64

log() { echo "$LOG_PREFIX: $*"; }
die() { echo "$LOG_PREFIX: FAIL: $*" >&2; exit 1; }

# --- options and the work directory -------------------------------------------------------------

usage() {
  sed -n '/^# Usage:/,/^# Needs root/p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

# parse_options ARGS...: the options every guest test takes (--quick, --timeout S, --keep, -h);
# any other goes to the script's own script_option WORD [NEXT...], which sets OPTION_WORDS to the
# number of words it used (1 or 2) or returns 1 for an option it does not know. Sets MODE,
# TIMEOUT_S, KEEP (defaults full, 600, 0) and CACHE_DIR.
MODE=full
TIMEOUT_S=600
KEEP=0
parse_options() {
  while [ $# -gt 0 ]; do
    OPTION_WORDS=1
    case $1 in
      --quick) MODE=quick ;;
      --timeout) [ $# -ge 2 ] || usage; TIMEOUT_S=$2; OPTION_WORDS=2 ;;
      --keep) KEEP=1 ;;
      -h | --help) usage ;;
      *) script_option "$@" || { echo "$LOG_PREFIX: unknown argument '$1'" >&2; usage; } ;;
    esac
    [ $# -ge "$OPTION_WORDS" ] || usage
    shift "$OPTION_WORDS"
  done
  CACHE_DIR=${PSTORAGE_VM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/pstorage-vm}
}

# begin_run NAME: the work directory ($WORK, /tmp/NAME.XXXXXX) and the cleanup at exit, which stops
# qemu and calls the script's own stop_started_processes (each process it started, by PID), then
# removes the work directory unless the run failed (FAILED stays 1 until the script sets it to
# 0) or --keep was given.
begin_run() {
  WORK=$(mktemp -d "${TMPDIR:-/tmp}/$1.XXXXXX")
  # When the caller dies (an ava worker killed on timeout), stop rather than run on unobserved.
  PARENT_PID=$PPID
  FAILED=1
  trap cleanup EXIT
  trap 'exit 130' INT TERM
}
cleanup() {
  # Subshells that inherit the trap must not stop anything: only the script itself cleans up.
  [ "$BASHPID" = "$$" ] || return 0
  stop_guest
  stop_started_processes
  if [ "$KEEP" = 1 ] || [ "$FAILED" = 1 ]; then
    log "work directory kept: $WORK"
  else
    rm -rf "$WORK"
  fi
}

# finish PROBLEM...: the closing verdict, "FAIL: PROBLEM" lines and exit status 1, or "PASS" (and
# the work directory goes at exit, unless --keep).
finish() {
  local problem
  if (($#)); then
    for problem; do log "FAIL: $problem"; done
    exit 1
  fi
  FAILED=0
  log "PASS"
}

# --- step timing --------------------------------------------------------------------------------

SCRIPT_STARTED_AT=$EPOCHREALTIME
STEP_NAME=""
STEP_STARTED_AT=""
TIMINGS=()
step_begin() {
  STEP_NAME=$1
  STEP_STARTED_AT=$EPOCHREALTIME
  log "step $STEP_NAME ..."
}
step_end() {
  local seconds
  seconds=$(awk -v a="$STEP_STARTED_AT" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }')
  TIMINGS+=("$STEP_NAME ${seconds}s")
  log "step $STEP_NAME done in ${seconds} s${1:+ ($1)}"
}
# The closing timing line: every host step, and the whole run.
log_timings() {
  log "host steps: $(printf '%s; ' "${TIMINGS[@]}")total $(awk -v a="$SCRIPT_STARTED_AT" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }')s"
}

# --- packages -----------------------------------------------------------------------------------

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO=sudo
APT_UPDATED=0
apt_update_once() {
  [ "$APT_UPDATED" = 1 ] && return 0
  $SUDO apt-get update -qq
  APT_UPDATED=1
}
ensure_packages() {
  local missing=() pkg
  for pkg in "${DEBIAN_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
  done
  if ((${#missing[@]})); then
    log "installing Debian packages: ${missing[*]}"
    apt_update_once
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
}

# --- kernel -------------------------------------------------------------------------------------

# Sets KERNEL_ROOT, KERNEL_VERSION and KERNEL_IMAGE: Debian's current cloud kernel, downloaded once
# into the cache and unpacked there with dpkg-deb (never installed on this host). Under a lock on
# the cache: the test suite may run vm-test.sh and vm-failover-test.sh at the same time, and two
# first downloads would remove each other's unpacked tree.
fetch_kernel() {
  local lock
  mkdir -p "$CACHE_DIR"
  exec {lock}> "$CACHE_DIR/.lock"
  flock "$lock"
  fetch_kernel_locked
  exec {lock}>&-
}
fetch_kernel_locked() {
  local package deb
  package=$(apt-cache depends "$KERNEL_META_PACKAGE" 2>/dev/null | awk '/Depends: linux-image-/ { print $2; exit }' || true)
  if [ -z "$package" ]; then
    apt_update_once
    package=$(apt-cache depends "$KERNEL_META_PACKAGE" | awk '/Depends: linux-image-/ { print $2; exit }')
  fi
  [ -n "$package" ] || die "cannot resolve $KERNEL_META_PACKAGE to a versioned kernel package"
  mkdir -p "$CACHE_DIR"
  deb=$(find "$CACHE_DIR" -maxdepth 1 -name "${package}_*.deb" | sort | tail -n 1)
  if [ -z "$deb" ]; then
    log "downloading $package into $CACHE_DIR"
    (cd "$CACHE_DIR" && apt-get download -o APT::Sandbox::User=root "$package" >/dev/null) \
      || { apt_update_once; (cd "$CACHE_DIR" && apt-get download -o APT::Sandbox::User=root "$package" >/dev/null); }
    deb=$(find "$CACHE_DIR" -maxdepth 1 -name "${package}_*.deb" | sort | tail -n 1)
    [ -n "$deb" ] || die "apt-get download $package left no .deb in $CACHE_DIR"
    # Older kernels are superseded: keep the cache to one.
    find "$CACHE_DIR" -maxdepth 1 -name 'linux-image-*' ! -name "${package}_*" -exec rm -rf {} +
  fi
  KERNEL_ROOT=${deb%.deb}.root
  if [ ! -d "$KERNEL_ROOT" ]; then
    rm -rf "$KERNEL_ROOT.tmp"
    dpkg-deb -x "$deb" "$KERNEL_ROOT.tmp"
    KERNEL_VERSION=$(basename "$(find "$KERNEL_ROOT.tmp/lib/modules" -mindepth 1 -maxdepth 1 -type d | head -n 1)")
    depmod -b "$KERNEL_ROOT.tmp" "$KERNEL_VERSION"
    mv "$KERNEL_ROOT.tmp" "$KERNEL_ROOT"
  fi
  KERNEL_VERSION=$(basename "$(find "$KERNEL_ROOT/lib/modules" -mindepth 1 -maxdepth 1 -type d | head -n 1)")
  KERNEL_IMAGE=$KERNEL_ROOT/boot/vmlinuz-$KERNEL_VERSION
  [ -f "$KERNEL_IMAGE" ] || die "no kernel image in $KERNEL_ROOT/boot"
}

# The first steps of every guest test, timed: the packages (and node), then, once the caller has
# made what goes into the initramfs, the kernel and the initramfs ($WORK/initramfs.cpio; the
# arguments after the kernel's are build-initramfs.sh's optional ones).
prepare_host() {
  log "mode $MODE; cache $CACHE_DIR; work $WORK"
  step_begin packages
  ensure_packages
  step_end
  command -v node >/dev/null || die "node is not installed (pstorage needs Node 20)"
}
prepare_guest() {
  step_begin kernel
  fetch_kernel
  step_end "$KERNEL_VERSION"
  step_begin initramfs
  bash "$VM_DIR/build-initramfs.sh" "$KERNEL_ROOT" "$KERNEL_VERSION" "$WORK/initramfs.cpio" "$@"
  step_end "$(($(stat -c %s "$WORK/initramfs.cpio") / 1048576)) MiB"
}

# --- pstorage -----------------------------------------------------------------------------------

ensure_built() {
  [ -f "$REPO_ROOT/build/src/cli/main.js" ] && return 0
  log "pstorage is not built: building"
  (cd "$REPO_ROOT" && npx tsc -p tsconfig.json)
}

# start_pstorage LOG_BASE SERVE_ARGS...: `pstorage serve SERVE_ARGS` in the background, standard
# output to LOG_BASE.out and its JSON log (PSTORAGE_LOG, default debug) to LOG_BASE.log; waits for
# its "listening" line. Sets STARTED_PID and STARTED_PORT (its first TCP NBD port).
STARTED_PID=""
STARTED_PORT=""
start_pstorage() {
  local log_base=$1 i
  shift
  ensure_built
  PSTORAGE_LOG=${PSTORAGE_LOG:-debug} node "$REPO_ROOT/bin/pstorage.js" serve "$@" > "$log_base.out" 2> "$log_base.log" &
  STARTED_PID=$!
  for ((i = 0; i < 300; i++)); do
    if grep -q '"msg":"listening"' "$log_base.log"; then
      STARTED_PORT=$(grep '"msg":"listening"' "$log_base.log" | head -n 1 | grep -o '"tcp":\["[^"]*"' | grep -o '[0-9]*"$' | tr -d '"')
      [ -n "$STARTED_PORT" ] || die "pstorage is listening but logged no TCP port: $(cat "$log_base.log")"
      return 0
    fi
    kill -0 "$STARTED_PID" 2>/dev/null || die "pstorage exited at start: $(cat "$log_base.log")"
    sleep 0.1
  done
  die "pstorage did not log \"listening\" within 30 s ($log_base.log)"
}

# Problems a server logged: warnings and errors, and the requests it rejected or failed (debug).
# report_server_log LOG_FILE [NAME]
report_server_log() {
  local problems name=${2:-pstorage}
  problems=$(grep -E '"level":"(warn|error)"|"msg":"request (rejected|failed)' "$1" || true)
  if [ -n "$problems" ]; then
    log "$name logged $(echo "$problems" | wc -l) problem line(s); the first 20:"
    echo "$problems" | head -n 20 | sed 's/^/server| /'
  else
    log "$name log: no warnings, errors, rejected or failed requests"
  fi
}

# --- the guest ----------------------------------------------------------------------------------

# boot_guest INITRAMFS APPEND: runs qemu (TCG, 1 vCPU, serial console on a FIFO it reads from and
# a log file it writes) until it powers off or TIMEOUT_S passes, echoing each console line as
# "guest| LINE". Sets GUEST_RESULT (from "PSTORAGE-GUEST-RESULT:") and GUEST_TIMINGS (the
# "PSTORAGE-GUEST-STEP:" lines), and calls on_guest_wait for each "PSTORAGE-GUEST-WAIT:" line.
QEMU_PID=""
GUEST_RESULT=""
GUEST_TIMINGS=()
CONSOLE_IN=""
boot_guest() {
  local initramfs=$1 append=$2 line printed=0 total deadline i alive
  mkfifo -m 600 "$WORK/console.in"
  : > "$WORK/console.log" # exists before the loop below reads it, whenever qemu's shell opens it
  # Read-write open: neither side blocks, and the FIFO stays open for the whole run.
  exec {CONSOLE_IN}<>"$WORK/console.in"
  # -cpu max: SSE4.2 lets crc32c-intel load (XFS and fio's crc32c checks are cheaper).
  # romfile= : no iPXE option ROM needed (the kernel is loaded directly).
  qemu-system-x86_64 -accel tcg -cpu max -smp 1 -m 1024 -nodefaults -no-user-config -nographic \
    -no-reboot -serial stdio -monitor none \
    -kernel "$KERNEL_IMAGE" -initrd "$initramfs" -append "$append" \
    -netdev user,id=n0 -device virtio-net-pci,netdev=n0,romfile= \
    <&"$CONSOLE_IN" > "$WORK/console.log" 2>&1 &
  QEMU_PID=$!
  deadline=$((SECONDS + TIMEOUT_S))
  while :; do
    # Whether qemu is still running is sampled before reading, so that the last pass after it
    # exits still reads everything it wrote.
    alive=0
    kill -0 "$QEMU_PID" 2>/dev/null && alive=1
    # Complete lines only (wc -l counts newlines); \r from the serial line removed.
    total=$(wc -l < "$WORK/console.log")
    if ((total > printed)); then
      while IFS= read -r line; do
        echo "guest| $line"
        case $line in
          *PSTORAGE-GUEST-WAIT:*)
            # shellcheck disable=SC2086 # the tag and its key=value words become arguments
            on_guest_wait ${line#*PSTORAGE-GUEST-WAIT: }
            ;;
          *PSTORAGE-GUEST-STEP:*) GUEST_TIMINGS+=("${line#*PSTORAGE-GUEST-STEP: }") ;;
          *PSTORAGE-GUEST-RESULT:*) GUEST_RESULT=${line#*PSTORAGE-GUEST-RESULT: } ;;
        esac
      done < <(sed -n "$((printed + 1)),${total}p" "$WORK/console.log" | tr -d '\r')
      printed=$total
    fi
    [ "$alive" = 1 ] || break
    if ((SECONDS >= deadline)) || ! kill -0 "$PARENT_PID" 2>/dev/null; then
      if ((SECONDS >= deadline)); then
        log "guest timed out after $TIMEOUT_S s: killing qemu (pid $QEMU_PID)"
      else
        log "the process that started this script is gone: killing qemu (pid $QEMU_PID)"
      fi
      kill "$QEMU_PID" 2>/dev/null || true
      for ((i = 0; i < 50; i++)); do kill -0 "$QEMU_PID" 2>/dev/null || break; sleep 0.1; done
      kill -KILL "$QEMU_PID" 2>/dev/null || true
      break
    fi
    sleep 0.2
  done
  local qemu_status=0 last_line
  wait "$QEMU_PID" || qemu_status=$?
  QEMU_PID=""
  exec {CONSOLE_IN}>&-
  # A last line without a newline (qemu's own error, or a line cut off by the kill) is shown too.
  if [ -s "$WORK/console.log" ] && [ "$(tail -c 1 "$WORK/console.log" | wc -l)" = 0 ]; then
    last_line=$(tail -n 1 "$WORK/console.log" | tr -d '\r')
    echo "guest| $last_line"
    case $last_line in *PSTORAGE-GUEST-RESULT:*) GUEST_RESULT=${last_line#*PSTORAGE-GUEST-RESULT: } ;; esac
  fi
  [ "$qemu_status" = 0 ] || log "qemu exited with status $qemu_status"
  return 0
}

# For a cleanup trap: stop qemu if it still runs (by its PID only).
stop_guest() {
  if [ -n "$QEMU_PID" ] && kill -0 "$QEMU_PID" 2>/dev/null; then kill "$QEMU_PID" 2>/dev/null || true; fi
}
