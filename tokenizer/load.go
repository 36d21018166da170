package tokenizer

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"unicode/utf8"
)

// Bounds on what Load accepts, so a wrong or hostile file fails fast instead of
// exhausting memory. The largest Llama tokenizer.json (Llama 3) is 9 MB with
// 128256 tokens.
const (
	maxFileBytes   = 256 << 20
	maxConfigBytes = 16 << 20
	maxVocab       = 1 << 24
	maxAddedTokens = 1 << 20
)

// Load reads a Hugging Face tokenizer.json and, when present beside it,
// tokenizer_config.json (BOS/EOS, add_bos_token, chat template, tokenizer class).
// path may also be a directory holding tokenizer.json, as a model directory
// does: every command accepts either.
func Load(path string) (*Tokenizer, error) {
	return LoadWithOptions(path, Options{})
}

// LoadWithOptions is Load with options.
func LoadWithOptions(path string, opts Options) (*Tokenizer, error) {
	if st, err := os.Stat(path); err == nil && st.IsDir() {
		dir := path
		path = filepath.Join(dir, "tokenizer.json")
		if _, err := os.Stat(path); errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("tokenizer: directory %s holds no tokenizer.json: give a tokenizer.json or a directory with one", dir)
		}
	}
	data, err := readBounded(path, maxFileBytes)
	if err != nil {
		return nil, err
	}
	var cfg []byte
	if !opts.FileOnly {
		cpath := filepath.Join(filepath.Dir(path), "tokenizer_config.json")
		cfg, err = readBounded(cpath, maxConfigBytes)
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return nil, err
		}
	}
	return Parse(path, data, cfg)
}

func readBounded(path string, limit int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("tokenizer: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, fmt.Errorf("tokenizer: reading %s: %w", path, err)
	}
	if int64(len(data)) > limit {
		return nil, fmt.Errorf("tokenizer: %s is larger than %d MiB", path, limit>>20)
	}
	return data, nil
}

// The JSON shapes of tokenizer.json. Pipeline stages stay raw until their
// "type" is known.
type fileJSON struct {
	AddedTokens   []addedJSON     `json:"added_tokens"`
	Normalizer    json.RawMessage `json:"normalizer"`
	PreTokenizer  json.RawMessage `json:"pre_tokenizer"`
	PostProcessor json.RawMessage `json:"post_processor"`
	Decoder       json.RawMessage `json:"decoder"`
	Model         *modelJSON      `json:"model"`
}

type addedJSON struct {
	ID         *int    `json:"id"`
	Content    *string `json:"content"`
	SingleWord bool    `json:"single_word"`
	LStrip     bool    `json:"lstrip"`
	RStrip     bool    `json:"rstrip"`
	Normalized bool    `json:"normalized"`
	Special    bool    `json:"special"`
}

type modelJSON struct {
	Type                    string          `json:"type"`
	Vocab                   json.RawMessage `json:"vocab"`
	Merges                  json.RawMessage `json:"merges"`
	UnkToken                *string         `json:"unk_token"`
	FuseUnk                 bool            `json:"fuse_unk"`
	ByteFallback            bool            `json:"byte_fallback"`
	IgnoreMerges            bool            `json:"ignore_merges"`
	Dropout                 *float64        `json:"dropout"`
	ContinuingSubwordPrefix *string         `json:"continuing_subword_prefix"`
	EndOfWordSuffix         *string         `json:"end_of_word_suffix"`
}

// stageJSON holds the fields of every normalizer, pre-tokenizer, post-processor
// and decoder type this package knows; each type reads the ones it has.
type stageJSON struct {
	Type          string            `json:"type"`
	Normalizers   []json.RawMessage `json:"normalizers"`
	Pretokenizers []json.RawMessage `json:"pretokenizers"`
	Processors    []json.RawMessage `json:"processors"`
	Decoders      []json.RawMessage `json:"decoders"`

	Prepend   string       `json:"prepend"`
	Pattern   *patternJSON `json:"pattern"`
	Content   *string      `json:"content"`
	Behavior  string       `json:"behavior"`
	Invert    bool         `json:"invert"`
	LeftStrip *bool        `json:"strip_left"`
	RightStrp *bool        `json:"strip_right"`

	AddPrefixSpace   *bool  `json:"add_prefix_space"`
	UseRegex         *bool  `json:"use_regex"`
	Replacement      string `json:"replacement"`
	PrependScheme    string `json:"prepend_scheme"`
	Split            *bool  `json:"split"`
	IndividualDigits bool   `json:"individual_digits"`
	Start            int    `json:"start"`
	Stop             int    `json:"stop"`

	Single        []templateItemJSON         `json:"single"`
	SpecialTokens map[string]specialTokenJSN `json:"special_tokens"`
	Cls           []json.RawMessage          `json:"cls"`
	Sep           []json.RawMessage          `json:"sep"`
}

type patternJSON struct {
	String *string `json:"String"`
	Regex  *string `json:"Regex"`
}

type templateItemJSON struct {
	SpecialToken *struct {
		ID string `json:"id"`
	} `json:"SpecialToken"`
	Sequence *struct {
		ID string `json:"id"`
	} `json:"Sequence"`
}

type specialTokenJSN struct {
	IDs []int `json:"ids"`
}

// configJSON is the part of tokenizer_config.json this package reads.
type configJSON struct {
	BOS            json.RawMessage `json:"bos_token"`
	EOS            json.RawMessage `json:"eos_token"`
	AddBOS         *bool           `json:"add_bos_token"`
	AddEOS         *bool           `json:"add_eos_token"`
	ChatTemplate   json.RawMessage `json:"chat_template"`
	TokenizerClass string          `json:"tokenizer_class"`
	Legacy         *bool           `json:"legacy"`
	AddPrefixSpace *bool           `json:"add_prefix_space"`
}

// Parse builds a Tokenizer from the bytes of a tokenizer.json and, optionally
// (nil for none), of its tokenizer_config.json. name is the file name errors use.
func Parse(name string, data, config []byte) (*Tokenizer, error) {
	var f fileJSON
	if err := json.Unmarshal(data, &f); err != nil {
		return nil, fmt.Errorf("%s: not a tokenizer.json: %w", name, err)
	}
	if f.Model == nil {
		return nil, fmt.Errorf("%s: no \"model\" key", name)
	}
	var cfg configJSON
	cname := filepath.Join(filepath.Dir(name), "tokenizer_config.json")
	if config != nil {
		if err := json.Unmarshal(config, &cfg); err != nil {
			return nil, fmt.Errorf("%s: %w", cname, err)
		}
	}
	m := f.Model
	switch m.Type {
	case "BPE":
	case "":
		if m.Merges == nil {
			return nil, fmt.Errorf("%s: model has no \"type\" and no merges; only BPE is supported", name)
		}
	default:
		return nil, fmt.Errorf("%s: model.type %q is not supported (only BPE)", name, m.Type)
	}
	if m.Dropout != nil && *m.Dropout > 0 {
		return nil, fmt.Errorf("%s: model.dropout %g is not supported (encoding would be random)", name, *m.Dropout)
	}
	if m.ContinuingSubwordPrefix != nil && *m.ContinuingSubwordPrefix != "" {
		return nil, fmt.Errorf("%s: model.continuing_subword_prefix is not supported", name)
	}
	if m.EndOfWordSuffix != nil && *m.EndOfWordSuffix != "" {
		return nil, fmt.Errorf("%s: model.end_of_word_suffix is not supported", name)
	}
	var vocab map[string]int
	if err := json.Unmarshal(m.Vocab, &vocab); err != nil {
		return nil, fmt.Errorf("%s: model.vocab must map token strings to ids: %w", name, err)
	}
	if len(vocab) > maxVocab {
		return nil, fmt.Errorf("%s: model.vocab has %d tokens, more than %d", name, len(vocab), maxVocab)
	}
	merges, err := parseMerges(name, m.Merges)
	if err != nil {
		return nil, err
	}
	model, err := newBPE(name, vocab, merges)
	if err != nil {
		return nil, err
	}
	model.fuseUnk, model.byteFallback, model.ignoreMerges = m.FuseUnk, m.ByteFallback, m.IgnoreMerges
	if m.UnkToken != nil {
		id, ok := model.vocab[*m.UnkToken]
		if !ok {
			return nil, fmt.Errorf("%s: model.unk_token %q is not in model.vocab", name, *m.UnkToken)
		}
		model.unk = id
	}
	t := &Tokenizer{name: name, model: *model, bos: -1, eos: -1, addedByID: map[int]*addedToken{}, addedByText: map[string]int{}}
	h := sha256.New()
	fmt.Fprintf(h, "%d\n", len(data))
	h.Write(data)
	h.Write(config)
	t.hash = hex.EncodeToString(h.Sum(nil))

	if len(f.AddedTokens) > maxAddedTokens {
		return nil, fmt.Errorf("%s: %d added_tokens, more than %d", name, len(f.AddedTokens), maxAddedTokens)
	}
	for i, a := range f.AddedTokens {
		if a.ID == nil || a.Content == nil {
			return nil, fmt.Errorf("%s: added_tokens[%d] needs \"id\" and \"content\"", name, i)
		}
		if *a.ID < 0 || *a.ID >= maxVocab {
			return nil, fmt.Errorf("%s: added_tokens[%d].id %d is out of range", name, i, *a.ID)
		}
		if *a.Content == "" {
			return nil, fmt.Errorf("%s: added_tokens[%d].content is empty", name, i)
		}
		t.added = append(t.added, addedToken{id: *a.ID, content: *a.Content, special: a.Special,
			singleWord: a.SingleWord, lstrip: a.LStrip, rstrip: a.RStrip, normalized: a.Normalized})
	}
	var raw, norm []*addedToken
	for i := range t.added {
		a := &t.added[i]
		t.addedByID[a.id] = a
		if _, dup := t.addedByText[a.content]; !dup {
			t.addedByText[a.content] = a.id // the first wins, as a linear search would
		}
		if a.normalized {
			norm = append(norm, a)
		} else {
			raw = append(raw, a)
		}
	}
	t.rawMatch, t.normMatch = newAddedMatcher(raw), newAddedMatcher(norm)

	// transformers 5 ignores the pipeline of a LlamaTokenizer's file and builds
	// its own from the vocabulary and merges (models/llama/tokenization_llama.py):
	// no normalizer, a Metaspace pre-tokenizer that prepends "▁" only where the
	// text does not already start with one, and no unk token in the model. The
	// difference shows on text with a leading space: " Hello" is "▁Hello", not
	// "▁▁Hello". We follow it so ids match what Python training code produces.
	if cls := strings.TrimSuffix(cfg.TokenizerClass, "Fast"); cls == "LlamaTokenizer" {
		addPrefix := cfg.AddPrefixSpace == nil || *cfg.AddPrefixSpace
		scheme := "never"
		if addPrefix {
			scheme = "always"
			if cfg.Legacy == nil || !*cfg.Legacy {
				scheme = "first"
			}
		}
		t.model.unk, t.model.fuseUnk, t.model.byteFallback, t.model.ignoreMerges = -1, true, true, false
		t.preTok = []preTokenizer{&metaspacePre{repl: "▁", prepend: scheme}}
		t.decoders = []decoder{replaceDec{"▁", " "}, byteFallbackDec{}, fuseDec{}}
		if addPrefix {
			t.decoders = append(t.decoders, stripDec{content: ' ', start: 1})
		}
	} else {
		if t.normalizers, err = parseNormalizer(name, "normalizer", f.Normalizer); err != nil {
			return nil, err
		}
		if t.preTok, err = parsePreTokenizer(name, "pre_tokenizer", f.PreTokenizer); err != nil {
			return nil, err
		}
		if t.decoders, err = parseDecoder(name, "decoder", f.Decoder); err != nil {
			return nil, err
		}
	}
	// A trailing ByteLevel step is done by the model on raw bytes (faster).
	if n := len(t.preTok); n > 0 {
		if bl, ok := t.preTok[n-1].(*byteLevelPre); ok {
			bl.deferMap = true
			t.byteInput = true
			if !bl.addPrefixSpace && !bl.useRegex {
				t.preTok = t.preTok[:n-1] // nothing left for it to do
			}
		}
	}
	if t.post, t.postAfter, err = parsePost(name, "post_processor", f.PostProcessor, t); err != nil {
		return nil, err
	}

	// BOS and EOS: the config's tokens, else what the template adds.
	if cfg.BOS != nil {
		if t.bos, err = t.configToken(cname, "bos_token", cfg.BOS); err != nil {
			return nil, err
		}
	} else if len(t.post) > 0 {
		t.bos = t.post[0]
	}
	if cfg.EOS != nil {
		if t.eos, err = t.configToken(cname, "eos_token", cfg.EOS); err != nil {
			return nil, err
		}
	} else if len(t.postAfter) > 0 {
		t.eos = t.postAfter[len(t.postAfter)-1]
	}
	// add_bos_token / add_eos_token in the config win over the file's template,
	// as transformers rebuilds the post-processor from them.
	if cfg.AddBOS != nil || cfg.AddEOS != nil {
		t.post, t.postAfter = nil, nil
		if cfg.AddBOS == nil || *cfg.AddBOS {
			if cfg.AddBOS != nil && t.bos < 0 {
				return nil, fmt.Errorf("%s: add_bos_token is set but there is no bos_token", cname)
			}
			if t.bos >= 0 {
				t.post = []int{t.bos}
			}
		}
		if cfg.AddEOS != nil && *cfg.AddEOS {
			if t.eos < 0 {
				return nil, fmt.Errorf("%s: add_eos_token is set but there is no eos_token", cname)
			}
			t.postAfter = []int{t.eos}
		}
	}
	if t.chatTemplate, err = parseChatTemplate(cname, cfg.ChatTemplate); err != nil {
		return nil, err
	}
	return t, nil
}

// parseMerges reads model.merges in either form: "a b" strings (one space) or
// ["a", "b"] pairs (tokens may then contain spaces).
func parseMerges(name string, raw json.RawMessage) ([][2]string, error) {
	if len(raw) == 0 || string(raw) == "null" {
		return nil, nil
	}
	var lists [][]string
	if err := json.Unmarshal(raw, &lists); err == nil {
		pairs := make([][2]string, len(lists))
		for i, l := range lists {
			if len(l) != 2 {
				return nil, fmt.Errorf("%s: model.merges[%d] has %d tokens, want 2", name, i, len(l))
			}
			pairs[i] = [2]string{l[0], l[1]}
		}
		return pairs, nil
	}
	var strs []string
	if err := json.Unmarshal(raw, &strs); err != nil {
		return nil, fmt.Errorf("%s: model.merges must be a list of \"a b\" strings or [a, b] pairs: %w", name, err)
	}
	pairs := make([][2]string, len(strs))
	for i, s := range strs {
		a, b, ok := strings.Cut(s, " ")
		if !ok || a == "" || b == "" || strings.Contains(b, " ") {
			return nil, fmt.Errorf("%s: model.merges[%d] %q is not two tokens separated by one space", name, i, s)
		}
		pairs[i] = [2]string{a, b}
	}
	return pairs, nil
}

func isNull(raw json.RawMessage) bool {
	return len(bytes.TrimSpace(raw)) == 0 || string(bytes.TrimSpace(raw)) == "null"
}

func parseStage(name, key string, raw json.RawMessage) (*stageJSON, error) {
	var s stageJSON
	if err := json.Unmarshal(raw, &s); err != nil {
		return nil, fmt.Errorf("%s: %s: %w", name, key, err)
	}
	return &s, nil
}

// maxDepth bounds Sequence nesting (a hostile file could nest without end).
const maxDepth = 16

func parseNormalizer(name, key string, raw json.RawMessage) ([]normalizer, error) {
	return parseNormalizerDepth(name, key, raw, 0)
}

func parseNormalizerDepth(name, key string, raw json.RawMessage, depth int) ([]normalizer, error) {
	if isNull(raw) {
		return nil, nil
	}
	if depth > maxDepth {
		return nil, fmt.Errorf("%s: %s: Sequence nested too deeply", name, key)
	}
	s, err := parseStage(name, key, raw)
	if err != nil {
		return nil, err
	}
	switch s.Type {
	case "Sequence":
		var out []normalizer
		for i, r := range s.Normalizers {
			n, err := parseNormalizerDepth(name, fmt.Sprintf("%s.normalizers[%d]", key, i), r, depth+1)
			if err != nil {
				return nil, err
			}
			out = append(out, n...)
		}
		return out, nil
	case "Prepend":
		return []normalizer{prependNorm{s.Prepend}}, nil
	case "Replace":
		old, re, err := parsePattern(name, key, s.Pattern)
		if err != nil {
			return nil, err
		}
		if s.Content == nil {
			return nil, fmt.Errorf("%s: %s: Replace needs \"content\"", name, key)
		}
		return []normalizer{replaceNorm{old: old, new: *s.Content, re: re}}, nil
	case "Lowercase":
		return []normalizer{lowercaseNorm{}}, nil
	case "Strip":
		return []normalizer{stripNorm{left: s.LeftStrip == nil || *s.LeftStrip, right: s.RightStrp == nil || *s.RightStrp}}, nil
	}
	return nil, fmt.Errorf("%s: %s.type %q is not supported", name, key, s.Type)
}

// parsePattern reads {"String": ...} (a literal) or {"Regex": ...}.
func parsePattern(name, key string, p *patternJSON) (string, *regexp.Regexp, error) {
	switch {
	case p == nil:
		return "", nil, fmt.Errorf("%s: %s: missing \"pattern\"", name, key)
	case p.String != nil:
		if *p.String == "" {
			return "", nil, fmt.Errorf("%s: %s.pattern.String is empty", name, key)
		}
		return *p.String, nil, nil
	case p.Regex != nil:
		re, err := compileOniguruma(*p.Regex)
		if err != nil {
			return "", nil, fmt.Errorf("%s: %s.pattern.Regex: %w", name, key, err)
		}
		return "", re, nil
	}
	return "", nil, fmt.Errorf("%s: %s.pattern needs \"String\" or \"Regex\"", name, key)
}

// compileOniguruma compiles a pattern written for Oniguruma with Go's regexp,
// widening \s and \S to Unicode white space (Go's are ASCII only). Patterns
// with lookaround or backreferences fail to compile and are reported.
func compileOniguruma(pat string) (*regexp.Regexp, error) {
	const ws = `\t\n\v\f\r \x{85}\p{Z}`
	var b strings.Builder
	inClass := false
	for i := 0; i < len(pat); i++ {
		c := pat[i]
		switch {
		case c == '\\' && i+1 < len(pat):
			n := pat[i+1]
			i++
			switch {
			case n == 's' && inClass:
				b.WriteString(ws)
			case n == 's':
				b.WriteString("[" + ws + "]")
			case n == 'S' && !inClass:
				b.WriteString("[^" + ws + "]")
			default:
				b.WriteByte('\\')
				b.WriteByte(n)
			}
		case c == '[' && !inClass:
			inClass = true
			b.WriteByte(c)
			if i+1 < len(pat) && pat[i+1] == '^' {
				b.WriteByte('^')
				i++
			}
			if i+1 < len(pat) && pat[i+1] == ']' { // a literal ] first in a class
				b.WriteByte(']')
				i++
			}
		case c == ']' && inClass:
			inClass = false
			b.WriteByte(c)
		default:
			b.WriteByte(c)
		}
	}
	re, err := regexp.Compile(b.String())
	if err != nil {
		return nil, fmt.Errorf("pattern %q is not supported by Go's regexp: %w", pat, err)
	}
	return re, nil
}

func parsePreTokenizer(name, key string, raw json.RawMessage) ([]preTokenizer, error) {
	return parsePreTokenizerDepth(name, key, raw, 0)
}

func parsePreTokenizerDepth(name, key string, raw json.RawMessage, depth int) ([]preTokenizer, error) {
	if isNull(raw) {
		return nil, nil
	}
	if depth > maxDepth {
		return nil, fmt.Errorf("%s: %s: Sequence nested too deeply", name, key)
	}
	s, err := parseStage(name, key, raw)
	if err != nil {
		return nil, err
	}
	switch s.Type {
	case "Sequence":
		var out []preTokenizer
		for i, r := range s.Pretokenizers {
			p, err := parsePreTokenizerDepth(name, fmt.Sprintf("%s.pretokenizers[%d]", key, i), r, depth+1)
			if err != nil {
				return nil, err
			}
			out = append(out, p...)
		}
		return out, nil
	case "Split":
		p := &splitPre{behavior: s.Behavior, invert: s.Invert}
		switch s.Behavior {
		case "Isolated", "Removed", "MergedWithPrevious", "MergedWithNext", "Contiguous":
		default:
			return nil, fmt.Errorf("%s: %s.behavior %q is not one of Isolated, Removed, MergedWithPrevious, MergedWithNext, Contiguous", name, key, s.Behavior)
		}
		switch {
		case s.Pattern != nil && s.Pattern.Regex != nil && *s.Pattern.Regex == llama3Pattern:
			p.find = tilingFinder(llama3End)
		case s.Pattern != nil && s.Pattern.Regex != nil && *s.Pattern.Regex == gpt2Pattern:
			p.find = tilingFinder(gpt2End)
		default:
			lit, re, err := parsePattern(name, key, s.Pattern)
			if err != nil {
				return nil, err
			}
			if re != nil {
				p.find = regexpFinder(re)
			} else {
				p.find = literalFinder(lit)
			}
		}
		return []preTokenizer{p}, nil
	case "ByteLevel":
		return []preTokenizer{&byteLevelPre{
			addPrefixSpace: s.AddPrefixSpace == nil || *s.AddPrefixSpace,
			useRegex:       s.UseRegex == nil || *s.UseRegex,
		}}, nil
	case "Metaspace":
		p, err := parseMetaspace(name, key, s)
		if err != nil {
			return nil, err
		}
		return []preTokenizer{p}, nil
	case "Digits":
		return []preTokenizer{&digitsPre{individual: s.IndividualDigits}}, nil
	}
	return nil, fmt.Errorf("%s: %s.type %q is not supported", name, key, s.Type)
}

func parseMetaspace(name, key string, s *stageJSON) (*metaspacePre, error) {
	p := &metaspacePre{repl: s.Replacement, prepend: s.PrependScheme, splitAt: s.Split == nil || *s.Split}
	if p.repl == "" {
		p.repl = "▁"
	}
	if utf8.RuneCountInString(p.repl) != 1 {
		return nil, fmt.Errorf("%s: %s.replacement %q must be one character", name, key, p.repl)
	}
	switch p.prepend {
	case "":
		// Files older than prepend_scheme say add_prefix_space instead.
		p.prepend = "always"
		if s.AddPrefixSpace != nil && !*s.AddPrefixSpace {
			p.prepend = "never"
		}
	case "always", "first", "never":
	default:
		return nil, fmt.Errorf("%s: %s.prepend_scheme %q is not always, first or never", name, key, p.prepend)
	}
	return p, nil
}

func parseDecoder(name, key string, raw json.RawMessage) ([]decoder, error) {
	return parseDecoderDepth(name, key, raw, 0)
}

func parseDecoderDepth(name, key string, raw json.RawMessage, depth int) ([]decoder, error) {
	if isNull(raw) {
		return nil, nil
	}
	if depth > maxDepth {
		return nil, fmt.Errorf("%s: %s: Sequence nested too deeply", name, key)
	}
	s, err := parseStage(name, key, raw)
	if err != nil {
		return nil, err
	}
	switch s.Type {
	case "Sequence":
		var out []decoder
		for i, r := range s.Decoders {
			d, err := parseDecoderDepth(name, fmt.Sprintf("%s.decoders[%d]", key, i), r, depth+1)
			if err != nil {
				return nil, err
			}
			out = append(out, d...)
		}
		return out, nil
	case "ByteLevel":
		return []decoder{byteLevelDec{}}, nil
	case "Replace":
		old, re, err := parsePattern(name, key, s.Pattern)
		if err != nil {
			return nil, err
		}
		if re != nil {
			return nil, fmt.Errorf("%s: %s: a Replace decoder with a Regex pattern is not supported", name, key)
		}
		if s.Content == nil {
			return nil, fmt.Errorf("%s: %s: Replace needs \"content\"", name, key)
		}
		return []decoder{replaceDec{old, *s.Content}}, nil
	case "ByteFallback":
		return []decoder{byteFallbackDec{}}, nil
	case "Fuse":
		return []decoder{fuseDec{}}, nil
	case "Strip":
		if s.Content == nil || utf8.RuneCountInString(*s.Content) != 1 {
			return nil, fmt.Errorf("%s: %s: Strip needs a one-character \"content\"", name, key)
		}
		if s.Start < 0 || s.Stop < 0 {
			return nil, fmt.Errorf("%s: %s: Strip start and stop must not be negative", name, key)
		}
		r, _ := utf8.DecodeRuneInString(*s.Content)
		return []decoder{stripDec{content: r, start: s.Start, stop: s.Stop}}, nil
	case "Metaspace":
		p, err := parseMetaspace(name, key, s)
		if err != nil {
			return nil, err
		}
		return []decoder{metaspaceDec{repl: p.repl, dropInFirst: p.prepend != "never"}}, nil
	}
	return nil, fmt.Errorf("%s: %s.type %q is not supported", name, key, s.Type)
}

// parsePost reads the post-processor into the ids it puts before and after the
// sequence of a single input. ByteLevel (offsets only) adds nothing.
func parsePost(name, key string, raw json.RawMessage, t *Tokenizer) (before, after []int, err error) {
	if isNull(raw) {
		return nil, nil, nil
	}
	s, err := parseStage(name, key, raw)
	if err != nil {
		return nil, nil, err
	}
	switch s.Type {
	case "Sequence":
		for i, r := range s.Processors {
			var sub stageJSON
			if err := json.Unmarshal(r, &sub); err != nil {
				return nil, nil, fmt.Errorf("%s: %s.processors[%d]: %w", name, key, i, err)
			}
			if sub.Type == "Sequence" {
				return nil, nil, fmt.Errorf("%s: %s.processors[%d]: nested Sequence is not supported", name, key, i)
			}
			b, a, err := parsePost(name, fmt.Sprintf("%s.processors[%d]", key, i), r, t)
			if err != nil {
				return nil, nil, err
			}
			before = append(b, before...)
			after = append(after, a...)
		}
		return before, after, nil
	case "ByteLevel":
		return nil, nil, nil
	case "TemplateProcessing":
		seen := false
		for i, it := range s.Single {
			switch {
			case it.Sequence != nil:
				if it.Sequence.ID != "A" {
					return nil, nil, fmt.Errorf("%s: %s.single[%d]: sequence %q in a single template", name, key, i, it.Sequence.ID)
				}
				seen = true
			case it.SpecialToken != nil:
				st, ok := s.SpecialTokens[it.SpecialToken.ID]
				if !ok {
					return nil, nil, fmt.Errorf("%s: %s.single[%d]: special token %q is not in special_tokens", name, key, i, it.SpecialToken.ID)
				}
				for _, id := range st.IDs {
					if _, ok := t.Token(id); !ok {
						return nil, nil, fmt.Errorf("%s: %s.special_tokens[%q]: id %d is not a token", name, key, it.SpecialToken.ID, id)
					}
				}
				if seen {
					after = append(after, st.IDs...)
				} else {
					before = append(before, st.IDs...)
				}
			default:
				return nil, nil, fmt.Errorf("%s: %s.single[%d] is neither SpecialToken nor Sequence", name, key, i)
			}
		}
		if !seen {
			return nil, nil, fmt.Errorf("%s: %s.single has no Sequence", name, key)
		}
		return before, after, nil
	case "BertProcessing", "RobertaProcessing":
		cls, err := postPair(name, key+".cls", s.Cls, t)
		if err != nil {
			return nil, nil, err
		}
		sep, err := postPair(name, key+".sep", s.Sep, t)
		if err != nil {
			return nil, nil, err
		}
		return []int{cls}, []int{sep}, nil
	}
	return nil, nil, fmt.Errorf("%s: %s.type %q is not supported", name, key, s.Type)
}

// postPair reads a ["token", id] pair of Bert/RobertaProcessing.
func postPair(name, key string, raw []json.RawMessage, t *Tokenizer) (int, error) {
	var id int
	if len(raw) != 2 || json.Unmarshal(raw[1], &id) != nil {
		return 0, fmt.Errorf("%s: %s must be [token, id]", name, key)
	}
	if _, ok := t.Token(id); !ok {
		return 0, fmt.Errorf("%s: %s: id %d is not a token", name, key, id)
	}
	return id, nil
}

// configToken resolves a bos_token/eos_token entry: a string or an AddedToken
// object {"content": ...}. null means none.
func (t *Tokenizer) configToken(cname, key string, raw json.RawMessage) (int, error) {
	if isNull(raw) {
		return -1, nil
	}
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		var obj struct {
			Content string `json:"content"`
		}
		if err := json.Unmarshal(raw, &obj); err != nil || obj.Content == "" {
			return -1, fmt.Errorf("%s: %s must be a string or {\"content\": ...}", cname, key)
		}
		s = obj.Content
	}
	id, ok := t.TokenID(s)
	if !ok {
		return -1, fmt.Errorf("%s: %s %q is not a token of the tokenizer", cname, key, s)
	}
	return id, nil
}

// parseChatTemplate reads chat_template: a string, or a list of {name, template}
// of which the one named "default" (else the first) is used.
func parseChatTemplate(cname string, raw json.RawMessage) (string, error) {
	if isNull(raw) {
		return "", nil
	}
	var s string
	if err := json.Unmarshal(raw, &s); err == nil {
		return s, nil
	}
	var list []struct {
		Name     string `json:"name"`
		Template string `json:"template"`
	}
	if err := json.Unmarshal(raw, &list); err != nil {
		return "", fmt.Errorf("%s: chat_template must be a string or a list of {name, template}", cname)
	}
	for _, e := range list {
		if e.Name == "default" {
			return e.Template, nil
		}
	}
	if len(list) > 0 {
		return list[0].Template, nil
	}
	return "", nil
}
