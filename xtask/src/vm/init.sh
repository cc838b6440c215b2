#!/bin/sh
# PID 1 of the `cargo xtask vm-test` VMs. Mounts what the agent and the
# test harness use, loads the modules the image carries, runs the scenario
# the kernel command line names (`hostwall-vm vm-guest` reads it), prints
# the marker the host waits for and powers off. If this script dies the
# kernel panics, and panic=-1 with QEMU's -no-reboot ends the VM too.
#
# Busybox's sh prefers its own applets to programs on PATH, so Debian's ip
# is called by its full path here.
export PATH=/usr/bin:/bin
export HOME=/root

fail() {
    echo "hostwall-vm: $*"
    dmesg | tail -n 40
    echo "hostwall-vm: failure"
    poweroff -f
}

mount -t proc proc /proc || fail "mounting /proc"
mount -t sysfs sysfs /sys || fail "mounting /sys"
mount -t devtmpfs devtmpfs /dev || fail "mounting /dev"
mount -t bpf bpf /sys/fs/bpf || fail "mounting the bpffs"
mount -t tmpfs tmpfs /tmp || fail "mounting /tmp"
mount -t tmpfs tmpfs /run || fail "mounting /run"

while read -r module; do
    insmod "/lib/modules/$module.ko" || fail "insmod $module"
done < /etc/hostwall-vm/modules

/usr/bin/ip link set lo up || fail "setting lo up"

if /bin/hostwall-vm vm-guest; then
    echo "hostwall-vm: success"
else
    dmesg | tail -n 40
    echo "hostwall-vm: failure"
fi
poweroff -f
