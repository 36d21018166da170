#!/bin/bash
# slurm-ci.sh: prove the Slurm scripts on a one-node Slurm started here, as CI
# does: Debian's slurmctld, slurmd and munge installed with apt and started by
# hand as root (no systemd), on 127.0.0.1. It then
#   1. runs scripts/slurm/train-cpu.sbatch with 2 and with 4 tasks (4 > cores:
#      --overcommit) to completion on the embedded random:tiny model;
#   2. runs the same script uninterrupted, and again sending the job SIGUSR1
#      mid-run (scancel --signal=USR1): the ranks checkpoint and exit 0, the
#      script requeues the job, it resumes from the checkpoint, and its final
#      loss must equal the uninterrupted run's bit for bit (metrics.jsonl).
#
#   scripts/slurm-ci.sh [path/to/train]     # default ./train; it builds nothing
#
# Every wait has a deadline; the daemons it started are stopped on exit. Where
# Slurm cannot be had (not root, no apt-get, the install fails) it says SKIP
# and exits 0. It exits 1 on a failed check. The state lives in a fresh
# /tmp/slurm-ci.XXXXXX (kept on failure, for its logs), with its own munge
# socket and ports, so a system Slurm or munge is left alone.
set -uo pipefail

bin=${1:-./train}
repo=$(cd "$(dirname "$0")/.." && pwd)
sbatch_script=$repo/scripts/slurm/train-cpu.sbatch

log() { echo "slurm-ci: $*"; }
skip() { log "SKIP: $*"; exit 0; }
fail() { log "FAIL: $*" >&2; failed=1; exit 1; }

[ "$(id -u)" = 0 ] || skip "needs root to install and run slurmctld/slurmd/munged"
[ -x "$bin" ] || { log "FAIL: $bin is not an executable (build it first: go build -o train .)" >&2; exit 1; }
bin=$(readlink -f "$bin")

# 1. Install (quietly, bounded) unless already there.
need=()
for c in slurmctld slurmd sbatch munged; do command -v "$c" >/dev/null 2>&1 || need+=("$c"); done
if [ ${#need[@]} -gt 0 ]; then
	command -v apt-get >/dev/null 2>&1 || skip "no apt-get to install ${need[*]}"
	log "installing slurmctld slurmd slurm-client munge (missing: ${need[*]})"
	pkgs="slurmctld slurmd slurm-client munge"
	# shellcheck disable=SC2086
	if ! DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y -q --no-install-recommends $pkgs >/tmp/slurm-ci-apt.log 2>&1; then
		DEBIAN_FRONTEND=noninteractive timeout 300 apt-get update -q >>/tmp/slurm-ci-apt.log 2>&1
		# shellcheck disable=SC2086
		DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y -q --no-install-recommends $pkgs >>/tmp/slurm-ci-apt.log 2>&1 ||
			skip "apt-get install $pkgs failed (see /tmp/slurm-ci-apt.log)"
	fi
fi

work=$(mktemp -d /tmp/slurm-ci.XXXXXX)
chmod 700 "$work"
mkdir -p "$work/munge" "$work/state" "$work/spool" "$work/runs"
failed=0
pids=()

# cleanup cancels every job, stops the daemons this script started (by pid),
# and removes the state unless a check failed.
cleanup() {
	if [ -n "${SLURM_CONF:-}" ] && [ -e "$work/slurmctld.started" ]; then
		timeout 10 scancel --full --signal=KILL --user=root >/dev/null 2>&1
		timeout 10 scancel --user=root >/dev/null 2>&1
		for _ in $(seq 20); do
			[ -z "$(timeout 5 squeue -h 2>/dev/null)" ] && break
			sleep 0.5
		done
	fi
	for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
		kill -TERM "${pids[i]}" 2>/dev/null
	done
	for p in "${pids[@]}"; do
		for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
		kill -KILL "$p" 2>/dev/null
	done
	[ -f "$work/munged.pid" ] && kill -TERM "$(cat "$work/munged.pid")" 2>/dev/null
	if [ "$failed" = 0 ]; then
		rm -rf "$work"
	else
		log "state and logs kept in $work"
	fi
}
trap cleanup EXIT
trap 'failed=1; exit 1' INT TERM

# A free TCP port from base on: the daemons' ports, not Slurm's defaults, so
# that a Slurm already on this machine is not disturbed.
free_port() {
	local p=$1
	while ss -Hltn "sport = :$p" 2>/dev/null | grep -q .; do p=$((p + 1)); done
	echo "$p"
}
ctld_port=$(free_port 16817)
slurmd_port=$(free_port $((ctld_port + 1)))

# 2. munge: a fresh key and our own socket.
dd if=/dev/urandom of="$work/munge/munge.key" bs=1024 count=1 status=none
chmod 400 "$work/munge/munge.key"
timeout 10 munged --force --key-file="$work/munge/munge.key" --socket="$work/munge/munge.socket" \
	--pid-file="$work/munged.pid" --log-file="$work/munged.log" --seed-file="$work/munge/munge.seed" ||
	fail "munged did not start: $(tail -3 "$work/munged.log" 2>/dev/null)"

# 3. slurm.conf: one node, 127.0.0.1, plugins that need no cgroups or systemd.
cpus=$(nproc)
mem=$(awk '/MemTotal/ {print int($2 / 1024 * 0.8)}' /proc/meminfo)
host=$(hostname -s)
export SLURM_CONF=$work/slurm.conf
cat >"$SLURM_CONF" <<CONF
ClusterName=ci
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$work/munge/munge.socket
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
ReturnToService=2
MinJobAge=600
KillWait=10
StateSaveLocation=$work/state
SlurmdSpoolDir=$work/spool
SlurmctldPidFile=$work/slurmctld.pid
SlurmdPidFile=$work/slurmd.pid
SlurmctldLogFile=$work/slurmctld.log
SlurmdLogFile=$work/slurmd.log
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
CONF

# 4. The daemons, in the foreground of background jobs so that we own their pids.
slurmctld -D -i -f "$SLURM_CONF" >"$work/slurmctld.out" 2>&1 &
pids+=($!)
touch "$work/slurmctld.started"
slurmd -D -N localhost -f "$SLURM_CONF" >"$work/slurmd.out" 2>&1 &
pids+=($!)

deadline=$((SECONDS + 60))
state=""
while [ $SECONDS -lt $deadline ]; do
	state=$(timeout 5 sinfo -h -n localhost -o %T 2>/dev/null | head -n1)
	case $state in
	idle) break ;;
	down* | drain* | unknown*) timeout 5 scontrol update nodename=localhost state=resume >/dev/null 2>&1 ;;
	esac
	sleep 1
done
[ "$state" = idle ] || fail "node not idle after 60 s (state '$state'): $(tail -5 "$work/slurmctld.log" "$work/slurmd.log" 2>/dev/null)"
log "slurm up: node localhost idle, $cpus CPUs, ports $ctld_port/$slurmd_port"

cd "$work" || fail "cd $work"
export TRAIN_BIN=$bin

# run_job NAME NTASKS ARGS [sbatch flags...]: submit train-cpu.sbatch, wait for
# it, and fail unless it completed with exit 0.
run_job() {
	local name=$1 n=$2 args=$3
	shift 3
	local t0=$SECONDS out
	out=$(RUN=$work/runs/$name TRAIN_ARGS=$args timeout 600 sbatch --parsable --wait --time=10 \
		--job-name="$name" --ntasks="$n" "$@" "$sbatch_script" 2>&1) ||
		fail "job $name ($n tasks): $out; $(cat "$work/$name"-*.out 2>/dev/null | tail -20)"
	log "job $name: $n tasks completed in $((SECONDS - t0)) s"
}

# last_loss RUN STEP: the training loss of STEP in RUN/metrics.jsonl (the last line for it).
last_loss() {
	sed -n "s/.*\"loss\":\([^,}]*\).*\"step\":$2[,}].*/\1/p" "$1/metrics.jsonl" | tail -n1
}

# 5. Two and four ranks to completion.
steps=6
run_job np2 2 "-steps $steps -log-every 100"
run_job np4 4 "-steps $steps -log-every 100" --overcommit --export=ALL,SRUN_FLAGS=--overcommit
for r in np2 np4; do
	[ -n "$(last_loss "$work/runs/$r" $steps)" ] || fail "run $r has no loss for step $steps"
done

# 6. Interrupted and requeued versus uninterrupted: the same final loss.
steps=30
args="-steps $steps -log-every 100"
run_job ref 2 "$args"
want=$(last_loss "$work/runs/ref" $steps)

t0=$SECONDS
id=$(RUN=$work/runs/cut TRAIN_ARGS=$args timeout 30 sbatch --parsable --time=10 --job-name=cut --ntasks=2 "$sbatch_script") ||
	fail "sbatch cut: $id"
id=${id%%;*}
# Signal once rank 0 has logged step 5: its signal handler is in place and
# most of the run is still to come.
deadline=$((SECONDS + 120))
until grep -q '"msg":"step".*"step":5,' "$work/runs/cut/logs/rank-00000.jsonl" 2>/dev/null; do
	[ $SECONDS -lt $deadline ] || fail "job $id never reached step 5: $(cat "$work"/cut-*.out 2>/dev/null | tail -20)"
	sleep 0.2
done
timeout 10 scancel --signal=USR1 "$id" || fail "scancel --signal=USR1 $id"
log "job $id: sent SIGUSR1 after step 5"
# Wait for the requeued job to finish: COMPLETED with at least one restart.
deadline=$((SECONDS + 400))
while :; do
	info=$(timeout 5 scontrol -o show job "$id" 2>/dev/null)
	jstate=$(sed -n 's/.*JobState=\([A-Z_]*\).*/\1/p' <<<"$info")
	restarts=$(sed -n 's/.*Restarts=\([0-9]*\).*/\1/p' <<<"$info")
	case $jstate in
	PENDING)
		# Slurm holds a requeued job for about two minutes (BeginTime); let it start now
		# (scontrol calls the begin time StartTime in an update).
		[ "${restarts:-0}" -ge 1 ] && [ -z "${released:-}" ] && released=1 &&
			timeout 5 scontrol update jobid="$id" StartTime=now >/dev/null 2>&1 ;;
	COMPLETED) [ "${restarts:-0}" -ge 1 ] && break ;;
	FAILED | CANCELLED | TIMEOUT | NODE_FAIL | OUT_OF_MEMORY | BOOT_FAIL | DEADLINE | PREEMPTED)
		fail "job $id ended $jstate: $(tail -30 "$work"/cut-"$id".out 2>/dev/null)" ;;
	esac
	[ $SECONDS -lt $deadline ] || fail "job $id not completed after requeue (state $jstate, restarts $restarts)"
	sleep 1
done
sessions=$(grep -c '"msg":"start"' "$work/runs/cut/logs/rank-00000.jsonl")
stopped=$(grep -c 'stopped by signal after step' "$work"/cut-"$id".out)
got=$(last_loss "$work/runs/cut" $steps)
log "job $id: stopped, requeued ($restarts restart), resumed and completed in $((SECONDS - t0)) s; $sessions sessions"
[ "$sessions" -ge 2 ] && [ "$stopped" -ge 1 ] || fail "job $id was not interrupted and resumed ($sessions start records, $stopped stop messages)"
[ -n "$want" ] && [ "$got" = "$want" ] || fail "final loss after resume $got, uninterrupted $want"
log "final loss at step $steps: resumed $got = uninterrupted $want"
if "$bin" logs -h >/dev/null 2>&1; then
	"$bin" logs "$work/runs/cut" | head -n 20
fi
log "ok in $SECONDS s"
