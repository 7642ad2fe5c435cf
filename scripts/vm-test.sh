#!/usr/bin/env bash
# vm-test.sh: prove the real Linux kernel NBD client works against pstorage, without Vagrant.
#
# Boots Debian's cloud kernel under qemu (TCG, 1 vCPU, serial console; the host side shared with
# scripts/vm-failover-test.sh is scripts/vm/host-lib.sh) with a small initramfs
# (scripts/vm/build-initramfs.sh) whose /init runs scripts/vm/guest-test.sh: nbd-client attaches
# /dev/nbd0 to pstorage, then ext4 and XFS rounds (mkfs, write, fsck, reconnect, verify, fstrim)
# and, unless --quick, two fio jobs with crc32c verification. The guest reaches the host only
# through qemu's user-network alias 10.0.2.2, which is the host's 127.0.0.1.
#
# TLS: the pstorage started here serves with --tls on and certificates made here with certtool (a
# CA, a server certificate for the name pstorage-host and 10.0.2.2, a client certificate with the
# common name pstorage-guest, whose CA, certificate and key go into the initramfs). The XFS round
# attaches a second volume, guest-tls, whose access list admits only pstorage-guest, with
# nbd-client -cacertfile -certfile -keyfile -tlshostname; the guest first checks that a plain
# attach of it is refused, and this script checks afterwards that pstorage logged a TLS session
# with that identity for every attach of guest-tls. The ext4 round, the snapshot and fio stay on
# plain NBD (the kernel path the Vagrant box also runs).
#
# Around each fstrim the guest stops and waits (PSTORAGE-GUEST-WAIT on the console); this script
# then measures the array's physical space and answers on the console. The space must go down.
#
# Usage: scripts/vm-test.sh [--quick] [--port N [--export NAME] [--data-dir DIR]] [--timeout S]
#                           [--no-tls] [--keep]
#   --quick         no fio jobs (about half the time)
#   --no-tls        every round on plain NBD (always so with --port: TLS needs the server's setup)
#   --port N        use a pstorage already serving on 127.0.0.1:N instead of starting one; the
#                   trim check then needs --data-dir (that server's data directory) or is skipped
#   --export NAME   export to attach (default: default)
#   --timeout S     give up on the guest after S seconds and kill qemu (default 600)
#   --keep          keep the work directory (console log, server log, data directory)
# Environment: PSTORAGE_VM_CACHE (default ${XDG_CACHE_HOME:-$HOME/.cache}/pstorage-vm) holds the
# downloaded kernel across runs.
# Exit status: 0 only when the guest printed PSTORAGE-GUEST-RESULT: PASS, every trim freed space
# and pstorage (when started here) stopped with exit code 0.
# Needs root (or sudo) for apt-get when packages are missing; installs them on first use.
set -euo pipefail

REPO_ROOT=$(cd "$(dirname "$0")/.." && pwd)
VM_DIR=$REPO_ROOT/scripts/vm
LOG_PREFIX=vm-test
# shellcheck source=scripts/vm/host-lib.sh
. "$VM_DIR/host-lib.sh"
DEBIAN_PACKAGES=("${GUEST_DEBIAN_PACKAGES[@]}" gnutls-bin)

PORT=""
EXPORT=default
EXTERNAL_DATA_DIR=""
TLS=1
# The TLS round: the volume it attaches, the client identity on its access list (the client
# certificate's common name) and the server name the guest checks the certificate against.
TLS_EXPORT=guest-tls
TLS_IDENTITY=pstorage-guest
TLS_HOSTNAME=pstorage-host
script_option() {
  case $1 in
    --port) PORT=${2:-}; OPTION_WORDS=2 ;;
    --export) EXPORT=${2:-}; OPTION_WORDS=2 ;;
    --data-dir) EXTERNAL_DATA_DIR=${2:-}; OPTION_WORDS=2 ;;
    --no-tls) TLS=0 ;;
    *) return 1 ;;
  esac
}
parse_options "$@"
[ -z "$PORT" ] || TLS=0

# --- cleanup ------------------------------------------------------------------------------------

SERVER_PID=""
stop_started_processes() {
  if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
  fi
}
begin_run pstorage-vm

# --- TLS credentials ----------------------------------------------------------------------------

# make_tls_credentials: $WORK/tls/server (ca-cert.pem, server-cert.pem, server-key.pem, for
# --tls-certificates) and $WORK/tls/client (ca-cert.pem, client-cert.pem, client-key.pem, for the
# initramfs). ECDSA keys: generated in milliseconds, and cheap for the guest's TLS handshake under
# TCG. Valid from a day ago, so that a guest clock a little behind the host's still accepts them.
TLS_ROOT=""
certtool_template() { # certtool_template NAME TEXT: write $TLS_ROOT/NAME.info and print its path
  printf '%s' "$2" > "$TLS_ROOT/$1.info"
  echo "$TLS_ROOT/$1.info"
}
make_tls_credentials() {
  local from
  TLS_ROOT=$WORK/tls
  mkdir -p "$TLS_ROOT/server" "$TLS_ROOT/client"
  from=$(date -u -d '1 day ago' '+%Y-%m-%d %H:%M:%S')
  certtool --generate-privkey --key-type=ecdsa --outfile "$TLS_ROOT/ca-key.pem" 2>/dev/null
  certtool --generate-self-signed --load-privkey "$TLS_ROOT/ca-key.pem" --outfile "$TLS_ROOT/ca-cert.pem" \
    --template "$(certtool_template ca "cn = pstorage vm-test CA
ca
cert_signing_key
activation_date = \"$from\"
expiration_days = 3
")" >/dev/null 2>&1
  # A key and a certificate signed by the CA: NAME (server or client), its template's own lines.
  signed_by_ca() {
    local name=$1 lines=$2
    certtool --generate-privkey --key-type=ecdsa --outfile "$TLS_ROOT/$name/$name-key.pem" 2>/dev/null
    certtool --generate-certificate --load-ca-certificate "$TLS_ROOT/ca-cert.pem" --load-ca-privkey "$TLS_ROOT/ca-key.pem" \
      --load-privkey "$TLS_ROOT/$name/$name-key.pem" --outfile "$TLS_ROOT/$name/$name-cert.pem" \
      --template "$(certtool_template "$name" "$lines
signing_key
activation_date = \"$from\"
expiration_days = 3
")" >/dev/null 2>&1
  }
  signed_by_ca server "cn = $TLS_HOSTNAME
dns_name = $TLS_HOSTNAME
ip_address = 10.0.2.2
ip_address = 127.0.0.1
tls_www_server"
  signed_by_ca client "cn = $TLS_IDENTITY
tls_www_client"
  cp "$TLS_ROOT/ca-cert.pem" "$TLS_ROOT/server/ca-cert.pem"
  cp "$TLS_ROOT/ca-cert.pem" "$TLS_ROOT/client/ca-cert.pem"
  local file
  for file in server/server-cert.pem server/server-key.pem client/client-cert.pem client/client-key.pem; do
    [ -s "$TLS_ROOT/$file" ] || die "certtool made no $file (templates in $TLS_ROOT)"
  done
}

# --- pstorage -----------------------------------------------------------------------------------

DATA_DIR=""
start_server() {
  DATA_DIR=$WORK/data
  local tls_args=()
  [ "$TLS" = 0 ] || tls_args=(--tls on --tls-certificates "$TLS_ROOT/server")
  # debug level: the server then logs every request it rejects or fails, which this script reports,
  # and every TLS session (with the client's identity), which the TLS check reads.
  start_pstorage "$WORK/pstorage" --data-dir "$DATA_DIR" --listen 127.0.0.1:0 "${tls_args[@]}"
  SERVER_PID=$STARTED_PID
  PORT=$STARTED_PORT
}

stop_server() {
  local status=0
  kill -TERM "$SERVER_PID" 2>/dev/null || true
  wait "$SERVER_PID" || status=$?
  SERVER_PID=""
  SERVER_EXIT=$status
}

# The TLS round's volume, which only the guest's certificate may attach (plain clients are told it
# does not exist). Through the running server's management socket.
create_tls_volume() {
  node "$REPO_ROOT/bin/pstorage.js" volume create "$TLS_EXPORT" --size 16G --data-dir "$DATA_DIR" >> "$WORK/volume.log" 2>&1 \
    && node "$REPO_ROOT/bin/pstorage.js" volume access "$TLS_EXPORT" --allow "$TLS_IDENTITY" --data-dir "$DATA_DIR" >> "$WORK/volume.log" 2>&1 \
    || die "could not create the TLS volume $TLS_EXPORT: $(cat "$WORK/volume.log")"
}

# Sets TLS_REPORT, or appends to TLS_FAILURES: from the server's log, every connection that
# attached $TLS_EXPORT must have established TLS first with the guest's identity, and there must
# be at least one. (A plain attach of it is impossible by its access list anyway; this also proves
# the TLS sessions were real and says what they negotiated.)
TLS_REPORT=""
TLS_FAILURES=()
check_tls_sessions() {
  local verdict
  # shellcheck disable=SC2016 # JavaScript, not shell
  verdict=$(node -e '
    const [file, exportName, identity] = process.argv.slice(1);
    const records = require("fs").readFileSync(file, "utf8").split("\n").flatMap((line) => {
      try { return [JSON.parse(line)]; } catch { return []; }
    });
    const sessions = new Map(records.filter((r) => r.msg === "TLS established").map((r) => [r.conn, r]));
    const attaches = records.filter((r) => r.msg === "client attached" && r.export === exportName);
    const bad = attaches.filter((r) => sessions.get(r.conn)?.identity !== identity);
    if (attaches.length === 0) console.log(`FAIL no connection attached ${exportName}`);
    else if (bad.length > 0) console.log(`FAIL ${bad.length} of ${attaches.length} attaches of ${exportName} had no TLS session as ${identity} (connections ${bad.map((r) => r.conn).join(", ")})`);
    else {
      const kinds = [...new Set(attaches.map((r) => `${sessions.get(r.conn).protocol} ${sessions.get(r.conn).cipher}`))];
      console.log(`OK ${attaches.length} attaches of ${exportName}, each over TLS as ${identity} (${kinds.join("; ")})`);
    }' "$WORK/pstorage.log" "$TLS_EXPORT" "$TLS_IDENTITY" 2>&1) || verdict="FAIL the log check failed: $verdict"
  case $verdict in
    OK\ *) TLS_REPORT=${verdict#OK } ;;
    *) TLS_FAILURES+=("TLS: ${verdict#FAIL }") ;;
  esac
}

# --- the array's physical space -----------------------------------------------------------------

# The space the array occupies, in bytes: `pstorage stats --json` (top-level physicalBytes, asked
# through the running server's management socket in the data directory) when this pstorage has
# the command, else the allocated blocks of the data directory (`du -sB1`; not --apparent-size,
# since sparse files and punched holes are the point). Nothing to measure without a data
# directory (an external server started without --data-dir here): USAGE_SOURCE is then empty.
USAGE_SOURCE=""
choose_usage_source() {
  USAGE_SOURCE=""
  [ -n "$DATA_DIR" ] || return 0
  if node "$REPO_ROOT/bin/pstorage.js" stats --help >/dev/null 2>&1; then USAGE_SOURCE="stats"; else USAGE_SOURCE="du"; fi
}
# Its errors go to $WORK/stats.log, which a failed measurement shows.
stats_physical_bytes() {
  local json
  json=$(node "$REPO_ROOT/bin/pstorage.js" stats --json --data-dir "$DATA_DIR" 2>>"$WORK/stats.log") || return 1
  # shellcheck disable=SC2016 # JavaScript, not shell
  node -e '
    const bytes = JSON.parse(process.argv[1]).physicalBytes;
    if (!Number.isSafeInteger(bytes)) throw new Error(`no integer physicalBytes in: ${process.argv[1]}`);
    console.log(bytes);' "$json" 2>>"$WORK/stats.log"
}
array_physical_bytes() {
  local attempt
  case $USAGE_SOURCE in
    stats)
      # Retried: the guest is idle meanwhile. A retry that was needed is reported by the caller.
      for attempt in 1 2 3; do
        stats_physical_bytes && return 0
        echo "(attempt $attempt failed at $(date +%T.%N))" >> "$WORK/stats.log"
        sleep 1
      done
      return 1
      ;;
    du) du -sB1 "$DATA_DIR" | awk '{ print $1 }' ;;
  esac
}

# --- the guest ----------------------------------------------------------------------------------

declare -A USAGE_BYTES=()
STATS_FAILURES=0
TRIM_FAILURES=()
TRIM_REPORTS=()
SNAPSHOT_FAILURES=()
SNAPSHOT_TAKEN=0
# on_guest_wait TAG [key=value...]: the guest is idle at TAG; measure, then let it go on.
on_guest_wait() {
  local tag=$1 bytes fs before deleted=""
  shift
  bytes=$(array_physical_bytes) || bytes=""
  if [ -s "$WORK/stats.log" ]; then
    log "pstorage stats failed at least once so far (\$WORK/stats.log):"
    sed 's/^/stats| /' "$WORK/stats.log" | tail -n 10
    STATS_FAILURES=$(grep -c 'attempt .* failed' "$WORK/stats.log")
  fi
  USAGE_BYTES[$tag]=${bytes:-unknown}
  log "array physical bytes at $tag: ${bytes:-unknown} (${USAGE_SOURCE:-not measured})"
  case $tag in
    snapshot)
      # Snapshot under load: the guest has frozen its filesystem; take the snapshot now.
      if [ -z "$DATA_DIR" ]; then
        SNAPSHOT_FAILURES+=("no data directory: cannot take the snapshot")
      elif node "$REPO_ROOT/bin/pstorage.js" snapshot create "$EXPORT" guest-snap --data-dir "$DATA_DIR" >> "$WORK/snapshot.log" 2>&1; then
        SNAPSHOT_TAKEN=1
        log "snapshot $EXPORT@guest-snap taken while the guest's ext4 was frozen under a write load"
      else
        SNAPSHOT_FAILURES+=("pstorage snapshot create failed: $(tail -n 3 "$WORK/snapshot.log")")
      fi
      ;;
    *-pre-trim)
      deleted=${1:-}
      USAGE_BYTES[$tag.deleted]=${deleted#deleted_bytes=}
      ;;
    *-post-trim)
      fs=${tag%-post-trim}
      before=${USAGE_BYTES[$fs-pre-trim]:-unknown}
      deleted=${USAGE_BYTES[$fs-pre-trim.deleted]:-?}
      if [ -z "$USAGE_SOURCE" ]; then
        TRIM_REPORTS+=("$fs: not measured (no data directory)")
      elif [ "$before" = unknown ] || [ -z "$bytes" ]; then
        TRIM_FAILURES+=("$fs: could not measure the array's space ($USAGE_SOURCE) around fstrim: $(tail -n 5 "$WORK/stats.log" 2>/dev/null)")
        TRIM_REPORTS+=("$fs: measurement failed ($before -> ${bytes:-unknown})")
      elif ((bytes < before)); then
        TRIM_REPORTS+=("$fs: $before -> $bytes bytes, freed $((before - bytes)) (guest deleted $deleted; $USAGE_SOURCE)")
      else
        TRIM_FAILURES+=("$fs: physical bytes did not go down after fstrim ($before -> $bytes)")
        TRIM_REPORTS+=("$fs: $before -> $bytes bytes, NOT freed (guest deleted $deleted; $USAGE_SOURCE)")
      fi
      ;;
  esac
  echo go >&"$CONSOLE_IN"
}

run_guest() {
  local append
  append="console=ttyS0 quiet loglevel=4 panic=-1 pstorage_host=10.0.2.2 pstorage_port=$PORT"
  append+=" pstorage_export=$EXPORT pstorage_mode=$MODE"
  [ "$TLS" = 0 ] || append+=" pstorage_tls_export=$TLS_EXPORT pstorage_tls_hostname=$TLS_HOSTNAME"
  boot_guest "$WORK/initramfs.cpio" "$append"
}

# --- main ---------------------------------------------------------------------------------------

prepare_host
if [ "$TLS" = 1 ]; then
  step_begin tls-credentials
  make_tls_credentials
  step_end
fi
prepare_guest ${TLS_ROOT:+"$TLS_ROOT/client"}

step_begin server
if [ -n "$PORT" ]; then
  DATA_DIR=$EXTERNAL_DATA_DIR
  log "using the pstorage already serving on 127.0.0.1:$PORT, export '$EXPORT'"
  [ -n "$DATA_DIR" ] || log "no --data-dir given: the trim space check is skipped"
else
  start_server
  log "pstorage (pid $SERVER_PID) serving on 127.0.0.1:$PORT, data directory $DATA_DIR"
  if [ "$TLS" = 1 ]; then
    create_tls_volume
    log "TLS offered (--tls on); volume $TLS_EXPORT admits only the TLS client $TLS_IDENTITY"
  fi
fi
choose_usage_source
log "array space measured with: ${USAGE_SOURCE:-nothing}"
step_end

step_begin guest
run_guest
step_end "${GUEST_RESULT:-no result}"

SERVER_EXIT=0
if [ -n "$SERVER_PID" ]; then
  step_begin stop-server
  stop_server
  step_end "exit code $SERVER_EXIT"
  report_server_log "$WORK/pstorage.log"
  [ "$TLS" = 0 ] || check_tls_sessions
fi

((${#GUEST_TIMINGS[@]} == 0)) || log "guest steps (seconds): $(printf '%s; ' "${GUEST_TIMINGS[@]}")"
log_timings
for report in "${TRIM_REPORTS[@]}"; do log "trim: $report"; done
[ -z "$TLS_REPORT" ] || log "tls: $TLS_REPORT"
((STATS_FAILURES == 0)) || log "warning: \`pstorage stats --json\` failed $STATS_FAILURES time(s) and was retried"

problems=()
[ "$GUEST_RESULT" = PASS ] || problems+=("guest result: ${GUEST_RESULT:-none (see the console above)}")
((${#TRIM_REPORTS[@]})) || problems+=("the guest never reached a trim check")
problems+=("${TRIM_FAILURES[@]}")
problems+=("${SNAPSHOT_FAILURES[@]}")
problems+=("${TLS_FAILURES[@]}")
if [ -n "$DATA_DIR" ] && [ "$SNAPSHOT_TAKEN" != 1 ]; then problems+=("the guest never reached the snapshot-under-load step"); fi
[ "$SERVER_EXIT" = 0 ] || problems+=("pstorage exited with code $SERVER_EXIT after SIGTERM")
finish "${problems[@]}"
