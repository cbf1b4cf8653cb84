#!/usr/bin/env bash
# Start a real one-node Slurm cluster on localhost (tests and demos), idempotently.
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
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# a requeued job may start again only after cred_expire seconds (default 120)
AuthInfo=cred_expire=10
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=$ROOT/state
SlurmdSpoolDir=$ROOT/spool
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd.pid
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd.log
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
SlurmdTimeout=30
InactiveLimit=0
MinJobAge=300
KillWait=5
Waittime=0
GresTypes=gpu
NodeName=$NODE NodeAddr=127.0.0.1 ${topology}RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
  # the client commands (sbatch, sacct, ...) read /etc/slurm/slurm.conf
  if cmp -s "$ROOT/slurm.conf" /etc/slurm/slurm.conf; then return 0; fi
  mkdir -p /etc/slurm
  cp "$ROOT/slurm.conf" /etc/slurm/slurm.conf
  local d pid i
  for d in slurmd slurmctld; do
    if is_ours "$RUN/$d.pid" $d; then
      say "slurm.conf changed: restarting $d"
      pid=$(cat "$RUN/$d.pid")
      kill "$pid"
      for i in $(seq 1 $((WAIT_TIMEOUT * 10))); do running "$pid" $d || break; sleep 0.1; done
      if running "$pid" $d; then die "$d ($pid) did not stop after SIGTERM"; fi
    fi
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
    slurmdbd
    await_pidfile "$RUN/slurmdbd.pid" slurmdbd "$LOG/slurmdbd.log"
    await sacctmgr -n list cluster || die "slurmdbd does not answer; read $LOG/slurmdbd.log"
    say "slurmdbd started (pid $(cat "$RUN/slurmdbd.pid"))"
  fi
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
  if ! is_ours "$RUN/slurmd.pid" slurmd; then
    slurmd
    await_pidfile "$RUN/slurmd.pid" slurmd "$LOG/slurmd.log"
    say "slurmd started (pid $(cat "$RUN/slurmd.pid"))"
  fi
}

await_node_ready() {
  local state="" deadline=$((SECONDS + WAIT_TIMEOUT))
  while [ $SECONDS -lt $deadline ]; do
    local daemon
    for daemon in slurmctld slurmd; do
      is_ours "$RUN/$daemon.pid" $daemon \
        || die "$daemon exited: $(grep -h 'fatal' "$LOG/$daemon.log" | tail -1); read $LOG/$daemon.log"
    done
    state=$(sinfo -h -n "$NODE" -o %T 2>/dev/null || true)
    case "$state" in
      idle | mixed | allocated | completing) say "node $NODE is $state: cluster ready"; return 0 ;;
      # a node drained by a previous run (e.g. killed mid-job) is fine to reuse
      drain* | down* | fail*) scontrol update NodeName="$NODE" State=RESUME >/dev/null 2>&1 || true ;;
    esac
    sleep 0.2
  done
  die "node $NODE not ready after ${WAIT_TIMEOUT}s (state '$state'); read $LOG/slurmd.log"
}

[ "$(id -u)" = 0 ] || die "needs root (it writes /etc/slurm and starts the daemons as root)" 3
install_packages
mkdir -p "$RUN" "$LOG" "$ROOT/state" "$ROOT/spool"
start_munge
write_slurm_conf
start_accounting
start_slurm_daemons
await_node_ready
