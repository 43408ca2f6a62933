#!/bin/sh
# Guest side of tests/initiator_guest.rs. Runs as the guest's init payload; prints
# "=== OK <scenario>" or "=== FAIL <scenario>: <why>" lines the host test reads, plus
# "=== FAILOVER READY" when the host should kill the node serving the device.
# Environment (kernel command line): TOKEN (admin token), SCENARIOS (comma-separated subset).
set -u
I=basalt-initiator
API=http://127.0.81.1:9640,http://127.0.81.2:9640,http://127.0.81.3:9640
export BASALT_TOKEN="$TOKEN"
export RUST_LOG=info
SCENARIOS=$(echo "${SCENARIOS:-basic,badinput,failover}" | tr , " ")
DONE=""

fail() { echo "=== FAIL $CURRENT: $*"; dmesg | tail -20; exit 1; }
ok() { echo "=== OK $CURRENT"; }
step() { echo "--- $CURRENT: $*"; }
# Runs a command that must fail with a message matching $1.
must_fail() {
  want=$1; shift
  if "$@" > /tmp/out 2> /tmp/err; then fail "succeeded: $*"; fi
  cat /tmp/err
  grep -q "$want" /tmp/err || fail "message for '$*' lacks '$want'"
}
# Exactly the devices in $1 (e.g. "nbd0") have a kernel connection.
connected_only() {
  got=""
  for d in /sys/block/nbd*; do [ -e "$d/pid" ] && got="$got $(basename "$d")"; done
  [ "$got" = "$1" ] || fail "connected devices '$got', expected '$1'"
}

# The cluster is on the host's 127.0.81.N; the guest reaches it through relays on its own
# loopback addresses, over virtio-net to the test's network namespace.
ip link set lo up; ip link set eth0 up; ip addr add 10.81.0.2/24 dev eth0
for n in 1 2 3; do
  socat TCP-LISTEN:9640,bind=127.0.81.$n,fork,reuseaddr TCP:10.81.0.1:$((20000 + n * 100)) &
  socat TCP-LISTEN:10809,bind=127.0.81.$n,fork,reuseaddr TCP:10.81.0.1:$((20001 + n * 100)) &
done
sleep 1

basic() {
  CURRENT=basic
  D=$($I attach vol1 --api "$API" --device /dev/nbd0 --timeout 15) || fail "attach"
  [ "$D" = /dev/nbd0 ] || fail "attach printed '$D'"
  $I list || fail "list"
  [ "$(cat /sys/block/nbd0/queue/logical_block_size)" = 4096 ] || fail "block size"
  step "dd with checksums"
  dd if=/dev/urandom of=/tmp/pat bs=1M count=8 2>/dev/null
  dd if=/tmp/pat of=$D bs=1M seek=4 oflag=direct conv=fsync 2>/dev/null || fail "dd write"
  A=$(md5sum < /tmp/pat | cut -d' ' -f1)
  B=$(dd if=$D bs=1M skip=4 count=8 iflag=direct 2>/dev/null | md5sum | cut -d' ' -f1)
  [ "$A" = "$B" ] || fail "checksum $A != $B"
  step "blkdiscard"
  /usr/sbin/blkdiscard -o 4194304 -l 1048576 $D || fail "blkdiscard"
  Z=$(dd if=$D bs=1M skip=4 count=1 iflag=direct 2>/dev/null | tr -d '\000' | wc -c)
  [ "$Z" = 0 ] || fail "$Z nonzero bytes after discard"
  step "mkfs.ext4, files"
  mkfs.ext4 -q -F $D || fail "mkfs"
  mount $D /mnt || fail "mount"
  for i in 1 2 3 4; do dd if=/dev/urandom of=/mnt/f$i bs=64k count=$((i * 4)) 2>/dev/null; done
  (cd /mnt && md5sum f1 f2 f3 f4 > /tmp/files.md5)
  umount /mnt || fail "umount"
  OUT=$($I detach vol1) || fail "detach"
  [ "$OUT" = /dev/nbd0 ] || fail "detach printed '$OUT'"
  connected_only ""
  step "re-attach and verify"
  D=$($I attach vol1 --api "$API" --timeout 15) || fail "re-attach"
  mount $D /mnt || fail "mount after re-attach"
  (cd /mnt && md5sum -c /tmp/files.md5) || fail "files differ after re-attach"
  umount /mnt
  $I detach $D > /dev/null || fail "detach by device"
  connected_only ""
  ok
}

badinput() {
  CURRENT=badinput
  must_fail 'not found' $I attach no-such-volume --api "$API"
  connected_only ""
  must_fail 'refused the token' env BASALT_TOKEN=wrong-token $I attach vol1 --api "$API"
  connected_only ""
  must_fail 'cannot reach the Basalt API' $I attach vol1 --api http://127.0.81.9:9640 --connect-timeout 3
  connected_only ""
  must_fail 'invalid device' $I attach vol1 --api "$API" --device /dev/sda
  must_fail 'not attached' $I detach vol1
  step "no free device"
  $I attach vol1 --api "$API" --device /dev/nbd1 > /dev/null || fail "attach vol1"
  must_fail 'no free nbd device: /dev/nbd1 is in use' $I attach vol2 --api "$API" --device /dev/nbd1
  must_fail 'attached already' $I attach vol1 --api "$API"
  connected_only " nbd1"
  [ "$($I list --json | grep -c '"device"')" = 1 ] || fail "list shows other devices"
  $I detach vol1 > /dev/null || fail "detach"
  connected_only ""
  [ "$($I list --json | grep -c '"device"')" = 0 ] || fail "list not empty after detach"
  ok
}

failover() {
  CURRENT=failover
  $I attach vol2 --api "$API" --device /dev/nbd2 --timeout 15 --dead-conn-timeout 180 \
    --supervise > /tmp/sup.out 2> /tmp/sup.log &
  SUP=$!
  n=0; while [ ! -s /tmp/sup.out ] && [ $n -lt 60 ]; do sleep 0.5; n=$((n + 1)); done
  [ "$(cat /tmp/sup.out)" = /dev/nbd2 ] || { cat /tmp/sup.log; fail "supervised attach"; }
  mkfs.ext4 -q -F /dev/nbd2 && mount /dev/nbd2 /mnt || fail "mkfs/mount"
  : > /tmp/w.md5
  i=0; after=""
  while [ $i -lt 600 ]; do
    i=$((i + 1))
    dd if=/dev/urandom of=/mnt/w$i bs=64k count=4 conv=fsync 2>/dev/null || fail "write $i failed"
    (cd /mnt && md5sum w$i >> /tmp/w.md5)
    [ $i = 5 ] && echo "=== FAILOVER READY"
    if [ -z "$after" ] && grep -q '"reconnects": [1-9]' /run/basalt/initiator/nbd2.json; then
      after=$i; step "reconnected before write $i"
    fi
    [ -n "$after" ] && [ $i -ge $((after + 10)) ] && break
  done
  [ -n "$after" ] || { cat /tmp/sup.log; fail "no reconnect after $i writes"; }
  sync
  echo 3 > /proc/sys/vm/drop_caches
  (cd /mnt && md5sum -c /tmp/w.md5 > /dev/null) || fail "files differ after failover"
  umount /mnt || fail "umount"
  if dmesg | grep -q 'I/O error'; then dmesg | grep 'I/O error' | tail; fail "kernel I/O errors"; fi
  $I list
  $I detach /dev/nbd2 > /dev/null || fail "detach"
  n=0; while kill -0 $SUP 2> /dev/null && [ $n -lt 40 ]; do sleep 0.5; n=$((n + 1)); done
  kill -0 $SUP 2> /dev/null && fail "supervisor still running after detach"
  cat /tmp/sup.log
  connected_only ""
  ok
}

# Not in the default set: how tests/data/nbd-client-connect.hex was captured (needs a guest built
# with GUEST_EXTRA_BINS="nbd-client strace"). Prints the CONNECT nbd-client sends for vol1.
capture() {
  CURRENT=capture
  strace -f -e trace=sendmsg -xx -s 4096 -o /tmp/strace.out \
    nbd-client 127.0.81.1 10809 /dev/nbd3 -N vol1 -b 4096 -t 30 || fail "nbd-client"
  grep -n 'sendmsg' /tmp/strace.out
  nbd-client -d /dev/nbd3
  ok
}

for s in $SCENARIOS; do $s; done
echo "=== ALL DONE"
