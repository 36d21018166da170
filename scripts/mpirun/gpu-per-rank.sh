#!/bin/bash
# gpu-per-rank.sh: run a command with CUDA_VISIBLE_DEVICES narrowed to the one
# GPU of this rank, chosen by its local rank (its index among the ranks of its
# host), so that every rank sees its own GPU as device 0:
#
#   mpirun -np 8 scripts/mpirun/gpu-per-rank.sh ./train -device cuda ...
#
# The local rank comes from Open MPI (OMPI_COMM_WORLD_LOCAL_RANK), MPICH/Hydra
# (MPI_LOCALRANKID) or Slurm (SLURM_LOCALID). Where CUDA_VISIBLE_DEVICES
# already lists several GPUs, the local rank indexes that list; where it
# names one, the launcher bound it already and it is left alone.
set -eu
lr=${OMPI_COMM_WORLD_LOCAL_RANK:-${MPI_LOCALRANKID:-${SLURM_LOCALID:-}}}
if [ -z "$lr" ]; then
	echo "gpu-per-rank.sh: no local rank in the environment (not started by mpirun or srun?)" >&2
	exit 1
fi
IFS=, read -r -a gpus <<<"${CUDA_VISIBLE_DEVICES:-}"
if [ "${#gpus[@]}" -gt 1 ]; then
	if [ "$lr" -ge "${#gpus[@]}" ]; then
		echo "gpu-per-rank.sh: local rank $lr but only ${#gpus[@]} GPUs in CUDA_VISIBLE_DEVICES=$CUDA_VISIBLE_DEVICES" >&2
		exit 1
	fi
	export CUDA_VISIBLE_DEVICES=${gpus[$lr]}
elif [ "${#gpus[@]}" -eq 0 ]; then
	export CUDA_VISIBLE_DEVICES=$lr
fi
exec "$@"
