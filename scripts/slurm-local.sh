#!/usr/bin/env bash
# A real one-node SLURM cluster (with accounting, so `sacct` works) whose every file lives under DIR.
#
#   bash scripts/slurm-local.sh start  DIR   # install what is missing (apt-get), start, wait until the node is idle,
#                                            # then print the one line a client needs: export SLURM_CONF=DIR/etc/slurm.conf
#   bash scripts/slurm-local.sh stop   DIR   # cancel the cluster's jobs, end the daemons started here (by recorded PID)
#   bash scripts/slurm-local.sh status DIR   # exit 0 and say "up" when every daemon runs, else exit 3
#
# Root only (the daemons run as root, munged as user munge); Debian 12 (Slurm 22.05, MariaDB 10.11); no systemd used.
# DIR and every folder above it must be searchable by user munge (mode o+x); start makes DIR itself 0755.
# Daemons: munged, mariadbd (socket only, no TCP), slurmdbd, slurmctld, slurmd. Ports: SLURM_LOCAL_PORT (default 6817)
# for slurmctld, +1 slurmd, +2 slurmdbd, on this host. Job ids keep increasing across stop/start of the same DIR
# (controller state and database stay in DIR); a fresh DIR starts at 1, so give submitit a fresh folder with it.
# stop cancels every job of the cluster (pending ones too), so it leaves no job process running.
# Only the exported line goes to stdout; progress and errors go to stderr; daemon logs are in DIR/log.
set -euo pipefail

PACKAGES=(slurmctld slurmd slurm-client munge slurmdbd mariadb-server-core mariadb-client-core)
NEEDED_CMDS=(slurmctld slurmd slurmdbd sbatch srun sacct sacctmgr scontrol sinfo squeue scancel munged munge unmunge
    mariadbd mariadb-install-db mariadb my_print_defaults)
DAEMONS=(munged mariadbd slurmdbd slurmctld slurmd)  # start order; stop goes in reverse

say() { echo "slurm-local: $*" >&2; }
die() { say "error: $*"; exit 1; }
usage() { sed -n '2,7p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }

[ $# -eq 2 ] || usage
cmd=$1
case $cmd in start | stop | status) ;; *) usage ;; esac
DIR=$(realpath -m -- "$2")
CONF=$DIR/etc/slurm.conf
MARK="SLURM_LOCAL_DIR=$DIR"  # put in every daemon's environment: how stop recognises what this script started
PORT=${SLURM_LOCAL_PORT:-6817}
MUNGE_SOCK=$DIR/munge/munge.socket.2
DB_SOCK=$DIR/run/mariadbd.sock

now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

# --- processes ---------------------------------------------------------------------------------------------------

# True when PID is alive and carries this DIR's mark in its environment (so a reused PID is never taken for ours).
ours() {
    local pid=$1
    [[ $pid =~ ^[0-9]+$ ]] && [ -r "/proc/$pid/environ" ] || return 1
    tr '\0' '\n' 2>/dev/null <"/proc/$pid/environ" | grep -qxF -- "$MARK"
}
recorded_pid() { cat "$DIR/pids/$1" 2>/dev/null || true; }
alive() { ours "$(recorded_pid "$1")"; }

# Start a daemon in the foreground of its own session, logs to DIR/log/NAME.out, its PID recorded in DIR/pids/NAME.
launch() {
    local name=$1
    shift
    # The inner bash writes its own PID, then execs the daemon (same PID), whether setsid forked or not.
    # shellcheck disable=SC2016
    env "$MARK" SLURM_CONF="$CONF" MYSQL_UNIX_PORT="$DB_SOCK" \
        setsid bash -c 'echo $$ >"$0"; exec "$@"' "$DIR/pids/$name" "$@" \
        </dev/null >>"$DIR/log/$name.out" 2>&1 &
    local i
    for i in $(seq 50); do [ -s "$DIR/pids/$name" ] && return 0; sleep 0.1; done
    die "$name did not start (see $DIR/log/$name.out)"
}

# wait_for SECONDS WHAT NAME COMMAND...: poll COMMAND until it succeeds; fail if daemon NAME died or time ran out.
wait_for() {
    local limit=$1 what=$2 name=$3
    shift 3
    local end=$((SECONDS + limit))
    until "$@" >/dev/null 2>&1; do
        alive "$name" || { tail -n 20 "$DIR/log/$name.out" "$DIR/log/$name.log" 2>/dev/null >&2 || true;
            die "$name exited while waiting for $what (logs: $DIR/log/)"; }
        [ $SECONDS -lt $end ] || die "timed out after ${limit}s waiting for $what (logs: $DIR/log/)"
        sleep 0.2
    done
}

# running PID: true while PID exists and is not a zombie
running() { [ -e "/proc/$1" ] && ! grep -q '^State:[[:space:]]*Z' "/proc/$1/status" 2>/dev/null; }

# TERM, then KILL after LIMIT seconds; waits until the process is gone (or a zombie, whose parent reaps it).
end_pid() {
    local pid=$1 limit=${2:-30} name=${3:-process}
    running "$pid" || return 0
    kill -TERM "$pid" 2>/dev/null || true
    local end=$((SECONDS + limit))
    while running "$pid"; do
        if [ $SECONDS -ge $end ]; then
            say "$name ($pid) ignored SIGTERM for ${limit}s: SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
            end=$((SECONDS + 10))
        fi
        sleep 0.1
    done
}

# Every live process that carries the mark (the daemons); or is a job's process of this cluster (SLURM_JOB_ID and
# this SLURM_CONF in its environment: submitters pass SLURM_CONF on to their jobs), e.g. one that left the job's
# process tree; or holds a file under DIR/log or DIR/state open: slurmstepd (whose environment slurmd builds afresh).
marked_pids() {
    {
        grep -lzxF -- "$MARK" /proc/[0-9]*/environ 2>/dev/null || true
        grep -lzxF -- "SLURM_CONF=$CONF" /proc/[0-9]*/environ 2>/dev/null | while read -r f; do
            grep -qz '^SLURM_JOB_ID=' "$f" 2>/dev/null && echo "$f"
        done || true
        find /proc/[0-9]*/fd -maxdepth 1 \( -lname "$DIR/log/*" -o -lname "$DIR/state/*" \) 2>/dev/null || true
    } | cut -d/ -f3 | sort -un | grep -vxE "$$|$BASHPID|$PPID" || true
}

# --- status ------------------------------------------------------------------------------------------------------

count_alive() {
    local n=0 d
    for d in "${DAEMONS[@]}"; do alive "$d" && n=$((n + 1)); done
    echo $n
}

do_status() {
    local d up=0
    for d in "${DAEMONS[@]}"; do
        if alive "$d"; then say "$d: running (pid $(recorded_pid "$d"))"; up=$((up + 1)); else say "$d: not running"; fi
    done
    if [ $up -eq ${#DAEMONS[@]} ] && SLURM_CONF=$CONF scontrol ping >/dev/null 2>&1; then
        echo "up: export SLURM_CONF=$CONF"
        return 0
    fi
    echo "down ($up of ${#DAEMONS[@]} daemons running)"
    return 3
}

# --- stop --------------------------------------------------------------------------------------------------------

do_stop() {
    local t0 d pid left
    t0=$(now)
    if alive slurmctld; then
        # Cancel every job, so that no job process outlives the cluster, and let slurmd finish them.
        local jobs
        jobs=$(SLURM_CONF=$CONF squeue -h -o %A 2>/dev/null | sort -u || true)
        # shellcheck disable=SC2086
        [ -z "$jobs" ] || SLURM_CONF=$CONF scancel --quiet $jobs 2>/dev/null || true
        local end=$((SECONDS + 30))
        while [ $SECONDS -lt $end ] && [ -n "$(SLURM_CONF=$CONF squeue -h -t PD,R,CG,S,CF -o %A 2>/dev/null)" ]; do
            sleep 0.2
        done
    fi
    for ((i = ${#DAEMONS[@]} - 1; i >= 0; i--)); do
        d=${DAEMONS[i]}
        pid=$(recorded_pid "$d")
        if ours "$pid"; then end_pid "$pid" 60 "$d"; say "stopped $d ($pid)"; fi
        rm -f "$DIR/pids/$d"
    done
    # Anything the daemons spawned that is still there (a slurmstepd of a job slurmd could not finish) goes too.
    left=$(marked_pids)
    for pid in $left; do
        say "ending leftover process $pid: $(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null)"
        end_pid "$pid" 10
    done
    say "stopped in $(since "$t0") s"
}

# --- start -------------------------------------------------------------------------------------------------------

install_missing() {
    local missing=() c
    for c in "${NEEDED_CMDS[@]}"; do command -v "$c" >/dev/null || missing+=("$c"); done
    [ ${#missing[@]} -eq 0 ] && return 0
    command -v apt-get >/dev/null || die "missing ${missing[*]} and no apt-get to install them"
    say "installing ${PACKAGES[*]} (missing: ${missing[*]})"
    local t0
    t0=$(now)
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2 || die "apt-get update failed"
    apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}" >"$DIR/log/apt.log" 2>&1 ||
        { tail -n 20 "$DIR/log/apt.log" >&2; die "apt-get install failed (log: $DIR/log/apt.log)"; }
    say "installed in $(since "$t0") s"
    for c in "${NEEDED_CMDS[@]}"; do command -v "$c" >/dev/null || die "$c still missing after the install"; done
}

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

write_configs() {
    local node host
    # NodeName=... CPUs=... Boards=... SocketsPerBoard=... CoresPerSocket=... ThreadsPerCore=... RealMemory=...
    node=$(slurmd -C | head -n 1)
    [[ $node == NodeName=* ]] || die "slurmd -C said: $node"
    host=${node%% *}
    host=${host#NodeName=}
    # Some memory is left out so that a later, slightly smaller reading does not drain the node.
    node=$(awk '{ for (i = 1; i <= NF; i++) if ($i ~ /^RealMemory=/) { split($i, a, "="); $i = "RealMemory=" int(a[2] * 0.95) } print }' <<<"$node")

    cat >"$DIR/etc/my.cnf" <<EOF
# MariaDB for slurmdbd: local socket only, small footprint. Written by scripts/slurm-local.sh.
[mysqld]
datadir=$DIR/db
socket=$DB_SOCK
pid-file=$DIR/run/mariadbd.pid
log-error=$DIR/log/mariadbd.log
user=root
skip-networking
skip-name-resolve
performance_schema=OFF
innodb_buffer_pool_size=32M
innodb_log_file_size=16M
innodb_log_buffer_size=2M
key_buffer_size=1M
aria_pagecache_buffer_size=1M
max_connections=32
table_open_cache=256
innodb_lock_wait_timeout=900
innodb_flush_log_at_trx_commit=2
[client]
socket=$DB_SOCK
user=root
EOF

    cat >"$DIR/etc/slurmdbd.conf" <<EOF
# Written by scripts/slurm-local.sh.
AuthType=auth/munge
AuthInfo=socket=$MUNGE_SOCK
DbdHost=localhost
DbdPort=$((PORT + 2))
SlurmUser=root
DebugLevel=info
LogFile=$DIR/log/slurmdbd.log
PidFile=$DIR/run/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=root
StorageLoc=slurm_acct_db
EOF
    chmod 0600 "$DIR/etc/slurmdbd.conf"

    : >"$DIR/etc/plugstack.conf"
    cat >"$CONF" <<EOF
# One-node cluster written by scripts/slurm-local.sh; every path is under $DIR.
ClusterName=lsmooth
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$PORT
SlurmdPort=$((PORT + 1))
AuthType=auth/munge
CredType=cred/munge
# cred_expire: a requeued job may start again this many seconds after it ended (default 120)
AuthInfo=socket=$MUNGE_SOCK,cred_expire=10
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$DIR/state/ctld
SlurmdSpoolDir=$DIR/state/d
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
PlugStackConfig=$DIR/etc/plugstack.conf
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SwitchType=switch/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
# a pending job (a requeued one too) is considered every second, not every 60 s; started as soon as allowed
SchedulerParameters=sched_interval=1,bf_interval=1,batch_sched_delay=0
ReturnToService=2
JobRequeue=1
KillWait=10
InactiveLimit=0
MinJobAge=300
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=$((PORT + 2))
# for a connection to slurmdbd, the munge socket is taken from here, not from AuthInfo
AccountingStoragePass=$MUNGE_SOCK
$node NodeAddr=127.0.0.1 State=UNKNOWN
# a job gets whole cores; one that asks for it (sbatch --oversubscribe) may share a core with up to 3 others that ask too
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
EOF
}

munge_ok() { munge -n -S "$MUNGE_SOCK" | unmunge -S "$MUNGE_SOCK"; }
db_ok() { mariadb --defaults-file="$DIR/etc/my.cnf" -e 'select 1'; }
dbd_ok() { SLURM_CONF=$CONF sacctmgr -n list cluster; }
ctld_ok() { SLURM_CONF=$CONF scontrol ping | grep -q UP; }
node_idle() { [ "$(SLURM_CONF=$CONF sinfo -h -N -o %t)" = idle ]; }

do_start() {
    [ "$(id -u)" -eq 0 ] || die "must run as root (the daemons run as root, munged as user munge)"
    local n
    n=$(count_alive)
    if [ "$n" -eq ${#DAEMONS[@]} ]; then
        say "already running in $DIR"
        echo "export SLURM_CONF=$CONF"
        return 0
    fi
    if [ "$n" -gt 0 ]; then say "only $n of ${#DAEMONS[@]} daemons running: stopping them first"; do_stop; fi

    local t0 port
    mkdir -p "$DIR"
    chmod 0755 "$DIR"
    mkdir -p "$DIR"/{etc,log,run,pids,state/ctld,state/d,db,munge}
    install_missing
    t0=$(now)
    for port in "$PORT" $((PORT + 1)) $((PORT + 2)); do
        port_busy "$port" && die "port $port is in use (another cluster? set SLURM_LOCAL_PORT to another base port)"
    done
    [ ${#MUNGE_SOCK} -lt 100 ] || die "DIR is too long for a unix socket path: $MUNGE_SOCK"
    id munge >/dev/null 2>&1 || die "no user munge (the munge package creates it)"

    # munged: key 0600 and socket folder 0755, both owned by munge.
    chown munge:munge "$DIR/munge"
    chmod 0755 "$DIR/munge"
    if [ ! -s "$DIR/munge/munge.key" ]; then
        dd if=/dev/urandom of="$DIR/munge/munge.key" bs=1024 count=1 status=none
    fi
    chown munge:munge "$DIR/munge/munge.key"
    chmod 0600 "$DIR/munge/munge.key"
    setpriv --reuid=munge --regid=munge --init-groups test -r "$DIR/munge/munge.key" ||
        die "user munge cannot reach $DIR/munge: every folder above DIR must be searchable by others (chmod o+x)"
    rm -f "$MUNGE_SOCK" "$MUNGE_SOCK.lock"

    write_configs

    launch munged setpriv --reuid=munge --regid=munge --init-groups \
        munged --foreground --key-file="$DIR/munge/munge.key" --socket="$MUNGE_SOCK" \
        --pid-file="$DIR/munge/munged.pid" --log-file="$DIR/log/munged.log" --seed-file="$DIR/munge/munged.seed"
    wait_for 20 "munged" munged munge_ok

    if [ ! -d "$DIR/db/mysql" ]; then
        local t1
        t1=$(now)
        mariadb-install-db --defaults-file="$DIR/etc/my.cnf" --auth-root-authentication-method=socket \
            --skip-test-db >"$DIR/log/mariadb-install-db.log" 2>&1 ||
            { tail -n 20 "$DIR/log/mariadb-install-db.log" >&2; die "mariadb-install-db failed"; }
        say "database initialised in $(since "$t1") s"
    fi
    launch mariadbd mariadbd --defaults-file="$DIR/etc/my.cnf"
    wait_for 60 "mariadbd" mariadbd db_ok

    launch slurmdbd slurmdbd -D
    wait_for 60 "slurmdbd" slurmdbd dbd_ok
    if ! SLURM_CONF=$CONF sacctmgr -n -P list cluster format=cluster | grep -qx lsmooth; then
        SLURM_CONF=$CONF sacctmgr -i add cluster lsmooth >/dev/null
    fi

    launch slurmctld slurmctld -D
    wait_for 30 "slurmctld" slurmctld ctld_ok
    launch slurmd slurmd -D
    wait_for 60 "the node to be idle" slurmd node_idle

    say "up in $(since "$t0") s (logs: $DIR/log)"
    echo "export SLURM_CONF=$CONF"
}

case $cmd in
start) do_start ;;
stop) do_stop ;;
status) do_status ;;
esac
