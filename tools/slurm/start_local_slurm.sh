#!/usr/bin/env bash
# Start a real Slurm cluster on this machine (tests and demos), idempotently.
#
#   tools/slurm/start_local_slurm.sh             one node: this host, on 127.0.0.1 (the default)
#   tools/slurm/start_local_slurm.sh --nodes 2   N nodes rnce-n1..N, each slurmd in its own network
#                                                namespace and UTS namespace (own hostname), on a
#                                                private bridge this script creates
#
# The multi-node network uses only addresses this script creates: bridge $RINGNCE_BRIDGE with
# $RINGNCE_SUBNET.1/24 on the host (slurmctld listens there, so slurmd and jobs inside the
# namespaces reach it), and $RINGNCE_SUBNET.(10+i) on node i's veth. Names resolve inside the
# namespaces through /etc/netns/<node>/hosts, bind-mounted over /etc/hosts in each slurmd's own
# mount namespace, so the host's /etc/hosts is never touched. tools/slurm/stop_local_slurm.sh removes all of it.
#
# Daemons: munged (as the munge user), MariaDB + slurmdbd (submitit reads job states with
# sacct, which needs accounting), slurmctld, slurmd. Everything this script starts is recorded
# in a PID file under $SLURM_LOCAL_DIR/run; tools/slurm/stop_local_slurm.sh stops exactly those.
# Running it again while the cluster is up only checks it; a previous run's leftovers (stale
# PID files, saved job state, an old MariaDB data dir, a changed slurm.conf) are reused or fixed.
#
# Environment:
#   SLURM_LOCAL_DIR  state, logs and PID files (default ${TMPDIR:-/tmp}/ring-nce-slurm)
#   WAIT_TIMEOUT     seconds to wait for each daemon and for the node (default 60)
#   MYSQL_PORT       MariaDB port on 127.0.0.1 (default 3306)
#   RINGNCE_SUBNET   first three octets of the multi-node /24 (default 10.207.0)
#   RINGNCE_BRIDGE   the bridge's name (default rnce-br0)
# Exit status: 0 ready, 1 a daemon failed (its log is named), 3 this machine cannot host it (not
# root, or the Debian packages are missing and cannot be installed): callers may skip on 3.
set -euo pipefail
ROOT=${SLURM_LOCAL_DIR:-${TMPDIR:-/tmp}/ring-nce-slurm}
WAIT_TIMEOUT=${WAIT_TIMEOUT:-60}
MYSQL_PORT=${MYSQL_PORT:-3306}
RUN=$ROOT/run
LOG=$ROOT/log
DB=$ROOT/mysql
NODE=$(hostname -s)
NODES=1
SUBNET=${RINGNCE_SUBNET:-10.207.0}
BRIDGE=${RINGNCE_BRIDGE:-rnce-br0}
PACKAGES="munge slurmctld slurmd slurm-client slurmdbd mariadb-server"
START=$SECONDS

say() { echo "[start_local_slurm +$((SECONDS - START))s] $*"; }
die() { say "error: $*"; exit "${2:-1}"; }

# running PID COMMAND: a live COMMAND process (a killed daemon lingers as a zombie until reaped)
running() {
  [ "$(cat "/proc/$1/comm" 2>/dev/null)" = "$2" ] && ! grep -q '^State:.*Z' "/proc/$1/status" 2>/dev/null
}
# is_ours PIDFILE COMMAND: the PID file names a live process running COMMAND
is_ours() { [ -s "$1" ] && running "$(cat "$1")" "$2"; }
# daemons fork and write their PID file a moment later
await_pidfile() {
  local i
  for i in $(seq 1 $((WAIT_TIMEOUT * 10))); do is_ours "$1" "$2" && return 0; sleep 0.1; done
  die "$2 did not start (no live process in $1); read $3"
}
# retry COMMAND... until it succeeds or WAIT_TIMEOUT passes
await() {
  local i
  for i in $(seq 1 $((WAIT_TIMEOUT * 10))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
  return 1
}

install_packages() {
  local missing="" p
  for p in $PACKAGES; do
    # dpkg -s also succeeds for removed-but-not-purged packages, hence the Status check
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing="$missing $p"
  done
  [ -z "$missing" ] && return 0
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    die "Debian packages missing:$missing; install them as root (apt-get install$missing)" 3
  fi
  say "installing:$missing"
  apt-get update -qq || die "apt-get update failed; install$missing by hand" 3
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null \
    || die "apt-get install$missing failed" 3
}

start_munge() {
  [ -s /etc/munge/munge.key ] || mungekey --create --keyfile=/etc/munge/munge.key
  chown munge:munge /etc/munge /etc/munge/munge.key
  chmod 700 /etc/munge
  chmod 400 /etc/munge/munge.key
  install -d -o munge -g munge -m 0755 /run/munge
  install -d -o munge -g munge -m 0700 /var/log/munge /var/lib/munge
  # files left by a munged once run as root make a munge-user munged refuse to start
  chown -R munge:munge /var/log/munge /var/lib/munge
  if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    is_ours "$RUN/munged.pid" munged || say "munged already answering (not ours: left alone)"
    return 0
  fi
  # munged refuses to run as root without --force: run it as its own user
  runuser -u munge -- /usr/sbin/munged
  await_pidfile /run/munge/munged.pid munged /var/log/munge/munged.log
  cp /run/munge/munged.pid "$RUN/munged.pid"
  await sh -c 'munge -n | unmunge' || die "munged does not answer; read /var/log/munge/munged.log"
  say "munged started (pid $(cat "$RUN/munged.pid"))"
}

# node_names: the Slurm node names of this cluster
node_names() {
  if [ "$NODES" = 1 ]; then echo "$NODE"; else seq -f "rnce-n%g" 1 "$NODES"; fi
}
node_address() { echo "$SUBNET.$((10 + ${1#rnce-n}))"; } # rnce-nI -> SUBNET.(10+I)

# the lines of slurm.conf that differ between one node on 127.0.0.1 and N namespaced nodes
cluster_lines() { # TOPOLOGY MEMORY_MB
  if [ "$NODES" = 1 ]; then
    cat <<EOF
SlurmctldHost=$NODE(127.0.0.1)
SlurmdPidFile=$RUN/slurmd.pid
SlurmdLogFile=$LOG/slurmd.log
SlurmdSpoolDir=$ROOT/spool
NodeName=$NODE NodeAddr=127.0.0.1 ${1}RealMemory=$2 State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
    return 0
  fi
  # every slurmd shares this file: %n (its node name) keeps their PID files, logs and spools apart
  echo "SlurmctldHost=$NODE($SUBNET.1)"
  echo "SlurmdPidFile=$RUN/slurmd-%n.pid"
  echo "SlurmdLogFile=$LOG/slurmd-%n.log"
  echo "SlurmdSpoolDir=$ROOT/spool/%n"
  local name
  # the nodes share the host's CPUs (oversubscribed) and split its memory
  for name in $(node_names); do
    echo "NodeName=$name NodeAddr=$(node_address "$name") ${1}RealMemory=$(($2 / NODES)) State=UNKNOWN"
  done
  echo "PartitionName=debug Nodes=rnce-n[1-$NODES] Default=YES MaxTime=INFINITE State=UP"
}

write_slurm_conf() {
  local mem topology
  mem=$(($(free -m | awk '/^Mem:/{print $2}') * 85 / 100))
  # the CPUs and topology slurmd itself detects (not nproc, which OMP_NUM_THREADS lowers):
  # a mismatch drains the node or stops slurmctld
  topology=$(slurmd -C | head -1 | tr ' ' '\n' \
    | grep -E '^(CPUs|SocketsPerBoard|CoresPerSocket|ThreadsPerCore)=' | tr '\n' ' ')
  cat >"$ROOT/slurm.conf" <<EOF
# written by tools/slurm/start_local_slurm.sh (ring-nce); state under $ROOT
ClusterName=ringnce
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# a requeued job may start again only after cred_expire seconds (default 120)
AuthInfo=cred_expire=10
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=$ROOT/state
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmctldLogFile=$LOG/slurmctld.log
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=6819
JobCompType=jobcomp/none
MpiDefault=none
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2,bf_interval=2
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1000
ReturnToService=2
SlurmctldTimeout=30
# 0: a node is never set DOWN (nor left out of step launches) for not answering pings; a test
# that kills a slurmd decides by its own events when it is back, no timer races with it
SlurmdTimeout=0
InactiveLimit=0
MinJobAge=300
KillWait=5
Waittime=0
GresTypes=gpu
$(cluster_lines "$topology" "$mem")
EOF
  # the client commands (sbatch, sacct, ...) read /etc/slurm/slurm.conf
  if cmp -s "$ROOT/slurm.conf" /etc/slurm/slurm.conf; then return 0; fi
  mkdir -p /etc/slurm
  cp "$ROOT/slurm.conf" /etc/slurm/slurm.conf
  local pidfile daemon pid i
  # every slurmd either layout started (slurmd.pid, slurmd-<node>.pid), then the controller
  for pidfile in "$RUN/slurmd.pid" "$RUN"/slurmd-*.pid "$RUN/slurmctld.pid"; do
    daemon=$(basename "$pidfile" .pid)
    daemon=${daemon%%-*}
    if is_ours "$pidfile" "$daemon"; then
      say "slurm.conf changed: restarting $(basename "$pidfile" .pid)"
      pid=$(cat "$pidfile")
      kill "$pid"
      for i in $(seq 1 $((WAIT_TIMEOUT * 10))); do running "$pid" "$daemon" || break; sleep 0.1; done
      if running "$pid" "$daemon"; then die "$daemon ($pid) did not stop after SIGTERM"; fi
    fi
  done
}

# the bridge, one network namespace + veth per node, and each node's hosts file; what exists
# already is kept, so a second run changes nothing
setup_network() {
  local name address i other
  if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
    ip link add "$BRIDGE" type bridge
    say "bridge $BRIDGE created"
  fi
  # (captured, not piped into grep -q: under pipefail an early grep exit fails the pipeline)
  [[ "$(ip addr show dev "$BRIDGE")" == *"inet $SUBNET.1/24"* ]] || ip addr add "$SUBNET.1/24" dev "$BRIDGE"
  ip link set "$BRIDGE" up
  for name in $(node_names); do
    i=${name#rnce-n}
    address=$(node_address "$name")
    [ -e "/run/netns/$name" ] || ip netns add "$name"
    if ! ip link show "rnce-v$i" >/dev/null 2>&1; then
      ip link add "rnce-v$i" type veth peer name eth0 netns "$name"
    fi
    ip link set "rnce-v$i" master "$BRIDGE" up
    ip -n "$name" link set lo up
    [[ "$(ip -n "$name" addr show dev eth0)" == *"inet $address/24"* ]] \
      || ip -n "$name" addr add "$address/24" dev eth0
    ip -n "$name" link set eth0 up
    mkdir -p "/etc/netns/$name"
    {
      echo "127.0.0.1 localhost"
      echo "$SUBNET.1 $NODE"
      for other in $(node_names); do echo "$(node_address "$other") $other"; done
    } >"/etc/netns/$name/hosts"
  done
}

mariadb_sql() { mariadb --no-defaults -S "$DB/mysqld.sock" -uroot -e "$1"; }

start_accounting() {
  if [ ! -d "$DB/data/mysql" ]; then
    rm -rf "$DB/data"
    mkdir -p "$DB"
    mariadb-install-db --no-defaults --datadir="$DB/data" --user=root \
      --auth-root-authentication-method=normal --skip-test-db >"$LOG/mariadb-install.log" 2>&1 \
      || die "mariadb-install-db failed; read $LOG/mariadb-install.log"
  fi
  if ! is_ours "$DB/mysqld.pid" mariadbd; then
    /usr/sbin/mariadbd --no-defaults --datadir="$DB/data" --user=root --bind-address=127.0.0.1 \
      --port="$MYSQL_PORT" --socket="$DB/mysqld.sock" --pid-file="$DB/mysqld.pid" \
      --log-error="$LOG/mariadb.log" --innodb-buffer-pool-size=128M --skip-name-resolve \
      </dev/null >/dev/null 2>&1 &
    await_pidfile "$DB/mysqld.pid" mariadbd "$LOG/mariadb.log"
    await mariadb_sql 'select 1' || die "MariaDB does not answer; read $LOG/mariadb.log"
    say "mariadbd started (pid $(cat "$DB/mysqld.pid"))"
  fi
  mariadb_sql "CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'slurm-local';
    GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1'; FLUSH PRIVILEGES;"
  (
    umask 077
    cat >/etc/slurm/slurmdbd.conf <<EOF
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=6819
SlurmUser=root
LogFile=$LOG/slurmdbd.log
PidFile=$RUN/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$MYSQL_PORT
StorageUser=slurm
StoragePass=slurm-local
StorageLoc=slurm_acct_db
EOF
  )
  if ! is_ours "$RUN/slurmdbd.pid" slurmdbd; then
    # a slurmdbd we did not start (or whose PID file is gone) would keep the port: ours would
    # fail to bind and, exiting, delete the PID file, leaving two unknown daemons behind
    if timeout 5 sacctmgr -n list cluster >/dev/null 2>&1; then
      die "a slurmdbd not named by $RUN/slurmdbd.pid answers on port 6819; stop it first"
    fi
    slurmdbd
    await_pidfile "$RUN/slurmdbd.pid" slurmdbd "$LOG/slurmdbd.log"
    await sacctmgr -n list cluster || die "slurmdbd does not answer; read $LOG/slurmdbd.log"
    say "slurmdbd started (pid $(cat "$RUN/slurmdbd.pid"))"
  fi
}

slurmd_pidfile() { if [ "$NODES" = 1 ]; then echo "$RUN/slurmd.pid"; else echo "$RUN/slurmd-$1.pid"; fi; }

start_slurmd() { # NODE_NAME
  local pidfile
  pidfile=$(slurmd_pidfile "$1")
  is_ours "$pidfile" slurmd && return 0
  if [ "$NODES" = 1 ]; then
    slurmd
  else
    mkdir -p "$ROOT/spool/$1"
    # its own network namespace (address), mount namespace (its hosts file over /etc/hosts) and
    # UTS namespace (hostname): jobs on it see rnce-nI as their host, as on a real cluster.
    # Not 'ip netns exec': it remounts /sys without /sys/fs/cgroup, and slurmd then refuses to start
    nsenter --net="/run/netns/$1" unshare --mount --uts sh -c \
      "mount --bind /etc/netns/$1/hosts /etc/hosts && hostname $1 && exec slurmd -N $1" \
      || die "slurmd on $1 did not start: $(tail -1 "$LOG/slurmd-$1.log" 2>/dev/null)"
  fi
  await_pidfile "$pidfile" slurmd "$LOG/$(basename "$pidfile" .pid).log"
  say "slurmd started on $1 (pid $(cat "$pidfile"))"
}

start_slurm_daemons() {
  if ! is_ours "$RUN/slurmctld.pid" slurmctld; then
    # a controller we did not start would hold the port and make ours exit at once
    if scontrol ping 2>/dev/null | grep -q UP; then
      die "a slurmctld not started by this script answers on this host; stop it first"
    fi
    slurmctld
    await_pidfile "$RUN/slurmctld.pid" slurmctld "$LOG/slurmctld.log"
    say "slurmctld started (pid $(cat "$RUN/slurmctld.pid"))"
  fi
  local name
  for name in $(node_names); do start_slurmd "$name"; done
}

await_node_ready() { # NODE_NAME
  local state="" deadline=$((SECONDS + WAIT_TIMEOUT)) pidfile log
  pidfile=$(slurmd_pidfile "$1")
  log=$LOG/$(basename "$pidfile" .pid).log
  while [ $SECONDS -lt $deadline ]; do
    is_ours "$RUN/slurmctld.pid" slurmctld \
      || die "slurmctld exited: $(grep -h 'fatal' "$LOG/slurmctld.log" | tail -1); read $LOG/slurmctld.log"
    is_ours "$pidfile" slurmd || die "slurmd on $1 exited: $(grep -h 'fatal' "$log" | tail -1); read $log"
    state=$(sinfo -h -n "$1" -o %T 2>/dev/null || true)
    case "$state" in
      idle | mixed | allocated | completing) say "node $1 is $state"; return 0 ;;
      # a node drained by a previous run (e.g. killed mid-job) is fine to reuse
      drain* | down* | fail*) scontrol update NodeName="$1" State=RESUME >/dev/null 2>&1 || true ;;
    esac
    sleep 0.2
  done
  die "node $1 not ready after ${WAIT_TIMEOUT}s (state '$state'); read $log"
}

while [ $# -gt 0 ]; do
  case "$1" in
    --nodes) NODES=${2:-}; shift; shift || true ;;
    --nodes=*) NODES=${1#--nodes=}; shift ;;
    *) die "unknown argument '$1'; usage: start_local_slurm.sh [--nodes N]" 2 ;;
  esac
done
[[ "$NODES" =~ ^[1-9][0-9]?$ ]] || die "--nodes must be a number from 1 to 99, got '$NODES'" 2
# packages first: without root, the missing ones are named (install_packages exits 3)
install_packages
[ "$(id -u)" = 0 ] || die "needs root (it writes /etc/slurm and starts the daemons as root)" 3
for tool in ip nsenter unshare; do
  [ "$NODES" = 1 ] || command -v $tool >/dev/null || die "--nodes $NODES needs '$tool' (iproute2/util-linux)" 3
done
mkdir -p "$RUN" "$LOG" "$ROOT/state" "$ROOT/spool"
start_munge
[ "$NODES" = 1 ] || setup_network
write_slurm_conf
start_accounting
start_slurm_daemons
for name in $(node_names); do await_node_ready "$name"; done
say "cluster ready ($NODES node(s))"
