#!/usr/bin/env bash
# Every test and benchmark that needs a GPU test machine, in one run. The machine has
# no Go: build here first, then carry .dev (binaries and a copy of ../shared):
#
#   mkdir -p .dev/bin .dev/shared && cp -r ../shared/models ../shared/tokenizers .dev/shared/
#   go test -c -o .dev/bin/tokenizer.test ./tokenizer
#   scripts/gpu-check.sh OUTDIR        # on the GPU machine, from the repository root
#
# Writes full logs to OUTDIR and prints a short table last.
set -uo pipefail
out="${1:?usage: $0 OUTDIR}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1 RAYON_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false
shared="$PWD/.dev/shared"
# Tests look for ../shared beside the checkout, as on development machines.
[ -e ../shared ] || ln -s "$shared" ../shared
table=()

# 1. Reference fixtures from transformers/peft (float64): model parity, tokenizer ids, chat template.
if python3 scripts/make-parity-fixtures.py --shared "$shared" --out "$out" >"$out/fixtures.log" 2>&1; then
  table+=("fixtures: written to fixtures.tar (unpack with scripts/unpack-parity-fixtures.sh)")
else
  table+=("fixtures: FAILED (see fixtures.log)")
fi

# 2. Tokenizer encode throughput: ours against Hugging Face tokenizers, same CPU, same corpus.
pin=""; command -v taskset >/dev/null && pin="taskset -c 2"
cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')
{
  echo "cpu: $cpu"
  (cd tokenizer && $pin ../.dev/bin/tokenizer.test -test.run '^$' -test.bench 'EncodeLlama3' -test.benchtime 20x -test.count 3 -test.cpu 1)
  $pin python3 tokenizer/testdata/bench_hf.py "$shared/tokenizers/llama3" data/testdata/tokenizer/llama3.jsonl \
    "$shared/tokenizers/llama3/ggml-vocab-llama-bpe.gguf.inp"
} >"$out/tokenizer-bench.log" 2>&1
table+=("tokenizer bench ($cpu, one core):")
while IFS= read -r line; do table+=("  $line"); done < <(grep -E 'Benchmark|docs|one-string' "$out/tokenizer-bench.log")

echo
echo "== gpu-check summary"
printf '%s\n' "${table[@]}"
