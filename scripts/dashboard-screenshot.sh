#!/usr/bin/env bash
# Regenerates docs/dashboard.png: runs the dashboard browser test (a real server, NBD traffic,
# headless Chromium) and keeps its screenshot. Needs chromium and python3-libnbd (scripts/test.sh
# installs both).
set -euo pipefail
cd "$(dirname "$0")/.."
npx tsc -p .
PSTORAGE_DASHBOARD_PNG="$PWD/docs/dashboard.png" PSTORAGE_TEST_ROOT="$PWD" node scripts/run-ava.mjs 'build/test/mgmt/dashboard.test.js'
echo "wrote docs/dashboard.png"
