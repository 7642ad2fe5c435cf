#!/usr/bin/env bash
# Regenerates docs/dashboard.png under live traffic (scripts/dashboard-screenshot.ts): a fresh
# server, two volumes, a fill and overwrites, then fio on both volumes while headless Chromium
# watches ~30 s of dashboard updates. Needs fio (nbd engine) and chromium (scripts/test.sh
# installs both). Takes about a minute and a half.
set -euo pipefail
cd "$(dirname "$0")/.."
npx tsc -p .
node build/scripts/dashboard-screenshot.js --out "$PWD/docs/dashboard.png" "$@"
