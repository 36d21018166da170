#!/usr/bin/env bash
# The project's test command (README.md): formatting, vet, every Go test with the
# race detector, a build, and the multi-process checks under a real mpirun when
# OpenMPI is installed (.ci/run installs it), fuzzing, and a one-node Slurm.
#
# Every stage runs even when an earlier one failed (a failing test must not hide
# the mpirun, fuzz or Slurm results); the failures are listed at the end and the
# exit status is non-zero if there was any. Each stage's time is printed. Tests always run
# (-count=1): a result served from Go's test cache would hide a test that fails under load.
set -uo pipefail
cd "$(dirname "$0")/.."

failed=()
stage() { # stage NAME COMMAND...: run one stage, note a failure
  local name=$1 start=$SECONDS
  shift
  echo "== $name"
  if "$@"; then
    echo "-- $name: ok ($((SECONDS - start)) s)"
  else
    echo "-- $name: FAILED ($((SECONDS - start)) s)"
    failed+=("$name")
  fi
}

gofmt_clean() {
  local unformatted
  unformatted=$(gofmt -l . | grep -v '^vendor/' || true)
  if [ -n "$unformatted" ]; then
    echo "gofmt would change:"; echo "$unformatted"; return 1
  fi
}

mpi_selftest() {
  if command -v mpirun >/dev/null 2>&1 && [ -x scripts/mpi-selftest.sh ]; then
    scripts/mpi-selftest.sh ./train
  else
    echo "skipped (no mpirun; apt-get install openmpi-bin to run it)"
  fi
}

stage gofmt gofmt_clean
stage "go vet" go vet ./...
stage "go test -race" go test -race -count=1 -timeout 20m ./...
stage build go build -o train .
if [ -x train ]; then
  stage "mpirun selftest" mpi_selftest
else
  failed+=("mpirun selftest (no binary)")
fi
stage "fuzz (every target, ${FUZZTIME:-10s} each)" scripts/fuzz.sh
if [ -x train ]; then
  stage "Slurm (one node, started here; skipped unless root with Slurm installable)" scripts/slurm-ci.sh ./train
else
  failed+=("Slurm (no binary)")
fi

echo
if [ ${#failed[@]} -gt 0 ]; then
  echo "== FAILED stages (${#failed[@]}), total $SECONDS s:"
  printf '   %s\n' "${failed[@]}"
  exit 1
fi
echo "== all tests passed ($SECONDS s)"
