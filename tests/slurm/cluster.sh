#!/usr/bin/env bash
# A one-node SLURM cluster on loopback (munged, slurmctld, slurmd) for tests, as root.
# Usage: source tests/slurm/cluster.sh; cluster_up DIR; ...; cluster_down DIR
# Everything lives under DIR; daemons are stopped through their own pid files.

cluster_install() {
    if command -v slurmctld >/dev/null && command -v slurmd >/dev/null &&
        command -v sbatch >/dev/null && command -v munged >/dev/null; then
        return 0
    fi
    echo "installing slurm and munge from Debian"
    apt-get update -qq &&
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            slurmctld slurmd slurm-client munge >/dev/null
}

_stop_pidfile() {  # pidfile: TERM, wait up to 10 s, then KILL
    local pidfile=$1 pid i
    [ -f "$pidfile" ] || return 0
    pid=$(cat "$pidfile" 2>/dev/null) || return 0
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null
    for i in $(seq 1 50); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.2
    done
    kill -KILL "$pid" 2>/dev/null
}

cluster_down() {
    local w=$1 i f
    if [ -f "$w/etc/slurm.conf" ] && [ -f "$w/run/slurmctld.pid" ]; then
        export SLURM_CONF=$w/etc/slurm.conf
        scancel --user=root 2>/dev/null
        for i in $(seq 1 50); do
            [ -z "$(squeue -h 2>/dev/null)" ] && break
            sleep 0.2
        done
    fi
    for f in "$w"/run/slurmd-*.pid "$w/run/slurmctld.pid" "$w/munge/munged.pid"; do
        _stop_pidfile "$f"
    done
}

_port_free() {
    ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

_write_conf() {
    local w=$1 cpus=$2
    cat >"$w/etc/slurm.conf" <<CONF
ClusterName=artbankci
SlurmctldHost=localhost
SlurmctldPort=6817
SlurmdPort=6818
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$w/munge/munge.sock,cred_expire=5
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$w/state
SlurmdSpoolDir=$w/spool/slurmd-%n
SlurmctldPidFile=$w/run/slurmctld.pid
SlurmdPidFile=$w/run/slurmd-%n.pid
SlurmctldLogFile=$w/log/slurmctld.log
SlurmdLogFile=$w/log/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
SchedulerParameters=bf_interval=1,sched_interval=1
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MailProg=/bin/true
ReturnToService=2
SlurmdParameters=config_overrides
JobRequeue=1
KillWait=5
InactiveLimit=0
MinJobAge=300
NodeName=localhost NodeAddr=127.0.0.1 Port=6818 CPUs=$cpus Boards=1 SocketsPerBoard=1 CoresPerSocket=$cpus ThreadsPerCore=1 RealMemory=4000 State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
CONF
}

cluster_up() {
    local w=$1 cpus=${2:-4} i
    cluster_down "$w"
    rm -rf "$w"
    for port in 6817 6818; do
        _port_free "$port" || { echo "port $port is taken: another slurm is running" >&2; return 1; }
    done
    mkdir -p "$w"/{etc,state,log,run,munge,spool/slurmd-localhost}
    chmod 755 "$w" "$w/munge"
    mungekey -c -k "$w/munge/munge.key" >/dev/null
    munged --socket="$w/munge/munge.sock" --key-file="$w/munge/munge.key" \
        --pid-file="$w/munge/munged.pid" --log-file="$w/log/munged.log" \
        --seed-file="$w/munge/munged.seed" || return 1
    _write_conf "$w" "$cpus"
    export SLURM_CONF=$w/etc/slurm.conf
    slurmctld -i || return 1
    slurmd -N localhost || return 1
    for i in $(seq 1 150); do
        [ "$(sinfo -h -o %T 2>/dev/null)" = idle ] && return 0
        sleep 0.2
    done
    echo "slurm did not come up; logs:" >&2
    tail -n 20 "$w"/log/* >&2
    return 1
}
