#!/usr/bin/env bash
# Check train's GGUF exports against llama.cpp itself: the quantized files
# (q8_0, q4_0) and the LoRA adapter file (gguf-lora) of stories260K.
#
#   scripts/check-gguf-llamacpp.sh [WORKDIR]      (default /work/llamacpp-build)
#
# llama.cpp's sources come from the npm package node-llama-cpp, which ships them
# as a git bundle (llama/gitRelease.bundle); the script builds libllama (CPU,
# static, -j1 under nice, outside the repository, in WORKDIR) and a small
# helper, scripts/llamacpp-check.c, that prints llama.cpp's greedy ids, runs
# llama_model_quantize (what llama-quantize does) and compares tensor bytes.
# Then, on the same prompt, for each file:
#   1. f32, q8_0, q4_0 exports: llama.cpp loads them without a warning, and its
#      greedy ids are compared with `train generate -ids` on the same file (our
#      reader dequantizes; llama.cpp computes on quantized dot products, so a
#      quantized file may part ways: the first differing position is printed).
#   2. q8_0, q4_0: llama.cpp quantizes our f32 export itself; every tensor
#      stored in the same type must be byte-identical to ours.
#   3. a LoRA adapter trained here for a few steps: llama.cpp with the base GGUF
#      and --lora (the gguf-lora export) against `train generate` on the merged
#      export; the adapter must change the ids, or the check proves nothing.
# It prints one line per check and exits non-zero when a check that must hold
# fails (f32 ids, byte identity, warnings, the adapter); the quantized ids are
# reported, and fail only with STRICT_QUANT=1.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
WORK=${1:-/work/llamacpp-build}
MODEL=${MODEL:-$REPO/../shared/models/stories260K}
PROMPT=${PROMPT:-Once upon a time}
N=${N:-40}
mkdir -p "$WORK"
cd "$WORK"

# 1. llama.cpp's sources, from the npm package.
if [ ! -d llama.cpp ]; then
	rm -rf package node-llama-cpp-*.tgz
	npm pack --silent node-llama-cpp >/dev/null
	tar xzf node-llama-cpp-*.tgz
	git clone -q package/llama/gitRelease.bundle llama.cpp
fi
echo "llama.cpp: $(cat package/llama/llama.cpp.info.json 2>/dev/null | tr -d ' \n') from node-llama-cpp $(sed -n 's/.*"version": "\(.*\)".*/\1/p' package/package.json 2>/dev/null | head -1)"

# 2. libllama for the CPU. Not -march=native: on hosts whose CPU offers AMX
# tiles that the kernel does not grant the process, ggml's AMX paths die with
# SIGILL on quantized matrices; AVX2 is enough.
command -v cmake >/dev/null || { apt-get update -qq && apt-get install -y -qq cmake; }
B=build-portable
if [ ! -f $B/src/libllama.a ]; then
	nice -n 19 cmake -S llama.cpp -B $B -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF \
		-DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
		-DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_COMMON=OFF -DGGML_OPENMP=OFF \
		-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON >$B.log
	nice -n 19 cmake --build $B --target llama -j1 >>$B.log
fi
CHECK=$WORK/llamacpp-check
nice -n 19 g++ -O1 -x c "$REPO/scripts/llamacpp-check.c" -x none -Illama.cpp/include -Illama.cpp/ggml/include \
	$B/src/libllama.a $B/ggml/src/libggml.a $B/ggml/src/libggml-cpu.a $B/ggml/src/libggml-base.a \
	-lpthread -lm -ldl -o "$CHECK"

# 3. train, and the files to check.
TRAIN=$WORK/train
(cd "$REPO" && go build -o "$TRAIN" .)
OUT=$WORK/check
rm -rf "$OUT"
mkdir -p "$OUT"
# fail records a failure in a file: it is also called inside $(...) subshells.
fail() {
	echo "FAIL: $*" | tee -a "$OUT/FAILED" >&2
}

# llama_ids FILE [LORA]: llama.cpp's greedy ids (the "new:" line), failing on warnings.
llama_ids() {
	local log=$OUT/llama-$(basename "$1")-$(basename "${2:--}").log
	if ! "$CHECK" greedy "$1" "${2:--}" "$PROMPT" "$N" >"$log" 2>&1; then
		fail "llama.cpp on $1 ${2:-}: exit status $? (warnings or errors, see $log)"
		sed -n 's/^llama.cpp \(warning\|error\)/  &/p' "$log" | head -5
	fi
	sed -n 's/^new: //p' "$log"
}
# ours FILE: train generate's greedy ids on the same prompt.
ours() { "$TRAIN" generate -model "$1" -prompt "$PROMPT" -max-tokens "$N" -ids 2>/dev/null; }
# compare WHAT OURS THEIRS STRICT
compare() {
	if [ -n "$3" ] && [ "$2" = "$3" ]; then
		echo "same ids: $1 ($(echo "$2" | wc -w) tokens): $2"
		return
	fi
	local k=1
	for a in $2; do
		[ "$a" = "$(echo "$3" | cut -d' ' -f$k)" ] || break
		k=$((k + 1))
	done
	echo "ids differ: $1 from token $k on; ours: $2; llama.cpp: $3"
	[ "$4" = strict ] && fail "$1: the ids differ"
	return 0
}

"$TRAIN" export -model "$MODEL" -format gguf -out "$OUT/f32.gguf" >/dev/null
for q in q8_0 q4_0; do
	"$TRAIN" export -model "$MODEL" -format gguf -quant $q -out "$OUT/$q.gguf" >/dev/null
done
for q in f32 q8_0 q4_0; do
	strict=strict
	[ $q != f32 ] && [ "${STRICT_QUANT:-0}" != 1 ] && strict=
	compare "$q export" "$(ours "$OUT/$q.gguf")" "$(llama_ids "$OUT/$q.gguf")" "$strict"
done
echo "prompt \"$PROMPT\", llama.cpp's ids: $(sed -n 's/^prompt: //p' "$OUT/llama-f32.gguf--.log")"
for q in q8_0 q4_0; do
	"$CHECK" quantize "$OUT/f32.gguf" "$OUT/llama-$q.gguf" $q >"$OUT/quantize-$q.log" 2>&1 || fail "llama_model_quantize $q"
	if r=$("$CHECK" cmp "$OUT/$q.gguf" "$OUT/llama-$q.gguf"); then
		echo "bytes: our $q export against llama.cpp's quantization of our f32 export: $(echo "$r" | tail -1)"
	else
		echo "$r"
		fail "$q: our tensors differ from llama.cpp's quantization"
	fi
done

# 4. A LoRA adapter, trained here for a few steps so that it changes the ids.
DATA=$OUT/stories.jsonl
for i in $(seq 20); do
	echo '{"text": "Once upon a time, there was a dragon named Zog. Zog liked to eat red apples and sing songs to the moon."}'
done >"$DATA"
"$TRAIN" -model "$MODEL" -data "$DATA" -lora -lora-rank 4 -steps 30 -lr 5e-3 -seq 64 -batch 4 \
	-run "$OUT/run" >"$OUT/train.log" 2>&1 || fail "training the adapter (see $OUT/train.log)"
"$TRAIN" export -model "$MODEL" -adapter "$OUT/run/adapter" -format gguf-lora -out "$OUT/adapter.gguf" >/dev/null
"$TRAIN" export -model "$MODEL" -adapter "$OUT/run/adapter" -format gguf -out "$OUT/merged.gguf" >/dev/null
base=$(llama_ids "$OUT/f32.gguf")
with=$(llama_ids "$OUT/f32.gguf" "$OUT/adapter.gguf")
[ "$base" != "$with" ] || fail "the adapter does not change llama.cpp's ids: the check would prove nothing"
compare "base + --lora adapter (llama.cpp) vs our merged export" "$(ours "$OUT/merged.gguf")" "$with" strict
compare "our merged export, llama.cpp vs train" "$(ours "$OUT/merged.gguf")" "$(llama_ids "$OUT/merged.gguf")" strict

if [ ! -f "$OUT/FAILED" ]; then
	echo "all checks passed"
	exit 0
fi
echo "$(wc -l <"$OUT/FAILED") check(s) FAILED"
exit 1
