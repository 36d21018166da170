#!/usr/bin/env bash
# Compiles kernels/*.cu into kernels/kernels.fatbin (SASS for sm_70, sm_75,
# sm_80 and sm_90, plus compute_90 PTX for later GPUs) and writes kernels/kernels.sum: the hash of
# the sources it came from (kernels/*.cu, kernels/*.cuh and this script, as
# kernels.sum's "sources" line defines) and of the fatbin. kernels' tests fail
# when the sources change and these two files do not: rebuild, commit both.
#
# Needs nvcc 11.8 to 12.x with cuda_bf16.h (CUDA 13 dropped sm_70: with nvcc 13
# the script says so and stops; the committed image is nvcc 11.8's) ($NVCC, else nvcc on PATH, else
# /usr/local/cuda/bin); $NVCC_CCBIN, when set, is its host compiler (-ccbin),
# e.g. g++-11 for nvcc 11.8 on a machine whose default g++ is too new. Run it
# from anywhere: scripts/build-kernels.sh [LOGDIR]. On a development machine
# without CUDA: NVCC=/work/cuda118/bin/nvcc scripts/build-kernels.sh (DESIGN.md
# says how to unpack nvcc 11.8 there); on a GPU test machine nvcc 13 needs
# nothing more.
set -euo pipefail
cd "$(dirname "$0")/.."
nvcc="${NVCC:-$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)}"
ccbin=()
if [ -n "${NVCC_CCBIN:-}" ]; then ccbin=(-ccbin "$NVCC_CCBIN"); fi
log="${1:-}"
major=$("$nvcc" --version | sed -n 's/.*release \([0-9]*\)\..*/\1/p')
if [ "${major:-0}" -ge 13 ]; then
  echo "build-kernels: nvcc $major cannot build sm_70 (Volta), which the image carries; use nvcc 11.8-12.x (DESIGN.md)" >&2
  exit 1
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# One translation unit: every op family's .cu, in name order.
for f in $(ls kernels/*.cu | LC_ALL=C sort); do echo "#include \"$(basename "$f")\""; done >"$tmp/all.cu"
"$nvcc" ${ccbin[@]+"${ccbin[@]}"} -fatbin -O3 -std=c++17 -I kernels --resource-usage \
  -gencode arch=compute_70,code=sm_70 \
  -gencode arch=compute_75,code=sm_75 \
  -gencode arch=compute_80,code=sm_80 \
  -gencode arch=compute_90,code=sm_90 \
  -gencode arch=compute_90,code=compute_90 \
  -o "$tmp/kernels.fatbin" "$tmp/all.cu" 2>"$tmp/nvcc.log" || { cat "$tmp/nvcc.log" >&2; exit 1; }
[ -n "$log" ] && cp "$tmp/nvcc.log" "$log/nvcc-resource-usage.log"
cp "$tmp/kernels.fatbin" kernels/kernels.fatbin

sources=$(ls kernels/*.cu kernels/*.cuh scripts/build-kernels.sh | LC_ALL=C sort | xargs sha256sum | sha256sum | cut -d' ' -f1)
{
  echo "sources $sources"
  echo "fatbin $(sha256sum kernels/kernels.fatbin | cut -d' ' -f1)"
  echo "nvcc $("$nvcc" --version | tail -n 2 | head -n 1)"
} >kernels/kernels.sum
echo "build-kernels: kernels/kernels.fatbin ($(stat -c %s kernels/kernels.fatbin) bytes), kernels/kernels.sum:"
cat kernels/kernels.sum
