#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, for tests/test_slurm.py: Debian's slurmctld + slurmd + munge.
#   bash slurm/local-cluster.sh up     # install (apt-get, needs root) if missing, configure, start, wait idle
#   bash slurm/local-cluster.sh down   # stop the daemons this script started (by their pid files)
#   bash slurm/local-cluster.sh status # exit 0 when the node answers sinfo as idle or mixed
# State lives in $GENDIST_SLURM_DIR (default /tmp/gendist-slurm): slurm.conf, spool, logs, pid files.
set -euo pipefail
STATE=${GENDIST_SLURM_DIR:-/tmp/gendist-slurm}
HOST=$(hostname -s)
CPUS=${GENDIST_SLURM_CPUS:-$(getconf _NPROCESSORS_ONLN)}  # not nproc: it follows OMP_NUM_THREADS
CONF_DIR=/etc/slurm

status() {
  sinfo -h -N -o "%T" 2>/dev/null | grep -Eq "idle|mixed|allocated"
}

install() {
  if command -v slurmctld >/dev/null && command -v munged >/dev/null; then
    return
  fi
  if [ "$(id -u)" -ne 0 ]; then
    echo "local-cluster: slurm-wlm and munge are not installed and this is not root; install them with" \
         "'apt-get install -y slurm-wlm munge'" >&2
    exit 3
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q slurm-wlm munge >/dev/null
}

configure() {
  if [ -f "$CONF_DIR/slurm.conf" ] && ! grep -q "^ClusterName=gendist-local$" "$CONF_DIR/slurm.conf"; then
    echo "local-cluster: $CONF_DIR/slurm.conf belongs to another cluster; not touching it (stop here)" >&2
    exit 3
  fi
  mkdir -p "$STATE/spool/ctld" "$STATE/spool/d" "$STATE/log" "$CONF_DIR" /etc/munge /run/munge /var/lib/munge /var/log/munge
  if [ ! -s /etc/munge/munge.key ]; then
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
  fi
  chmod 400 /etc/munge/munge.key
  chown -R root:root /etc/munge /run/munge /var/lib/munge /var/log/munge 2>/dev/null || true
  cat > "$CONF_DIR/slurm.conf" <<EOF
ClusterName=gendist-local
SlurmctldHost=$HOST
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
SchedulerType=sched/backfill
StateSaveLocation=$STATE/spool/ctld
SlurmdSpoolDir=$STATE/spool/d
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
SlurmctldPort=6817
SlurmdPort=6818
MpiDefault=none
JobRequeue=1
KillWait=30
MinJobAge=300
InactiveLimit=0
SlurmdTimeout=60
NodeName=$HOST CPUs=$CPUS State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
  cp "$CONF_DIR/slurm.conf" "$STATE/slurm.conf"
}

up() {
  if status; then
    echo "local-cluster: already up ($HOST)"
    return
  fi
  install
  configure
  if ! pgrep -x munged >/dev/null; then
    munged --force --pid-file "$STATE/munged.pid" 2>/dev/null || munged --force
  fi
  slurmctld -i  # -i: ignore saved state from an earlier cluster
  slurmd
  for _ in $(seq 60); do
    if status; then
      scontrol update nodename="$HOST" state=resume >/dev/null 2>&1 || true
      echo "local-cluster: up ($HOST, $CPUS CPUs, partition debug)"
      return
    fi
    sleep 1
  done
  echo "local-cluster: the node did not become idle; see $STATE/log" >&2
  exit 1
}

down() {
  if status; then  # cancel what is left and let the steps end before the daemons go
    scancel --full --user=root >/dev/null 2>&1 || scancel --user=root >/dev/null 2>&1 || true
    for _ in $(seq 60); do
      [ -z "$(squeue -h 2>/dev/null)" ] && break
      sleep 1
    done
  fi
  for daemon in slurmd slurmctld munged; do
    pid_file="$STATE/$daemon.pid"
    if [ -s "$pid_file" ] && kill -0 "$(cat "$pid_file")" 2>/dev/null; then
      kill "$(cat "$pid_file")"
    fi
  done
  echo "local-cluster: down"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  *) echo "usage: bash slurm/local-cluster.sh up|down|status" >&2; exit 2 ;;
esac
