#!/usr/bin/env bash
# Builds the guest for the initiator tests (tests/initiator_guest.rs): the Debian cloud kernel
# (it has nbd.ko and the virtio drivers as modules) unpacked with dpkg -x, and a busybox
# initramfs holding the statically linked basalt-initiator, socat, mke2fs, blkdiscard and the
# scenario script tests/guest/scenarios.sh.
#
# Usage: build-guest.sh OUT_DIR INITIATOR_BINARY
# Output: OUT_DIR/vmlinuz, OUT_DIR/initramfs.cpio. The kernel package is downloaded once and
# kept in OUT_DIR; the initramfs is rebuilt every run (a few seconds).
# Needs (scripts/test installs them): busybox-static cpio kmod socat e2fsprogs util-linux,
# xz-utils/zstd for compressed modules, and apt access for `apt-get download`.
set -euo pipefail
OUT=${1:?out dir}; BIN=${2:?initiator binary}
HERE=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$OUT"; OUT=$(cd "$OUT" && pwd)
BIN=$(readlink -f "$BIN")
cd "$OUT"

# 1. Kernel: the bookworm cloud flavour (6.1), unpacked, never installed.
if [ ! -f vmlinuz ] || [ ! -d kroot/lib/modules ]; then
  KPKG=$(apt-cache depends linux-image-cloud-amd64 | awk '/Depends: linux-image-[0-9]/{print $2; exit}')
  [ -n "$KPKG" ] || { echo "cannot find the linux-image-cloud-amd64 dependency (apt-get update?)" >&2; exit 1; }
  rm -f ./*.deb
  # Stale package lists name a kernel the mirror no longer has: refresh once and retry.
  if ! apt-get download "$KPKG"; then
    apt-get update -qq
    KPKG=$(apt-cache depends linux-image-cloud-amd64 | awk '/Depends: linux-image-[0-9]/{print $2; exit}')
    apt-get download "$KPKG"
  fi
  rm -rf kroot; mkdir kroot; dpkg -x "${KPKG}"_*.deb kroot
  cp kroot/boot/vmlinuz-* vmlinuz.tmp && mv vmlinuz.tmp vmlinuz
fi
KVER=$(ls kroot/lib/modules | head -1)
depmod -b "$OUT/kroot" "$KVER"

# 2. initramfs tree.
IR="$OUT/ir"; rm -rf "$IR"
mkdir -p "$IR"/{bin,sbin,dev,proc,sys,tmp,run,mnt,etc,lib/modules}
cp "$(command -v busybox)" "$IR/bin/busybox"
if ldd "$IR/bin/busybox" >/dev/null 2>&1; then
  echo "/bin/busybox is dynamically linked: install busybox-static" >&2; exit 1
fi

# Modules with their dependencies, in load order; busybox insmod wants plain .ko files.
: > "$IR/modules.order"
modprobe -a -d "$OUT/kroot" -S "$KVER" --show-depends virtio_pci virtio_net nbd |
  awk '$1=="insmod"{print $2}' | awk '!seen[$0]++' |
  while read -r m; do
    b=$(basename "$m")
    case "$b" in
      *.xz) b=${b%.xz}; xz -dc "$m" > "$IR/lib/modules/$b";;
      *.zst) b=${b%.zst}; zstd -qdc "$m" > "$IR/lib/modules/$b";;
      *) cp "$m" "$IR/lib/modules/$b";;
    esac
    echo "$b" >> "$IR/modules.order"
  done

# Dynamic tools with their libraries.
copy_bin() {
  for b in "$@"; do
    p=$(command -v "$b"); install -D -m755 "$p" "$IR$p"
    ldd "$p" | grep -o '/[^ )]*' | while read -r l; do
      [ -e "$IR$l" ] || install -D -m755 "$(readlink -f "$l")" "$IR$l"
    done
  done
}
copy_bin socat mke2fs blkdiscard ${GUEST_EXTRA_BINS:-}
ln -sf "$(command -v mke2fs)" "$IR/sbin/mkfs.ext4"
# Debug info is most of a debug build; the guest loads the whole initramfs into RAM.
strip -o "$IR/bin/basalt-initiator" "$BIN" 2>/dev/null || install -m755 "$BIN" "$IR/bin/basalt-initiator"
install -m755 "$HERE/scenarios.sh" "$IR/scenarios.sh"
# The API client's TLS verifier loads the system roots even for http:// URLs, as on a real host.
install -D -m644 /etc/ssl/certs/ca-certificates.crt "$IR/etc/ssl/certs/ca-certificates.crt"

cat > "$IR/init" <<'EOI'
#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/sbin:/usr/sbin:/bin:/usr/bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
mount -t tmpfs tmp /tmp; mount -t tmpfs run /run
for m in $(cat /modules.order); do
  case $m in nbd.ko) insmod /lib/modules/$m nbds_max=4;; *) insmod /lib/modules/$m;; esac
done
echo "=== guest up: kernel $(uname -r), cpus=$(nproc)"
/scenarios.sh
echo "=== guest rc=$?"
sync
poweroff -f
EOI
chmod +x "$IR/init"
(cd "$IR" && find . | cpio -o -H newc --quiet > "$OUT/initramfs.cpio.tmp") && mv "$OUT/initramfs.cpio.tmp" "$OUT/initramfs.cpio"
echo "guest built: $OUT/vmlinuz $OUT/initramfs.cpio"
