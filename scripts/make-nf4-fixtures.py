#!/usr/bin/env python3
"""Reference fixtures for package quant: bitsandbytes' 4-bit NF4, reimplemented in PyTorch.

bitsandbytes is not installable on the GPU test machine, so this script does not call it. It
reimplements, from bitsandbytes' documented behaviour and the arithmetic of its CUDA kernels
(csrc/kernels.cu: kQuantizeBlockwise / dQuantizeNF4 / dQuantize / kDequantizeBlockwise; functional.py:
quantize_4bit, dequantize_4bit, quantize_blockwise, dequantize_blockwise, create_dynamic_map,
QuantState.as_dict), the NF4 path that QLoRA and the *-bnb-4bit checkpoints use:

  quantize_4bit(A, blocksize=64, quant_type="nf4", compress_statistics=True|False)
    - A flattened row-major, cut into blocks of 64 (the last may be shorter); absmax = max |a| per
      block (float32); inv = 1/absmax (float32); x = a * inv (float32); the code of x is the number of
      dQuantizeNF4's 15 thresholds that x lies strictly above (a value on a threshold takes the lower
      code; NaN, from an all-zero block's 0 * (1/0), takes code 0). The thresholds are the kernel's
      decimal literals rounded straight to float32, as the CUDA compiler rounds a literal with an f
      suffix (f32_nearest below; four of them differ from float32(float(literal))).
    - two codes per byte, element 2j in the high nibble, 2j+1 in the low; an odd count leaves the code
      of the kernel's zero padding (0 * inv) in the last low nibble.
    - compress_statistics: offset = mean(absmax); absmax - offset quantized blockwise (256) with the
      signed dynamic map (create_dynamic_map(signed=True), built here exactly as bitsandbytes builds it,
      in torch on the CPU), each value coded by dQuantize's 7-step binary search and midpoint test.
  dequantize_4bit: absmax rebuilt as float32(map[c] * absmax2) + offset (two roundings); a weight is
    NF4[q] * absmax in float32, then .to(bfloat16) (round to nearest even) or kept in float32.

Two known differences from a real bitsandbytes CUDA build, which the Go side documents too: its
library is compiled with --use_fast_math, so 1/absmax is the GPU's approximate reciprocal there (a
weight within about one float32 ulp of a threshold can get the neighbouring code); and it takes the
offset as torch's float32 mean on the GPU, whose summation order is its own. Here the offset is the
float32 nearest to the exactly rounded float64 mean (math.fsum); expected.json records, per case,
the CUDA float32 mean beside it when a GPU is present, to show how often they differ.

Everything here runs on the CPU in float32 (deterministic); no GPU is needed.

Output (about 150 KB), for quant/testdata/nf4/:
  cases.safetensors   the code book, the dynamic map, and small cases in full: inputs (odd sizes 1,
                      63, 64, 65, 255, 257, 1000; hand-made blocks: all zero, negative only, values on
                      and beside every threshold; an 8-bit case on and beside the map's midpoints) with
                      their codes, absmaxes, nested codes/absmax2/offset and dequantized values
  expected.json       larger cases (16448 = 257 blocks, 1000003, float32 input) generated from a
                      counter-based splitmix64 that the Go test reproduces, given as SHA-256 digests of
                      every output; and the digests of every dequantized weight of the two checkpoints
  bnb-4bit-dq/        a tiny Llama (1 layer, hidden 64) in bitsandbytes' serialised 4-bit layout with
                      double quantization (config.json quantization_config, model.safetensors with
                      W, W.absmax (uint8), W.quant_map, W.nested_absmax, W.nested_quant_map and
                      W.quant_state.bitsandbytes__nf4 for each of the 7 projections)
  bnb-4bit/           the same weights without double quantization (W.absmax float32)

Exact commands (GPU test machine: torch 2.11, safetensors, numpy; no Go needed):

  python3 scripts/make-nf4-fixtures.py /tmp/nf4-fixtures
  # copy /tmp/nf4-fixtures/* to quant/testdata/nf4/ on the development machine, then:
  go test ./quant -run Fixture -v

The Go tests skip with a message naming this script when quant/testdata/nf4/ is absent.
"""
import hashlib
import json
import math
import os
import struct
import sys
from fractions import Fraction

import numpy as np
import torch
from safetensors.torch import save_file

BLOCK = 64
NESTED_BLOCK = 256

# The NF4 code book (get_4bit_type("nf4"); the CUDA kernel's nf4_dequantization_lut).
NF4_DECIMALS = [
    "-1.0", "-0.6961928009986877", "-0.5250730514526367", "-0.39491748809814453",
    "-0.28444138169288635", "-0.18477343022823334", "-0.09105003625154495", "0.0",
    "0.07958029955625534", "0.16093020141124725", "0.24611230194568634", "0.33791524171829224",
    "0.44070982933044434", "0.5626170039176941", "0.7229568362236023", "1.0",
]
# dQuantizeNF4's thresholds, in the kernel's decimals.
THRESHOLD_DECIMALS = [
    "-0.8480964004993439", "-0.6106329262256622", "-0.4599952697753906", "-0.33967943489551544",
    "-0.23460740596055984", "-0.13791173323988914", "-0.045525018125772476", "0.03979014977812767",
    "0.1202552504837513", "0.2035212516784668", "0.2920137718319893", "0.3893125355243683",
    "0.5016634166240692", "0.6427869200706482", "0.8614784181118011",
]


def f32_nearest(decimal):
    """The float32 nearest to the exact decimal (as a C compiler rounds a literal with an f suffix)."""
    exact = Fraction(decimal)
    f = np.float32(float(decimal))
    cands = [np.nextafter(f, np.float32(-np.inf)), f, np.nextafter(f, np.float32(np.inf))]
    best = min(cands, key=lambda c: abs(Fraction(float(c)) - exact))
    return float(best)


NF4 = torch.tensor([f32_nearest(d) for d in NF4_DECIMALS], dtype=torch.float32)
THRESHOLDS = torch.tensor([f32_nearest(d) for d in THRESHOLD_DECIMALS], dtype=torch.float32)


def create_dynamic_map(signed=True, max_exponent_bits=7, total_bits=8):
    """bitsandbytes' create_dynamic_map, step for step (float32 linspace and means on the CPU)."""
    data = []
    non_sign_bits = total_bits - 1
    additional_items = 2 ** (non_sign_bits - max_exponent_bits) - 1
    for i in range(max_exponent_bits):
        fraction_items = int(
            2 ** (i + non_sign_bits - max_exponent_bits) + 1
            if signed
            else 2 ** (i + non_sign_bits - max_exponent_bits + 1) + 1,
        )
        boundaries = torch.linspace(0.1, 1, fraction_items, dtype=torch.float32)
        means = (boundaries[:-1] + boundaries[1:]) / 2.0
        data += ((10 ** (-(max_exponent_bits - 1) + i)) * means).tolist()
        if signed:
            data += (-(10 ** (-(max_exponent_bits - 1) + i)) * means).tolist()
    assert additional_items == 0
    data.append(0)
    data.append(1.0)
    assert len(data) == 2**total_bits
    data.sort()
    return torch.tensor(data, dtype=torch.float32)


DYNAMIC = create_dynamic_map()


def blocks_of(x, block):
    """x (1-D float32) padded with zeros to whole blocks, as the kernels load it: [nblocks, block]."""
    n = x.numel()
    nb = -(-n // block)
    return torch.cat([x, torch.zeros(nb * block - n, dtype=torch.float32)]).view(nb, block)


def quantize_nf4(w):
    """quantize_4bit(w, blocksize=64, quant_type="nf4") without statistics compression: (packed, absmax)."""
    n = w.numel()
    wb = blocks_of(w, BLOCK)
    absmax = wb.abs().amax(dim=1)
    inv = torch.ones_like(absmax) / absmax  # IEEE float32; 1/0 = inf
    x = wb * inv[:, None]  # 0 * inf = nan -> code 0
    q = (x.unsqueeze(-1) > THRESHOLDS).sum(dim=-1).to(torch.uint8).view(-1)
    q = q[: n + n % 2]  # an odd count keeps the code of the first padding zero
    packed = (q[0::2] << 4) | q[1::2]
    return packed.contiguous(), absmax


def dquantize(x, code):
    """dQuantize<0> (kernels.cu), vectorized: 7-step binary search from 127, then the midpoint test."""
    pivot = torch.full(x.shape, 127, dtype=torch.int64)
    lo = torch.zeros_like(pivot)
    hi = torch.full_like(pivot, 255)
    lower = torch.full(x.shape, -1.0, dtype=torch.float32)
    upper = torch.full(x.shape, 1.0, dtype=torch.float32)
    val = code[pivot]
    step = 64
    while step > 0:
        gt = x > val
        lo = torch.where(gt, pivot, lo)
        lower = torch.where(gt, val, lower)
        hi = torch.where(gt, hi, pivot)
        upper = torch.where(gt, upper, val)
        pivot = torch.where(gt, pivot + step, pivot - step)
        val = code[pivot]
        step //= 2
    upper = torch.where(hi == 255, code[255], upper)
    lower = torch.where(lo == 0, code[0], lower)
    gt = x > val
    res = torch.where(
        gt,
        torch.where(x > (upper + val) * 0.5, hi, pivot),
        torch.where(x < (lower + val) * 0.5, lo, pivot),
    )
    return res.to(torch.uint8)


def quantize_blockwise(x, code=DYNAMIC, block=NESTED_BLOCK):
    """quantize_blockwise(x, code, blocksize): (codes uint8, absmax2 float32)."""
    n = x.numel()
    xb = blocks_of(x, block)
    absmax = xb.abs().amax(dim=1)
    inv = torch.ones_like(absmax) / absmax
    y = (xb * inv[:, None]).view(-1)[:n]
    return dquantize(y, code), absmax


def mean_offset(absmax):
    """The offset: float32 nearest the exactly rounded float64 mean (see the header)."""
    if absmax.numel() == 0:
        return torch.tensor(0.0, dtype=torch.float32)
    return torch.tensor(math.fsum(absmax.double().tolist()) / absmax.numel(), dtype=torch.float32)


def double_quantize(absmax):
    offset = mean_offset(absmax)
    codes, absmax2 = quantize_blockwise(absmax - offset)
    return codes, absmax2, offset


def rebuild_absmax(codes, absmax2, offset, code=DYNAMIC, block=NESTED_BLOCK):
    idx = torch.arange(codes.numel()) // block
    a = code[codes.long()] * absmax2[idx]  # dequantize_blockwise (float32)
    return a + offset  # then absmax += offset: a second rounding


def dequantize_nf4(packed, absmax, n):
    """dequantize_4bit: NF4[q] * absmax in float32 (n values)."""
    q = torch.stack([packed >> 4, packed & 15], dim=1).view(-1)[:n].long()
    idx = torch.arange(n) // BLOCK
    return NF4[q] * absmax[idx]


# A counter-based splitmix64, so the Go test makes the same inputs without storing them.
M64 = (1 << 64) - 1


def splitmix64(seed, n):
    with np.errstate(over="ignore"):
        z = np.uint64(seed) + (np.arange(1, n + 1, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15))
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def gen_weights(seed, n, bf16=True):
    """Roughly normal weights (std ~0.009) with every 997th one 8x larger, exact in float32:
    (sum of four 16-bit fields of splitmix64(seed, i) - 131070) * 2^-22, then rounded to bf16."""
    z = splitmix64(seed, n)
    s = np.zeros(n, dtype=np.int64)
    for k in range(4):
        s += ((z >> np.uint64(16 * k)) & np.uint64(0xFFFF)).astype(np.int64)
    s -= 131070
    s[::997] *= 8
    w = torch.from_numpy(s.astype(np.float32)) * (2.0**-22)
    if bf16:
        w = w.to(torch.bfloat16).float()
    return w


def sha(t):
    if t.dtype == torch.bfloat16:
        t = t.view(torch.int16)
    return hashlib.sha256(t.contiguous().numpy().tobytes()).hexdigest()


def quantize_case(w):
    """Everything the Go side checks for one input (1-D float32)."""
    n = w.numel()
    packed, absmax = quantize_nf4(w)
    dq_codes, dq_absmax, offset = double_quantize(absmax)
    scales = rebuild_absmax(dq_codes, dq_absmax, offset)
    out = {
        "packed": packed,
        "absmax": absmax,
        "dq_codes": dq_codes,
        "dq_absmax": dq_absmax,
        "dq_offset": offset.reshape(1),
        "dq_scales": scales,
        "dequant_f32": dequantize_nf4(packed, absmax, n),
        "dequant_bf16": dequantize_nf4(packed, absmax, n).to(torch.bfloat16),
        "dq_dequant_bf16": dequantize_nf4(packed, scales, n).to(torch.bfloat16),
    }
    return out


def special_blocks():
    """Hand-made blocks: zero, negative only, every threshold and its float32 neighbours (absmax 1,
    so x = w exactly), a lone nonzero, tiny values, and a last partial block of 5."""
    blocks = [torch.zeros(BLOCK)]
    blocks.append(-torch.linspace(0.001, 0.05, BLOCK))
    vals = [1.0, -1.0]
    for t in THRESHOLDS.tolist():
        t32 = np.float32(t)
        vals += [float(np.nextafter(t32, np.float32(-1))), float(t32), float(np.nextafter(t32, np.float32(1)))]
    vals += [0.0, -0.0]
    while len(vals) % BLOCK:
        vals.append(0.5)
    blocks.append(torch.tensor(vals, dtype=torch.float32))
    lone = torch.zeros(BLOCK)
    lone[17] = -3.0e-3
    blocks.append(lone)
    blocks.append(torch.full((BLOCK,), 1e-30) * torch.linspace(-1, 1, BLOCK))
    blocks.append(torch.tensor([0.25, -0.5, 0.125, 0.0, 2.0]))
    return torch.cat([b.float() for b in blocks])


def blockwise8_case():
    """quantize_blockwise on values on and beside every midpoint of the dynamic map, each block of 256
    holding a 1.0 so that absmax2 = 1 and x = v exactly."""
    v = []
    for j in range(255):
        m = np.float32((DYNAMIC[j] + DYNAMIC[j + 1]) * 0.5)
        v += [float(np.nextafter(m, np.float32(-2))), float(m), float(np.nextafter(m, np.float32(2)))]
    v += DYNAMIC.tolist()
    out = []
    for i in range(0, len(v), 255):
        out += [1.0] + v[i:i + 255]
    return torch.tensor(out, dtype=torch.float32)


# The tiny Llama of the two checkpoints.
LLAMA = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 1,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "vocab_size": 128,
    "max_position_embeddings": 256,
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "hidden_act": "silu",
    "tie_word_embeddings": True,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "torch_dtype": "bfloat16",
}
PROJ = [  # (module path, out, in)
    ("self_attn.q_proj", 64, 64), ("self_attn.k_proj", 32, 64), ("self_attn.v_proj", 32, 64),
    ("self_attn.o_proj", 64, 64), ("mlp.gate_proj", 128, 64), ("mlp.up_proj", 128, 64),
    ("mlp.down_proj", 64, 128),
]


def bnb_config(double_quant):
    """quantization_config as transformers' BitsAndBytesConfig.to_dict writes it."""
    return {
        "_load_in_4bit": True, "_load_in_8bit": False, "bnb_4bit_compute_dtype": "bfloat16",
        "bnb_4bit_quant_storage": "uint8", "bnb_4bit_quant_type": "nf4",
        "bnb_4bit_use_double_quant": double_quant, "llm_int8_enable_fp32_cpu_offload": False,
        "llm_int8_has_fp16_weight": False, "llm_int8_skip_modules": None, "llm_int8_threshold": 6.0,
        "load_in_4bit": True, "load_in_8bit": False, "quant_method": "bitsandbytes",
    }


def write_checkpoint(outdir, double_quant, expected):
    os.makedirs(outdir, exist_ok=True)
    cfg = dict(LLAMA)
    cfg["quantization_config"] = bnb_config(double_quant)
    with open(os.path.join(outdir, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    tensors = {}
    h = LLAMA["hidden_size"]
    tensors["model.embed_tokens.weight"] = gen_weights(100, LLAMA["vocab_size"] * h).view(-1, h).to(torch.bfloat16)
    for name, seed in [("model.layers.0.input_layernorm.weight", 101),
                       ("model.layers.0.post_attention_layernorm.weight", 102), ("model.norm.weight", 103)]:
        tensors[name] = (1 + gen_weights(seed, h)).to(torch.bfloat16)
    weights = {}
    for k, (mod, o, i) in enumerate(PROJ):
        name = f"model.layers.0.{mod}.weight"
        seed = 200 + k
        w = gen_weights(seed, o * i)
        packed, absmax = quantize_nf4(w)
        state = {"quant_type": "nf4", "blocksize": BLOCK, "dtype": "bfloat16", "shape": [o, i]}
        tensors[name] = packed.view(-1, 1)
        tensors[name + ".quant_map"] = NF4.clone()
        if double_quant:
            codes, absmax2, offset = double_quantize(absmax)
            tensors[name + ".absmax"] = codes
            tensors[name + ".nested_absmax"] = absmax2
            tensors[name + ".nested_quant_map"] = DYNAMIC.clone()
            state.update({"nested_blocksize": NESTED_BLOCK, "nested_dtype": "float32", "nested_offset": offset.item()})
            scales = rebuild_absmax(codes, absmax2, offset)
        else:
            tensors[name + ".absmax"] = absmax
            scales = absmax
        blob = json.dumps(state).encode("utf-8")  # pack_dict_to_tensor
        tensors[name + ".quant_state.bitsandbytes__nf4"] = torch.tensor(list(blob), dtype=torch.uint8)
        deq = dequantize_nf4(packed, scales, o * i)
        weights[name] = {"seed": seed, "shape": [o, i], "dequant_f32": sha(deq), "dequant_bf16": sha(deq.to(torch.bfloat16))}
    save_file(tensors, os.path.join(outdir, "model.safetensors"), metadata={"format": "pt"})
    expected[os.path.basename(outdir)] = {"embed_seed": 100, "norm_seeds": [101, 102, 103], "weights": weights}


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: make-nf4-fixtures.py OUTDIR")
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    torch.manual_seed(0)

    # The four thresholds where rounding through float64 differs (a check that f32_nearest is needed).
    via_double = torch.tensor([float(d) for d in THRESHOLD_DECIMALS], dtype=torch.float32)
    differ = [i for i in range(15) if via_double[i].item() != THRESHOLDS[i].item()]
    print("thresholds that float32(float(decimal)) rounds the other way:", differ)

    tensors = {"nf4_code": NF4, "nf4_thresholds": THRESHOLDS, "dynamic_map": DYNAMIC}
    cases = {}
    g = torch.Generator().manual_seed(1234)
    for n in [1, 63, 64, 65, 255, 257, 1000]:
        cases[f"n{n}"] = (torch.randn(n, generator=g) * 0.02).to(torch.bfloat16).float()
    cases["special"] = special_blocks()
    cases["negative"] = -(torch.rand(130, generator=g) * 0.1 + 1e-4)
    for c, w in cases.items():
        tensors[c + ".input"] = w
        for k, v in quantize_case(w).items():
            tensors[c + "." + k] = v
    b8 = blockwise8_case()
    b8_codes, b8_absmax = quantize_blockwise(b8)
    tensors.update({"b8.input": b8, "b8.codes": b8_codes, "b8.absmax": b8_absmax})
    save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(out, "cases.safetensors"))

    expected = {"torch": torch.__version__, "generated": {}}
    cuda = torch.cuda.is_available()
    for name, seed, n, bf16 in [("gen16448", 7, 16448, True), ("gen1000003", 8, 1000003, True),
                                ("genf32_4099", 9, 4099, False)]:
        w = gen_weights(seed, n, bf16)
        r = quantize_case(w)
        entry = {"seed": seed, "n": n, "bf16": bf16, "input": sha(w)}
        entry.update({k: sha(v) for k, v in r.items()})
        if cuda:
            m = r["absmax"].cuda().mean().item()
            entry["note_cuda_float32_mean"] = m
            entry["note_cuda_mean_equals_offset"] = m == r["dq_offset"].item()
        expected["generated"][name] = entry
    write_checkpoint(os.path.join(out, "bnb-4bit-dq"), True, expected)
    write_checkpoint(os.path.join(out, "bnb-4bit"), False, expected)
    with open(os.path.join(out, "expected.json"), "w") as f:
        json.dump(expected, f, indent=1, sort_keys=True)
    total = 0
    for root, _, files in os.walk(out):
        for fn in files:
            total += os.path.getsize(os.path.join(root, fn))
    print(f"wrote {out}: {total} bytes")


if __name__ == "__main__":
    main()
