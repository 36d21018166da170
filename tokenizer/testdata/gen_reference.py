"""Generate tokenizer/testdata/{llama3,stories260k}_random.jsonl: transformers'
ids for random texts built from pieces chosen to hit the tokenizers' edge cases
(every whitespace kind, contractions in every case, combining marks, emoji with
joiners, digit runs, special-token look-alikes, long words for the merge order).

Run on a machine with transformers 5.x and tokenizers (a GPU test machine), from
a directory holding llama3/ and stories260k/, each with tokenizer.json and
tokenizer_config.json (copies of ../shared/tokenizers/llama3 and
../shared/models/stories260K):

    python3 gen_reference.py DIR OUTDIR

Each line: {"text", "ids" (transformers, no special tokens), "decoded"
(transformers' decode of ids)}, plus "file_ids" and "file_decoded" (the Rust
tokenizers library running tokenizer.json alone) when they differ. The script
checks that add_special_tokens=True only puts BOS in front. Never hand-edit the
output: rerun this script.
"""
import json, os, random, sys

import tokenizers
import transformers
from tokenizers import Tokenizer
from transformers import AutoTokenizer

PIECES = {
    "latin": ["hello", "World", "THE", "quick", "naïve", "café", "Straße", "ÀÉÎ", "ǅ", "ﬁ", "ŉ", "ſ", "x", "ab"],
    "cjk": ["中文", "分词", "日本語", "カタカナ", "ひらがな", "한국어", "텍스트"],
    "other": ["Привет", "Καλημέρα", "العربية", "עברית", "हिन्दी", "ไทย", "e\u0301", "\u0301", "\u200b", "\u200d", "\ufeff", "\u00ad"],
    "emoji": ["😁", "🚀", "👍🏽", "👨\u200d👩\u200d👧", "🇫🇷", "❤️", "\U0001f9d1"],
    "num": ["1", "12", "123", "1234", "12345678", "3.14", "-42", "1e10", "0x1F", "١٢٣", "²", "½", "Ⅻ"],
    "punct": [".", ",", "!", "?", "...", "--", "(", ")", "[", "]", "{", "}", "\"", "#", "$", "%", "&", "*", "+", "=",
              "<", ">", "/", "\\", "|", "~", "`", "@", "^", "_", ";", ":", "«", "»", "—", "…", "、", "。", "～"],
    "apos": ["'", "'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "'S", "'LL", "'Re", "'ſ", "'x", "''", "’s"],
    "space": [" ", "  ", "   ", "\t", "\n", "\n\n", "\r\n", " \n", "\n ", " \t ", "\u00a0", "\u3000", "\u2028", "\u2003",
              "\x0b", "\x0c", "\x85", "\x1c", "\r"],
    "special": ["<|begin_of_text|>", "<|eot_id|>", "<|start_header_id|>", "<s>", "</s>", "<unk>", "<|", "|>", "<0x41>"],
}


def texts(n_mixed=1000, n_long=50, seed=1234):
    rnd = random.Random(seed)
    kinds = list(PIECES)
    out = []
    for _ in range(n_mixed):
        n = rnd.choice([1, 2, 3, 5, 8, 13, 30])
        out.append("".join(rnd.choice(PIECES[rnd.choice(kinds)]) for _ in range(n)))
    for _ in range(n_long):
        alpha = rnd.choice(["abcdefghijklmnopqrstuvwxyz", "aeiou tnsrl", "中文日本語한국어", "0123456789", " \n\t"])
        out.append("".join(rnd.choice(alpha) for _ in range(rnd.randint(20, 300))))
    return out


def main():
    src, dst = sys.argv[1], sys.argv[2]
    for name in ["llama3", "stories260k"]:
        d = os.path.join(src, name)
        tf = AutoTokenizer.from_pretrained(d)
        raw = Tokenizer.from_file(os.path.join(d, "tokenizer.json"))
        with open(os.path.join(dst, name + "_random.jsonl"), "w", encoding="utf-8") as f:
            for t in texts():
                ids = tf.encode(t, add_special_tokens=False)
                assert tf.encode(t, add_special_tokens=True) == [tf.bos_token_id] + ids, t
                rec = {"text": t, "ids": ids, "decoded": tf.decode(ids)}
                fids = raw.encode(t, add_special_tokens=False).ids
                fdec = raw.decode(fids, skip_special_tokens=False)
                if fids != ids or fdec != rec["decoded"]:
                    rec["file_ids"], rec["file_decoded"] = fids, fdec
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")
        print(name, type(tf).__name__, "transformers", transformers.__version__, "tokenizers", tokenizers.__version__)


if __name__ == "__main__":
    main()
