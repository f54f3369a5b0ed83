#!/usr/bin/env bash
# A real one-node Slurm cluster on this machine, for pipe's tests (tests/it/slurm.rs): Debian's
# slurm-wlm (22.05) and munge, daemons in the background, all state in one folder. Needs root
# (as CI and developers here are). Adapted from a recipe verified on the CI machine kind.
#
#   eval "$(scripts/slurm-cluster.sh start DIR)"   # prints `export SLURM_CONF=DIR/slurm.conf`
#   sbatch --wait --parsable job.sh; scontrol show job ID; scancel ID
#   scripts/slurm-cluster.sh stop DIR
#
# Each cluster gets its own ports (SLURM_TEST_PORT, else random), so several can run on one
# machine (parallel test binaries, a developer's cluster beside CI's). Job end states:
# `scontrol show job ID` while the controller remembers the job (MinJobAge, 300 s), and
# DIR/jobcomp.txt (jobcomp/filetxt: one line per finished job with JobState and ExitCode).
# There is no accounting daemon, so `sacct` says accounting is disabled. Without cgroups
# (proctrack/linuxproc, task/none) CPU and memory limits are scheduled, not enforced.
set -euo pipefail
cmd=${1:?start|stop} D=$(mkdir -p "${2:?state folder}" && cd "$2" && pwd)
pidkill() { [ -f "$1" ] && kill "$(cat "$1")" 2>/dev/null || true; }
if [ "$cmd" = stop ]; then
  pidkill "$D/slurmd.pid"; pidkill "$D/slurmctld.pid"; sleep 1; pidkill "$D/munged.pid"; exit 0
fi
if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge; } >"$D/apt.log" 2>&1 \
    || { echo "slurm-cluster.sh: cannot install slurm-wlm and munge (see $D/apt.log)" >&2; exit 1; }
fi
mkdir -p "$D/spool" "$D/state" "$D/munge"
# munge: a private key and socket, the daemon run as root with --force (no /etc/munge permissions dance).
[ -f "$D/munge/munge.key" ] || dd if=/dev/urandom of="$D/munge/munge.key" bs=1024 count=1 status=none
chmod 700 "$D/munge"; chmod 600 "$D/munge/munge.key"
munged --force --key-file="$D/munge/munge.key" --socket="$D/munge/munge.socket" \
  --pid-file="$D/munged.pid" --log-file="$D/munge/munged.log" --seed-file="$D/munge/munged.seed"
H=$(hostname -s) N=${SLURM_TEST_CPUS:-16} M=$(( $(awk '/MemTotal/{print $2}' /proc/meminfo) / 1024 - 1024 ))
# Two free ports in a row (not listening in /proc/net/tcp{,6}), unless SLURM_TEST_PORT says.
in_use() { awk -v p="$(printf '%04X' "$1")" 'NR > 1 { split($2, a, ":"); if (a[2] == p) f = 1 } END { exit !f }' /proc/net/tcp /proc/net/tcp6 2>/dev/null; }
P=${SLURM_TEST_PORT:-}
while [ -z "$P" ]; do P=$(( 20000 + RANDOM % 20000 )); if in_use "$P" || in_use $(( P + 1 )); then P=; fi; done
cat > "$D/slurm.conf" <<CONF
ClusterName=pipe-test
SlurmctldHost=$H
SlurmctldPort=$P
SlurmdPort=$(( P + 1 ))
AuthType=auth/munge
AuthInfo=socket=$D/munge/munge.socket
CredType=cred/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$D/jobcomp.txt
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerNode=256
ReturnToService=2
SlurmUser=root
# The node offers N CPU slots (SLURM_TEST_CPUS, default 16) whatever the machine has, so the
# tests' jobs (the fortune pipeline's chain beside a job held to its time limit) never queue
# behind each other on a 2-core runner; nothing is pinned (task/none), so they share the cores.
SlurmdParameters=config_overrides
# Batch jobs start about 1 s after submission instead of 3 (the default batch_sched_delay).
SchedulerParameters=batch_sched_delay=0
SlurmdUser=root
StateSaveLocation=$D/state
SlurmdSpoolDir=$D/spool
SlurmctldPidFile=$D/slurmctld.pid
SlurmdPidFile=$D/slurmd.pid
SlurmctldLogFile=$D/slurmctld.log
SlurmdLogFile=$D/slurmd.log
NodeName=$H CPUs=$N RealMemory=$M State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
export SLURM_CONF="$D/slurm.conf"
slurmctld -i; slurmd
for _ in $(seq 60); do sinfo -h -o %T 2>/dev/null | grep -q idle && { echo "export SLURM_CONF=$D/slurm.conf"; exit 0; }; sleep 0.5; done
echo "slurm-cluster.sh: the node never became idle; see $D/slurmctld.log and $D/slurmd.log" >&2; exit 1
