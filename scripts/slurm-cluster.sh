#!/usr/bin/env bash
# Start (or stop) a one-node SLURM cluster on this machine, for running the
# relief workflow through `snakemake --workflow-profile profiles/slurm` and for
# tests/test_slurm.py.
#
#   scripts/slurm-cluster.sh          install if needed, configure, start, wait until idle
#   scripts/slurm-cluster.sh start    same
#   scripts/slurm-cluster.sh stop     stop slurmd, slurmctld and munged
#   scripts/slurm-cluster.sh status   show the daemons and `sinfo`
#
# Idempotent: packages are only installed when missing, daemons only started
# when not running, and they are restarted only if slurm.conf had to change.
# Works without systemd (the daemons are started directly). Needs root.
#
# The cluster: Debian's slurm-wlm + munge, no slurmdbd (so `sacct` answers
# "accounting storage is disabled"; the Snakemake SLURM executor is told to use
# `squeue` for job status, see profiles/slurm/config.yaml, and MinJobAge is set
# high enough that squeue still lists finished jobs long enough for it).
# One node (this host, CPUs from nproc, no GPUs), one partition `debug`.
#
# Environment overrides: SLURM_CLUSTER_TIMEOUT (seconds to wait for the node to
# be idle, default 90).
set -euo pipefail

CONF_DIR=/etc/slurm
CONF="$CONF_DIR/slurm.conf"
LOG_DIR=/var/log/slurm
CTLD_LOG="$LOG_DIR/slurmctld.log"
SLURMD_LOG="$LOG_DIR/slurmd.log"
CTLD_PID=/run/slurmctld.pid
SLURMD_PID=/run/slurmd.pid
MUNGE_KEY=/etc/munge/munge.key
MUNGE_RUN=/run/munge
MUNGE_PID="$MUNGE_RUN/munged.pid"
MUNGE_LOG=/var/log/munge/munged.log
TIMEOUT="${SLURM_CLUSTER_TIMEOUT:-90}"

log() { echo "slurm-cluster: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

need_root() {
    [ "$(id -u)" -eq 0 ] || die "must run as root (it installs packages and starts system daemons)"
}

# pid from a pid file, if that process is alive
alive_pid() {
    local f="$1" pid
    [ -r "$f" ] || return 1
    pid="$(tr -dc '0-9' <"$f")"
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && echo "$pid"
}

running() { # running NAME PIDFILE
    alive_pid "$2" >/dev/null || pgrep -x "$1" >/dev/null 2>&1
}

install_packages() {
    local missing=0 cmd
    for cmd in munged slurmctld slurmd sinfo sbatch squeue scontrol; do
        command -v "$cmd" >/dev/null 2>&1 || missing=1
    done
    [ "$missing" -eq 0 ] && return 0
    command -v apt-get >/dev/null 2>&1 || die "slurm/munge missing and apt-get not available"
    log "installing slurm-wlm and munge with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq || die "apt-get update failed"
    apt-get install -y -qq slurm-wlm munge >/dev/null || die "apt-get install slurm-wlm munge failed"
}

write_conf() {
    local host cpus mem_kb mem_mb tmp
    host="$(hostname -s)"
    cpus="$(nproc)"
    mem_kb="$(awk '/^MemTotal:/ {print $2}' /proc/meminfo)"
    # 90 % of physical memory: slurmd drains a node that reports less than
    # RealMemory, so never claim all of it.
    mem_mb=$(( mem_kb / 1024 * 9 / 10 ))
    [ "$mem_mb" -ge 256 ] || mem_mb=256
    mkdir -p "$CONF_DIR"
    tmp="$(mktemp)"
    cat >"$tmp" <<EOF
# Written by relief's scripts/slurm-cluster.sh: a one-node test cluster.
ClusterName=relief
# 127.0.0.1: works even where the hostname does not resolve (fresh containers).
SlurmctldHost=${host}(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
# No cgroups in containers: plain process tracking, no task confinement.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
# No slurmdbd: no accounting, sacct is unusable; job status comes from squeue.
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
# Keep finished jobs visible to squeue for 10 minutes (the Snakemake SLURM
# executor only uses squeue if MinJobAge >= 3 x its first status-check delay).
MinJobAge=600
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
SlurmctldPidFile=${CTLD_PID}
SlurmdPidFile=${SLURMD_PID}
SlurmdSpoolDir=/var/spool/slurmd
StateSaveLocation=/var/spool/slurmctld
SlurmctldLogFile=${CTLD_LOG}
SlurmdLogFile=${SLURMD_LOG}
SlurmctldTimeout=30
SlurmdTimeout=60
InactiveLimit=0
KillWait=10
Waittime=0
NodeName=${host} NodeAddr=127.0.0.1 CPUs=${cpus} RealMemory=${mem_mb} State=UNKNOWN
PartitionName=debug Nodes=${host} Default=YES MaxTime=INFINITE State=UP
EOF
    if [ -f "$CONF" ] && cmp -s "$tmp" "$CONF"; then
        rm -f "$tmp"
        return 1 # unchanged
    fi
    install -m 0644 "$tmp" "$CONF"
    rm -f "$tmp"
    log "wrote $CONF (node ${host}, ${cpus} CPUs, RealMemory=${mem_mb} MB, partition debug)"
    return 0 # changed
}

ensure_munge_key() {
    mkdir -p /etc/munge
    if [ ! -s "$MUNGE_KEY" ]; then
        log "creating munge key $MUNGE_KEY"
        if command -v mungekey >/dev/null 2>&1; then
            mungekey --create --keyfile="$MUNGE_KEY" --force
        else
            dd if=/dev/urandom of="$MUNGE_KEY" bs=1 count=1024 status=none
        fi
    fi
    chown -R munge:munge /etc/munge
    chmod 0700 /etc/munge
    chmod 0400 "$MUNGE_KEY"
}

start_munge() {
    if running munged "$MUNGE_PID"; then return 0; fi
    mkdir -p "$MUNGE_RUN" /var/lib/munge /var/log/munge
    chown munge:munge "$MUNGE_RUN" /var/lib/munge /var/log/munge
    chmod 0755 "$MUNGE_RUN"
    log "starting munged"
    if command -v runuser >/dev/null 2>&1; then
        runuser -u munge -- /usr/sbin/munged
    else
        su -s /bin/sh munge -c /usr/sbin/munged
    fi
    local i
    for i in $(seq 1 50); do
        munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1 && return 0
        sleep 0.2
    done
    die "munged did not come up; log tail:
$(tail -n 20 "$MUNGE_LOG" 2>/dev/null)"
}

prepare_dirs() {
    mkdir -p "$LOG_DIR" /var/spool/slurmd /var/spool/slurmctld
    chmod 0755 /var/spool/slurmd /var/spool/slurmctld
}

start_slurmctld() {
    running slurmctld "$CTLD_PID" && return 0
    log "starting slurmctld"
    /usr/sbin/slurmctld || die "slurmctld failed to start; log tail:
$(tail -n 30 "$CTLD_LOG" 2>/dev/null)"
}

start_slurmd() {
    running slurmd "$SLURMD_PID" && return 0
    log "starting slurmd"
    /usr/sbin/slurmd || die "slurmd failed to start; log tail:
$(tail -n 30 "$SLURMD_LOG" 2>/dev/null)"
}

stop_pidfile() { # stop_pidfile NAME PIDFILE
    local pid i
    pid="$(alive_pid "$2")" || pid="$(pgrep -x "$1" | head -n 1 || true)"
    [ -n "$pid" ] || return 0
    log "stopping $1 (pid $pid)"
    kill "$pid" 2>/dev/null || true
    for i in $(seq 1 50); do
        kill -0 "$pid" 2>/dev/null || { rm -f "$2"; return 0; }
        sleep 0.2
    done
    kill -9 "$pid" 2>/dev/null || true
    rm -f "$2"
}

stop_slurm() {
    stop_pidfile slurmd "$SLURMD_PID"
    stop_pidfile slurmctld "$CTLD_PID"
}

node_state() {
    sinfo -h -N -n "$(hostname -s)" -o '%t' 2>/dev/null | head -n 1 || true
}

wait_idle() {
    local deadline state resumed=0
    deadline=$(( $(date +%s) + TIMEOUT ))
    while :; do
        state="$(node_state)"
        case "$state" in
            idle|mix|alloc|comp) log "node $(hostname -s) is $state"; return 0 ;;
            down*|drain*|drng*|fail*)
                # e.g. left down by an earlier unclean stop: bring it back
                if [ "$resumed" -eq 0 ]; then
                    scontrol update nodename="$(hostname -s)" state=resume >/dev/null 2>&1 || true
                    resumed=1
                fi ;;
        esac
        if [ "$(date +%s)" -ge "$deadline" ]; then
            log "ERROR: node $(hostname -s) not idle after ${TIMEOUT}s (state: '${state:-none}')"
            log "sinfo:"; sinfo -N -l >&2 2>&1 || true
            scontrol show node "$(hostname -s)" >&2 2>&1 || true
            log "--- $CTLD_LOG (tail) ---"; tail -n 30 "$CTLD_LOG" >&2 2>/dev/null || true
            log "--- $SLURMD_LOG (tail) ---"; tail -n 30 "$SLURMD_LOG" >&2 2>/dev/null || true
            log "--- $MUNGE_LOG (tail) ---"; tail -n 10 "$MUNGE_LOG" >&2 2>/dev/null || true
            exit 1
        fi
        sleep 1
    done
}

cmd_start() {
    need_root
    install_packages
    local changed=0
    write_conf && changed=1
    ensure_munge_key
    start_munge
    prepare_dirs
    if [ "$changed" -eq 1 ] && { running slurmctld "$CTLD_PID" || running slurmd "$SLURMD_PID"; }; then
        log "slurm.conf changed: restarting slurmctld and slurmd"
        stop_slurm
    fi
    start_slurmctld
    start_slurmd
    wait_idle
}

cmd_stop() {
    need_root
    stop_slurm
    stop_pidfile munged "$MUNGE_PID"
}

cmd_status() {
    local d
    for d in munged slurmctld slurmd; do
        if pgrep -x "$d" >/dev/null 2>&1; then echo "$d: running"; else echo "$d: stopped"; fi
    done
    sinfo 2>&1 || true
}

case "${1:-start}" in
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    *) echo "usage: $0 [start|stop|status]" >&2; exit 2 ;;
esac
