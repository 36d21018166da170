package gguf

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"

	"train/tokenizer"
)

// A GGUF file carries its tokenizer as tokenizer.ggml.* metadata (setTokenizer
// writes it, convert_hf_to_gguf.py likewise). TokenizerFiles turns it back into
// the Hugging Face files it came from, tokenizer.json and
// tokenizer_config.json, so that one tokenizer implementation (the tokenizer
// package) serves both, and an export to Hugging Face layout can ship them:
//
//	"llama" (SentencePiece BPE with byte fallback, Llama 2 and stories260K):
//	    the vocabulary with its byte tokens, merges rebuilt from the scores as
//	    transformers' SentencePiece converter builds them (every split a+b of a
//	    token into two tokens, ordered by the token's score, highest first;
//	    ties in vocabulary order, then by the ids of a and b), the "▁" metaspace
//	    normalizer and decoder, and tokenizer_class LlamaTokenizerFast with
//	    legacy spacing (a "▁" always prepended, as llama.cpp does).
//	"gpt2" (byte-level BPE): the tokens and merges as stored; the
//	    pre-tokenizer from tokenizer.ggml.pre: "llama-bpe" is Llama 3's split
//	    pattern (with ignore_merges, as llama.cpp and Meta's file have it),
//	    "default" and "gpt2" GPT-2's byte-level split. Other pre-tokenizers are
//	    refused by name.
//
// Control and unknown tokens become special added tokens, user-defined ones
// non-special added tokens; unused tokens ([PADn] padding) are left out.

// llama3Split is the split pattern of the Llama 3 pre-tokenizer (llama.cpp's
// "llama-bpe") as Meta's tokenizer.json writes it.
const llama3Split = `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`

// TokenizerFiles rebuilds tokenizer.json and tokenizer_config.json from g's
// tokenizer.ggml.* metadata; an error says what is missing or unsupported.
func TokenizerFiles(g *File) (tokJSON, configJSON []byte, err error) {
	fail := func(format string, a ...any) ([]byte, []byte, error) {
		return nil, nil, fmt.Errorf("%s: tokenizer: %s", g.Name, fmt.Sprintf(format, a...))
	}
	kind, ok := g.String("tokenizer.ggml.model")
	if !ok {
		return fail("no tokenizer.ggml.model: the file has no embedded tokenizer (give -tokenizer)")
	}
	tokens, ok := g.Metadata["tokenizer.ggml.tokens"].([]string)
	if !ok || len(tokens) == 0 {
		return fail("tokenizer.ggml.tokens is missing or not a list of strings")
	}
	types, _ := g.Metadata["tokenizer.ggml.token_type"].([]int32)
	if types != nil && len(types) != len(tokens) {
		return fail("tokenizer.ggml.token_type has %d entries for %d tokens", len(types), len(tokens))
	}
	typeOf := func(id int) int32 {
		if types == nil {
			return tokenNormal
		}
		return types[id]
	}
	special := func(id int) *int {
		v, ok := g.Uint("tokenizer.ggml." + map[int]string{0: "bos", 1: "eos", 2: "unknown"}[id] + "_token_id")
		if !ok || v >= uint64(len(tokens)) {
			return nil
		}
		n := int(v)
		return &n
	}
	bos, eos, unk := special(0), special(1), special(2)

	vocab := map[string]int{}
	var added []map[string]any
	for id, s := range tokens {
		t := typeOf(id)
		if t == tokenUnused {
			continue
		}
		if t == tokenControl || t == tokenUserDefined || t == tokenUnknown {
			added = append(added, map[string]any{"id": id, "content": s, "single_word": false, "lstrip": false,
				"rstrip": false, "normalized": false, "special": t != tokenUserDefined})
			if kind == "gpt2" {
				continue // byte-level files keep added tokens out of the model's vocabulary
			}
		}
		if _, dup := vocab[s]; dup {
			return fail("token %q appears twice (ids %d and %d)", s, vocab[s], id)
		}
		vocab[s] = id
	}
	cfg := map[string]any{}
	name := func(id *int) string { return tokens[*id] }
	if bos != nil {
		cfg["bos_token"] = name(bos)
	}
	if eos != nil {
		cfg["eos_token"] = name(eos)
	}
	addBOS, hasAddBOS := g.Metadata["tokenizer.ggml.add_bos_token"].(bool)
	addEOS, _ := g.Metadata["tokenizer.ggml.add_eos_token"].(bool)
	if t, ok := g.String("tokenizer.chat_template"); ok {
		cfg["chat_template"] = t
	}
	file := map[string]any{"version": "1.0", "truncation": nil, "padding": nil, "added_tokens": added}
	model := map[string]any{"type": "BPE", "dropout": nil, "continuing_subword_prefix": nil, "end_of_word_suffix": nil, "vocab": vocab}
	var post []any
	switch kind {
	case "llama":
		scores, _ := g.Metadata["tokenizer.ggml.scores"].([]float32)
		if len(scores) != len(tokens) {
			return fail("tokenizer.ggml.scores has %d entries for %d tokens", len(scores), len(tokens))
		}
		if !hasAddBOS {
			addBOS = true // llama.cpp's default for SentencePiece vocabularies
		}
		prefix := true
		if v, ok := g.Metadata["tokenizer.ggml.add_space_prefix"].(bool); ok {
			prefix = v
		}
		model["merges"] = sentencePieceMerges(tokens, scores, vocab)
		model["fuse_unk"], model["byte_fallback"], model["ignore_merges"] = true, true, false
		model["unk_token"] = nil
		if unk != nil {
			model["unk_token"] = name(unk)
			cfg["unk_token"] = name(unk)
		}
		norm := []any{map[string]any{"type": "Replace", "pattern": map[string]any{"String": " "}, "content": "▁"}}
		dec := []any{map[string]any{"type": "Replace", "pattern": map[string]any{"String": "▁"}, "content": " "},
			map[string]any{"type": "ByteFallback"}, map[string]any{"type": "Fuse"}}
		if prefix {
			norm = append([]any{map[string]any{"type": "Prepend", "prepend": "▁"}}, norm...)
			dec = append(dec, map[string]any{"type": "Strip", "content": " ", "start": 1, "stop": 0})
		}
		file["normalizer"] = map[string]any{"type": "Sequence", "normalizers": norm}
		file["pre_tokenizer"] = nil
		file["decoder"] = map[string]any{"type": "Sequence", "decoders": dec}
		cfg["tokenizer_class"] = "LlamaTokenizerFast"
		cfg["legacy"] = true
		cfg["add_prefix_space"] = prefix
		cfg["clean_up_tokenization_spaces"] = false
	case "gpt2":
		merges, ok := g.Metadata["tokenizer.ggml.merges"].([]string)
		if !ok {
			return fail("tokenizer.ggml.merges is missing or not a list of strings")
		}
		pre, _ := g.String("tokenizer.ggml.pre")
		byteLevel := map[string]any{"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true}
		switch pre {
		case "llama-bpe":
			byteLevel["use_regex"] = false
			file["pre_tokenizer"] = map[string]any{"type": "Sequence", "pretokenizers": []any{
				map[string]any{"type": "Split", "pattern": map[string]any{"Regex": llama3Split}, "behavior": "Isolated", "invert": false},
				byteLevel}}
			model["ignore_merges"] = true
		case "default", "gpt2", "":
			file["pre_tokenizer"] = byteLevel
			model["ignore_merges"] = false
		default:
			return fail("tokenizer.ggml.pre %q is not supported (llama-bpe, gpt2 and default are): give -tokenizer", pre)
		}
		model["merges"] = merges
		model["fuse_unk"], model["byte_fallback"], model["unk_token"] = false, false, nil
		file["normalizer"] = nil
		file["decoder"] = map[string]any{"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true}
		post = append(post, map[string]any{"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true})
		cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
	default:
		return fail("tokenizer.ggml.model %q is not supported (llama and gpt2 are): give -tokenizer", kind)
	}
	cfg["add_bos_token"] = addBOS && bos != nil
	cfg["add_eos_token"] = addEOS && eos != nil
	if addBOS && bos != nil {
		post = append(post, map[string]any{"type": "TemplateProcessing",
			"single": []any{map[string]any{"SpecialToken": map[string]any{"id": name(bos), "type_id": 0}},
				map[string]any{"Sequence": map[string]any{"id": "A", "type_id": 0}}},
			"pair": []any{map[string]any{"SpecialToken": map[string]any{"id": name(bos), "type_id": 0}},
				map[string]any{"Sequence": map[string]any{"id": "A", "type_id": 0}},
				map[string]any{"SpecialToken": map[string]any{"id": name(bos), "type_id": 1}},
				map[string]any{"Sequence": map[string]any{"id": "B", "type_id": 1}}},
			"special_tokens": map[string]any{name(bos): map[string]any{"id": name(bos), "ids": []int{*bos}, "tokens": []string{name(bos)}}}})
	}
	switch len(post) {
	case 0:
		file["post_processor"] = nil
	case 1:
		file["post_processor"] = post[0]
	default:
		file["post_processor"] = map[string]any{"type": "Sequence", "processors": post}
	}
	file["model"] = model
	if tokJSON, err = marshal(file); err != nil {
		return fail("%v", err)
	}
	if configJSON, err = marshal(cfg); err != nil {
		return fail("%v", err)
	}
	return tokJSON, configJSON, nil
}

// sentencePieceMerges are the merges transformers' SentencePiece converter
// derives from a vocabulary with scores: for each token in id order, every
// split into two tokens of the vocabulary (ordered by their ids), all of them
// then stably sorted by the token's score, highest first. Merging by these
// ranks picks, among adjacent pairs, the one forming the highest-scoring
// token, which is SentencePiece's (and llama.cpp's) rule.
func sentencePieceMerges(tokens []string, scores []float32, vocab map[string]int) [][2]string {
	type merge struct {
		a, b  string
		score float32
	}
	var out []merge
	for id, s := range tokens {
		if vocab[s] != id {
			continue // not in the vocabulary (unused), or a duplicate
		}
		var local []merge
		for i := 1; i < len(s); i++ {
			a, b := s[:i], s[i:]
			if _, ok := vocab[a]; !ok {
				continue
			}
			if _, ok := vocab[b]; ok {
				local = append(local, merge{a, b, scores[id]})
			}
		}
		slices.SortStableFunc(local, func(x, y merge) int {
			if vocab[x.a] != vocab[y.a] {
				return vocab[x.a] - vocab[y.a]
			}
			return vocab[x.b] - vocab[y.b]
		})
		out = append(out, local...)
	}
	slices.SortStableFunc(out, func(x, y merge) int {
		switch {
		case x.score > y.score:
			return -1
		case x.score < y.score:
			return 1
		}
		return 0
	})
	pairs := make([][2]string, len(out))
	for i, m := range out {
		pairs[i] = [2]string{m.a, m.b}
	}
	return pairs
}

// marshal is JSON without HTML escaping (tokens such as "<s>" stay readable).
func marshal(v any) ([]byte, error) {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}

// Tokenizer builds the tokenizer embedded in g (see TokenizerFiles).
func Tokenizer(g *File) (*tokenizer.Tokenizer, error) {
	tj, cj, err := TokenizerFiles(g)
	if err != nil {
		return nil, err
	}
	return tokenizer.Parse(g.Name+": tokenizer.json (from tokenizer.ggml.*)", tj, cj)
}

// WriteTokenizerFiles writes g's tokenizer as tokenizer.json and
// tokenizer_config.json into dir.
func WriteTokenizerFiles(g *File, dir string) error {
	tj, cj, err := TokenizerFiles(g)
	if err != nil {
		return err
	}
	for name, data := range map[string][]byte{"tokenizer.json": tj, "tokenizer_config.json": cj} {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o644); err != nil {
			return fmt.Errorf("%s: writing its tokenizer: %w", g.Name, err)
		}
	}
	return nil
}

// HasTokenizer reports whether g carries an embedded tokenizer.
func (g *File) HasTokenizer() bool {
	_, ok := g.String("tokenizer.ggml.model")
	return ok
}
