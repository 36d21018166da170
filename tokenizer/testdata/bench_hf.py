"""Encode throughput of Hugging Face tokenizers on the corpus BenchmarkEncodeLlama3
uses, single-threaded, to compare with `go test -bench EncodeLlama3` on the same CPU.

    python3 bench_hf.py TOKENIZER_DIR REFERENCES_JSONL GGML_INP

The corpus is built exactly as the Go benchmark builds it: the reference texts
and the llama.cpp inputs joined by newlines, repeated to just over 1 MiB.
"""
import json, os, sys, time

os.environ.setdefault("RAYON_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
from tokenizers import Tokenizer  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402


def main():
    tokdir, refs, inp = sys.argv[1:4]
    parts = [json.loads(l)["text"] for l in open(refs, encoding="utf-8") if l.strip()]
    parts += open(inp, encoding="utf-8", newline="").read().split("\n__ggml_vocab_test__\n")
    unit = "\n".join(parts)
    nbytes = len(unit.encode())
    corpus = unit * (1 + (1 << 20) // nbytes)
    size = len(corpus.encode())  # both modes count the corpus, as Go's SetBytes does
    raw = Tokenizer.from_file(os.path.join(tokdir, "tokenizer.json"))
    tf = AutoTokenizer.from_pretrained(tokdir)
    reps = 1 + (1 << 20) // nbytes

    def docs(enc):
        for _ in range(reps):
            for p in parts:
                enc(p)

    for name, fn in [("tokenizers docs", lambda: docs(lambda p: raw.encode(p, add_special_tokens=False).ids)),
                     ("transformers docs", lambda: docs(lambda p: tf.encode(p, add_special_tokens=False))),
                     ("tokenizers one-string", lambda: raw.encode(corpus, add_special_tokens=False).ids),
                     ("transformers one-string", lambda: tf.encode(corpus, add_special_tokens=False))]:
        fn()  # warm the word cache, as the Go benchmark's repeated loop does
        best = float("inf")
        for _ in range(5):
            t0 = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - t0)
        print(f"hf {name:24s} {size / best / 1e6:8.2f} MB/s ({size} bytes, best of 5)")


if __name__ == "__main__":
    main()
