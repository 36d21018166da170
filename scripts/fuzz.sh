#!/usr/bin/env bash
# Runs every fuzz target of the module for a bounded time each, one after
# another, and fails on the first crash (the failing input is left in the
# package's testdata/fuzz/<Target>/ for a regression test).
#
#   scripts/fuzz.sh                 # 10s per target
#   FUZZTIME=60s scripts/fuzz.sh    # longer
#   scripts/fuzz.sh ./ckpt          # only the targets of some packages
#
# It prints one line per target, "fuzz <pkg> <Target> <time> ok|FAIL", which
# scripts/reliability.sh reads.
set -euo pipefail
cd "$(dirname "$0")/.."
fuzztime="${FUZZTIME:-10s}"
pkgs=("$@")
if [ ${#pkgs[@]} -eq 0 ]; then
	mapfile -t pkgs < <(go list ./...)
fi
found=0
for pkg in "${pkgs[@]}"; do
	dir=$(go list -f '{{.Dir}}' "$pkg")
	# Fuzz targets: func FuzzXxx(f *testing.F) in the package's _test.go files.
	targets=$(grep -ho '^func Fuzz[A-Za-z0-9_]*(f \*testing\.F)' "$dir"/*_test.go 2>/dev/null | sed 's/^func \(Fuzz[A-Za-z0-9_]*\).*/\1/' | sort -u || true)
	for target in $targets; do
		found=$((found + 1))
		log=$(mktemp)
		start=$(date +%s)
		# -timeout bounds a hung worker: the target's time plus generous room
		# for the baseline and minimisation. A bare "context deadline exceeded"
		# with no failing input written is a race in Go's fuzzing coordinator
		# at the -fuzztime deadline (golang/go#75804), not a finding: that run
		# is repeated, up to twice. A real crash always writes its input.
		tries=0
		while :; do
			ok=0
			go test -run='^$' -fuzz="^${target}\$" -fuzztime="$fuzztime" -timeout=10m "$pkg" >"$log" 2>&1 && ok=1
			if [ "$ok" = 0 ] && [ "$tries" -lt 2 ] && grep -q 'context deadline exceeded' "$log" &&
				! grep -q 'Failing input written to' "$log"; then
				tries=$((tries + 1))
				echo "fuzz $pkg $target: the fuzzing coordinator's deadline race (no input written); running it again"
				continue
			fi
			break
		done
		if [ "$ok" = 1 ]; then
			echo "fuzz $pkg $target $fuzztime ok ($(( $(date +%s) - start ))s)"
			rm -f "$log"
		else
			echo "fuzz $pkg $target $fuzztime FAIL"
			cat "$log"
			rm -f "$log"
			exit 1
		fi
	done
done
if [ "$found" -eq 0 ]; then
	echo "fuzz: no fuzz targets found" >&2
	exit 1
fi
echo "fuzz: $found targets, $fuzztime each: no crash"
