#!/usr/bin/env bash
# Stop the cluster tools/slurm/start_local_slurm.sh started: only processes named by its PID
# files (never by name), jobs first so no job outlives slurmd. Safe to run when nothing runs.
# A multi-node cluster's network (its namespaces rnce-nI, their veths, the bridge and
# /etc/netns/rnce-nI) is removed after its slurmd are stopped.
# Environment: SLURM_LOCAL_DIR, RINGNCE_BRIDGE (as for the start script); PURGE=1 also deletes
# job state, logs and the accounting database, so the next start is a cold one.
set -uo pipefail
ROOT=${SLURM_LOCAL_DIR:-${TMPDIR:-/tmp}/ring-nce-slurm}
RUN=$ROOT/run
BRIDGE=${RINGNCE_BRIDGE:-rnce-br0}

say() { echo "[stop_local_slurm] $*"; }
# running PID COMMAND: a live (not zombie: killed daemons linger until reaped) COMMAND process
running() {
  [ "$(cat "/proc/$1/comm" 2>/dev/null)" = "$2" ] && ! grep -q '^State:.*Z' "/proc/$1/status" 2>/dev/null
}
is_ours() { [ -s "$1" ] && running "$(cat "$1")" "$2"; }
stop_from_pidfile() { # PIDFILE COMMAND
  local pid i
  if is_ours "$1" "$2"; then
    pid=$(cat "$1")
    kill -TERM "$pid"
    for i in $(seq 1 150); do running "$pid" "$2" || break; sleep 0.1; done
    if running "$pid" "$2"; then
      say "$2 ($pid) ignored TERM for 15 s: sending KILL"
      kill -KILL "$pid"
    fi
    say "stopped $2 ($pid)"
  fi
  rm -f "$1"
}

if is_ours "$RUN/slurmctld.pid" slurmctld; then
  jobs=$(squeue -h -o %A 2>/dev/null | tr '\n' ' ')
  if [ -n "${jobs// /}" ]; then
    say "cancelling jobs: $jobs"
    # shellcheck disable=SC2086
    scancel $jobs 2>/dev/null || true
    for i in $(seq 1 150); do
      [ -z "$(squeue -h -t R,CG,S,CF -o %A 2>/dev/null)" ] && break
      sleep 0.2
    done
  fi
fi
# step daemons keep a socket in the spool dir until they exit
for i in $(seq 1 100); do
  find "$ROOT/spool" -maxdepth 1 -type s 2>/dev/null | grep -q . || break
  sleep 0.1
done

# one slurmd (slurmd.pid) or one per namespaced node (slurmd-rnce-nI.pid)
for pidfile in "$RUN/slurmd.pid" "$RUN"/slurmd-*.pid; do
  [ -e "$pidfile" ] && stop_from_pidfile "$pidfile" slurmd
done
stop_from_pidfile "$RUN/slurmctld.pid" slurmctld
stop_from_pidfile "$RUN/slurmdbd.pid" slurmdbd
stop_from_pidfile "$ROOT/mysql/mysqld.pid" mariadbd
# munged only if the start script started it and it is still that process
if [ -s "$RUN/munged.pid" ] && [ "$(cat /run/munge/munged.pid 2>/dev/null)" = "$(cat "$RUN/munged.pid")" ]; then
  stop_from_pidfile "$RUN/munged.pid" munged
fi
rm -f "$RUN/munged.pid"

# the start script's network: only the names it gives (rnce-nI namespaces, rnce-vI veths)
for name in $(ip netns list 2>/dev/null | awk '$1 ~ /^rnce-n[0-9]+$/ {print $1}'); do
  ip netns delete "$name" && say "removed network namespace $name" # its eth0 end goes with it
  rm -rf "/etc/netns/$name"
done
for link in $(ip -o link show 2>/dev/null | awk -F': ' '{print $2}' | sed 's/@.*//' | grep -E '^rnce-v[0-9]+$'); do
  ip link delete "$link" 2>/dev/null || true
done
rmdir /etc/netns 2>/dev/null || true # only when empty: the start script made it for its nodes
if ip link show "$BRIDGE" >/dev/null 2>&1; then
  ip link delete "$BRIDGE" && say "removed bridge $BRIDGE"
fi

if [ "${PURGE:-0}" = 1 ]; then
  rm -rf "$ROOT/state" "$ROOT/spool" "$ROOT/log" "$ROOT/mysql"
  say "purged job state, logs and the accounting database under $ROOT"
fi
say "done"
