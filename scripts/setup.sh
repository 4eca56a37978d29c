#!/usr/bin/env bash
# Installs everything Lifeboat needs on a fresh Debian 12 host, then builds it. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  gcc make binutils                          # the Lifeboat guest (guest/)
  qemu-system-x86                            # reference VMM for guest validation and benchmarks
  ceph-mon ceph-mgr ceph-osd radosgw ceph-common   # the S3 server the tests run against (Ceph RGW)
  restic borgbackup                          # peers in the repository benchmark
  e2fsprogs busybox-static cpio openssl xz-utils zstd   # disk images, Linux initramfs, test certificates
)

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup: missing Debian packages: ${missing[*]}; run as root or: sudo apt-get install ${missing[*]}" >&2
    exit 1
  fi
  echo "setup: installing ${missing[*]}"
  apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
fi

if [ ! -d node_modules ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  echo "setup: installing npm packages"
  npm ci --no-audit --no-fund --loglevel=error
fi

npm run -s build
npm run -s build:guest
echo "setup: ready"
