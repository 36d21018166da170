#!/usr/bin/env python3
"""Check train's exports against the reference implementations: peft and transformers.

`train export -format peft` must write an adapter that peft loads onto the base model and that
then computes our logits; `train export -format hf` must write a merged model that transformers
loads and that computes our logits. Both in float32, max error within 1e-4 of the logits' scale.

Exact commands:

  # 1. On the development machine (Go, no GPU), from the repository root:
  rm -rf /tmp/export-check
  EXPORT_CHECK_DIR=/tmp/export-check go test ./export -run TestWriteExportCheckInputs -v
  #    This writes, for the tiny parity model (model/testdata/parity/tiny) and its LoRA adapter
  #    (model/testdata/parity/lora):
  #      /tmp/export-check/base/      the base model in Hugging Face layout (config.json, model.safetensors)
  #      /tmp/export-check/peft/      train export -format peft (adapter_config.json, adapter_model.safetensors)
  #      /tmp/export-check/hf/        train export -format hf (the adapter merged into the base)
  #      /tmp/export-check/ours.json  input_ids and our logits of base+adapter (float32, CPU)

  # 2. Copy the folder and this script to the GPU test machine (torch 2.11, transformers 5.17,
  #    peft 0.21; no Go needed), then:
  python3 scripts/check-exports.py /tmp/export-check

It prints one line per check and exits 0 only when every check passes: the peft model's and the
merged model's logits each within 1e-4 (max |theirs - ours| / max |ours|) of ours, and the adapter
visibly changing the base model's logits (peft only warns when adapter tensor names do not match,
so an adapter it silently ignored would otherwise pass as "close to the base").
The computation runs on the GPU when there is one (TF32 off, eager attention) and on the CPU otherwise.
"""
import json
import os
import sys

import torch
import transformers

TOLERANCE = 1e-4


def load_model(path):
    """from_pretrained in float32 with eager attention; transformers 5 says dtype=, 4.x torch_dtype=."""
    try:
        return transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="eager")
    except TypeError:
        return transformers.AutoModelForCausalLM.from_pretrained(path, torch_dtype=torch.float32, attn_implementation="eager")


def logits_of(model, ids, device):
    model = model.to(device).eval()
    with torch.no_grad():
        return model(input_ids=ids.to(device)).logits.float().cpu()


def max_rel(theirs, ours):
    """max |theirs - ours| over max |ours|: the error on the scale of the logits."""
    return ((theirs - ours).abs().max() / ours.abs().max()).item()


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    root = sys.argv[1]
    import peft  # imported here so that a missing peft is reported after the usage text

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}, device {device}")

    with open(os.path.join(root, "ours.json")) as f:
        ours = json.load(f)
    ids = torch.tensor(ours["input_ids"], dtype=torch.long)
    want = torch.tensor(ours["logits"], dtype=torch.float32)
    if want.shape != (ids.shape[0], ids.shape[1], ours["vocab_size"]):
        sys.exit(f"ours.json: logits of shape {tuple(want.shape)} do not match input_ids {tuple(ids.shape)}")

    failures = []

    def check(name, err, ok):
        print(f"{name:<40} {err:.3g} {'ok' if ok else 'FAIL'}")
        if not ok:
            failures.append(name)

    base_logits = logits_of(load_model(os.path.join(root, "base")), ids, device)
    effect = max_rel(base_logits, want)
    check("adapter changes the base model's logits", effect, effect > 1e-3)

    peft_model = peft.PeftModel.from_pretrained(load_model(os.path.join(root, "base")), os.path.join(root, "peft"))
    err = max_rel(logits_of(peft_model, ids, device), want)
    check("peft: base + our adapter vs ours", err, err <= TOLERANCE)

    err = max_rel(logits_of(load_model(os.path.join(root, "hf")), ids, device), want)
    check("hf: our merged model vs ours", err, err <= TOLERANCE)

    if failures:
        print(f"FAILED: {', '.join(failures)} (tolerance {TOLERANCE})")
        sys.exit(1)
    print(f"all exports match within {TOLERANCE}")


if __name__ == "__main__":
    main()
