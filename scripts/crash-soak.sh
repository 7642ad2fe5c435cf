#!/usr/bin/env bash
# Crash soak: SIGKILL pstorage under a write workload with periodic FLUSH, restart, check the
# durability contract and `pstorage inspect audit`, N times (default 1000, 3-5 s a cycle) on one
# data directory. Prints the seed (replay with --seed) and a summary; exits 0 only if every cycle
# passed. Needs python3-libnbd (Debian package). See scripts/crash-soak.ts for the options.
# Usage: scripts/crash-soak.sh [--cycles N] [--seed N] [--dir DIR]    (env PSTORAGE_SOAK_CYCLES)
set -euo pipefail
cd "$(dirname "$0")/.."
npx tsc -p tsconfig.json
exec node build/scripts/crash-soak.js "$@"
