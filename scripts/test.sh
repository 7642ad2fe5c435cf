#!/usr/bin/env bash
# The whole test suite, from a bare Debian 12 machine with Node 20: installs every Debian and npm
# package the tests need, builds, runs every test, and ends with "N passed, N failed, N skipped".
# (nbdfuse ships in libnbd-bin; promtool, which checks the /metrics output, in prometheus;
# chromium renders the dashboard test; certtool and psktool, for the TLS tests, in gnutls-bin.)
# Usage: scripts/test.sh [ava file globs...]   (run as root, or with sudo available, for apt-get)
set -euo pipefail
cd "$(dirname "$0")/.."

DEBIAN_PACKAGES=(libnbd-bin python3-libnbd nbdkit fuse3 qemu-utils fio xfsprogs e2fsprogs zstd
  util-linux procps g++ make python3 prometheus chromium gnutls-bin etcd-server)

missing=()
for pkg in "${DEBIAN_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
done
if ((${#missing[@]})); then
  echo "test.sh: installing Debian packages: ${missing[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

npm ci --no-audit --no-fund --loglevel=error
npm run build --silent

export PSTORAGE_TEST_ROOT="$PWD"
node scripts/run-ava.mjs "$@"
