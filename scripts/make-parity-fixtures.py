#!/usr/bin/env python3
"""Reference fixtures from Hugging Face transformers (and peft, tokenizers) for train's parity tests.

Runs on a machine with torch, transformers and peft (the GPU test machines have them; the
computation itself runs on the CPU in float64). Writes one tar file, fixtures.tar, whose members
are unpacked into the repository by scripts/unpack-parity-fixtures.sh:

  model/testdata/parity/tiny/      config.json, model.safetensors (F32 weights), inputs.json,
                                   reference.safetensors (F64 logits and every gradient)
  model/testdata/parity/lora/      adapter_config.json, adapter_model.safetensors (F32),
                                   inputs.json, reference.safetensors (F64 logits, LoRA gradients)
  model/testdata/parity/rslora/    the same with use_rslora=True and a different rank
  model/testdata/parity/stories260k.json   loss of the real stories260K model on fixed sequences
  data/testdata/tokenizer/*.jsonl  token ids from transformers for a multilingual corpus, and
                                   llama3_chat.jsonl: the Llama 3 chat template's ids

Usage: python3 scripts/make-parity-fixtures.py --shared DIR --out DIR
where DIR under --shared holds models/stories260K and tokenizers/llama3 (a copy of ../shared).
Never hand-edit the outputs: rerun this script.
"""
import argparse
import io
import json
import os
import tarfile
import tempfile

import torch
import transformers
from safetensors.torch import save_file

SEED = 20261126


def load(path, dtype):
    """from_pretrained with eager attention; transformers 5 says dtype=, 4.x torch_dtype=."""
    try:
        return transformers.LlamaForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation="eager")
    except TypeError:
        return transformers.LlamaForCausalLM.from_pretrained(path, torch_dtype=dtype, attn_implementation="eager")


def shifted_loss(logits, labels):
    """transformers' causal-LM loss definition (position t predicts label t+1, -100 ignored, mean over
    the rest), computed here in the logits' own dtype: transformers' loss casts logits to float32."""
    v = logits.shape[-1]
    return torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, v), labels[:, 1:].reshape(-1), ignore_index=-100, reduction="mean")


def tiny_config():
    # Small enough for fast tests, shaped to exercise everything easy to get wrong:
    # GQA (4 query heads over 2 KV heads), head_dim given explicitly and heads*head_dim != hidden,
    # untied embeddings, Llama 3 rope scaling with original_max_position_embeddings (16) below the
    # sequence length (24) and theta chosen so that one frequency falls in each band
    # (unscaled wavelength 6.3 < 8, smoothed 11.2 in [8, 16], scaled 19.9 and up > 16).
    return transformers.LlamaConfig(
        vocab_size=101,
        hidden_size=48,
        intermediate_size=80,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=64,
        rms_norm_eps=1e-5,
        **rope_kwargs(),
        tie_word_embeddings=False,
        hidden_act="silu",
        attention_bias=False,
        mlp_bias=False,
        bos_token_id=1,
        eos_token_id=2,
    )


def rope_kwargs():
    rope = {
        "rope_type": "llama3",
        "factor": 4.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 2.0,
        "original_max_position_embeddings": 16,
    }
    if int(transformers.__version__.split(".")[0]) >= 5:
        # Newer transformers write rope_parameters with rope_theta inside; train reads both forms
        # (stories260K's config.json has the older rope_theta form).
        return {"rope_parameters": dict(rope, rope_theta=100.0)}
    return {"rope_theta": 100.0, "rope_scaling": rope}


def new_model(cfg):
    try:
        return transformers.LlamaForCausalLM._from_config(cfg, attn_implementation="eager")
    except TypeError:
        cfg._attn_implementation = "eager"
        return transformers.LlamaForCausalLM(cfg)


def randomize(model, gen):
    """Weights large enough that every nonlinearity matters; norms far from 1."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.3 * torch.randn(p.shape, generator=gen))
            elif "embed_tokens" in name:
                p.copy_(torch.randn(p.shape, generator=gen))
            else:
                fan_in = p.shape[-1]
                p.copy_(torch.randn(p.shape, generator=gen) * (1.5 / fan_in**0.5))


def inputs(gen, vocab, batch, seq):
    ids = torch.randint(0, vocab, (batch, seq), generator=gen)
    labels = ids.clone()
    # -100 spans: a prompt prefix in row 0, a middle span and the tail in row 1.
    labels[0, :5] = -100
    labels[1, 7:11] = -100
    labels[1, -3:] = -100
    return ids, labels


def run_reference(model, ids, labels, names):
    """Forward and backward in float64; returns loss, logits and the named gradients."""
    model.double()
    model.zero_grad(set_to_none=True)
    out = model(input_ids=ids, labels=labels)
    loss = shifted_loss(out.logits, labels)
    # transformers' own loss (computed in float32) must agree with the definition above.
    assert abs(out.loss.item() - loss.item()) <= 1e-5 * abs(loss.item()), (out.loss.item(), loss.item())
    loss.backward()
    params = dict(model.named_parameters())
    tensors = {"logits": out.logits.detach().contiguous()}
    for hf_name, param_name in names.items():
        g = params[param_name].grad
        assert g is not None, param_name
        tensors["grad." + hf_name] = g.detach().contiguous()
    return loss.item(), tensors


def write_inputs(path, ids, labels, loss, extra=None):
    doc = {
        "input_ids": ids.tolist(),
        "labels": labels.tolist(),
        "loss": loss,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }
    doc.update(extra or {})
    with open(path, "w") as f:
        json.dump(doc, f, indent=1)


def make_tiny(root, gen):
    d = os.path.join(root, "model/testdata/parity/tiny")
    os.makedirs(d)
    cfg = tiny_config()
    model = new_model(cfg).float()
    randomize(model, gen)
    # The scaling must reach the rotary embedding, or the fixture tests nothing about it.
    theta = 100.0
    plain = 1.0 / (theta ** (torch.arange(0, 16, 2, dtype=torch.float32) / 16))
    scaled = model.model.rotary_emb.inv_freq.float()
    assert not torch.allclose(plain, scaled), "llama3 rope scaling did not apply"
    model.save_pretrained(d, safe_serialization=True)
    ids, labels = inputs(gen, cfg.vocab_size, 2, 24)
    names = {n: n for n, _ in model.named_parameters()}
    loss, tensors = run_reference(model, ids, labels, names)
    save_file(tensors, os.path.join(d, "reference.safetensors"))
    write_inputs(os.path.join(d, "inputs.json"), ids, labels, loss)
    return d


def make_lora(root, gen, base_dir, name, rank, alpha, rslora):
    import peft

    d = os.path.join(root, "model/testdata/parity", name)
    os.makedirs(d)
    model = load(base_dir, torch.float32)
    lcfg = peft.LoraConfig(
        r=rank,
        lora_alpha=alpha,
        lora_dropout=0.0,
        use_rslora=rslora,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        task_type="CAUSAL_LM",
    )
    pm = peft.get_peft_model(model, lcfg)
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_A" in n or "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    pm.save_pretrained(d, safe_serialization=True)
    os.remove(os.path.join(d, "README.md"))  # peft's model card template: nothing to test
    ids, labels = inputs(gen, model.config.vocab_size, 2, 24)
    # PEFT saves names without the adapter name ("default"); map them to parameter names.
    names = {}
    for n, p in pm.named_parameters():
        if p.requires_grad:
            names[n.replace(".default", "")] = n
    loss, tensors = run_reference(pm, ids, labels, names)
    save_file(tensors, os.path.join(d, "reference.safetensors"))
    write_inputs(os.path.join(d, "inputs.json"), ids, labels, loss,
                 {"peft": peft.__version__, "scale": (alpha / rank**0.5) if rslora else alpha / rank})
    return d


def make_stories(root, shared, gen):
    src = os.path.join(shared, "models/stories260K")
    out = {}
    m32 = load(src, torch.float32)
    m32.eval()
    with torch.no_grad():
        greedy = m32.generate(torch.tensor([[1]]), max_new_tokens=63, do_sample=False,
                              num_beams=1, pad_token_id=0)[0].tolist()
    rnd = [1] + torch.randint(3, 512, (47,), generator=gen).tolist()
    seqs = {"greedy": greedy, "random": rnd}
    m64 = load(src, torch.float64)
    m64.eval()
    for key, seq in seqs.items():
        ids = torch.tensor([seq])
        labels = ids.clone()
        with torch.no_grad():
            l64 = m64(input_ids=ids)
            l32 = m32(input_ids=ids, labels=labels)
        out[key] = {
            "input_ids": seq,
            "loss_f64": shifted_loss(l64.logits, labels).item(),
            "loss_f32": l32.loss.item(),
            "logits_first_row_f64": l64.logits[0, 0].tolist(),
            "logits_last_row_f64": l64.logits[0, -1].tolist(),
        }
    out["greedy_from_bos"] = greedy
    out["torch"] = torch.__version__
    out["transformers"] = transformers.__version__
    path = os.path.join(root, "model/testdata/parity/stories260k.json")
    with open(path, "w") as f:
        json.dump(out, f, indent=1)


CORPUS = [
    "Hello world",
    " Hello world",
    "Hello, y'all! How are you 😁 ?我想在apple工作1314151天～",
    "中文分词测试：今天天气很好，我们去公园散步吧。",
    "日本語のテキストとカタカナ、ひらがな。",
    "Привет, как дела? Ünïcödé ñ ß ø å",
    "العربية نص قصير",
    "🚀🔥👍🏽 emoji 👨‍👩‍👧‍👦 family",
    "def f(x):\n    return x ** 2  # square\n\n\tif x:\n\t\tpass",
    "for (int i = 0; i < n; ++i) { sum += a[i]; }",
    "   leading spaces and trailing   ",
    "multiple\n\n\nnewlines\r\nand\ttabs\t\t",
    "numbers 1 12 123 1234 12345 3.14159 -42 1e10 0x1F",
    "   ",
    "\n",
    "a",
    "Once upon a time, there was a little girl named Lily.",
    "<|begin_of_text|>special<|eot_id|> tokens in text",
    "don't won't I'm you're we've they'll she'd",
    "ÀÁÂÃÄÅ àáâãäå ǅ ﬁ ﬀ ŉ",
    "https://example.com/path?q=1&r=two#frag",
    "{\"key\": [1, 2, 3], \"nested\": {\"a\": null}}",
    "\u00a0non-breaking\u2003em-space\u200bzero-width",
    "Καλημέρα κόσμε",
    "한국어 텍스트입니다",
]


def make_tokenizer_refs(root, shared):
    from transformers import AutoTokenizer

    d = os.path.join(root, "data/testdata/tokenizer")
    os.makedirs(d)
    for name, sub in (("llama3", "tokenizers/llama3"), ("stories260k", "models/stories260K")):
        tok = AutoTokenizer.from_pretrained(os.path.join(shared, sub))
        with open(os.path.join(d, name + ".jsonl"), "w") as f:
            for text in CORPUS:
                ids = tok.encode(text, add_special_tokens=False)
                ids_bos = tok.encode(text, add_special_tokens=True)
                f.write(json.dumps({"text": text, "ids": ids, "ids_with_special": ids_bos,
                                    "decoded": tok.decode(ids), "tokenizer_class": type(tok).__name__,
                                    "transformers": transformers.__version__},
                                   ensure_ascii=False) + "\n")


CHATS = [
    [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4"}],
    [{"role": "system", "content": "You are terse.\n"}, {"role": "user", "content": "  Name a colour. "},
     {"role": "assistant", "content": "Blue.\n\n"}, {"role": "user", "content": "Another?"},
     {"role": "assistant", "content": "Red, 赤, 🔴"}],
    [{"role": "user", "content": "def f(x):\n    return x\n"}],
]


def make_chat_refs(root, shared):
    """Token ids of the Llama 3 chat template as transformers renders it, with and
    without the generation prompt, for train's built-in renderer to match."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(os.path.join(shared, "tokenizers/llama3"))
    path = os.path.join(root, "data/testdata/tokenizer/llama3_chat.jsonl")
    with open(path, "w") as f:
        for msgs in CHATS:
            ids = tok.apply_chat_template(msgs, tokenize=True, add_generation_prompt=False)
            gen = tok.apply_chat_template(msgs, tokenize=True, add_generation_prompt=True)
            if isinstance(ids, dict) or hasattr(ids, "input_ids"):
                ids, gen = ids["input_ids"], gen["input_ids"]
            f.write(json.dumps({"messages": msgs, "ids": list(ids), "ids_generation_prompt": list(gen)},
                               ensure_ascii=False) + "\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    torch.manual_seed(SEED)
    gen = torch.Generator().manual_seed(SEED)
    with tempfile.TemporaryDirectory() as root:
        tiny = make_tiny(root, gen)
        make_lora(root, gen, tiny, "lora", rank=4, alpha=8, rslora=False)
        make_lora(root, gen, tiny, "rslora", rank=2, alpha=3, rslora=True)
        make_stories(root, args.shared, gen)
        make_tokenizer_refs(root, args.shared)
        make_chat_refs(root, args.shared)
        os.makedirs(args.out, exist_ok=True)
        with tarfile.open(os.path.join(args.out, "fixtures.tar"), "w") as tar:
            for top in ("model", "data"):
                tar.add(os.path.join(root, top), arcname=top)
    print("wrote", os.path.join(args.out, "fixtures.tar"))


if __name__ == "__main__":
    main()
