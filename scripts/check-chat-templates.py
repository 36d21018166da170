#!/usr/bin/env python3
"""Check train's chat-template rendering against transformers' apply_chat_template.

train renders tokenizer_config.json's chat_template with a Go Jinja library (github.com/ardanlabs/jinja)
and encodes the text with its own tokenizer; Llama 3's own template it renders by hand. Either way the
ids must be the ones transformers' apply_chat_template gives. This script recomputes them for every
(tokenizer, template, conversation) that our side wrote and compares them id for id.

Exact commands:

  # 1. On the development machine (Go, no GPU), from the repository root:
  rm -rf /tmp/chat-check
  CHAT_CHECK_DIR=/tmp/chat-check go test ./data -run TestWriteChatTemplateCheckInputs -v
  #    This writes:
  #      /tmp/chat-check/tokenizers/llama3/       ../shared's Llama 3.1 tokenizer (tokenizer.json, tokenizer_config.json)
  #      /tmp/chat-check/tokenizers/stories260K/  ../shared's stories260K tokenizer (SentencePiece-style, as Llama 2's)
  #      /tmp/chat-check/ours.jsonl               per tokenizer, template (data/testdata/chat_templates: Llama 3.1,
  #                                               Llama 2 chat, TinyLlama/Zephyr; and Llama 3's own, rendered by hand)
  #                                               and conversation: the template's source, the messages, our ids of
  #                                               the whole conversation, and our ids of the conversation before its
  #                                               last reply with add_generation_prompt=True

  # 2. Copy the folder and this script to the GPU test machine (transformers 5.17; no Go, no internet), then:
  python3 scripts/check-chat-templates.py /tmp/chat-check

It prints one line per (tokenizer, template) and, for a mismatch, the first differing position with
both sides decoded around it; it exits 0 only when every id of every record matches, and non-zero on
any mismatch, on a record it cannot render, or when there are no records.
"""
import json
import os
import sys

import transformers


def ids_of(tok, messages, generation_prompt):
    """apply_chat_template's token ids: transformers 5 returns a BatchEncoding by default, 4.x a list."""
    out = tok.apply_chat_template(messages, tokenize=True, add_generation_prompt=generation_prompt)
    if hasattr(out, "keys"):
        out = out["input_ids"]
    if hasattr(out, "tolist"):
        out = out.tolist()
    if out and isinstance(out[0], list):
        out = out[0]
    return list(out)


def first_difference(a, b):
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return min(len(a), len(b))


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: check-chat-templates.py DIR (written by TestWriteChatTemplateCheckInputs)")
    root = sys.argv[1]
    tokenizers = {}
    results = {}  # (tokenizer, template) -> [records checked, mismatches]
    failed = False
    with open(os.path.join(root, "ours.jsonl")) as f:
        records = [json.loads(line) for line in f if line.strip()]
    if not records:
        sys.exit(f"{root}/ours.jsonl holds no records")
    for n, rec in enumerate(records):
        name = rec["tokenizer"]
        if name not in tokenizers:
            tokenizers[name] = transformers.AutoTokenizer.from_pretrained(os.path.join(root, "tokenizers", name))
        tok = tokenizers[name]
        tok.chat_template = rec["chat_template"]
        key = (name, rec["template"])
        res = results.setdefault(key, [0, 0])
        res[0] += 1
        cases = [
            ("whole conversation", rec["messages"], False, rec["ids"]),
            ("generation prompt", rec["messages"][: rec["generation_messages"]], True, rec["ids_generation_prompt"]),
        ]
        for what, messages, gen, ours in cases:
            try:
                theirs = ids_of(tok, messages, gen)
            except Exception as e:  # a template error is a failure, not a crash
                print(f"FAIL {name} / {rec['template']}, record {n}, {what}: transformers raised {e!r}")
                res[1] += 1
                failed = True
                continue
            if theirs != ours:
                i = first_difference(theirs, ours)
                print(f"FAIL {name} / {rec['template']}, record {n}, {what}: first difference at id {i} "
                      f"(transformers {len(theirs)} ids, ours {len(ours)})")
                print(f"     transformers: {theirs[max(0, i - 3):i + 5]} {tok.decode(theirs[max(0, i - 3):i + 5])!r}")
                print(f"     ours:         {ours[max(0, i - 3):i + 5]} {tok.decode(ours[max(0, i - 3):i + 5])!r}")
                res[1] += 1
                failed = True
    print(f"transformers {transformers.__version__}")
    for (name, template), (checked, bad) in sorted(results.items()):
        verdict = "ok" if bad == 0 else f"{bad} MISMATCHED"
        print(f"{name:12s} {template:20s} {checked} conversations x 2 renderings: {verdict}")
    if failed:
        sys.exit(1)
    print("all ids match")


if __name__ == "__main__":
    main()
