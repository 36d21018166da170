#!/bin/bash
# openmpi.sh: train under Open MPI's mpirun, on this node or on several.
#
#   scripts/mpirun/openmpi.sh                                  # this node, one rank per GPU
#   NP=4 DEVICE=cpu scripts/mpirun/openmpi.sh -steps 20        # this node, 4 CPU ranks
#   HOSTFILE=hosts NP=16 scripts/mpirun/openmpi.sh -config run.toml -pp 2
#
# Arguments are train's flags. Environment:
#   TRAIN_BIN  the binary (default ./train; the same path on every host)
#   NP         ranks (default: the GPUs of this node, from nvidia-smi; 2 without GPUs)
#   PPN        ranks per node with a hostfile (default 8: one per GPU)
#   HOSTFILE   several nodes: one host per line, e.g. "node1 slots=8"
#   DEVICE     cuda or cpu (default cuda when nvidia-smi sees a GPU)
#   RUN        the run directory, on a file system every host sees (default runs/mpirun)
set -euo pipefail
TRAIN_BIN=${TRAIN_BIN:-./train}
RUN=${RUN:-runs/mpirun}
gpus=$( (nvidia-smi -L 2>/dev/null || true) | grep -c '^GPU' || true)
DEVICE=${DEVICE:-$([ "$gpus" -gt 0 ] && echo cuda || echo cpu)}
NP=${NP:-$([ "$gpus" -gt 0 ] && echo "$gpus" || echo 2)}

flags=(
	-np "$NP"
	--bind-to core            # each rank stays on its cores: steadier step times
	--report-bindings         # print where each rank landed (stderr), to check the layout
	-x PATH                   # the same programs on every host
)
# Pass on the library path (libcuda, libnccl), NCCL's settings and train's
# network interface and timeout, where set (-x of an unset one only warns).
for v in LD_LIBRARY_PATH NCCL_DEBUG NCCL_SOCKET_IFNAME NCCL_IB_HCA TRAIN_IFACE TRAIN_COMM_TIMEOUT; do
	[ -n "${!v:-}" ] && flags+=(-x "$v")
done
if [ -n "${HOSTFILE:-}" ]; then
	# Several nodes: rank 0 runs on the first host of the file, which every
	# rank is told as MASTER_ADDR (ranks on other hosts cannot find it alone).
	MASTER_ADDR=${MASTER_ADDR:-$(awk 'NF && $1 !~ /^#/ {print $1; exit}' "$HOSTFILE")}
	MASTER_PORT=${MASTER_PORT:-29500}
	export MASTER_ADDR MASTER_PORT
	flags+=(
		--hostfile "$HOSTFILE"
		--map-by "ppr:${PPN:-8}:node"  # PPN ranks on each node, filled in order: ranks 0..PPN-1 on the first
		-x MASTER_ADDR -x MASTER_PORT
	)
else
	flags+=(--map-by core)     # one node: consecutive ranks on consecutive cores
fi
if [ "$(id -u)" = 0 ]; then
	export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1  # containers often run as root
fi
launch=("$TRAIN_BIN")
if [ "$DEVICE" = cuda ]; then
	launch=("$(dirname "$0")/gpu-per-rank.sh" "$TRAIN_BIN")  # one GPU per rank, by local rank
fi
set -x
exec mpirun "${flags[@]}" "${launch[@]}" -device "$DEVICE" -run "$RUN" "$@"
