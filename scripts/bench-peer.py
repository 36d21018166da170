#!/usr/bin/env python3
"""PyTorch's side of `train bench model`: the peer cases of DESIGN.md, measured on this GPU.

Runs on a GPU test machine (PyTorch, transformers, peft; no downloads: random weights from
transformers' LlamaConfig, bf16, attn_implementation="sdpa"). Cases:

  70b-4layers  4 decoder layers of the Llama-3.1-70B shape alone, full forward + backward: fixed
               random hidden states (requires_grad, so the input's gradient is computed too, as a
               pipeline stage needs) through LlamaModel's layers (its embedding removed and its final
               norm replaced by the identity), backward from a fixed random output gradient; every
               weight has a gradient. No optimizer step. `train bench model -part layers` matches it.
  8b-lora      LlamaForCausalLM of the Llama-3.1-8B shape (embedding, 32 layers, head, loss), peft
               LoRA r=16 alpha=32 dropout 0 on q,k,v,o,gate,up,down, gradient checkpointing
               (use_reentrant=False), torch.optim.AdamW (lr 1e-4, no weight decay) over the LoRA
               parameters, one optimizer step per step.

Each case prints one JSON line: case, seq, tokens_per_s, tflops, peak_gib, step_ms, torch, gpu,
and more. tokens_per_s counts batch x seq tokens per step over the timed steps (after --warmup
untimed ones, torch.cuda.synchronize() around them). tflops counts, as DESIGN.md's peer numbers do,
6 x layer parameters x tokens + 6 x layers x T^2 x hidden per sequence, where layer parameters are
the decoder layers' own (seven projections and two RMSNorm weights each; not the embedding, final
norm, head or LoRA adapters): the same count as train's decoderLayerParams. peak_gib is
torch.cuda.max_memory_allocated() from the model built (parameters already allocated) to the end.

Usage: python3 scripts/bench-peer.py --case 70b-4layers --seq 2048 [--steps 10 --warmup 3]
"""
import argparse
import gc
import json
import sys
import time

VOCAB = 128256
# Llama 3.1's rotary embedding: theta 500000 with llama3 frequency scaling.
ROPE = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
}
ROPE_THETA = 500000.0
SHAPES = {
    "70b": dict(hidden=8192, intermediate=28672, layers=80, heads=64, kv_heads=8, head_dim=128),
    "8b": dict(hidden=4096, intermediate=14336, layers=32, heads=32, kv_heads=8, head_dim=128),
}
# case -> (shape, decoder layers)
CASES = {"70b-4layers": ("70b", 4), "8b-lora": ("8b", 32)}
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
COUNTED = ("decoder layers' parameters only (q,k,v,o,gate,up,down projections and the two RMSNorm "
           "weights per layer; not the embedding, final norm, lm_head or LoRA adapters)")


def layer_params(shape):
    """Parameters of one decoder layer of shape: the seven projections and two norms."""
    s = SHAPES[shape]
    h, q, kv = s["hidden"], s["heads"] * s["head_dim"], s["kv_heads"] * s["head_dim"]
    return h * q + 2 * h * kv + q * h + 3 * h * s["intermediate"] + 2 * h


def step_flops(shape, layers, batch, seq):
    """One training step's FLOPs by the peer numbers' convention (see the module doc)."""
    h = SHAPES[shape]["hidden"]
    return 6 * layers * layer_params(shape) * batch * seq + 6 * layers * batch * seq * seq * h


def llama_config(transformers, shape, layers):
    s = SHAPES[shape]
    kw = dict(
        vocab_size=VOCAB,
        hidden_size=s["hidden"],
        intermediate_size=s["intermediate"],
        num_hidden_layers=layers,
        num_attention_heads=s["heads"],
        num_key_value_heads=s["kv_heads"],
        head_dim=s["head_dim"],
        max_position_embeddings=131072,
        rms_norm_eps=1e-5,
        hidden_act="silu",
        tie_word_embeddings=False,
        attention_bias=False,
        mlp_bias=False,
        bos_token_id=128000,
        eos_token_id=128001,
        use_cache=False,
    )
    if int(transformers.__version__.split(".")[0]) >= 5:
        # transformers 5 writes rope_parameters with rope_theta inside; 4.x rope_theta + rope_scaling.
        kw["rope_parameters"] = dict(ROPE, rope_theta=ROPE_THETA)
    else:
        kw["rope_theta"], kw["rope_scaling"] = ROPE_THETA, dict(ROPE)
    return transformers.LlamaConfig(**kw)


def new_model(torch, cls, cfg):
    """cls built on the GPU in bf16 with SDPA attention and transformers' random init (std 0.02)."""
    with torch.device("cuda"):
        try:
            m = cls._from_config(cfg, attn_implementation="sdpa", dtype=torch.bfloat16)
        except TypeError:  # transformers 4.x says torch_dtype
            m = cls._from_config(cfg, attn_implementation="sdpa", torch_dtype=torch.bfloat16)
    m = m.to(device="cuda", dtype=torch.bfloat16)
    impl = getattr(m.config, "_attn_implementation", None)
    if impl != "sdpa":
        raise SystemExit(f"bench-peer: asked for sdpa attention, the model uses {impl!r}")
    return m


def case_layers(torch, transformers, shape, layers, batch, seq):
    """The decoder layers alone, full forward + backward; returns (step, info)."""
    cfg = llama_config(transformers, shape, layers)
    model = new_model(torch, transformers.LlamaModel, cfg)
    model.embed_tokens = None  # hidden states come in: the layers alone
    model.norm = torch.nn.Identity()
    model.train()
    counted = sum(p.numel() for p in model.layers.parameters())
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    h = SHAPES[shape]["hidden"]
    x = torch.randn(batch, seq, h, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    dy = torch.randn(batch, seq, h, device="cuda", dtype=torch.bfloat16) * 1e-3

    def step():
        model.zero_grad(set_to_none=True)
        x.grad = None
        out = model(inputs_embeds=x, use_cache=False).last_hidden_state
        out.backward(dy)
        return None

    info = {"what": "decoder layers only: random hidden states in (with gradient), random output gradient; "
                    "forward + backward, every weight trained, no optimizer",
            "counted_params": counted, "trained_params": trained}
    return model, step, info


def case_lora(torch, transformers, shape, layers, batch, seq, rank, alpha):
    """The whole causal LM with LoRA, checkpointing and AdamW; returns (step, info)."""
    import peft

    cfg = llama_config(transformers, shape, layers)
    model = new_model(torch, transformers.LlamaForCausalLM, cfg)
    counted = sum(p.numel() for p in model.model.layers.parameters())  # before the adapter exists
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    lcfg = peft.LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, target_modules=LORA_TARGETS,
                           task_type="CAUSAL_LM")
    pm = peft.get_peft_model(model, lcfg)
    pm.train()
    params = [p for p in pm.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.0)
    ids = torch.randint(0, VOCAB, (batch, seq), device="cuda")

    def step():
        loss = pm(input_ids=ids, labels=ids, use_cache=False).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    info = {"what": f"LlamaForCausalLM (embedding, layers, head, loss), LoRA r={rank} alpha={alpha} on "
                    "7 projections, gradient checkpointing (use_reentrant=False), AdamW over the adapter",
            "counted_params": counted, "trained_params": sum(p.numel() for p in params),
            "lora_dtype": str(params[0].dtype).replace("torch.", "") if params else None}
    return pm, step, info


def run_case(torch, transformers, case, seq, batch, steps, warmup, layers):
    shape, default_layers = CASES[case]
    layers = layers or default_layers
    torch.manual_seed(1)
    if case == "70b-4layers":
        model, step, info = case_layers(torch, transformers, shape, layers, batch, seq)
    else:
        model, step, info = case_lora(torch, transformers, shape, layers, batch, seq, 16, 32)
    if info["counted_params"] != layers * layer_params(shape):
        raise SystemExit(f"bench-peer: the model's decoder layers hold {info['counted_params']} parameters, "
                         f"the formula says {layers} x {layer_params(shape)}")
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    for _ in range(warmup):
        step()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    loss = None
    for _ in range(steps):
        loss = step()
    torch.cuda.synchronize()
    sec = time.perf_counter() - t0
    flops = step_flops(shape, layers, batch, seq)
    out = {
        "impl": "torch",
        "case": case,
        "seq": seq,
        "batch": batch,
        "layers": layers,
        "steps": steps,
        "warmup": warmup,
        "step_ms": round(1000 * sec / steps, 3),
        "tokens_per_s": round(batch * seq * steps / sec, 1),
        "tflops": round(flops * steps / sec / 1e12, 2),
        "flops_per_step": flops,
        "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 3),
        "layer_params": layer_params(shape),
        "counted": COUNTED,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft_version(),
        "gpu": torch.cuda.get_device_name(),
        "dtype": "bfloat16",
        "attention": "sdpa",
    }
    if loss is not None:
        out["loss"] = round(float(loss), 4)
    out.update(info)
    del model, step
    gc.collect()
    torch.cuda.empty_cache()
    return out


def peft_version():
    try:
        import peft
    except ImportError:
        return None
    return peft.__version__


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--case", default="all", help="70b-4layers, 8b-lora, or all (each in turn)")
    ap.add_argument("--seq", type=int, default=2048, help="tokens per sequence T")
    ap.add_argument("--batch", type=int, default=1, help="sequences per step")
    ap.add_argument("--steps", type=int, default=10, help="timed steps")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    ap.add_argument("--layers", type=int, default=0, help="decoder layers (0 = the case's: 4 or 32)")
    a = ap.parse_args()
    cases = list(CASES) if a.case == "all" else [a.case]
    for c in cases:
        if c not in CASES:
            ap.error(f"--case {c!r}: want one of {', '.join(CASES)} or all")
    if a.seq < 2 or a.batch < 1 or a.steps < 1 or a.warmup < 0 or a.layers < 0:
        ap.error("need --seq >= 2, --batch >= 1, --steps >= 1, --warmup >= 0, --layers >= 0")
    try:
        import torch
        import transformers
    except ImportError as e:
        sys.exit(f"bench-peer: needs PyTorch and transformers (and peft for 8b-lora): {e}")
    if not torch.cuda.is_available():
        sys.exit(f"bench-peer: CUDA is not available to torch {torch.__version__} "
                 "(torch.cuda.is_available() is False): run this on a GPU machine")
    for c in cases:
        print(json.dumps(run_case(torch, transformers, c, a.seq, a.batch, a.steps, a.warmup, a.layers)), flush=True)


if __name__ == "__main__":
    main()
