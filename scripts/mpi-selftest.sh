#!/bin/sh
# mpi-selftest.sh: run `train selftest collective` on 4 ranks under Open MPI's
# mpirun, as CI does. It builds nothing: give it a built binary (default ./train).
#
#   scripts/mpi-selftest.sh [path/to/train] [extra selftest flags]
#
# Exits non-zero if mpirun is missing, or if any rank fails or a check is wrong.
# As root, Open MPI needs the two OMPI_ALLOW_RUN_AS_ROOT variables; they are
# set here only when running as root. NP overrides the rank count (default 4).
set -eu

bin=${1:-./train}
[ $# -gt 0 ] && shift
np=${NP:-4}

if ! command -v mpirun >/dev/null 2>&1; then
	echo "mpi-selftest: mpirun not found (apt-get install -y openmpi-bin)" >&2
	exit 1
fi
if [ ! -x "$bin" ]; then
	echo "mpi-selftest: $bin is not an executable (build it first: go build -o train .)" >&2
	exit 1
fi
if [ "$(id -u)" = 0 ]; then
	export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
fi

# A hard stop in case something hangs (the collectives have their own timeouts).
to=""
if command -v timeout >/dev/null 2>&1; then
	to="timeout 300"
fi

echo "mpi-selftest: mpirun --oversubscribe -np $np $bin selftest collective $*"
if ! $to mpirun --oversubscribe -np "$np" "$bin" selftest collective "$@"; then
	echo "mpi-selftest: FAILED" >&2
	exit 1
fi
echo "mpi-selftest: ok"
