#!/usr/bin/env bash
# The project's test command (README.md): formatting, vet, every Go test with the
# race detector, a build, and the multi-process checks under a real mpirun when
# OpenMPI is installed (.ci/run installs it).
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== gofmt"
unformatted=$(gofmt -l . | grep -v '^vendor/' || true)
if [ -n "$unformatted" ]; then
  echo "gofmt would change:"; echo "$unformatted"; exit 1
fi

echo "== go vet"
go vet ./...

echo "== go test -race"
go test -race -timeout 20m ./...

echo "== build"
go build -o train .

if command -v mpirun >/dev/null 2>&1 && [ -x scripts/mpi-selftest.sh ]; then
  echo "== mpirun selftest"
  scripts/mpi-selftest.sh ./train
else
  echo "== mpirun selftest: skipped (no mpirun; apt-get install openmpi-bin to run it)"
fi
echo "== fuzz (every target, \${FUZZTIME:-10s} each)"
scripts/fuzz.sh

echo "== Slurm (one node, started here; skipped unless root with Slurm installable)"
scripts/slurm-ci.sh ./train

echo "== all tests passed"
