#!/usr/bin/env bash
# Stop the cluster tools/slurm/start_local_slurm.sh started: only processes named by its PID
# files (never by name), jobs first so no job outlives slurmd. Safe to run when nothing runs.
# Environment: SLURM_LOCAL_DIR (as for the start script); PURGE=1 also deletes job state, logs
# and the accounting database, so the next start is a cold one.
set -uo pipefail
ROOT=${SLURM_LOCAL_DIR:-${TMPDIR:-/tmp}/ring-nce-slurm}
RUN=$ROOT/run

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

stop_from_pidfile "$RUN/slurmd.pid" slurmd
stop_from_pidfile "$RUN/slurmctld.pid" slurmctld
stop_from_pidfile "$RUN/slurmdbd.pid" slurmdbd
stop_from_pidfile "$ROOT/mysql/mysqld.pid" mariadbd
# munged only if the start script started it and it is still that process
if [ -s "$RUN/munged.pid" ] && [ "$(cat /run/munge/munged.pid 2>/dev/null)" = "$(cat "$RUN/munged.pid")" ]; then
  stop_from_pidfile "$RUN/munged.pid" munged
fi
rm -f "$RUN/munged.pid"

if [ "${PURGE:-0}" = 1 ]; then
  rm -rf "$ROOT/state" "$ROOT/spool" "$ROOT/log" "$ROOT/mysql"
  say "purged job state, logs and the accounting database under $ROOT"
fi
say "done"
