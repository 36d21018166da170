// Package tokenizer encodes text to token ids and back exactly as a Hugging Face
// tokenizer.json with a BPE model does, for the two forms Llama models ship.
//
// The model of the package is the Hugging Face pipeline, one stage per type:
//
//	text
//	  -> added tokens split out       (special tokens such as <|eot_id|> become ids directly)
//	  -> normalizer, per text segment (SentencePiece style: Prepend "▁", Replace " " -> "▁")
//	  -> pre-tokenizer, into words    (Llama 3: a Split regex, then ByteLevel; or Metaspace)
//	  -> BPE model, per word          (merges applied lowest rank first; byte fallback, unk)
//	  -> post-processor               (TemplateProcessing: BOS in front when asked)
//	ids
//
// and Decode runs ids -> token strings -> decoder (ByteLevel, or Replace "▁" -> " ",
// ByteFallback, Fuse, Strip) -> text.
//
// Byte-level BPE (GPT-2, Llama 3) maps every byte of the UTF-8 text to one printable
// character first, so no input is unknown and decode(encode(s)) == s. BPE in the
// SentencePiece manner (Llama 2, Mistral, TinyLlama, stories260K) works on
// characters with "▁" standing for a space, and falls back to <0xNN> byte tokens
// for characters the vocabulary lacks.
//
// Special tokens written in the text (say "<|eot_id|>" inside a user's message)
// become their ids, as in transformers by default; data pipelines that must not
// let text inject them should check Encode's output with IsSpecial.
//
// Exactness is the point: the ids must be the ones the model was trained with, so
// every stage follows the Rust tokenizers crate (and, where transformers replaces a
// file's pipeline by its own, transformers 5: see Options). The Llama 3 pre-token
// regex uses a negative lookahead that Go's regexp cannot express; it is hand-coded
// in pretokenize.go with the backtracking semantics worked out case by case.
//
// A Tokenizer is immutable after Load apart from a bounded per-word cache guarded by
// a mutex, so one Tokenizer may be used from many goroutines.
package tokenizer

import (
	"path/filepath"
	"strings"
	"sync"
	"unicode/utf8"
)

// Tokenizer is a loaded tokenizer.json. Its zero value is not usable; call Load.
type Tokenizer struct {
	name string // the file it came from, for error messages

	model bpe

	// Added tokens: matched in the raw text (normalized == false) or in each
	// normalized segment (normalized == true) before the model sees it.
	added       []addedToken
	addedByID   map[int]*addedToken
	addedByText map[string]int
	rawMatch    *addedMatcher
	normMatch   *addedMatcher
	normalizers []normalizer
	preTok      []preTokenizer
	// byteInput: the last pre-tokenizer was ByteLevel and is done by the model
	// itself, which maps bytes to symbols without building the mapped string.
	byteInput bool
	post      []int // template before the sequence
	postAfter []int // template after the sequence
	decoders  []decoder

	bos, eos     int
	chatTemplate string
	hash         string // of tokenizer.json and tokenizer_config.json

	cache wordCache
}

// Options change how Load builds the pipeline.
type Options struct {
	// FileOnly ignores tokenizer_config.json beside the file: the pipeline is the
	// tokenizer.json alone, as the Rust tokenizers library (Tokenizer.from_file)
	// runs it. By default the config is read, and where it names a tokenizer class
	// that transformers 5 rebuilds (LlamaTokenizer), the rebuilt pipeline is used,
	// because that is what training code in Python feeds the model.
	FileOnly bool
}

// Encode returns the token ids of text. With addSpecial the post-processor's
// template is applied (for Llama models: BOS in front). Special tokens written in
// the text are always recognised, as in transformers. Invalid UTF-8 is handled
// byte by byte (byte-level models encode the bytes; others fall back to <0xNN>).
func (t *Tokenizer) Encode(text string, addSpecial bool) []int {
	ids := make([]int, 0, len(text)/3+4)
	if addSpecial {
		ids = append(ids, t.post...)
	}
	var words []string
	t.rawMatch.split(text, func(seg string, id int, atStart bool) {
		if id >= 0 {
			ids = append(ids, id)
			return
		}
		for _, n := range t.normalizers {
			seg = n.normalize(seg)
		}
		t.normMatch.split(seg, func(seg string, id int, atStart2 bool) {
			if id >= 0 {
				ids = append(ids, id)
				return
			}
			words = append(words[:0], seg)
			for _, p := range t.preTok {
				words = p.split(words, atStart && atStart2)
			}
			for _, w := range words {
				ids = t.encodeWord(w, ids)
			}
		})
	})
	if addSpecial {
		ids = append(ids, t.postAfter...)
	}
	return ids
}

// encodeWord appends the ids of one pre-token, piece by piece (bpe.pieceEnd)
// where the model allows it.
func (t *Tokenizer) encodeWord(w string, ids []int) []int {
	for w != "" {
		n := len(w)
		if !t.byteInput {
			n = t.model.pieceEnd(w)
		}
		ids = t.encodePiece(w[:n], ids)
		w = w[n:]
	}
	return ids
}

// encodePiece appends the ids of one piece of a pre-token, through the cache.
func (t *Tokenizer) encodePiece(w string, ids []int) []int {
	if cached, ok := t.cache.get(w); ok {
		for _, id := range cached {
			ids = append(ids, int(id))
		}
		return ids
	}
	out := t.model.tokenize(w, t.byteInput, nil)
	t.cache.put(w, out)
	for _, id := range out {
		ids = append(ids, int(id))
	}
	return ids
}

// Decode turns ids back into text through the file's decoder. Ids that name no
// token are skipped, as Hugging Face does; special tokens are kept.
func (t *Tokenizer) Decode(ids []int) string {
	return t.decode(ids, false)
}

// DecodeSkipSpecial is Decode without the special tokens (BOS, EOS, headers).
func (t *Tokenizer) DecodeSkipSpecial(ids []int) string {
	return t.decode(ids, true)
}

func (t *Tokenizer) decode(ids []int, skipSpecial bool) string {
	toks := make([]string, 0, len(ids))
	for _, id := range ids {
		if a, ok := t.addedByID[id]; ok {
			if skipSpecial && a.special {
				continue
			}
			toks = append(toks, a.content)
			continue
		}
		if s, ok := t.model.token(id); ok {
			toks = append(toks, s)
		}
	}
	if len(t.decoders) == 0 {
		return strings.Join(toks, " ")
	}
	for _, d := range t.decoders {
		toks = d.decode(toks)
	}
	return strings.Join(toks, "")
}

// VocabSize is one more than the largest id of any token (model or added): the
// number of rows an embedding matrix needs.
func (t *Tokenizer) VocabSize() int {
	n := len(t.model.tokens)
	for _, a := range t.added {
		if a.id+1 > n {
			n = a.id + 1
		}
	}
	return n
}

// TokenID returns the id of a token string (added tokens first, then the model's
// vocabulary), as tokenizers' token_to_id does.
func (t *Tokenizer) TokenID(tok string) (int, bool) {
	if id, ok := t.addedByText[tok]; ok {
		return id, true
	}
	id, ok := t.model.vocab[tok]
	return int(id), ok
}

// Token returns the string of a token id (its vocabulary form: byte-level
// characters or "▁" pieces, not decoded text).
func (t *Tokenizer) Token(id int) (string, bool) {
	if a, ok := t.addedByID[id]; ok {
		return a.content, true
	}
	return t.model.token(id)
}

// IsSpecial reports whether id is an added token marked special.
func (t *Tokenizer) IsSpecial(id int) bool {
	a, ok := t.addedByID[id]
	return ok && a.special
}

// BOS is the beginning-of-sequence id, or -1 when the tokenizer has none.
func (t *Tokenizer) BOS() int { return t.bos }

// EOS is the end-of-sequence id (tokenizer_config.json's eos_token: for Llama 3.1
// instruct files that is <|eot_id|>), or -1 when none is known.
func (t *Tokenizer) EOS() int { return t.eos }

// ChatTemplate is tokenizer_config.json's chat_template (the "default" one when the
// file holds several), or "" when there is none.
func (t *Tokenizer) ChatTemplate() string { return t.chatTemplate }

// Hash is a SHA-256 of the files the tokenizer was built from
// (tokenizer.json and tokenizer_config.json): a token cache is keyed by it.
func (t *Tokenizer) Hash() string { return t.hash }

// ConfigPath is the tokenizer_config.json beside the tokenizer's file, where
// its chat template and special tokens come from (the file may not exist).
func (t *Tokenizer) ConfigPath() string {
	return filepath.Join(filepath.Dir(t.name), "tokenizer_config.json")
}

// wordCache remembers the ids of recent pre-tokens: natural text repeats words, and
// BPE per word is the expensive part. It is bounded: when full it starts over,
// which keeps memory flat on endless input at the cost of re-warming.
type wordCache struct {
	mu sync.Mutex
	m  map[string][]int32
}

const (
	maxCacheEntries = 1 << 16
	maxCachedWord   = 128 // bytes; longer words are rare and would bloat the cache
)

func (c *wordCache) get(w string) ([]int32, bool) {
	if len(w) > maxCachedWord {
		return nil, false
	}
	c.mu.Lock()
	v, ok := c.m[w]
	c.mu.Unlock()
	return v, ok
}

func (c *wordCache) put(w string, ids []int32) {
	if len(w) > maxCachedWord {
		return
	}
	c.mu.Lock()
	if c.m == nil || len(c.m) >= maxCacheEntries {
		c.m = make(map[string][]int32, 1024)
	}
	c.m[strings.Clone(w)] = ids // clone: w may point into a large input text
	c.mu.Unlock()
}

// decodeRune is utf8.DecodeRuneInString, with an invalid byte reported as width 1
// and RuneError, which every stage treats as an opaque single "character".
func decodeRune(s string, i int) (rune, int) {
	c := s[i]
	if c < utf8.RuneSelf {
		return rune(c), 1
	}
	return utf8.DecodeRuneInString(s[i:])
}
