package model

// Check describes a model and lists every reason train cannot fine-tune it, each
// on its own line, so a user sees all the problems of a checkpoint at once rather
// than one per attempt. Problems that make the model unusable are
// incompatibilities; oddities that are harmless (an extra tensor, a vocabulary
// padded beyond the tokenizer) are warnings.

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"path/filepath"
	"slices"
	"sort"
	"strings"

	"train/internal/fileio"
	"train/quant"
)

// SupportedArchitecture is the Hugging Face architecture train implements.
const SupportedArchitecture = "LlamaForCausalLM"

// NF4BlockSize is the number of weights sharing one absmax scale in the NF4 size
// estimate (bitsandbytes' default block size for 4-bit weights).
const NF4BlockSize = 64

// checkListLimit bounds how many tensors of one kind of problem are listed one per
// line; a config.json with the wrong layer count would otherwise print hundreds.
const checkListLimit = 20

const maxTokenizerBytes = 256 << 20

// Incompatibilities lists, one clear line each, every property of c that train
// does not support. They name config.json keys, since that is what a user can read
// and (sometimes) fix.
func (c *Config) Incompatibilities() []string {
	var out []string
	add := func(format string, a ...any) { out = append(out, fmt.Sprintf(format, a...)) }
	switch {
	case c.Architecture == "":
		add("config.json names no architecture (architectures is missing); supported: %s", SupportedArchitecture)
	case c.Architecture != SupportedArchitecture:
		add("architecture %s is not supported; supported: %s", c.Architecture, SupportedArchitecture)
	}
	if c.NumKVHeads <= 0 || c.NumHeads%c.NumKVHeads != 0 {
		add("num_key_value_heads %d does not divide num_attention_heads %d (grouped-query attention needs whole groups)", c.NumKVHeads, c.NumHeads)
	}
	switch {
	case c.HeadDim <= 0 && c.NumHeads > 0:
		add("hidden_size %d is not num_attention_heads %d x head_dim: config.json has no head_dim and %d is not divisible by %d",
			c.HiddenSize, c.NumHeads, c.HiddenSize, c.NumHeads)
	case c.HeadDim%2 != 0:
		add("head_dim %d is odd; rotary embeddings rotate pairs of dimensions", c.HeadDim)
	}
	if c.HiddenAct != "silu" {
		add("hidden_act %q is not supported; supported: silu (the SwiGLU MLP of Llama)", c.HiddenAct)
	}
	if c.AttentionBias {
		add("attention_bias is true: attention projections with biases are not supported (Llama has none)")
	}
	if c.MLPBias {
		add("mlp_bias is true: MLP projections with biases are not supported (Llama has none)")
	}
	switch c.Rope.Type {
	case "default":
	case "llama3":
		if c.Rope.Factor <= 0 || c.Rope.LowFreqFactor <= 0 || c.Rope.OriginalMaxPositionEmbeddings <= 0 {
			add("rope type llama3 needs positive factor, low_freq_factor and original_max_position_embeddings; got %g, %g, %d",
				c.Rope.Factor, c.Rope.LowFreqFactor, c.Rope.OriginalMaxPositionEmbeddings)
		}
		if c.Rope.HighFreqFactor <= c.Rope.LowFreqFactor {
			add("rope type llama3 needs high_freq_factor (%g) greater than low_freq_factor (%g)", c.Rope.HighFreqFactor, c.Rope.LowFreqFactor)
		}
	default:
		add("rope type %q is not supported; supported: default, llama3", c.Rope.Type)
	}
	if c.Rope.Theta <= 0 {
		add("rope_theta %g must be positive", c.Rope.Theta)
	}
	if c.RMSNormEps <= 0 {
		add("rms_norm_eps %g must be positive", c.RMSNormEps)
	}
	if c.BOSTokenID >= c.VocabSize {
		add("bos_token_id %d is outside the vocabulary of %d tokens", c.BOSTokenID, c.VocabSize)
	}
	for _, id := range c.EOSTokenIDs {
		if id >= c.VocabSize {
			add("eos_token_id %d is outside the vocabulary of %d tokens", id, c.VocabSize)
		}
	}
	return out
}

// Supported returns nil when train can run c, and otherwise an error listing every
// incompatibility. Code that builds a model from a Config calls it first.
func (c *Config) Supported() error {
	inc := c.Incompatibilities()
	if len(inc) == 0 {
		return nil
	}
	return fmt.Errorf("model not supported: %s", strings.Join(inc, "; "))
}

// ParamCount is the number of parameters (the tied embedding counted once).
func (c *Config) ParamCount() int64 {
	return c.HostBytes(0, c.NumLayers, true, true) / 4
}

// BF16Bytes is the size of every weight in bfloat16.
func (c *Config) BF16Bytes() int64 { return 2 * c.ParamCount() }

// NF4Bytes is the size of the weights as QLoRA holds them: the seven linear
// projections of each layer in 4-bit NF4 with double-quantized scales
// (NF4LinearBytes), the embedding, lm_head and norms in bfloat16, as QLoRA
// leaves them.
func (c *Config) NF4Bytes() int64 {
	var linear int64
	for _, s := range Linears {
		out, in := c.LinearShape(s)
		linear += NF4LinearBytes(int64(out) * int64(in))
	}
	other := c.ParamCount() - int64(c.NumLayers)*(c.LayerParams()-2*int64(c.HiddenSize))
	return int64(c.NumLayers)*linear + 2*other
}

// NF4LinearBytes is what a weight of n values takes in 4-bit NF4 as train
// holds it by default (bitsandbytes' QLoRA layout, double quantization): half
// a byte per weight, one byte per block of NF4BlockSize weights, a float32
// per 256 blocks and the 256-entry 8-bit map. About 4.13 bits per weight.
func NF4LinearBytes(n int64) int64 {
	blocks := (n + NF4BlockSize - 1) / NF4BlockSize
	return (n+1)/2 + blocks + 4*((blocks+255)/256) + 4*256
}

// Report is what Check found out about a model.
type Report struct {
	Model             string         `json:"model"`
	Random            bool           `json:"random,omitempty"`
	Architecture      string         `json:"architecture"`
	ModelType         string         `json:"model_type"`
	Layers            int            `json:"layers"`
	HiddenSize        int            `json:"hidden_size"`
	IntermediateSize  int            `json:"intermediate_size"`
	Heads             int            `json:"heads"`
	KVHeads           int            `json:"kv_heads"`
	HeadDim           int            `json:"head_dim"`
	VocabSize         int            `json:"vocab_size"`
	MaxPositions      int            `json:"max_position_embeddings"`
	RMSNormEps        float64        `json:"rms_norm_eps"`
	HiddenAct         string         `json:"hidden_act"`
	Rope              RopeReport     `json:"rope"`
	TiedEmbeddings    bool           `json:"tied_embeddings"`
	Parameters        int64          `json:"parameters"`
	BF16Bytes         int64          `json:"bf16_bytes"`
	NF4Bytes          int64          `json:"nf4_bytes"`
	Files             []string       `json:"files,omitempty"`
	Tensors           int            `json:"tensors,omitempty"`
	DTypes            map[string]int `json:"dtypes,omitempty"` // tensor count per dtype
	TokenizerVocab    int            `json:"tokenizer_vocab,omitempty"`
	Format            string         `json:"format,omitempty"`            // "hf" (not quantized), "bnb-4bit", or "quantized" (another method); "" for random
	Quantization      *quant.Config  `json:"quantization,omitempty"`      // config.json's quantization_config
	QuantizedWeights  int            `json:"quantized_weights,omitempty"` // expected tensors stored 4-bit
	MemoryBytes       int64          `json:"memory_bytes,omitempty"`      // the expected tensors in memory as stored: quantized ones as they are, others bf16
	Warnings          []string       `json:"warnings"`
	Incompatibilities []string       `json:"incompatibilities"`
	Config            Config         `json:"-"`
}

// RopeReport is the rotary embedding as the report prints it.
type RopeReport struct {
	Type                          string  `json:"type"`
	Theta                         float64 `json:"theta"`
	Factor                        float64 `json:"factor,omitempty"`
	LowFreqFactor                 float64 `json:"low_freq_factor,omitempty"`
	HighFreqFactor                float64 `json:"high_freq_factor,omitempty"`
	OriginalMaxPositionEmbeddings int     `json:"original_max_position_embeddings,omitempty"`
}

// Compatible reports whether Check found no incompatibility.
func (r *Report) Compatible() bool { return len(r.Incompatibilities) == 0 }

// Check describes the model at model (a Hugging Face directory or random:NAME) and
// lists every incompatibility. The error is for a model that cannot be described at
// all (no readable config.json, an unknown random name); problems with the weights
// or the tokenizer are incompatibilities in the report.
func Check(model string) (*Report, error) {
	if IsRandomModel(model) {
		cfg, err := RandomConfig(model)
		if err != nil {
			return nil, err
		}
		r := newReport(model, cfg)
		r.Random = true
		return r, nil
	}
	cfg, err := LoadConfig(model)
	if err != nil {
		return nil, err
	}
	r := newReport(model, cfg)
	if cfg.ModelType != "" && cfg.ModelType != "llama" {
		r.Warnings = append(r.Warnings, fmt.Sprintf("model_type is %q, not llama", cfg.ModelType))
	}
	qc, err := quant.LoadConfig(model)
	r.Format, r.Quantization = checkpointFormat(qc), qc
	if err != nil {
		r.Incompatibilities = append(r.Incompatibilities, err.Error())
	} else if qc != nil {
		for _, p := range qc.Problems() {
			r.Incompatibilities = append(r.Incompatibilities, "config.json: "+p)
		}
	}
	if m, err := OpenModelDir(model); err != nil {
		r.Incompatibilities = append(r.Incompatibilities, err.Error())
	} else {
		checkTensors(r, m, cfg)
		m.Close()
	}
	checkTokenizer(r, model, cfg)
	return r, nil
}

func newReport(model string, c Config) *Report {
	return &Report{
		Model: model, Config: c,
		Architecture: c.Architecture, ModelType: c.ModelType,
		Layers: c.NumLayers, HiddenSize: c.HiddenSize, IntermediateSize: c.IntermediateSize,
		Heads: c.NumHeads, KVHeads: c.NumKVHeads, HeadDim: c.HeadDim, VocabSize: c.VocabSize,
		MaxPositions: c.MaxPositions, RMSNormEps: c.RMSNormEps, HiddenAct: c.HiddenAct,
		Rope: RopeReport{
			Type: c.Rope.Type, Theta: c.Rope.Theta, Factor: c.Rope.Factor,
			LowFreqFactor: c.Rope.LowFreqFactor, HighFreqFactor: c.Rope.HighFreqFactor,
			OriginalMaxPositionEmbeddings: c.Rope.OriginalMaxPositionEmbeddings,
		},
		TiedEmbeddings: c.TieEmbeddings,
		Parameters:     c.ParamCount(), BF16Bytes: c.BF16Bytes(), NF4Bytes: c.NF4Bytes(),
		Warnings:          []string{},
		Incompatibilities: append([]string{}, c.Incompatibilities()...), // [] not null in JSON
	}
}

// checkpointFormat names what a directory holds: a plain checkpoint, a
// bitsandbytes 4-bit one, or another quantization.
func checkpointFormat(qc *quant.Config) string {
	switch {
	case qc == nil:
		return "hf"
	case qc.Method == "bitsandbytes" && qc.LoadIn4Bit && !qc.LoadIn8Bit:
		return "bnb-4bit"
	}
	return "quantized"
}

// checkTensors compares the checkpoint's tensors with those config.json implies.
// A weight stored quantized by bitsandbytes (a packed uint8 tensor with its
// companions) is checked by the shape its quant state records; its companions
// are not unexpected.
func checkTensors(r *Report, m *ModelDir, cfg Config) {
	for _, f := range m.Files {
		r.Files = append(r.Files, filepath.Base(f.Name))
	}
	all := m.Tensors()
	r.Tensors = len(all)
	r.DTypes = map[string]int{}
	for _, t := range all {
		r.DTypes[string(t.DType)]++
	}
	if cfg.HeadDim <= 0 {
		r.Warnings = append(r.Warnings, "tensor shapes not checked: head_dim is unknown")
		return
	}
	missing, shaped, dtyped, quantized, extra := tensorProblems(m, cfg, r)
	if _, _, ok := m.Tensor("lm_head.weight"); ok && cfg.TieEmbeddings {
		r.Warnings = append(r.Warnings, "lm_head.weight is present but tie_word_embeddings is true: it is ignored and the embedding is used")
	}
	r.Incompatibilities = appendLimited(r.Incompatibilities, missing, "missing tensors")
	r.Incompatibilities = appendLimited(r.Incompatibilities, shaped, "mis-shaped tensors")
	r.Incompatibilities = appendLimited(r.Incompatibilities, dtyped, "tensors of unsupported dtype")
	r.Incompatibilities = appendLimited(r.Incompatibilities, quantized, "unreadable quantized tensors")
	r.Warnings = appendLimited(r.Warnings, extra, "unexpected tensors")
}

// tensorProblems compares the checkpoint's tensors with those cfg implies
// (cfg.HeadDim must be known), one line per problem: missing, of another
// shape, of a dtype train cannot read, quantized ones that cannot be read,
// and unexpected (ignored) tensors. r, when not nil, is the report of `train
// check`, which also counts the bitsandbytes 4-bit weights and the memory the
// weights take.
func tensorProblems(m *ModelDir, cfg Config, r *Report) (missing, shaped, dtyped, quantized, extra []string) {
	expected := map[string]bool{}
	src := m.QuantSource()
	var qc *quant.Config
	if r != nil {
		qc = r.Quantization
	} else {
		qc, _ = quant.LoadConfig(m.Dir) // an unreadable config.json has failed before this
	}
	for _, spec := range cfg.ExpectedTensors() {
		expected[spec.Name] = true
		t, _, ok := m.Tensor(spec.Name)
		switch {
		case !ok:
			missing = append(missing, fmt.Sprintf("missing tensor %s (expected shape %v)", spec.Name, spec.Shape))
		case quant.IsQuantized(src, spec.Name):
			qs, err := quant.ReadQuantState(src, spec.Name)
			switch {
			case qc == nil:
				quantized = append(quantized, fmt.Sprintf("tensor %s is stored quantized by bitsandbytes, but config.json has no quantization_config", spec.Name))
			case err != nil:
				quantized = append(quantized, err.Error())
			case !slices.Equal(qs.Shape, spec.Shape):
				shaped = append(shaped, fmt.Sprintf("tensor %s (bitsandbytes 4-bit) has shape %v, but config.json implies %v", spec.Name, qs.Shape, spec.Shape))
			case qc.Supported() != nil:
				quantized = append(quantized, fmt.Sprintf("tensor %s: %v", spec.Name, qc.Supported()))
			case r != nil:
				r.QuantizedWeights++
				r.MemoryBytes += quant.StoredBytes(src, spec.Name)
			}
		case !slices.Equal(t.Shape, spec.Shape):
			shaped = append(shaped, fmt.Sprintf("tensor %s has shape %v, but config.json implies %v", spec.Name, t.Shape, spec.Shape))
		case !t.DType.IsFloat():
			dtyped = append(dtyped, fmt.Sprintf("tensor %s has dtype %s; supported: F32, BF16, F16, F64", spec.Name, t.DType))
		case r != nil:
			r.MemoryBytes += 2 * t.NumElements()
		}
	}
	for _, t := range m.Tensors() {
		w, companion := quant.CompanionOf(t.Name)
		switch {
		case expected[t.Name], companion && expected[w]:
		case t.Name == "lm_head.weight" && cfg.TieEmbeddings:
		default:
			extra = append(extra, fmt.Sprintf("unexpected tensor %s %v (ignored)", t.Name, t.Shape))
		}
	}
	return missing, shaped, dtyped, quantized, extra
}

// appendLimited appends up to checkListLimit lines, then one line counting the rest.
func appendLimited(dst, lines []string, what string) []string {
	if len(lines) <= checkListLimit {
		return append(dst, lines...)
	}
	dst = append(dst, lines[:checkListLimit]...)
	return append(dst, fmt.Sprintf("... and %d more %s", len(lines)-checkListLimit, what))
}

// checkTokenizer compares vocab_size with a tokenizer.json beside the model.
// A larger vocab_size is fine (checkpoints pad the embedding); a smaller one means
// some token ids have no embedding row.
func checkTokenizer(r *Report, dir string, cfg Config) {
	path := filepath.Join(dir, "tokenizer.json")
	n, err := TokenizerVocabSize(path)
	if errors.Is(err, fs.ErrNotExist) {
		r.Warnings = append(r.Warnings, "no tokenizer.json beside the model: vocab_size not cross-checked")
		return
	}
	if err != nil {
		r.Incompatibilities = append(r.Incompatibilities, err.Error())
		return
	}
	r.TokenizerVocab = n
	if cfg.VocabSize < n {
		r.Incompatibilities = append(r.Incompatibilities, fmt.Sprintf(
			"vocab_size %d is smaller than the %d tokens of tokenizer.json: ids %d..%d have no embedding row",
			cfg.VocabSize, n, cfg.VocabSize, n-1))
	}
}

// TokenizerVocabSize is the number of token ids a Hugging Face tokenizer.json can
// produce: one more than the largest id of its model vocabulary and added tokens.
func TokenizerVocabSize(path string) (int, error) {
	data, err := fileio.ReadFile(path, maxTokenizerBytes)
	if err != nil {
		return 0, err
	}
	var tok struct {
		Model struct {
			Vocab json.RawMessage `json:"vocab"`
		} `json:"model"`
		AddedTokens []struct {
			ID int `json:"id"`
		} `json:"added_tokens"`
	}
	if err := json.Unmarshal(data, &tok); err != nil {
		return 0, fmt.Errorf("%s: not a tokenizer.json: %s", path, jsonErrorWhere(data, err))
	}
	n := 0
	if len(tok.Model.Vocab) > 0 && tok.Model.Vocab[0] == '[' {
		// Unigram: a list of [piece, score]; the id is the position.
		var list []json.RawMessage
		if err := json.Unmarshal(tok.Model.Vocab, &list); err != nil {
			return 0, fmt.Errorf("%s: model.vocab: %w", path, err)
		}
		n = len(list)
	} else if len(tok.Model.Vocab) > 0 {
		var vocab map[string]int
		if err := json.Unmarshal(tok.Model.Vocab, &vocab); err != nil {
			return 0, fmt.Errorf("%s: model.vocab: want an object of token ids: %w", path, err)
		}
		for _, id := range vocab {
			if id < 0 || id >= MaxVocabSize {
				return 0, fmt.Errorf("%s: model.vocab: token id %d out of range", path, id)
			}
			n = max(n, id+1)
		}
	}
	for _, t := range tok.AddedTokens {
		if t.ID < 0 || t.ID >= MaxVocabSize {
			return 0, fmt.Errorf("%s: added_tokens: token id %d out of range", path, t.ID)
		}
		n = max(n, t.ID+1)
	}
	if n == 0 {
		return 0, fmt.Errorf("%s: no model.vocab and no added_tokens", path)
	}
	return n, nil
}

// WriteText prints the report for a person.
func (r *Report) WriteText(w io.Writer) error {
	var b strings.Builder
	line := func(key, format string, a ...any) {
		fmt.Fprintf(&b, "%-17s %s\n", key, fmt.Sprintf(format, a...))
	}
	line("model", "%s", r.Model)
	if r.Random {
		line("weights", "random (N(0, 0.02²) linear and embedding weights, norms 1); nothing on disk")
	}
	line("architecture", "%s (model_type %s)", orNone(r.Architecture), orNone(r.ModelType))
	line("layers", "%d", r.Layers)
	line("hidden size", "%d", r.HiddenSize)
	line("intermediate", "%d", r.IntermediateSize)
	heads := fmt.Sprintf("%d query, %d key/value", r.Heads, r.KVHeads)
	if r.KVHeads > 0 && r.KVHeads < r.Heads && r.Heads%r.KVHeads == 0 {
		heads += fmt.Sprintf(" (grouped-query: %d query heads per key/value head)", r.Heads/r.KVHeads)
	}
	line("attention heads", "%s", heads)
	line("head dim", "%d", r.HeadDim)
	vocab := fmt.Sprint(r.VocabSize)
	if r.TokenizerVocab > 0 {
		vocab += fmt.Sprintf(" (tokenizer.json: %d)", r.TokenizerVocab)
	}
	line("vocab", "%s", vocab)
	line("max positions", "%d", r.MaxPositions)
	line("rms_norm_eps", "%g", r.RMSNormEps)
	line("activation", "%s", r.HiddenAct)
	rope := fmt.Sprintf("%s, theta %g", r.Rope.Type, r.Rope.Theta)
	if r.Rope.Type != "default" {
		rope += fmt.Sprintf(", factor %g, low_freq_factor %g, high_freq_factor %g, original_max_position_embeddings %d",
			r.Rope.Factor, r.Rope.LowFreqFactor, r.Rope.HighFreqFactor, r.Rope.OriginalMaxPositionEmbeddings)
	}
	line("rope", "%s", rope)
	line("tied embeddings", "%s", yesNo(r.TiedEmbeddings))
	line("parameters", "%s (%s)", groupDigits(r.Parameters), HumanCount(r.Parameters))
	line("bf16 weights", "%s", formatByteSize(r.BF16Bytes))
	line("nf4 weights", "%s (linear layers 4-bit NF4 in blocks of %d, double-quantized scales; embeddings, lm_head, norms bf16)",
		formatByteSize(r.NF4Bytes), NF4BlockSize)
	switch r.Format {
	case "hf":
		line("format", "plain Hugging Face checkpoint, not quantized: %s as bf16, %s as NF4 (QLoRA)",
			formatByteSize(r.BF16Bytes), formatByteSize(r.NF4Bytes))
	case "bnb-4bit":
		line("format", "bitsandbytes 4-bit checkpoint (%s): %d of %d linear weights quantized, %s in memory as stored (4-bit codes and their scales; other tensors bf16); -method qlora trains on it as stored, lora dequantizes it to bf16",
			strings.TrimPrefix(r.Quantization.String(), "bitsandbytes 4-bit "), r.QuantizedWeights, len(Linears)*r.Layers, formatByteSize(r.MemoryBytes))
	case "quantized":
		line("format", "quantized checkpoint (%s)", r.Quantization)
	}
	if len(r.Files) > 0 {
		var dts []string
		for dt, n := range r.DTypes {
			dts = append(dts, fmt.Sprintf("%s %d", dt, n))
		}
		sort.Strings(dts)
		line("checkpoint", "%s: %d tensors (%s)", strings.Join(r.Files, ", "), r.Tensors, strings.Join(dts, ", "))
	}
	for _, wn := range r.Warnings {
		line("warning", "%s", wn)
	}
	if r.Compatible() {
		line("compatible", "yes")
	} else {
		fmt.Fprintf(&b, "INCOMPATIBLE: %d problem(s)\n", len(r.Incompatibilities))
		for _, s := range r.Incompatibilities {
			fmt.Fprintf(&b, "  - %s\n", s)
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}

func orNone(s string) string {
	if s == "" {
		return "(none)"
	}
	return s
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

// groupDigits writes n with thousands separators: 8030261248 -> 8,030,261,248.
func groupDigits(n int64) string {
	s := fmt.Sprint(n)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	var b strings.Builder
	for i, ch := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(ch)
	}
	if neg {
		return "-" + b.String()
	}
	return b.String()
}

// HumanCount writes a count as people say it: 8.03B, 260.0K.
func HumanCount(n int64) string {
	switch {
	case n >= 1e9:
		return fmt.Sprintf("%.2fB", float64(n)/1e9)
	case n >= 1e6:
		return fmt.Sprintf("%.2fM", float64(n)/1e6)
	case n >= 1e3:
		return fmt.Sprintf("%.1fK", float64(n)/1e3)
	}
	return fmt.Sprint(n)
}

// HumanBytes is n bytes with a binary unit: "1.50 GiB", "12.00 MiB", "3.0 KiB", "12 B".
func HumanBytes(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.2f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.2f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}
