// Package quant holds weights in 4-bit NF4 exactly as bitsandbytes stores them,
// so that QLoRA's frozen base weights take a quarter of their bf16 size and a
// pre-quantized `*-bnb-4bit` checkpoint reads back into the same numbers
// bitsandbytes would compute.
//
// # The format (bitsandbytes quantize_4bit / dequantize_4bit, quant_type "nf4")
//
// A tensor of n weights, flattened row-major, is cut into blocks of BlockSize
// (64) weights; the last block may be shorter. Each block keeps its absmax, the
// largest |w| over the weights it holds, in float32. Each weight keeps a 4-bit
// code q: the index of the NF4 code-book entry (NF4Code, 16 values in [-1, 1],
// quantiles of a normal distribution) nearest to w x (1/absmax). Nearest is
// decided as bitsandbytes' CUDA kernel decides it: by comparing with fixed
// thresholds halfway between neighbouring entries (nf4Thresholds), a value on a
// threshold taking the lower code. Two codes share a byte, element 2j in the high
// nibble and 2j+1 in the low one; an odd n leaves the last low nibble holding the
// code of 0 (7), as the kernel's zero padding does.
//
// A weight comes back as NF4Code[q] x absmax, one float32 product, rounded once to
// bf16 (or kept in float32).
//
// # Double quantization (bitsandbytes compress_statistics, bnb_4bit_use_double_quant)
//
// The float32 absmaxes, one per 64 weights, cost 0.5 bit per weight. With double
// quantization they are stored in 8 bits: offset = mean(absmax); the differences
// absmax - offset are quantized blockwise again, NestedBlockSize (256) at a
// time, each block scaled by its own float32 absmax2 and coded with
// bitsandbytes' signed dynamic 8-bit map (DynamicMap, create_dynamic_map). An
// absmax comes back as float32(map[c] x absmax2) + offset, two roundings, as
// bitsandbytes computes it in two steps.
//
// # Edge cases, as bitsandbytes' CUDA kernels behave
//
//   - An all-zero block has absmax 0; the kernel's 0 x (1/0) is NaN, which every
//     threshold comparison rejects, so each code is 0 and each weight comes back
//     as -1 x 0 = -0. Bitwise, that is what bitsandbytes stores and returns.
//   - Weights that are not finite are refused, naming the tensor and block:
//     training weights must be finite, and the kernel would silently turn them
//     into other numbers.
//
// # What is and is not bit-exact
//
// Every step is written in float32 with the operations in bitsandbytes' order,
// so codes, scales and dequantized values equal, bit for bit, those of the
// reference in scripts/make-nf4-fixtures.py (the tests read its output from
// testdata/nf4/, made with PyTorch 2.11 on the GPU test machine). Three things
// can differ from a real bitsandbytes build, and are said where they arise:
//
//   - Its CUDA library is compiled with --use_fast_math, so 1/absmax is the
//     GPU's approximate reciprocal. Measured on an H200 (nvrtc, fast math): it
//     differed from the IEEE reciprocal for 14% of 4M blocks of normal weights,
//     yet changed none of their 268M NF4 codes (a weight would have to lie
//     within about one float32 ulp of a threshold).
//   - It takes the double-quantization offset as PyTorch's float32 mean on the
//     GPU, whose summation order is its own; here it is the float32 nearest the
//     float64 mean. On the fixture cases and on those 4M blocks the two agreed.
//   - Its dynamic map is built by PyTorch's CPU linspace, which fuses
//     multiply-adds on x86 builds (see linspace32); a build that does not would
//     make a slightly different map.
//
// A checkpoint read from disk carries its codes, scales, offset and map, so
// reading one is exact.
//
// # Files
//
// nf4.go holds the NF4 quantizer and dequantizer, dynamic.go the 8-bit map and
// double quantization, bnb.go the reading of bitsandbytes' serialised 4-bit
// checkpoints (config.json's quantization_config and each weight's companion
// tensors).
package quant
