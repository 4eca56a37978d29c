#!/usr/bin/env bash
# On a fresh Debian 12 host with /dev/kvm: installs what Lifeboat needs, builds it, runs the main demo.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec node dist/scripts/demo.js
