#!/usr/bin/env bash
# Every test and benchmark that needs a GPU test machine, in one run. The machine has
# no Go: build here first, then carry .dev (binaries and a copy of ../shared):
#
#   mkdir -p .dev/bin .dev/shared && cp -r ../shared/models ../shared/tokenizers .dev/shared/
#   go test -c -o .dev/bin/tokenizer.test ./tokenizer && go build -o .dev/bin/train .
#   go test -c -o .dev/bin/kernels.test ./kernels
#   scripts/gpu-check.sh OUTDIR [SECTIONS]   # on the GPU machine, from the repository root
#
# SECTIONS is a comma-separated subset of fixtures,tokenizer,collective,pipeline,kernels
# (default: all). Writes full logs to OUTDIR and prints a short table last.
set -uo pipefail
out="${1:?usage: $0 OUTDIR [SECTIONS]}"
sections=",${2:-fixtures,tokenizer,collective,pipeline,kernels,train},"
want() { [[ "$sections" == *",$1,"* ]]; }
mkdir -p "$out"
export PYTHONUNBUFFERED=1 RAYON_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false
shared="$PWD/.dev/shared"
# Tests look for ../shared beside the checkout, as on development machines.
[ -e ../shared ] || ln -s "$shared" ../shared
table=()

# 1. Reference fixtures from transformers/peft (float64): model parity, tokenizer ids, chat template.
if ! want fixtures; then :
elif python3 scripts/make-parity-fixtures.py --shared "$shared" --out "$out" >"$out/fixtures.log" 2>&1; then
  table+=("fixtures: written to fixtures.tar (unpack with scripts/unpack-parity-fixtures.sh)")
else
  table+=("fixtures: FAILED (see fixtures.log)")
fi

# 2. Tokenizer encode throughput: ours against Hugging Face tokenizers, same CPU, same corpus.
if want tokenizer; then
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
fi

# 3 and 4 run on this machine's CPU cores under its mpirun: the TCP collectives against a raw
# loopback stream, and the pipeline bubble of real (CPU) training steps against 1F1B's theory.
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
cores=$(nproc)
if want collective; then
  for np in 2 4; do
    timeout 300 mpirun --oversubscribe -np $np .dev/bin/train bench collective >"$out/collective-np$np.log" 2>&1
    table+=("collective -np $np ($cores cores): rc=$?")
    while IFS= read -r line; do table+=("  $line"); done < <(grep -E 'MiB|raw' "$out/collective-np$np.log" | head -14)
  done
fi
if want pipeline; then
  for np in 2 4; do
    timeout 300 mpirun --oversubscribe -np $np .dev/bin/train bench pipeline -micro 1,2,4,8,16 -steps 5 >"$out/pipeline-np$np.log" 2>&1
    table+=("pipeline -np $np: rc=$?")
    while IFS= read -r line; do table+=("  $line"); done < "$out/pipeline-np$np.log"
  done
fi

# 5. CUDA backend: rebuild the kernel image where nvcc is (kernels/kernels.fatbin and .sum, copied
# to OUTDIR to commit), then every op against the float64 CPU reference and a model step against
# the float32 CPU twin, on the fresh image (TRAIN_KERNELS_FATBIN), so a test binary built before
# the new fatbin was committed still tests the new kernels.
if want kernels; then
  if command -v nvcc >/dev/null || [ -x /usr/local/cuda/bin/nvcc ]; then
    if scripts/build-kernels.sh "$out" >"$out/build-kernels.log" 2>&1; then
      cp kernels/kernels.fatbin kernels/kernels.sum "$out/"
      table+=("kernels build: ok, $(grep '^nvcc' kernels/kernels.sum)")
      export TRAIN_KERNELS_FATBIN="$PWD/kernels/kernels.fatbin"
    else
      table+=("kernels build: FAILED (see build-kernels.log)")
    fi
  fi
  gpu=$(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null | head -1)
  (cd kernels && timeout 480 ../.dev/bin/kernels.test -test.v -test.timeout 470s) >"$out/kernels.log" 2>&1
  table+=("kernels tests on $gpu: rc=$?")
  while IFS= read -r line; do table+=("  $line"); done < <(grep -E -e '^(--- |ok|FAIL|PASS)' -e 'loss gpu|worst|relative L2|driver' "$out/kernels.log" | grep -v -- '--- PASS: TestOps/' | head -40)
fi

# 6. The trainer end to end on the GPU against the CPU: the same 20 steps of stories260K
# (float32 both), LoRA and full fine-tuning; per-step losses compared, and step times.
if want train; then
  data=.dev/stories.jsonl
  for method in lora full; do
    for dev in cpu cuda; do
      .dev/bin/train -model "$shared/models/stories260K" -data $data -method $method -steps 20 -batch 8 -seq 128 \
        -lr 5e-3 -log-every 100 -device $dev -run "$out/train-$method-$dev" >"$out/train-$method-$dev.log" 2>&1
      table+=("train $method $dev: rc=$? $(grep '^done' "$out/train-$method-$dev.log")")
    done
    table+=("  $(python3 - "$out/train-$method-cpu/metrics.jsonl" "$out/train-$method-cuda/metrics.jsonl" <<'PY'
import json, sys
def losses(p):
    return [json.loads(l)["loss"] for l in open(p) if '"loss"' in l]
a, b = losses(sys.argv[1]), losses(sys.argv[2])
worst = max(abs(x - y) / abs(x) for x, y in zip(a, b)) if a and len(a) == len(b) else float("nan")
print(f"{len(a)} steps; worst per-step loss relative difference cuda vs cpu: {worst:.2e}")
PY
)")
  done
  if [ "$(nvidia-smi -L 2>/dev/null | wc -l)" -ge 2 ]; then
    timeout 300 mpirun --oversubscribe -np 2 .dev/bin/train -model "$shared/models/stories260K" -data .dev/stories.jsonl \
      -method lora -steps 20 -batch 8 -seq 128 -lr 5e-3 -log-every 100 -device cuda -pp 2 -grad-accum 4 \
      -run "$out/train-pp2-cuda" >"$out/train-pp2-cuda.log" 2>&1
    table+=("train lora cuda mpirun -np 2 -pp 2: rc=$? $(grep '^done' "$out/train-pp2-cuda.log")")
  fi
fi

echo
echo "== gpu-check summary"
printf '%s\n' "${table[@]}"
