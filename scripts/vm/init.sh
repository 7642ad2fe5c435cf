#!/bin/sh
# /init of the test initramfs built by scripts/vm/build-initramfs.sh: mounts the pseudo
# filesystems, loads the modules listed at build time, configures qemu's user network statically
# (guest 10.0.2.15, host alias 10.0.2.2), runs guest-test.sh with the parameters from the kernel
# command line, and powers off. The command line carries pstorage_host, pstorage_port,
# pstorage_export and pstorage_mode (full|quick), and for the TLS round pstorage_tls_export and
# pstorage_tls_hostname (the credentials are in /etc/pstorage-vm/tls): parameter names without
# dots, since the kernel takes dotted names as module parameters. pstorage_test=failover runs
# guest-failover.sh instead (scripts/vm-failover-test.sh), with pstorage_port as array A's port
# and pstorage_port_b as array B's, and pstorage_paths=both for its --both-paths.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1
mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
mkdir -p /dev/shm /tmp /run
mount -t tmpfs tmpfs /dev/shm
echo "pstorage-vm: init running at $(awk '{ print $1 }' /proc/uptime) s after boot"

while read -r module; do
  insmod "$module" 2>/dev/null || echo "pstorage-vm: insmod $module failed (continuing)"
done < /etc/pstorage-vm/modules

host=10.0.2.2 port=10809 port_b= export_name=default mode=full tls_export= tls_hostname= test_name=nbd paths=
# shellcheck disable=SC2013 # the command line is one line of words
for word in $(cat /proc/cmdline); do
  case $word in
    pstorage_host=*) host=${word#*=} ;;
    pstorage_port=*) port=${word#*=} ;;
    pstorage_port_b=*) port_b=${word#*=} ;;
    pstorage_test=*) test_name=${word#*=} ;;
    pstorage_paths=*) paths=${word#*=} ;;
    pstorage_export=*) export_name=${word#*=} ;;
    pstorage_mode=*) mode=${word#*=} ;;
    pstorage_tls_export=*) tls_export=${word#*=} ;;
    pstorage_tls_hostname=*) tls_hostname=${word#*=} ;;
  esac
done

ip link set lo up
iface=
i=0
while [ -z "$iface" ] && [ $i -lt 50 ]; do
  for path in /sys/class/net/*; do
    [ "${path##*/}" = lo ] || iface=${path##*/}
  done
  [ -n "$iface" ] || sleep 0.1
  i=$((i + 1))
done
if [ -n "$iface" ]; then
  ip link set "$iface" up
  ip addr add 10.0.2.15/24 dev "$iface"
  ip route add default via 10.0.2.2
else
  echo "pstorage-vm: no network interface appeared"
fi

# dash when the initramfs has it: the shell Debian (and the Vagrant box) runs the script with, so
# a bashism or busybox-ism in it fails here first.
shell=/bin/sh
[ -x /usr/bin/dash ] && shell=/usr/bin/dash
quick=
[ "$mode" = quick ] && quick=--quick
tls=
if [ -n "$tls_export" ]; then
  # The name nbd-client checks the server's certificate against is only a name here (there is no
  # DNS in the guest): nbd-client connects to $host.
  tls="--tls-dir /etc/pstorage-vm/tls --tls-hostname $tls_hostname --tls-export $tls_export"
fi
if [ "$test_name" = failover ]; then
  echo "pstorage-vm: running guest-failover.sh with $shell"
  both_paths=
  [ "$paths" = both ] && both_paths=--both-paths
  # shellcheck disable=SC2086 # $quick and $both_paths are option words without spaces
  $shell /usr/share/pstorage-vm/guest-failover.sh $quick $both_paths "$host" "$port" "$port_b" "$export_name" \
    || echo "pstorage-vm: guest-failover.sh exited with status $?"
else
  echo "pstorage-vm: running guest-test.sh with $shell"
  # shellcheck disable=SC2086 # $quick and $tls are option words without spaces
  $shell /usr/share/pstorage-vm/guest-test.sh --wait-host $quick $tls "$host" "$port" "$export_name" \
    || echo "pstorage-vm: guest-test.sh exited with status $?"
fi
sync
poweroff -f
