package gguf

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"path/filepath"
	"slices"
	"strings"

	"train/internal/fileio"
	"train/model"
	"train/tokenizer"
)

// The llama architecture's mapping (see llama.cpp's convert_hf_to_gguf.py):
// Hugging Face rotates q and k by halves (rotate_half: element i pairs with
// i + head_dim/2), llama.cpp by adjacent pairs (2i with 2i+1). The converter
// therefore permutes the rows of q_proj and k_proj within each head so the same
// model computes the same thing under llama.cpp's rope; permute does it and
// unpermute undoes it on import.

// fileType is llama.cpp's general.file_type (llama_ftype) for a file written
// with ModelOptions.Type t: ALL_F32 0, MOSTLY_F16 1, MOSTLY_Q4_0 2,
// MOSTLY_Q8_0 7, MOSTLY_BF16 32.
func fileType(t GGMLType) uint32 {
	switch t {
	case F16:
		return 1
	case Q4_0:
		return 2
	case Q8_0:
		return 7
	case BF16:
		return 32
	}
	return 0
}

// matrixType is the type WriteModel stores a matrix in, for ModelOptions.Type
// typ. One-dimensional tensors (norms, rope_freqs) never come here: they stay
// F32. For Q8_0 every matrix is Q8_0, token_embd and output included, as both
// convert_hf_to_gguf.py --outtype q8_0 and llama-quantize Q8_0 do. For Q4_0
// llama-quantize stores the output matrix (output.weight, or token_embd with
// tied embeddings, which serves as both) in Q6_K; we have no Q6_K quantizer
// and store it in Q8_0, more precise and what llama-quantize itself uses for
// an output whose rows do not fit Q6_K's blocks; an untied token_embd is Q4_0
// as llama-quantize makes it. A row length that is not a multiple of 32 cannot
// be quantized: that matrix falls back to F16, as both llama.cpp tools do.
func matrixType(typ GGMLType, isOutput bool, cols int) GGMLType {
	if typ != Q8_0 && typ != Q4_0 {
		return typ
	}
	if cols%QuantBlock != 0 {
		return F16
	}
	if typ == Q4_0 && isOutput {
		return Q8_0
	}
	return typ
}

// permute reorders the rows of a q or k projection [nHead*hd, cols] from
// Hugging Face's rotate_half layout to llama.cpp's interleaved one, as
// convert_hf_to_gguf.py's LlamaModel.permute does:
// w.reshape(nHead, 2, hd/2, cols).swapaxes(1, 2).
func permute(w []float32, nHead, cols int) []float32 {
	return permuteHeads(w, nHead, cols, false)
}

// unpermute is the inverse of permute.
func unpermute(w []float32, nHead, cols int) []float32 {
	return permuteHeads(w, nHead, cols, true)
}

func permuteHeads(w []float32, nHead, cols int, inverse bool) []float32 {
	out := make([]float32, len(w))
	hd := len(w) / cols / nHead
	half := hd / 2
	for h := 0; h < nHead; h++ {
		for j := 0; j < 2; j++ {
			for i := 0; i < half; i++ {
				hf := h*hd + j*half + i // row in HF layout
				gg := h*hd + 2*i + j    // row in llama.cpp layout
				src, dst := hf, gg
				if inverse {
					src, dst = gg, hf
				}
				copy(out[dst*cols:(dst+1)*cols], w[src*cols:(src+1)*cols])
			}
		}
	}
	return out
}

// layerNames maps our per-layer tensors to llama.cpp's names (blk.N.NAME.weight).
var layerNames = []struct{ hf, gguf string }{
	{"q_proj", "attn_q"}, {"k_proj", "attn_k"}, {"v_proj", "attn_v"}, {"o_proj", "attn_output"},
	{"gate_proj", "ffn_gate"}, {"up_proj", "ffn_up"}, {"down_proj", "ffn_down"},
	{"input_layernorm", "attn_norm"}, {"post_attention_layernorm", "ffn_norm"},
}

// ModelOptions choose how WriteModel writes a model.
type ModelOptions struct {
	// Type of the matrices (token embedding, projections, output): F32, F16,
	// BF16, or the quantizations Q8_0 and Q4_0 (see matrixType for which matrix
	// gets which). Norm weights and rope factors stay F32, as llama.cpp's
	// converter keeps one-dimensional tensors.
	Type GGMLType
	// Name is general.name.
	Name string
	// TokenizerDir holds tokenizer.json (and tokenizer_config.json) to embed as
	// tokenizer.ggml.* metadata; empty writes no tokenizer (llama.cpp then
	// cannot run the file, but our reader can).
	TokenizerDir string
}

// WriteModel writes the whole model w as one GGUF file for llama.cpp's llama
// architecture: the metadata keys convert_hf_to_gguf.py writes, llama.cpp's
// tensor names, q and k permuted to llama.cpp's rope layout, and with Llama 3
// rope scaling the rope_freqs.weight tensor of per-frequency factors llama.cpp
// applies. The rope parameters are also recorded under train.rope.* so that
// ReadModel gives back the exact model.Config.
func WriteModel(path string, w *model.Weights, opt ModelOptions) error {
	switch opt.Type {
	case F32, F16, BF16, Q8_0, Q4_0:
	default:
		return fmt.Errorf("gguf export %s: type %s: F32, F16, BF16, Q8_0 or Q4_0 only", path, opt.Type)
	}
	// Every tensor of the whole model must be present with its size.
	if err := w.CheckWhole(); err != nil {
		return fmt.Errorf("gguf export %s: %w", path, err)
	}
	var err error
	c := w.Config
	if c.HeadDim%2 != 0 {
		return fmt.Errorf("gguf export %s: head_dim %d is odd", path, c.HeadDim)
	}
	name := opt.Name
	if name == "" {
		name = "llama"
	}
	var g Writer
	set := func(k string, v any) {
		if err == nil {
			err = g.Set(k, v)
		}
	}
	u32 := func(n int) uint32 { return uint32(n) }
	set("general.architecture", "llama")
	set("general.name", name)
	set("general.file_type", fileType(opt.Type))
	set("general.alignment", uint32(defaultAlignment))
	set("llama.context_length", u32(c.MaxPositions))
	set("llama.embedding_length", u32(c.HiddenSize))
	set("llama.block_count", u32(c.NumLayers))
	set("llama.feed_forward_length", u32(c.IntermediateSize))
	set("llama.attention.head_count", u32(c.NumHeads))
	set("llama.attention.head_count_kv", u32(c.NumKVHeads))
	set("llama.attention.key_length", u32(c.HeadDim))
	set("llama.attention.value_length", u32(c.HeadDim))
	set("llama.rope.freq_base", float32(c.Rope.Theta))
	set("llama.attention.layer_norm_rms_epsilon", float32(c.RMSNormEps))
	set("llama.rope.dimension_count", u32(c.HeadDim))
	set("llama.vocab_size", u32(c.VocabSize))
	// Exact values for our own reader (llama.cpp ignores unknown keys).
	set("train.rope.theta", c.Rope.Theta)
	set("train.rms_norm_eps", c.RMSNormEps)
	set("train.rope.type", c.Rope.Type)
	if c.Rope.Type == "llama3" {
		set("train.rope.factor", c.Rope.Factor)
		set("train.rope.low_freq_factor", c.Rope.LowFreqFactor)
		set("train.rope.high_freq_factor", c.Rope.HighFreqFactor)
		set("train.rope.original_max_position_embeddings", u32(c.Rope.OriginalMaxPositionEmbeddings))
	} else if c.Rope.Type != "" && c.Rope.Type != "default" {
		return fmt.Errorf("gguf export %s: rope type %q is not supported", path, c.Rope.Type)
	}
	if err != nil {
		return err
	}
	if opt.TokenizerDir != "" {
		if err := setTokenizer(&g, opt.TokenizerDir, c); err != nil {
			return fmt.Errorf("gguf export %s: %w", path, err)
		}
	} else {
		if c.BOSTokenID >= 0 {
			set("tokenizer.ggml.bos_token_id", u32(c.BOSTokenID))
		}
		if len(c.EOSTokenIDs) > 0 {
			set("tokenizer.ggml.eos_token_id", u32(c.EOSTokenIDs[0]))
		}
		if err != nil {
			return err
		}
	}

	if opt.Type == Q8_0 || opt.Type == Q4_0 {
		set("general.quantization_version", uint32(2)) // GGML_QNT_VERSION, as llama.cpp writes beside quantized tensors
	}
	mat := func(name string, shape []int, data []float32) {
		if err == nil {
			isOutput := name == "output.weight" || (name == "token_embd.weight" && c.TieEmbeddings)
			err = g.AddTensor(name, matrixType(opt.Type, isOutput, shape[1]), shape, data)
		}
	}
	vec := func(name string, data []float32) {
		if err == nil {
			err = g.AddTensor(name, F32, []int{len(data)}, data)
		}
	}
	h := c.HiddenSize
	mat("token_embd.weight", []int{c.VocabSize, h}, w.Embed)
	if c.Rope.Type == "llama3" {
		vec("rope_freqs.weight", llama3RopeFactors(&c))
	}
	for i, l := range w.Layers {
		vec(fmt.Sprintf("blk.%d.attn_norm.weight", i), l.AttnNorm)
		for _, p := range layerNames[:7] {
			out, in := c.LinearShape(p.hf)
			data := *l.Linear(p.hf)
			switch p.hf {
			case "q_proj":
				data = permute(data, c.NumHeads, in)
			case "k_proj":
				data = permute(data, c.NumKVHeads, in)
			}
			mat(fmt.Sprintf("blk.%d.%s.weight", i, p.gguf), []int{out, in}, data)
		}
		vec(fmt.Sprintf("blk.%d.ffn_norm.weight", i), l.MLPNorm)
	}
	vec("output_norm.weight", w.FinalNorm)
	if !c.TieEmbeddings {
		mat("output.weight", []int{c.VocabSize, h}, w.LMHead)
	}
	if err != nil {
		return fmt.Errorf("gguf export %s: %w", path, err)
	}
	return g.WriteFile(path)
}

// llama3RopeFactors are the per-frequency divisors of Llama 3 rope scaling, as
// convert_hf_to_gguf.py computes rope_freqs.weight: llama.cpp divides each
// inverse frequency by its factor.
func llama3RopeFactors(c *model.Config) []float32 {
	r := c.Rope
	dim := c.HeadDim
	out := make([]float32, dim/2)
	lowWavelen := float64(r.OriginalMaxPositionEmbeddings) / r.LowFreqFactor
	highWavelen := float64(r.OriginalMaxPositionEmbeddings) / r.HighFreqFactor
	for i := range out {
		freq := 1 / math.Pow(r.Theta, float64(2*i)/float64(dim))
		wavelen := 2 * math.Pi / freq
		switch {
		case wavelen < highWavelen:
			out[i] = 1
		case wavelen > lowWavelen:
			out[i] = float32(r.Factor)
		default:
			smooth := (float64(r.OriginalMaxPositionEmbeddings)/wavelen - r.LowFreqFactor) / (r.HighFreqFactor - r.LowFreqFactor)
			out[i] = float32(1 / ((1-smooth)/r.Factor + smooth))
		}
	}
	return out
}

// llama.cpp token types.
const (
	tokenNormal      = 1
	tokenUnknown     = 2
	tokenControl     = 3
	tokenUserDefined = 4
	tokenUnused      = 5
	tokenByte        = 6
)

// hfTokenizerFile is the part of tokenizer.json the GGUF tokenizer metadata needs
// beyond what the tokenizer package exposes.
type hfTokenizerFile struct {
	PreTokenizer json.RawMessage `json:"pre_tokenizer"`
	Decoder      json.RawMessage `json:"decoder"`
	AddedTokens  []struct {
		ID      int    `json:"id"`
		Content string `json:"content"`
	} `json:"added_tokens"`
	Model struct {
		Type         string          `json:"type"`
		UnkToken     *string         `json:"unk_token"`
		ByteFallback bool            `json:"byte_fallback"`
		Merges       json.RawMessage `json:"merges"`
	} `json:"model"`
}

// setTokenizer writes tokenizer.ggml.* from the tokenizer in dir, as
// convert_hf_to_gguf.py does: "llama" (SentencePiece-style BPE with byte
// fallback: scores, token types with byte tokens) or "gpt2" (byte-level BPE:
// merges). The token list is padded to the model's vocab size with [PADn].
func setTokenizer(g *Writer, dir string, c model.Config) error {
	path := filepath.Join(dir, "tokenizer.json")
	tok, err := tokenizer.Load(path)
	if err != nil {
		return err
	}
	raw, err := fileio.ReadFile(path, 256<<20)
	if err != nil {
		return err
	}
	var f hfTokenizerFile
	if err := json.Unmarshal(raw, &f); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	if f.Model.Type != "BPE" {
		return fmt.Errorf("%s: model type %q: only BPE tokenizers can be written to GGUF", path, f.Model.Type)
	}
	byteLevel := bytes.Contains(f.PreTokenizer, []byte(`"ByteLevel"`)) || bytes.Contains(f.Decoder, []byte(`"ByteLevel"`))
	n := tok.VocabSize()
	if n > c.VocabSize {
		return fmt.Errorf("%s: %d tokens, more than the model's vocab_size %d", path, n, c.VocabSize)
	}
	tokens := make([]string, c.VocabSize)
	types := make([]int32, c.VocabSize)
	scores := make([]float32, c.VocabSize)
	unk := ""
	if f.Model.UnkToken != nil {
		unk = *f.Model.UnkToken
	}
	added := map[int]bool{}
	for _, a := range f.AddedTokens {
		added[a.ID] = true
	}
	normal := 0
	for id := range tokens {
		s, ok := tok.Token(id)
		switch {
		case !ok:
			tokens[id], types[id] = fmt.Sprintf("[PAD%d]", id), tokenUnused
		case s == unk && !byteLevel:
			tokens[id], types[id] = s, tokenUnknown
		case tok.IsSpecial(id):
			tokens[id], types[id] = s, tokenControl
		case added[id]:
			tokens[id], types[id] = s, tokenUserDefined
		case !byteLevel && f.Model.ByteFallback && isByteToken(s):
			tokens[id], types[id] = s, tokenByte
		default:
			// SentencePiece scores: llama.cpp merges the pair whose result scores
			// highest; the vocabulary of a converted SentencePiece model is in
			// score order, so -k for the k-th normal token reproduces it.
			tokens[id], types[id], scores[id] = s, tokenNormal, -float32(normal)
			normal++
		}
	}
	set := func(k string, v any) {
		if err == nil {
			err = g.Set(k, v)
		}
	}
	if byteLevel {
		merges, err := parseMerges(f.Model.Merges)
		if err != nil {
			return fmt.Errorf("%s: model.merges: %w", path, err)
		}
		pre := "default"
		if _, ok := tok.TokenID("<|begin_of_text|>"); ok {
			pre = "llama-bpe"
		}
		set("tokenizer.ggml.model", "gpt2")
		set("tokenizer.ggml.pre", pre)
		set("tokenizer.ggml.tokens", tokens)
		set("tokenizer.ggml.token_type", types)
		set("tokenizer.ggml.merges", merges)
	} else {
		set("tokenizer.ggml.model", "llama")
		set("tokenizer.ggml.pre", "default")
		set("tokenizer.ggml.tokens", tokens)
		set("tokenizer.ggml.scores", scores)
		set("tokenizer.ggml.token_type", types)
		if id, ok := tok.TokenID(unk); ok && unk != "" {
			set("tokenizer.ggml.unknown_token_id", uint32(id))
		}
	}
	bos, eos := tok.BOS(), tok.EOS()
	if bos < 0 {
		bos = c.BOSTokenID
	}
	if eos < 0 && len(c.EOSTokenIDs) > 0 {
		eos = c.EOSTokenIDs[0]
	}
	if bos >= 0 {
		set("tokenizer.ggml.bos_token_id", uint32(bos))
		ids := tok.Encode("a", true)
		set("tokenizer.ggml.add_bos_token", len(ids) > 0 && ids[0] == bos)
	}
	if eos >= 0 {
		set("tokenizer.ggml.eos_token_id", uint32(eos))
	}
	if t := tok.ChatTemplate(); t != "" {
		set("tokenizer.chat_template", t)
	}
	return err
}

// isByteToken matches SentencePiece byte tokens <0xNN>.
func isByteToken(s string) bool {
	if len(s) != 6 || !strings.HasPrefix(s, "<0x") || s[5] != '>' {
		return false
	}
	for _, c := range s[3:5] {
		if !('0' <= c && c <= '9' || 'A' <= c && c <= 'F') {
			return false
		}
	}
	return true
}

// parseMerges reads tokenizer.json merges ("a b" strings or [a, b] pairs) as
// GGUF's "a b" strings.
func parseMerges(raw json.RawMessage) ([]string, error) {
	var strs []string
	if err := json.Unmarshal(raw, &strs); err == nil {
		return strs, nil
	}
	var pairs [][2]string
	if err := json.Unmarshal(raw, &pairs); err != nil {
		return nil, errors.New("neither a list of strings nor of pairs")
	}
	out := make([]string, len(pairs))
	for i, p := range pairs {
		out[i] = p[0] + " " + p[1]
	}
	return out, nil
}

// ReadModel reads a llama-architecture GGUF file with F32, F16, BF16, Q8_0 or
// Q4_0 tensors (quantized ones dequantized) into model.Weights and the model.Config the metadata describes,
// undoing the q/k permutation. A file without output.weight has tied
// embeddings.
func ReadModel(g *File) (*model.Weights, model.Config, error) {
	c, err := ReadConfig(g)
	if err != nil {
		return nil, model.Config{}, err
	}
	read := func(name string, shape ...int) ([]float32, error) {
		t, ok := g.Tensor(name)
		if !ok {
			return nil, fmt.Errorf("%s: tensor %s is missing", g.Name, name)
		}
		if !slices.Equal(t.Shape(), shape) {
			return nil, fmt.Errorf("%s: tensor %s has shape %v (dims %v), the metadata implies %v", g.Name, name, t.Shape(), t.Dims, shape)
		}
		return g.ReadFloat32(name)
	}
	w := &model.Weights{Config: c, Layers: make([]*model.Layer, c.NumLayers)}
	h := c.HiddenSize
	if w.Embed, err = read("token_embd.weight", c.VocabSize, h); err != nil {
		return nil, model.Config{}, err
	}
	for i := range w.Layers {
		l := &model.Layer{}
		if l.AttnNorm, err = read(fmt.Sprintf("blk.%d.attn_norm.weight", i), h); err != nil {
			return nil, model.Config{}, err
		}
		if l.MLPNorm, err = read(fmt.Sprintf("blk.%d.ffn_norm.weight", i), h); err != nil {
			return nil, model.Config{}, err
		}
		for _, p := range layerNames[:7] {
			out, in := c.LinearShape(p.hf)
			data, err := read(fmt.Sprintf("blk.%d.%s.weight", i, p.gguf), out, in)
			if err != nil {
				return nil, model.Config{}, err
			}
			switch p.hf {
			case "q_proj":
				data = unpermute(data, c.NumHeads, in)
			case "k_proj":
				data = unpermute(data, c.NumKVHeads, in)
			}
			*l.Linear(p.hf) = data
		}
		w.Layers[i] = l
	}
	if w.FinalNorm, err = read("output_norm.weight", h); err != nil {
		return nil, model.Config{}, err
	}
	if !c.TieEmbeddings {
		if w.LMHead, err = read("output.weight", c.VocabSize, h); err != nil {
			return nil, model.Config{}, err
		}
	}
	return w, c, nil
}

// ReadConfig is the model.Config a llama-architecture GGUF file's metadata
// (and the shape of its token embedding) describes, checked as supported:
// what a command needs before it reads any weight.
func ReadConfig(g *File) (model.Config, error) {
	fail := func(format string, a ...any) (model.Config, error) {
		return model.Config{}, fmt.Errorf("%s: %s", g.Name, fmt.Sprintf(format, a...))
	}
	if arch, _ := g.String("general.architecture"); arch != "llama" {
		return fail("general.architecture %q: only llama is supported", arch)
	}
	getInt := func(key string, def int, required bool, lo, hi int) (int, error) {
		v, ok := g.Uint("llama." + key)
		if !ok {
			if _, present := g.Metadata["llama."+key]; present {
				return 0, fmt.Errorf("%s: llama.%s is not a non-negative integer", g.Name, key)
			}
			if required {
				return 0, fmt.Errorf("%s: llama.%s is missing", g.Name, key)
			}
			return def, nil
		}
		if v < uint64(lo) || v > uint64(hi) {
			return 0, fmt.Errorf("%s: llama.%s %d is outside [%d, %d]", g.Name, key, v, lo, hi)
		}
		return int(v), nil
	}
	c := model.Config{Architecture: "LlamaForCausalLM", ModelType: "llama", HiddenAct: "silu", BOSTokenID: -1, TorchDType: "float32"}
	var err error
	for _, f := range []struct {
		key      string
		dst      *int
		required bool
		hi       int
	}{
		{"embedding_length", &c.HiddenSize, true, model.MaxHiddenSize},
		{"feed_forward_length", &c.IntermediateSize, true, model.MaxIntermediateSize},
		{"block_count", &c.NumLayers, true, model.MaxLayers},
		{"attention.head_count", &c.NumHeads, true, model.MaxHeads},
		{"context_length", &c.MaxPositions, false, model.MaxPositions},
	} {
		if *f.dst, err = getInt(f.key, model.DefaultMaxPositions, f.required, 1, f.hi); err != nil {
			return model.Config{}, err
		}
	}
	if c.NumKVHeads, err = getInt("attention.head_count_kv", c.NumHeads, false, 1, model.MaxHeads); err != nil {
		return model.Config{}, err
	}
	if c.HiddenSize%c.NumHeads != 0 {
		if _, ok := g.Metadata["llama.attention.key_length"]; !ok {
			return fail("embedding_length %d is not a multiple of head_count %d and key_length is missing", c.HiddenSize, c.NumHeads)
		}
	}
	if c.HeadDim, err = getInt("attention.key_length", c.HiddenSize/max(c.NumHeads, 1), false, 1, model.MaxHeadDim); err != nil {
		return model.Config{}, err
	}
	if vl, err := getInt("attention.value_length", c.HeadDim, false, 1, model.MaxHeadDim); err != nil || vl != c.HeadDim {
		if err != nil {
			return model.Config{}, err
		}
		return fail("llama.attention.value_length %d differs from key_length %d", vl, c.HeadDim)
	}
	if rd, err := getInt("rope.dimension_count", c.HeadDim, false, 1, model.MaxHeadDim); err != nil || rd != c.HeadDim {
		if err != nil {
			return model.Config{}, err
		}
		return fail("llama.rope.dimension_count %d: partial rotary embeddings are not supported (head dim %d)", rd, c.HeadDim)
	}
	c.RMSNormEps = model.DefaultRMSNormEps
	if v, ok := g.Float("train.rms_norm_eps"); ok {
		c.RMSNormEps = v
	} else if v, ok := g.Float("llama.attention.layer_norm_rms_epsilon"); ok {
		c.RMSNormEps = v
	}
	c.Rope = model.Rope{Theta: model.DefaultRopeTheta, Type: "default"}
	if v, ok := g.Float("train.rope.theta"); ok {
		c.Rope.Theta = v
	} else if v, ok := g.Float("llama.rope.freq_base"); ok {
		c.Rope.Theta = v
	}
	if _, ok := g.Metadata["llama.rope.scaling.type"]; ok {
		if t, _ := g.String("llama.rope.scaling.type"); t != "none" {
			return fail("llama.rope.scaling.type %q is not supported", t)
		}
	}
	if _, ok := g.Tensor("rope_freqs.weight"); ok {
		if t, _ := g.String("train.rope.type"); t != "llama3" {
			return fail("rope_freqs.weight (Llama 3 rope scaling) without train.rope.* parameters: the scaling cannot be recovered")
		}
		c.Rope.Type = "llama3"
		c.Rope.Factor, _ = g.Float("train.rope.factor")
		c.Rope.LowFreqFactor, _ = g.Float("train.rope.low_freq_factor")
		c.Rope.HighFreqFactor, _ = g.Float("train.rope.high_freq_factor")
		om, _ := g.Uint("train.rope.original_max_position_embeddings")
		if om > model.MaxPositions {
			return fail("train.rope.original_max_position_embeddings %d is too large", om)
		}
		c.Rope.OriginalMaxPositionEmbeddings = int(om)
	}
	if v, ok := g.Uint("tokenizer.ggml.bos_token_id"); ok && v <= model.MaxTokenID {
		c.BOSTokenID = int(v)
	}
	if v, ok := g.Uint("tokenizer.ggml.eos_token_id"); ok && v <= model.MaxTokenID {
		c.EOSTokenIDs = []int{int(v)}
	}
	emb, ok := g.Tensor("token_embd.weight")
	if !ok {
		return fail("tensor token_embd.weight is missing")
	}
	if len(emb.Dims) != 2 || emb.Dims[0] != int64(c.HiddenSize) || emb.Dims[1] > model.MaxVocabSize {
		return fail("token_embd.weight has dims %v, want [%d, vocab]", emb.Dims, c.HiddenSize)
	}
	c.VocabSize = int(emb.Dims[1])
	if v, ok := g.Uint("llama.vocab_size"); ok && v != uint64(c.VocabSize) {
		return fail("llama.vocab_size %d differs from token_embd.weight's %d rows", v, c.VocabSize)
	}
	_, hasOutput := g.Tensor("output.weight")
	c.TieEmbeddings = !hasOutput
	if err := c.Supported(); err != nil {
		return model.Config{}, fmt.Errorf("%s: %w", g.Name, err)
	}
	if c.HeadDim%2 != 0 {
		return fail("head dim %d is odd", c.HeadDim)
	}
	return c, nil
}
