#!/usr/bin/env bash
# ActiveCluster figures for the README, on loopback: an etcd and two arrays (A, B) in a temporary
# directory, pod "bench" with a 2 GiB pod volume; a 2 GiB local volume on A beside it.
#   1. 4 KiB randwrite QD1 and QD32 (fio nbd engine, 10 s each): local volume vs pod volume
#      through A (the leader) and through B (forwards to the leader).
#   2. RTO after SIGKILL of the leader, 5 times: a QD1 writer on B; the gap between its last write
#      acknowledged before the kill and its first one after; A restarts and rejoins each time.
#   3. Resync of 1 GiB changed: B stopped, 1 GiB written through A alone, B restarted; the resync
#      time and the bytes it sent.
#   4. A second copy of data the peer already holds: B SIGKILLed and restarted (its record is lost,
#      so every chunk is checked); bytes sent for 1 GiB already on B.
# Usage: bash scripts/activecluster-figures.sh   (needs etcd-server, fio, python3-libnbd; 10+ min;
#        RTO_RUNS=N for fewer failovers: each one costs a full resync of the crashed array)
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="$PWD/bin/pstorage.js"
POD_IO="$PWD/test/replication/pod_io.py"
DIR=$(mktemp -d /tmp/pstorage-acfig-XXXXXX)
PIDS=()
cleanup() { for pid in "${PIDS[@]}"; do kill -9 "$pid" 2>/dev/null || true; done; rm -rf "$DIR"; }
trap cleanup EXIT
port() { /usr/bin/python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
EC=$(port); EP=$(port); NA=$(port); NB=$(port); RA=$(port); RB=$(port)
head -c 32 /dev/urandom > "$DIR/secret"
etcd --name m --data-dir "$DIR/etcd" --listen-client-urls "http://127.0.0.1:$EC" --advertise-client-urls "http://127.0.0.1:$EC" \
  --listen-peer-urls "http://127.0.0.1:$EP" --initial-advertise-peer-urls "http://127.0.0.1:$EP" \
  --initial-cluster "m=http://127.0.0.1:$EP" --log-level error > "$DIR/etcd.log" 2>&1 &
PIDS+=($!)
start() { # NAME NBD_PORT REPL_PORT
  PSTORAGE_LOG=info node "$BIN" serve -d "$DIR/$1" --listen "127.0.0.1:$2" --capacity 8G --cache-mb 512 \
    --replication-listen "127.0.0.1:$3" --replication-secret-file "$DIR/secret" >> "$DIR/$1.out" 2>> "$DIR/$1.log" &
  eval "PID_$1=$!"; PIDS+=($!)
  until [ -S "$DIR/$1/pstorage.sock" ] && grep -q '"msg":"listening"' "$DIR/$1.log" 2>/dev/null; do sleep 0.2; done
}
status() { curl -s --unix-socket "$DIR/$1/pstorage.sock" http://x/api/v1/pods/bench 2>/dev/null || true; }
field() { status "$1" | /usr/bin/python3 -c "import json,sys
try: print(json.load(sys.stdin)['$2'])
except Exception: print('unavailable')"; }
wait_state() { until [ "$(field "$1" state)" = "$2" ]; do sleep 0.1; done; }
fio_iops() { # URI QD -> "iops mean_latency_us"
  fio --name=t --ioengine=nbd --uri="$1" --rw=randwrite --bs=4k --size=1G --iodepth="$2" --runtime=10 --time_based \
    --refill_buffers=1 --randrepeat=0 --output-format=json --output="$DIR/fio.json" > /dev/null
  /usr/bin/python3 -c "import json;w=json.load(open('$DIR/fio.json'))['jobs'][0]['write'];print(round(w['iops']), round(w['clat_ns']['mean']/1000))"
}
start a "$NA" "$RA"; start b "$NB" "$RB"
until curl -s "http://127.0.0.1:$EC/health" | grep -q true; do sleep 0.2; done
node "$BIN" pod create bench --peer "127.0.0.1:$RB" --mediator "http://127.0.0.1:$EC" -d "$DIR/a" > /dev/null
node "$BIN" volume create pv --size 2G --pod bench -d "$DIR/a" > /dev/null
node "$BIN" volume create lv --size 2G -d "$DIR/a" > /dev/null

echo "== 4 KiB randwrite, 10 s each (IOPS, mean latency us)"
for qd in 1 32; do
  read -r li ll <<< "$(fio_iops "nbd://127.0.0.1:$NA/lv" $qd)"
  read -r pi pl <<< "$(fio_iops "nbd://127.0.0.1:$NA/pv" $qd)"
  read -r fi fl <<< "$(fio_iops "nbd://127.0.0.1:$NB/pv" $qd)"
  echo "QD$qd local $li IOPS ${ll} us | pod via leader $pi IOPS ${pl} us (ratio $(/usr/bin/python3 -c "print(round($pi/$li,2))")) | pod via follower $fi IOPS ${fl} us (ratio $(/usr/bin/python3 -c "print(round($fi/$li,2))"))"
done

echo "== RTO after SIGKILL of the leader (A), QD1 writer on B"
RTOS=()
for run in $(seq 1 "${RTO_RUNS:-5}"); do
  /usr/bin/python3 "$POD_IO" probe "nbd://127.0.0.1:$NB/pv" $((1536 * 1024 * 1024)) 6 > "$DIR/probe.json" &
  probe=$!
  sleep 2
  killed=$(date +%s%3N); kill -9 "$PID_a"; wait "$PID_a" 2>/dev/null || true
  wait $probe
  rto=$(/usr/bin/python3 -c "
import json; p=json.load(open('$DIR/probe.json')); k=$killed
g=[s+l-k for s,l in p['gaps'] if s<=k+5 and s+l>=k]
print(round(g[0]) if g else 0, p['errors'])")
  echo "run $run: RTO ${rto% *} ms, errors ${rto#* }"; RTOS+=("${rto% *}")
  start a "$NA" "$RA"; wait_state a in-sync; wait_state b in-sync
  echo "  A rejoined: full resync (crash) $(field b lastResyncChunks) chunks in $(field b lastResyncMs) ms, $(field b lastResyncSkippedChunks) already present"
done
echo "RTO median: $(printf "%s\n" "${RTOS[@]}" | sort -n | sed -n "$(( (${#RTOS[@]} + 1) / 2 ))p") ms (of ${RTOS[*]})"

echo "== Resync of 1 GiB changed while B was away"
leader=$(field a role); echo "A is $leader"
kill -TERM "$PID_b"; wait "$PID_b" 2>/dev/null || true
wait_state a degraded
fio --name=fill --ioengine=nbd --uri="nbd://127.0.0.1:$NA/pv" --rw=write --bs=1M --size=1G --iodepth=8 --refill_buffers=1 --randrepeat=0 > /dev/null
before=$(field a linkDataBytesSent)
start b "$NB" "$RB"; wait_state a in-sync; wait_state b in-sync
after=$(field a linkDataBytesSent)
echo "resync: $(field a lastResyncChunks) chunks of 64 KiB in $(field a lastResyncMs) ms; $(( (after - before) / 1048576 )) MiB of block data sent"

echo "== A second copy of 1 GiB the peer already holds (B SIGKILLed: every chunk checked)"
kill -9 "$PID_b"; wait "$PID_b" 2>/dev/null || true
wait_state a degraded
before=$(field a linkDataBytesSent)
start b "$NB" "$RB"; wait_state a in-sync; wait_state b in-sync
after=$(field a linkDataBytesSent)
echo "full resync: $(field a lastResyncChunks) chunks in $(field a lastResyncMs) ms, $(field a lastResyncSkippedChunks) already present; $(( (after - before) / 1024 )) KiB of block data sent for 1 GiB present"
a=$(nbdcopy "nbd://127.0.0.1:$NA/pv" - | sha256sum); b=$(nbdcopy "nbd://127.0.0.1:$NB/pv" - | sha256sum)
[ "$a" = "$b" ] && echo "A and B byte-identical" || { echo "A and B DIFFER"; exit 1; }
