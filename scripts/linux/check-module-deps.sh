#!/usr/bin/env bash
# check-module-deps.sh DIR MOD1 MOD2 ...
# DIR holds MOD.ko files (uncompressed). Fails unless each module's dependencies (the `depends=` entry of
# its .modinfo section) come earlier in the list, the order the initramfs insmods them in.
set -euo pipefail
dir=$1
shift
declare -A loaded=()
for m in "$@"; do
  ko=$dir/$m.ko
  [[ -f $ko ]] || { echo "linux-guest: error: module $m.ko missing in $dir" >&2; exit 1; }
  depends=$(tr '\0' '\n' <"$ko" | sed -n 's/^depends=//p' | head -n1)
  for name in ${depends//,/ }; do
    if [[ -z ${loaded[$name]:-} ]]; then
      echo "linux-guest: error: module $m needs $name, which is not loaded before it; add it to MODULES in scripts/linux-guest.sh" >&2
      exit 1
    fi
  done
  loaded[$m]=1
done
