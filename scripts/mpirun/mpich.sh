#!/bin/bash
# mpich.sh: train under MPICH's mpiexec (Hydra), on this node or on several.
#
#   scripts/mpirun/mpich.sh                                    # this node, one rank per GPU
#   NP=4 DEVICE=cpu scripts/mpirun/mpich.sh -steps 20          # this node, 4 CPU ranks
#   HOSTFILE=hosts NP=16 scripts/mpirun/mpich.sh -config run.toml -pp 2
#
# Arguments are train's flags. Environment as in openmpi.sh: TRAIN_BIN, NP,
# PPN, HOSTFILE (one host per line, "node1:8" gives 8 slots), DEVICE, RUN.
# train reads its rank from PMI_RANK/PMI_SIZE and its local rank from
# MPI_LOCALRANKID, which Hydra sets.
set -euo pipefail
TRAIN_BIN=${TRAIN_BIN:-./train}
RUN=${RUN:-runs/mpich}
gpus=$( (nvidia-smi -L 2>/dev/null || true) | grep -c '^GPU' || true)
DEVICE=${DEVICE:-$([ "$gpus" -gt 0 ] && echo cuda || echo cpu)}
NP=${NP:-$([ "$gpus" -gt 0 ] && echo "$gpus" || echo 2)}

flags=(
	-n "$NP"
	-bind-to core                # each rank stays on its cores
	-genvlist PATH               # the same programs on every host
)
for v in LD_LIBRARY_PATH NCCL_DEBUG NCCL_SOCKET_IFNAME NCCL_IB_HCA TRAIN_IFACE TRAIN_COMM_TIMEOUT; do
	[ -n "${!v:-}" ] && flags+=(-genv "$v" "${!v}")  # pass these on where set
done
if [ -n "${HOSTFILE:-}" ]; then
	# Several nodes: rank 0 runs on the first host of the file; every rank is
	# told its address.
	MASTER_ADDR=${MASTER_ADDR:-$(awk -F: 'NF && $1 !~ /^#/ {print $1; exit}' "$HOSTFILE")}
	flags+=(
		-f "$HOSTFILE"
		-ppn "${PPN:-8}"              # PPN ranks per node, filled in order
		-genv MASTER_ADDR "$MASTER_ADDR"
		-genv MASTER_PORT "${MASTER_PORT:-29500}"
	)
fi
launch=("$TRAIN_BIN")
if [ "$DEVICE" = cuda ]; then
	launch=("$(dirname "$0")/gpu-per-rank.sh" "$TRAIN_BIN")  # one GPU per rank, by local rank
fi
set -x
exec mpiexec "${flags[@]}" "${launch[@]}" -device "$DEVICE" -run "$RUN" "$@"
