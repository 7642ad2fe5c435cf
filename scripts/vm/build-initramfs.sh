#!/usr/bin/env bash
# build-initramfs.sh KERNEL_ROOT KERNEL_VERSION OUTPUT [TLS_CLIENT_DIR]
#
# Builds the uncompressed initramfs (newc cpio) that scripts/vm-test.sh boots: busybox-static for
# the shell and small tools, the kernel modules the test needs (with their dependencies, in load
# order, resolved by kmod against KERNEL_ROOT, the unpacked kernel package), this host's
# nbd-client, e2fsprogs, xfsprogs, fio, fstrim, dmsetup (with dm-multipath, for
# scripts/vm/guest-failover.sh) and dash (the guest scripts' shell) with the shared libraries `ldd`
# finds for them, and scripts/vm/init.sh as /init running scripts/vm/guest-test.sh (or
# guest-failover.sh). TLS_CLIENT_DIR, when given,
# holds the guest's TLS credentials (ca-cert.pem, client-cert.pem, client-key.pem), copied to
# /etc/pstorage-vm/tls for nbd-client's -cacertfile, -certfile and -keyfile. nbd-client must then
# be built with GnuTLS (Debian's is), whose libraries come along through ldd like every other's.
#
# Uncompressed on purpose: the guest runs under TCG, where gunzip of ~90 MB costs seconds, while
# qemu loads the plain file in a fraction of one.
set -euo pipefail

if [ $# -ne 3 ] && [ $# -ne 4 ]; then
  echo "usage: $0 KERNEL_ROOT KERNEL_VERSION OUTPUT [TLS_CLIENT_DIR]" >&2
  exit 2
fi
KERNEL_ROOT=$1
KERNEL_VERSION=$2
OUTPUT=$3
TLS_CLIENT_DIR=${4:-}
HERE=$(cd "$(dirname "$0")" && pwd)
MODULES=(nbd virtio_net virtio_pci xfs dm_multipath dm_round_robin)
TOOLS=(nbd-client mke2fs e2fsck mkfs.xfs xfs_repair fio fstrim fsfreeze dash dmsetup)

ROOT=$(mktemp -d "${TMPDIR:-/tmp}/pstorage-initramfs.XXXXXX")
trap 'rm -rf "$ROOT"' EXIT
mkdir -p "$ROOT"/{bin,sbin,usr/bin,usr/sbin,lib64,proc,sys,dev,tmp,run,mnt,etc/pstorage-vm,usr/share/pstorage-vm}

# busybox-static: every applet as a symlink in /bin; PATH puts /usr/sbin and /usr/bin first, so
# the host's full tools win where both exist.
BUSYBOX=$(command -v busybox)
if ldd "$BUSYBOX" >/dev/null 2>&1; then
  echo "build-initramfs: $BUSYBOX is dynamically linked; install busybox-static" >&2
  exit 1
fi
cp "$BUSYBOX" "$ROOT/bin/busybox"
for applet in $("$BUSYBOX" --list); do
  [ -e "$ROOT/bin/$applet" ] || ln -s busybox "$ROOT/bin/$applet"
done
ln -s ../bin/busybox "$ROOT/sbin/modprobe" # the kernel's request_module() runs /sbin/modprobe

# copy_with_libraries FILE: FILE and every shared object it loads, at the same paths as here.
copy_with_libraries() {
  local file=$1 lib
  mkdir -p "$ROOT$(dirname "$file")"
  cp -L "$file" "$ROOT$file"
  for lib in $(ldd "$file" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }'); do
    [ -e "$ROOT$lib" ] && continue
    mkdir -p "$ROOT$(dirname "$lib")"
    cp -L "$lib" "$ROOT$lib"
  done
}
for tool in "${TOOLS[@]}"; do
  path=$(command -v "$tool" || true)
  if [ -z "$path" ]; then
    echo "build-initramfs: $tool not found on this host" >&2
    exit 1
  fi
  copy_with_libraries "$path"
done
ln -s mke2fs "$ROOT$(dirname "$(command -v mke2fs)")/mkfs.ext4"
if [ -n "$TLS_CLIENT_DIR" ]; then
  # An nbd-client built without GnuTLS refuses -certfile ("TLS support not compiled in") only in
  # the guest, minutes later: checked here, so the failure comes before the boot and says why.
  # (Not `grep -q`: it exits at the first match, ldd may then die of SIGPIPE, and pipefail would
  # call that a failure: the check failed now and then for an nbd-client that has GnuTLS.)
  if ! ldd "$(command -v nbd-client)" | grep 'libgnutls' > /dev/null; then
    echo "build-initramfs: this host's nbd-client is not linked with GnuTLS: it cannot attach over TLS" >&2
    exit 1
  fi
  mkdir -p "$ROOT/etc/pstorage-vm/tls"
  for file in ca-cert.pem client-cert.pem client-key.pem; do
    install -m 0600 "$TLS_CLIENT_DIR/$file" "$ROOT/etc/pstorage-vm/tls/$file"
  done
fi
# The dynamic loader finds libraries outside its built-in directories (fio's ceph libraries) from
# ld.so.cache: build one for this tree.
library_dirs=$(find "$ROOT/lib" "$ROOT/lib64" "$ROOT/usr/lib" -name '*.so*' -type f -printf '%h\n' 2>/dev/null | sed "s|^$ROOT||" | sort -u)
echo "$library_dirs" > "$ROOT/etc/ld.so.conf"
ldconfig -r "$ROOT"
[ -f /etc/mke2fs.conf ] && cp /etc/mke2fs.conf "$ROOT/etc/"
ln -s /proc/mounts "$ROOT/etc/mtab"

# Kernel modules in load order; a module that fails to load in the guest (crc32c-intel without
# SSE4.2) is reported by /init and skipped.
: > "$ROOT/etc/pstorage-vm/modules"
for module in "${MODULES[@]}"; do
  modprobe -C /dev/null -d "$KERNEL_ROOT" -S "$KERNEL_VERSION" --show-depends "$module" \
    | awk '$1 == "insmod" { print $2 }'
done | awk '!seen[$0]++' | while read -r ko; do
  relative=${ko#"$KERNEL_ROOT"}
  mkdir -p "$ROOT$(dirname "$relative")"
  cp "$ko" "$ROOT$relative"
  echo "$relative" >> "$ROOT/etc/pstorage-vm/modules"
done
if ! grep -q '/nbd\.ko' "$ROOT/etc/pstorage-vm/modules"; then
  echo "build-initramfs: nbd.ko not found under $KERNEL_ROOT" >&2
  exit 1
fi
cp "$KERNEL_ROOT/lib/modules/$KERNEL_VERSION"/modules.{order,builtin,builtin.modinfo} "$ROOT/lib/modules/$KERNEL_VERSION/"
depmod -b "$ROOT" "$KERNEL_VERSION"

install -m 0755 "$HERE/init.sh" "$ROOT/init"
install -m 0755 "$HERE/guest-test.sh" "$ROOT/usr/share/pstorage-vm/guest-test.sh"
install -m 0755 "$HERE/guest-failover.sh" "$ROOT/usr/share/pstorage-vm/guest-failover.sh"
# The kernel opens /dev/console for /init before devtmpfs is mounted; without the node (mknod
# needs root) /init still redirects to it once devtmpfs is up.
mknod -m 600 "$ROOT/dev/console" c 5 1 2>/dev/null || true

(cd "$ROOT" && find . -print0 | LC_ALL=C sort -z | cpio --null --create --format=newc --quiet) > "$OUTPUT.tmp"
mv "$OUTPUT.tmp" "$OUTPUT"
