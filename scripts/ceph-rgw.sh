#!/usr/bin/env bash
# A single-node Ceph cluster (mon, mgr, one bluestore OSD on a sparse file) with a RADOS Gateway on
# 127.0.0.1: the S3 endpoint Lifeboat's tests and benchmarks run against. No systemd; every file it
# writes lives under STATE_DIR. docs/s3.md describes it.
#
#   scripts/ceph-rgw.sh start  [STATE_DIR]  start the cluster (create it, or restart it after a kill)
#   scripts/ceph-rgw.sh stop   [STATE_DIR]  stop every daemon of this cluster
#   scripts/ceph-rgw.sh status [STATE_DIR]  one line per daemon; exit 0 only when all are healthy
#   scripts/ceph-rgw.sh env    [STATE_DIR]  print `export LIFEBOAT_S3_ENDPOINT=... AWS_...` (test keys)
#   scripts/ceph-rgw.sh wipe   [STATE_DIR]  stop the daemons and delete all state
#   scripts/ceph-rgw.sh stop-gateway [DIR]  stop only radosgw (an outage for fault tests; `start` ends it)
#
# STATE_DIR defaults to .state/ceph under the project root (gitignored).
# Ports (127.0.0.1 only): S3 17480, mon 13300 (msgr v2) and 16789 (v1), mgr and osd 16800-16899.
set -euo pipefail

readonly RGW_PORT=17480
readonly MON_V2_PORT=13300
readonly MON_V1_PORT=16789
readonly BIND_PORT_MIN=16800
readonly BIND_PORT_MAX=16899
readonly BLOCK_SIZE=$((20 * 1024 * 1024 * 1024)) # sparse: only what is written takes disk space
readonly S3_ACCESS_KEY=LIFEBOATTESTACCESSKEY
readonly S3_SECRET_KEY=lifeboat-test-secret-key-for-local-ceph-only
readonly S3_REGION=us-east-1
readonly S3_USER=lifeboat-test
readonly RGW_NAME=client.rgw.lifeboat
readonly PACKAGES="ceph-mon ceph-mgr ceph-osd radosgw ceph-common"
# Daemon names in start order; each writes run/NAME.pid.
readonly DAEMONS=("mon.a" "mgr.x" "osd.0" "$RGW_NAME")
readonly START_TIMEOUT=90 # seconds, for each wait

scripts=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(dirname "$scripts")

usage() { sed -n '6,/^set /{/^#/p}' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

cmd=${1:-}
case "$cmd" in
  start | stop | stop-gateway | status | env | wipe) ;;
  -h | --help | help) usage; exit 0 ;;
  *) echo "error: unknown command '$cmd'" >&2; usage >&2; exit 2 ;;
esac

state=$(realpath -m "${2:-$root/.state/ceph}")
conf=$state/ceph.conf
run=$state/run
logs=$state/log
setup_log=$logs/setup.log

# fd 8 is the caller's stderr, kept for messages from places whose stderr goes to the setup log.
exec 8>&2
say() { echo "ceph-rgw: $*" >&8; }
die() { echo "error: $*" >&8; exit 1; }
now() { date +%s.%N; }
t0=$(now)
step() { echo "=== $(elapsed "$t0") s: $*" >>"$setup_log"; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

print_env() {
  echo "export LIFEBOAT_S3_ENDPOINT=http://127.0.0.1:$RGW_PORT AWS_ACCESS_KEY_ID=$S3_ACCESS_KEY" \
    "AWS_SECRET_ACCESS_KEY=$S3_SECRET_KEY AWS_REGION=$S3_REGION"
}

check_packages() {
  local missing=() bin
  for bin in ceph-mon ceph-mgr ceph-osd radosgw ceph ceph-authtool monmaptool radosgw-admin; do
    command -v "$bin" >/dev/null || missing+=("$bin")
  done
  if ((${#missing[@]})); then
    die "Ceph is not installed (missing ${missing[*]}); install it with: apt-get install -y --no-install-recommends $PACKAGES"
  fi
}

# --- daemons ------------------------------------------------------------------------------------

ceph_cli() { timeout 60 ceph -c "$conf" --connect-timeout 30 "$@"; }

# The pid of daemon $1 if it is running and belongs to this state directory (pid files can be stale
# and pids reused, so the command line must name our ceph.conf).
daemon_pid() {
  local pid
  pid=$(cat "$run/$1.pid" 2>/dev/null) || return 1
  [[ -n $pid ]] && is_ours "$pid" && echo "$pid"
}

is_ours() { tr "\0" " " 2>/dev/null <"/proc/$1/cmdline" | grep -qF -- "-c $conf "; }

# Daemons fork into the background; they must not inherit the lock (fd 9) or our stderr (fd 8).
# (A subshell, so that a failure exits it, not this script with those redirections in force.)
start_daemon() {
  (
    case "$1" in
      mon.a) exec ceph-mon -c "$conf" -i a ;;
      mgr.x) exec ceph-mgr -c "$conf" -i x ;;
      osd.0) exec ceph-osd -c "$conf" -i 0 ;;
      "$RGW_NAME") exec radosgw -c "$conf" -n "$RGW_NAME" ;;
    esac
  ) </dev/null >>"$setup_log" 2>&1 8>&- 9>&-
}

start_daemons() {
  local name
  for name in "${DAEMONS[@]}"; do daemon_pid "$name" >/dev/null || start_daemon "$name"; done
}

# Stops the daemons of this state directory in three steps, so that none waits on a peer that is already
# gone: the gateway (its requests need the OSD), then OSD and mgr (the OSD tells the monitor it is going
# down, so the next start need not wait for the monitor to notice), then the monitor. SIGTERM, then
# SIGKILL after 10 s; each takes about 2 s. A daemon whose pid file is gone is found by its command line.
stop_daemons() {
  local pid rgw mgr osd mon stray=()
  rgw=$(daemon_pid "$RGW_NAME") || rgw=""
  mgr=$(daemon_pid mgr.x) || mgr=""
  osd=$(daemon_pid osd.0) || osd=""
  mon=$(daemon_pid mon.a) || mon=""
  for pid in $(pgrep -f -- "-c $conf " || true); do
    [[ " $rgw $mgr $osd $mon " == *" $pid "* ]] || stray+=("$pid")
  done
  [[ -n $rgw$mgr$osd$mon || ${#stray[@]} -gt 0 ]] || return 0
  terminate $rgw "${stray[@]}"
  terminate $osd $mgr
  terminate $mon
  rm -f "$run"/*.pid
  say "stopped ($state)"
}

terminate() {
  local deadline=$((SECONDS + 10)) pid alive
  (($#)) || return 0
  kill -TERM "$@" 2>/dev/null || true
  while :; do
    alive=()
    for pid in "$@"; do kill -0 "$pid" 2>/dev/null && alive+=("$pid"); done
    ((${#alive[@]})) || return 0
    if ((SECONDS >= deadline)); then kill -KILL "${alive[@]}" 2>/dev/null || true; return 0; fi
    sleep 0.05
  done
}

# --- health ---------------------------------------------------------------------------------------

rgw_answers() {
  # A plain HTTP request over bash's /dev/tcp: no curl needed, and fast.
  timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$RGW_PORT && printf 'GET / HTTP/1.0\r\n\r\n' >&3 &&
    head -c 12 <&3 | grep -q '^HTTP/1.1 200'" 2>/dev/null
}

all_running() {
  local name
  for name in "${DAEMONS[@]}"; do daemon_pid "$name" >/dev/null || return 1; done
}

any_running() {
  local name
  for name in "${DAEMONS[@]}"; do daemon_pid "$name" >/dev/null && return 0; done
  return 1
}

cluster_status() {
  local name pid healthy=0
  for name in "${DAEMONS[@]}"; do
    if pid=$(daemon_pid "$name"); then echo "$name running pid=$pid"; else echo "$name stopped"; healthy=1; fi
  done
  if rgw_answers; then echo "s3 http://127.0.0.1:$RGW_PORT answering"; else echo "s3 http://127.0.0.1:$RGW_PORT not answering"; healthy=1; fi
  [[ -f $state/ready ]] || { echo "state $state not initialised"; healthy=1; }
  return $healthy
}

# --- ports ----------------------------------------------------------------------------------------

# Pids of the processes listening on TCP port $1 (from /proc, so no ss/lsof needed).
listeners() {
  local hex inodes inode fd
  hex=$(printf ':%04X' "$1")
  inodes=$(awk -v p="$hex" '$2 ~ p"$" && $4 == "0A" { print $10 }' /proc/net/tcp /proc/net/tcp6 | sort -u)
  [[ -n $inodes ]] || return 0
  for fd in /proc/[0-9]*/fd/*; do
    inode=$(readlink "$fd" 2>/dev/null) || continue
    for i in $inodes; do [[ $inode == "socket:[$i]" ]] && echo "${fd#/proc/}" | cut -d/ -f1; done
  done | sort -u
}

# Daemons started by this script for a state directory that has since been deleted (an old CI clone,
# a removed temporary directory) are orphans that would hold our ports and memory: kill them.
reap_orphans() {
  local pid args other
  for pid in $(pgrep -x ceph-mon; pgrep -x ceph-mgr; pgrep -x ceph-osd; pgrep -x radosgw); do
    args=$(tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline") || continue
    other=$(sed -n 's/.* -c \([^ ]*\/ceph\.conf\) .*/\1/p' <<<"$args")
    if [[ -n $other && ! -e $other ]]; then
      say "killing orphaned Ceph daemon $pid (its state $(dirname "$other") is gone)"
      kill -KILL "$pid" 2>/dev/null || true
    fi
  done
}

# Our ports must be free before we start: say who holds one. On CI (CI set), another clone's test
# cluster left running is stopped instead: nobody else can be using it there.
check_ports() {
  local port pid args other deadline=$((SECONDS + 5))
  for port in "$RGW_PORT" "$MON_V2_PORT" "$MON_V1_PORT"; do
    # A daemon killed a moment ago may still be closing its socket.
    while pid=$(listeners "$port" | head -n 1) && [[ -n $pid ]] && ((SECONDS < deadline)); do sleep 0.1; done
    [[ -n $pid ]] || continue
    args=$(tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline") || continue
    other=$(sed -n 's/.* -c \([^ ]*\/ceph\.conf\) .*/\1/p' <<<"$args")
    if [[ -n $other && -n ${CI:-} ]]; then
      say "CI: stopping the test cluster of $(dirname "$other"), which holds port $port"
      # shellcheck disable=SC2046
      terminate $(pgrep -f -- "-c $other ")
      continue
    fi
    if [[ -n $other ]]; then
      die "port $port is held by the Ceph cluster in $(dirname "$other") (pid $pid); stop it with: $0 stop $(dirname "$other")"
    fi
    die "port $port, needed by the test Ceph cluster, is held by pid $pid ($args); stop that process"
  done
}

# --- creation ---------------------------------------------------------------------------------------

write_conf() {
  local fsid
  fsid=$(cat /proc/sys/kernel/random/uuid)
  sed -e "s|@STATE@|$state|g" -e "s|@FSID@|$fsid|g" -e "s|@RGW_PORT@|$RGW_PORT|g" \
    -e "s|@MON_V2_PORT@|$MON_V2_PORT|g" -e "s|@MON_V1_PORT@|$MON_V1_PORT|g" \
    -e "s|@BIND_PORT_MIN@|$BIND_PORT_MIN|g" -e "s|@BIND_PORT_MAX@|$BIND_PORT_MAX|g" \
    -e "s|@BLOCK_SIZE@|$BLOCK_SIZE|g" "$scripts/ceph/ceph.conf.in" >"$conf"
  echo "$fsid"
}

wipe_state() {
  find "$state" -mindepth 1 -maxdepth 1 ! -name lock ! -name log.failed -exec rm -rf {} +
}

# Keys for every daemon go into the mon's keyring before `ceph-mon --mkfs`, which imports them all:
# no `ceph auth` round trips later.
create_keyrings() {
  local kr=$state/keyring mon_kr=$state/keyring/mon.keyring
  ceph-authtool --create-keyring "$mon_kr" --gen-key -n mon. --cap mon 'allow *'
  ceph-authtool --create-keyring "$kr/client.admin.keyring" --gen-key -n client.admin \
    --cap mon 'allow *' --cap osd 'allow *' --cap mds 'allow *' --cap mgr 'allow *'
  ceph-authtool --create-keyring "$state/mgr/mgr.x/keyring" --gen-key -n mgr.x \
    --cap mon 'allow profile mgr' --cap osd 'allow *' --cap mds 'allow *'
  ceph-authtool --create-keyring "$kr/$RGW_NAME.keyring" --gen-key -n "$RGW_NAME" \
    --cap mon 'allow rw' --cap osd 'allow rwx' --cap mgr 'allow rw'
  ceph-authtool "$mon_kr" --import-keyring "$kr/client.admin.keyring"
  ceph-authtool "$mon_kr" --import-keyring "$state/mgr/mgr.x/keyring"
  ceph-authtool "$mon_kr" --import-keyring "$kr/$RGW_NAME.keyring"
} >>"$setup_log" 2>&1

create_osd() {
  local uuid secret id
  uuid=$(cat /proc/sys/kernel/random/uuid)
  secret=$(ceph-authtool --gen-print-key)
  id=$(echo "{\"cephx_secret\": \"$secret\"}" | ceph_cli osd new "$uuid" -i - 2>>"$setup_log")
  [[ $id == 0 ]] || die "expected the new OSD to get id 0, got '$id' (see $setup_log)"
  mkdir -p "$state/osd/osd.0"
  ceph-authtool --create-keyring "$state/osd/osd.0/keyring" -n osd.0 --add-key "$secret" >>"$setup_log" 2>&1
  ceph-osd -c "$conf" -i 0 --mkfs --osd-uuid "$uuid" >>"$setup_log" 2>&1
}

# The gateway's pools, created up front with one CLI process (a few seconds faster than letting the
# gateway create them one by one as it needs them).
create_pools() {
  local pool cmds=""
  for pool in .rgw.root default.rgw.control default.rgw.meta default.rgw.log \
    default.rgw.buckets.index default.rgw.buckets.data default.rgw.buckets.non-ec; do
    cmds+="osd pool create $pool 8 8"$'\n'"osd pool application enable $pool rgw"$'\n'
  done
  ceph_cli <<<"$cmds" >>"$setup_log" 2>&1
}

create_user() {
  timeout 60 radosgw-admin -c "$conf" -n client.admin user create --uid="$S3_USER" \
    --display-name="Lifeboat tests" --access-key="$S3_ACCESS_KEY" --secret-key="$S3_SECRET_KEY" \
    >>"$setup_log" 2>&1
}

create_cluster() {
  local fsid
  mkdir -p "$run" "$logs" "$state/keyring" "$state/mon" "$state/mgr/mgr.x" "$state/osd" "$state/rgw" "$state/crash"
  fsid=$(write_conf)
  step keyrings
  create_keyrings
  monmaptool --create --fsid "$fsid" --addv a "[v2:127.0.0.1:$MON_V2_PORT,v1:127.0.0.1:$MON_V1_PORT]" \
    "$state/monmap" >>"$setup_log" 2>&1
  ceph-mon -c "$conf" --mkfs -i a --monmap "$state/monmap" --keyring "$state/keyring/mon.keyring" >>"$setup_log" 2>&1
  step mon
  start_daemon mon.a
  start_daemon mgr.x
  step osd
  create_osd
  start_daemon osd.0
  step pools
  create_pools
  step rgw
  start_daemon "$RGW_NAME"
  wait_for_rgw "$START_TIMEOUT" || die "Ceph did not come up"
  step user
  create_user
  step ready
  touch "$state/ready"
}

# The gateway answers once the OSD is up and its pools are active: the one wait we need.
wait_for_rgw() {
  local deadline=$((SECONDS + $1)) name
  until rgw_answers; do
    for name in "${DAEMONS[@]}"; do
      if ! daemon_pid "$name" >/dev/null; then
        echo "$name exited during start (see $logs/$name.log)" >&2
        return 1
      fi
    done
    if ((SECONDS >= deadline)); then
      echo "the S3 gateway did not answer on 127.0.0.1:$RGW_PORT within $1 s" >&2
      return 1
    fi
    sleep 0.2
  done
}

# --- start ---------------------------------------------------------------------------------------

on_start_failure() {
  local status=$?
  trap - EXIT
  ((status)) || return 0
  # Never leave half a cluster running: the next start would trip over its ports and pid files.
  stop_daemons
  echo "error: Ceph did not start (exit $status); last lines of $setup_log:" >&8
  [[ ! -s $setup_log ]] || tail -n 15 "$setup_log" >&8
  exit "$status"
}

start_cluster() {
  check_packages
  if [[ -f $state/ready ]] && all_running && rgw_answers; then
    say "running (state $state)"
    return 0
  fi
  trap on_start_failure EXIT
  mkdir -p "$logs"
  reap_orphans
  if [[ -f $state/ready ]] && any_running; then
    # Some daemons died (or were stopped on purpose, e.g. the gateway by a fault test): start just those.
    step "start missing daemons"
    start_daemons
    if wait_for_rgw 30 2>>"$setup_log"; then
      trap - EXIT
      say "started the missing daemons in $(elapsed "$t0") s"
      return 0
    fi
  fi
  stop_daemons # whatever is left of a partial or killed run
  check_ports
  if [[ -f $state/ready ]]; then
    say "restarting the cluster in $state"
    step restart
    start_daemons
    if wait_for_rgw "$START_TIMEOUT" 2>>"$setup_log"; then
      trap - EXIT
      say "restarted in $(elapsed "$t0") s"
      return 0
    fi
    stop_daemons
    say "restart failed; recreating the cluster (the failed run's logs are in $state/log.failed)"
    rm -rf "$state/log.failed"
    mv "$logs" "$state/log.failed"
  fi
  wipe_state
  mkdir -p "$logs"
  say "creating a cluster in $state"
  create_cluster
  trap - EXIT
  say "created and started in $(elapsed "$t0") s"
}

case "$cmd" in
  env) print_env; exit 0 ;;
  status) cluster_status; exit $? ;;
esac

# start, stop and wipe change the cluster: one at a time (test processes may race to start it).
mkdir -p "$state"
exec 9>"$state/lock"
flock 9
case "$cmd" in
  stop) stop_daemons ;;
  stop-gateway) if pid=$(daemon_pid "$RGW_NAME"); then terminate "$pid"; rm -f "$run/$RGW_NAME.pid"; fi ;;
  wipe) stop_daemons; wipe_state; rm -rf "$state/log.failed" ;;
  start) start_cluster ;;
esac
