#!/usr/bin/env bash
# Builds a stock Linux guest for hosts with hardware virtualization (VT-x/AMD-V): Debian's cloud kernel
# (a bzImage) and a busybox initramfs that loads the virtio-mmio block driver, prints
# `lifeboat-linux: init reached`, lists the block devices and powers off.
#
#   scripts/linux-guest.sh            build once into .state/linux/ (fast no-op when already built)
#   scripts/linux-guest.sh --rebuild  resolve the newest kernel package again and rebuild
#
# Needs: apt-get (Debian's mirrors), dpkg, cpio, gzip; no root (root is used only for `apt-get update`
# when the package lists are empty). Prints the output paths as KEY=PATH lines on stdout.
# On a PVM host (this project's CI) the kernel does not boot; tests use it only to check the refusal.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT=${LIFEBOAT_LINUX_DIR:-$ROOT/.state/linux}
META_PACKAGE=linux-image-cloud-amd64
# Load order matters: each module needs the ones before it (checked against each module's own
# `depends=` below). In Debian's 6.1 kernels virtio.ko itself needs virtio_ring.
MODULES=(virtio_ring virtio virtio_mmio virtio_blk)

log() { printf 'linux-guest: %s\n' "$*" >&2; }
die() { printf 'linux-guest: error: %s\n' "$*" >&2; exit 1; }

rebuild=0
case "${1:-}" in
  --rebuild) rebuild=1 ;;
  '') ;;
  -h|--help) sed -n '2,11p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
  *) die "unknown argument '$1' (use --rebuild or --help)" ;;
esac

print_outputs() {
  printf 'KERNEL=%s\nINITRD=%s\nKERNEL_VERSION=%s\n' "$OUT/bzImage" "$OUT/initramfs.cpio.gz" "$(cat "$OUT/kernel-version")"
}

if [[ $rebuild == 0 && -s $OUT/bzImage && -s $OUT/initramfs.cpio.gz && -s $OUT/kernel-version ]]; then
  print_outputs
  exit 0
fi

for tool in apt-get apt-cache dpkg dpkg-deb cpio gzip find; do
  command -v "$tool" >/dev/null || die "'$tool' is missing; this script needs a Debian host with apt, dpkg, cpio and gzip"
done

resolve_kernel_package() {
  apt-cache depends "$META_PACKAGE" 2>/dev/null | awk '$1 == "Depends:" && $2 ~ /^linux-image-/ { print $2; exit }'
}
pkg=$(resolve_kernel_package || true)
if [[ -z $pkg ]]; then
  if [[ $(id -u) == 0 ]]; then
    log "package lists know no $META_PACKAGE; running apt-get update"
    apt-get update -qq >&2
    pkg=$(resolve_kernel_package || true)
  fi
  [[ -n $pkg ]] || die "cannot resolve $META_PACKAGE to a versioned kernel package (run 'apt-get update' as root and try again)"
fi
kver=${pkg#linux-image-}
log "kernel package $pkg"

work=$OUT/work
rm -rf "$work"
mkdir -p "$work/debs" "$work/kernel" "$work/busybox" "$work/initramfs"

# As root, apt's download sandbox user (_apt) cannot write here; download as root instead (no warning).
apt_opts=()
[[ $(id -u) == 0 ]] && apt_opts=(-o APT::Sandbox::User=root)
download() { (cd "$work/debs" && apt-get download -q "${apt_opts[@]}" "$pkg" busybox-static >&2); }
log "downloading $pkg and busybox-static"
if ! download; then
  # Stale package lists name a kernel the mirror has already replaced: refresh once and retry.
  [[ $(id -u) == 0 ]] || die "apt-get download failed (is Debian's mirror reachable? are the package lists current? run 'apt-get update' as root)"
  log "download failed; refreshing the package lists and trying again"
  apt-get update -qq >&2
  pkg=$(resolve_kernel_package || true)
  [[ -n $pkg ]] || die "cannot resolve $META_PACKAGE after apt-get update"
  kver=${pkg#linux-image-}
  rm -f "$work/debs/"*.deb
  download || die "apt-get download of $pkg failed (is Debian's mirror reachable?)"
fi

dpkg -x "$work/debs/${pkg}_"*.deb "$work/kernel"
dpkg -x "$work/debs/busybox-static_"*.deb "$work/busybox"

kernel_image=$(ls "$work/kernel/boot/vmlinuz-"* 2>/dev/null | head -n1)
[[ -n $kernel_image ]] || die "$pkg has no boot/vmlinuz-*"
moddir=$work/kernel/lib/modules/$kver
[[ -d $moddir ]] || die "$pkg has no lib/modules/$kver"

staging=$work/initramfs
mkdir -p "$staging"/{bin,dev,proc,sys,lib/modules}
for m in "${MODULES[@]}"; do
  src=$(find "$moddir/kernel" -name "$m.ko" -o -name "$m.ko.xz" -o -name "$m.ko.zst" -o -name "$m.ko.gz" | head -n1)
  [[ -n $src ]] || die "module $m not found under $moddir/kernel"
  case $src in
    *.ko.xz) xz -dc "$src" >"$staging/lib/modules/$m.ko" ;;
    *.ko.zst) zstd -qdc "$src" >"$staging/lib/modules/$m.ko" ;;
    *.ko.gz) gzip -dc "$src" >"$staging/lib/modules/$m.ko" ;;
    *) cp "$src" "$staging/lib/modules/$m.ko" ;;
  esac
done
# Check the fixed load order against the modules' own dependency lists, so a kernel that grows a new
# dependency fails here with a clear message instead of at boot.
"$ROOT/scripts/linux/check-module-deps.sh" "$staging/lib/modules" "${MODULES[@]}"
printf '%s\n' "${MODULES[@]}" >"$staging/lib/modules/load-order"
cp "$work/busybox/bin/busybox" "$staging/bin/busybox"
cp "$ROOT/scripts/linux/init" "$staging/init"
chmod 0755 "$staging/init" "$staging/bin/busybox"
# The kernel opens /dev/console before running /init; without the node (only root can make it) /init
# reopens the console itself after mounting devtmpfs.
if [[ $(id -u) == 0 ]]; then mknod -m 0600 "$staging/dev/console" c 5 1; fi

(cd "$staging" && find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc --quiet --owner=0:0) \
  | gzip -9n >"$OUT/initramfs.cpio.gz.tmp"
cp "$kernel_image" "$OUT/bzImage.tmp"
printf '%s\n' "$kver" >"$OUT/kernel-version.tmp"
mv "$OUT/bzImage.tmp" "$OUT/bzImage"
mv "$OUT/initramfs.cpio.gz.tmp" "$OUT/initramfs.cpio.gz"
mv "$OUT/kernel-version.tmp" "$OUT/kernel-version"
rm -rf "$work"
log "built Linux $kver guest in $OUT"
print_outputs
