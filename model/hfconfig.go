package model

// Reading a Hugging Face config.json. The file holds many keys we do not use
// (they are ignored); the ones we use are checked for type and range, and every
// error names the file and the key. Defaults are those of transformers'
// LlamaConfig, so a config.json that omits a key means what it means to
// transformers.

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"path/filepath"
	"strconv"

	"train/internal/fileio"
)

// maxConfigBytes bounds the size of a config.json.
const maxConfigBytes = 16 << 20

// Bounds on sizes read from a model's configuration (config.json or a GGUF
// header): far above any real model (Llama 3.1 405B has hidden 16384, 126
// layers, 128 heads, intermediate 53248), far below what would make an int
// product overflow or an allocation absurd.
const (
	MaxHiddenSize       = 1 << 17
	MaxIntermediateSize = 1 << 20
	MaxLayers           = 1024
	MaxHeads            = 1 << 12
	MaxHeadDim          = 1 << 12
	MaxVocabSize        = 1 << 24
	MaxPositions        = 1 << 28 // max_position_embeddings and original_max_position_embeddings
	MaxTokenID          = 1 << 30
)

// Defaults of transformers' LlamaConfig, for a key a configuration leaves out.
const (
	DefaultMaxPositions = 2048
	DefaultRMSNormEps   = 1e-6
	DefaultRopeTheta    = 10000
)

// LoadConfig reads dir/config.json.
func LoadConfig(dir string) (Config, error) {
	path := filepath.Join(dir, "config.json")
	data, err := fileio.ReadFile(path, maxConfigBytes)
	if err != nil {
		return Config{}, err
	}
	return ParseConfig(path, data)
}

// ParseConfig decodes the contents of a config.json; name is used in errors.
//
// Sizes are bounded, but whether train supports the architecture is not decided
// here: an unsupported rope type, bias, activation or head layout is recorded so
// that Check can name every problem at once (see Config.Supported).
func ParseConfig(name string, data []byte) (Config, error) {
	var top map[string]json.RawMessage
	if err := json.Unmarshal(data, &top); err != nil {
		return Config{}, fmt.Errorf("%s: not a JSON object: %s", name, jsonErrorWhere(data, err))
	}
	if top == nil {
		return Config{}, fmt.Errorf("%s: not a JSON object (null)", name)
	}
	o := hfObject{file: name, m: top}
	c := Config{BOSTokenID: -1}
	var err error
	get := func(f func() error) {
		if err == nil {
			err = f()
		}
	}
	get(func() error {
		archs, err := o.strings("architectures")
		if len(archs) > 0 {
			c.Architecture = archs[0]
		}
		return err
	})
	get(func() (e error) { c.ModelType, e = o.str("model_type", ""); return })
	get(func() (e error) { c.HiddenSize, e = o.intRequired("hidden_size", 1, MaxHiddenSize); return })
	get(func() (e error) {
		c.IntermediateSize, e = o.intRequired("intermediate_size", 1, MaxIntermediateSize)
		return
	})
	get(func() (e error) { c.NumLayers, e = o.intRequired("num_hidden_layers", 1, MaxLayers); return })
	get(func() (e error) { c.NumHeads, e = o.intRequired("num_attention_heads", 1, MaxHeads); return })
	get(func() (e error) { c.NumKVHeads, e = o.int("num_key_value_heads", c.NumHeads, 1, MaxHeads); return })
	get(func() (e error) {
		// Without head_dim transformers uses hidden_size // num_attention_heads. When
		// that division is not exact the model cannot be built; HeadDim 0 records it
		// for Supported to explain.
		def := 0
		if c.NumHeads > 0 && c.HiddenSize%c.NumHeads == 0 {
			def = c.HiddenSize / c.NumHeads
		}
		c.HeadDim, e = o.int("head_dim", def, 1, MaxHeadDim)
		return
	})
	get(func() (e error) { c.VocabSize, e = o.intRequired("vocab_size", 1, MaxVocabSize); return })
	get(func() (e error) {
		c.MaxPositions, e = o.int("max_position_embeddings", DefaultMaxPositions, 1, MaxPositions)
		return
	})
	get(func() (e error) { c.RMSNormEps, e = o.float("rms_norm_eps", DefaultRMSNormEps, 0, 1); return })
	get(func() (e error) { c.TieEmbeddings, e = o.bool("tie_word_embeddings", false); return })
	get(func() (e error) { c.HiddenAct, e = o.str("hidden_act", "silu"); return })
	get(func() (e error) { c.AttentionBias, e = o.bool("attention_bias", false); return })
	get(func() (e error) { c.MLPBias, e = o.bool("mlp_bias", false); return })
	get(func() (e error) { c.BOSTokenID, e = o.int("bos_token_id", -1, 0, MaxTokenID); return })
	get(func() (e error) { c.EOSTokenIDs, e = o.intOrInts("eos_token_id", 0, MaxTokenID); return })
	get(func() (e error) {
		// transformers 5 writes "dtype"; older versions "torch_dtype".
		c.TorchDType, e = o.str("dtype", "")
		if e == nil && c.TorchDType == "" {
			c.TorchDType, e = o.str("torch_dtype", "")
		}
		return
	})
	get(func() (e error) { c.Rope, e = parseRope(o); return })
	if err != nil {
		return Config{}, err
	}
	return c, nil
}

// parseRope reads the rotary embedding parameters in either form transformers
// writes: rope_theta + rope_scaling (up to 4.x), or rope_parameters with
// rope_theta inside (5.x).
func parseRope(top hfObject) (Rope, error) {
	r := Rope{}
	theta, err := top.float("rope_theta", DefaultRopeTheta, 0, math.MaxFloat64)
	if err != nil {
		return r, err
	}
	sc, ok, err := top.object("rope_parameters")
	if err != nil {
		return r, err
	}
	if ok {
		// Some models nest one parameter set per attention type; Llama does not.
		for k, v := range sc.m {
			if t := bytes.TrimSpace(v); len(t) > 0 && t[0] == '{' {
				return r, fmt.Errorf("%s: rope_parameters.%s: nested per-layer-type rope parameters are not supported by Llama", top.file, k)
			}
		}
		if theta, err = sc.float("rope_theta", theta, 0, math.MaxFloat64); err != nil {
			return r, err
		}
	} else if sc, ok, err = top.object("rope_scaling"); err != nil {
		return r, err
	}
	r.Theta = theta
	r.Type = "default"
	if !ok {
		return r, nil
	}
	typ, err := sc.str("rope_type", "")
	if err == nil && typ == "" {
		typ, err = sc.str("type", "") // the name before transformers 4.45
	}
	if err != nil {
		return r, err
	}
	if typ != "" {
		r.Type = typ
	}
	if r.Type == "default" {
		return r, nil
	}
	// For llama3 every parameter is required (transformers refuses the config
	// otherwise); for other types they are recorded where present, for the report.
	need := r.Type == "llama3"
	num := func(key string, dst *float64) error {
		if !need && !sc.has(key) {
			return nil
		}
		if need && !sc.has(key) {
			return fmt.Errorf("%s: %s%s: required for rope type %s", sc.file, sc.prefix, key, r.Type)
		}
		v, err := sc.float(key, 0, 0, math.MaxFloat64)
		*dst = v
		return err
	}
	if err := num("factor", &r.Factor); err != nil {
		return r, err
	}
	if err := num("low_freq_factor", &r.LowFreqFactor); err != nil {
		return r, err
	}
	if err := num("high_freq_factor", &r.HighFreqFactor); err != nil {
		return r, err
	}
	if need || sc.has("original_max_position_embeddings") {
		if !sc.has("original_max_position_embeddings") {
			return r, fmt.Errorf("%s: %soriginal_max_position_embeddings: required for rope type %s", sc.file, sc.prefix, r.Type)
		}
		if r.OriginalMaxPositionEmbeddings, err = sc.int("original_max_position_embeddings", 0, 1, MaxPositions); err != nil {
			return r, err
		}
	}
	return r, nil
}

// hfObject is one JSON object of a config file, with typed getters whose errors
// name the file and the key path.
type hfObject struct {
	file   string
	prefix string // "rope_scaling." inside a nested object
	m      map[string]json.RawMessage
}

// has reports whether key is present and not null (transformers writes null for
// "absent" in several places, e.g. "rope_scaling": null).
func (o hfObject) has(key string) bool {
	v, ok := o.m[key]
	return ok && string(bytes.TrimSpace(v)) != "null"
}

func (o hfObject) errorf(key, format string, a ...any) error {
	return fmt.Errorf("%s: %s%s: %s", o.file, o.prefix, key, fmt.Sprintf(format, a...))
}

// number parses a JSON number literal (not a quoted one).
func (o hfObject) number(key string) (float64, string, error) {
	raw := string(bytes.TrimSpace(o.m[key]))
	if raw == "" || !(raw[0] == '-' || raw[0] >= '0' && raw[0] <= '9') {
		return 0, raw, o.errorf(key, "want a number, got %s", clipJSON([]byte(raw)))
	}
	v, err := strconv.ParseFloat(raw, 64)
	if err != nil && !errors.Is(err, strconv.ErrRange) {
		return 0, raw, o.errorf(key, "want a number, got %s", clipJSON([]byte(raw)))
	}
	return v, raw, nil
}

func (o hfObject) int(key string, def, lo, hi int) (int, error) {
	if !o.has(key) {
		return def, nil
	}
	v, raw, err := o.number(key)
	if err != nil {
		return 0, err
	}
	if v != math.Trunc(v) || v < float64(lo) || v > float64(hi) {
		return 0, o.errorf(key, "want an integer in [%d, %d], got %s", lo, hi, clipJSON([]byte(raw)))
	}
	return int(v), nil
}

func (o hfObject) intRequired(key string, lo, hi int) (int, error) {
	if !o.has(key) {
		return 0, o.errorf(key, "missing (required)")
	}
	return o.int(key, 0, lo, hi)
}

// float reads a number in (lo, hi]; lo is exclusive because every float we read
// (eps, theta, factors) must be strictly positive.
func (o hfObject) float(key string, def, lo, hi float64) (float64, error) {
	if !o.has(key) {
		return def, nil
	}
	v, raw, err := o.number(key)
	if err != nil {
		return 0, err
	}
	if !(v > lo && v <= hi) || math.IsInf(v, 0) {
		return 0, o.errorf(key, "want a finite number in (%g, %g], got %s", lo, hi, clipJSON([]byte(raw)))
	}
	return v, nil
}

func (o hfObject) str(key, def string) (string, error) {
	if !o.has(key) {
		return def, nil
	}
	var s string
	if err := json.Unmarshal(o.m[key], &s); err != nil {
		return "", o.errorf(key, "want a string, got %s", clipJSON(o.m[key]))
	}
	return s, nil
}

func (o hfObject) bool(key string, def bool) (bool, error) {
	if !o.has(key) {
		return def, nil
	}
	var b bool
	if err := json.Unmarshal(o.m[key], &b); err != nil {
		return false, o.errorf(key, "want true or false, got %s", clipJSON(o.m[key]))
	}
	return b, nil
}

func (o hfObject) strings(key string) ([]string, error) {
	if !o.has(key) {
		return nil, nil
	}
	var s []string
	if err := json.Unmarshal(o.m[key], &s); err != nil {
		return nil, o.errorf(key, "want a list of strings, got %s", clipJSON(o.m[key]))
	}
	return s, nil
}

// intOrInts reads a key that holds one integer or a list of them (eos_token_id).
func (o hfObject) intOrInts(key string, lo, hi int) ([]int, error) {
	if !o.has(key) {
		return nil, nil
	}
	raw := bytes.TrimSpace(o.m[key])
	if raw[0] != '[' {
		v, err := o.int(key, 0, lo, hi)
		if err != nil {
			return nil, err
		}
		return []int{v}, nil
	}
	var items []json.RawMessage
	if err := json.Unmarshal(raw, &items); err != nil {
		return nil, o.errorf(key, "want an integer or a list of integers, got %s", clipJSON(raw))
	}
	out := make([]int, len(items))
	for i, it := range items {
		sub := hfObject{file: o.file, prefix: o.prefix, m: map[string]json.RawMessage{fmt.Sprintf("%s[%d]", key, i): it}}
		v, err := sub.int(fmt.Sprintf("%s[%d]", key, i), 0, lo, hi)
		if err != nil {
			return nil, err
		}
		out[i] = v
	}
	return out, nil
}

// object reads a nested object; ok is false when the key is absent or null.
func (o hfObject) object(key string) (hfObject, bool, error) {
	if !o.has(key) {
		return hfObject{}, false, nil
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(o.m[key], &m); err != nil {
		return hfObject{}, false, o.errorf(key, "want an object, got %s", clipJSON(o.m[key]))
	}
	return hfObject{file: o.file, prefix: o.prefix + key + ".", m: m}, true, nil
}

// jsonErrorWhere describes a JSON decoding error with the line and column where
// the decoder gave up, so a hand-edited config.json can be fixed quickly.
func jsonErrorWhere(data []byte, err error) string {
	var se *json.SyntaxError
	var te *json.UnmarshalTypeError
	off := int64(-1)
	switch {
	case errors.As(err, &se):
		off = se.Offset - 1 // Offset counts the offending byte as read
	case errors.As(err, &te):
		off = te.Offset
	}
	if off < 0 || off > int64(len(data)) {
		return err.Error()
	}
	line := 1 + bytes.Count(data[:off], []byte("\n"))
	col := off - int64(bytes.LastIndexByte(data[:off], '\n'))
	return fmt.Sprintf("line %d column %d: %v", line, col, err)
}

// MarshalConfig encodes c as a Hugging Face config.json that transformers'
// LlamaConfig loads to the same model and ParseConfig reads back to c. The rope is
// written as rope_theta + rope_scaling, which every transformers version reads.
func MarshalConfig(c Config) ([]byte, error) {
	type ropeScaling struct {
		RopeType                      string  `json:"rope_type"`
		Factor                        float64 `json:"factor,omitempty"`
		LowFreqFactor                 float64 `json:"low_freq_factor,omitempty"`
		HighFreqFactor                float64 `json:"high_freq_factor,omitempty"`
		OriginalMaxPositionEmbeddings int     `json:"original_max_position_embeddings,omitempty"`
	}
	out := struct {
		Architectures         []string     `json:"architectures"`
		ModelType             string       `json:"model_type"`
		HiddenSize            int          `json:"hidden_size"`
		IntermediateSize      int          `json:"intermediate_size"`
		NumHiddenLayers       int          `json:"num_hidden_layers"`
		NumAttentionHeads     int          `json:"num_attention_heads"`
		NumKeyValueHeads      int          `json:"num_key_value_heads"`
		HeadDim               int          `json:"head_dim"`
		VocabSize             int          `json:"vocab_size"`
		MaxPositionEmbeddings int          `json:"max_position_embeddings"`
		RMSNormEps            float64      `json:"rms_norm_eps"`
		RopeTheta             float64      `json:"rope_theta"`
		RopeScaling           *ropeScaling `json:"rope_scaling"`
		TieWordEmbeddings     bool         `json:"tie_word_embeddings"`
		HiddenAct             string       `json:"hidden_act"`
		AttentionBias         bool         `json:"attention_bias"`
		MLPBias               bool         `json:"mlp_bias"`
		BOSTokenID            *int         `json:"bos_token_id,omitempty"`
		EOSTokenID            any          `json:"eos_token_id,omitempty"`
		TorchDType            string       `json:"torch_dtype,omitempty"`
	}{
		ModelType: c.ModelType, HiddenSize: c.HiddenSize, IntermediateSize: c.IntermediateSize,
		NumHiddenLayers: c.NumLayers, NumAttentionHeads: c.NumHeads, NumKeyValueHeads: c.NumKVHeads,
		HeadDim: c.HeadDim, VocabSize: c.VocabSize, MaxPositionEmbeddings: c.MaxPositions,
		RMSNormEps: c.RMSNormEps, RopeTheta: c.Rope.Theta, TieWordEmbeddings: c.TieEmbeddings,
		HiddenAct: c.HiddenAct, AttentionBias: c.AttentionBias, MLPBias: c.MLPBias, TorchDType: c.TorchDType,
	}
	if c.Architecture != "" {
		out.Architectures = []string{c.Architecture}
	}
	if c.Rope.Type != "" && c.Rope.Type != "default" {
		out.RopeScaling = &ropeScaling{c.Rope.Type, c.Rope.Factor, c.Rope.LowFreqFactor, c.Rope.HighFreqFactor, c.Rope.OriginalMaxPositionEmbeddings}
	}
	if c.BOSTokenID >= 0 {
		out.BOSTokenID = &c.BOSTokenID
	}
	switch len(c.EOSTokenIDs) {
	case 0:
	case 1:
		out.EOSTokenID = c.EOSTokenIDs[0]
	default:
		out.EOSTokenID = c.EOSTokenIDs
	}
	data, err := json.MarshalIndent(out, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("encoding config.json: %w", err)
	}
	return append(data, '\n'), nil
}

// clipJSON shortens raw JSON for an error message.
func clipJSON(raw []byte) string {
	const max = 80
	if len(raw) > max {
		return string(raw[:max]) + "..."
	}
	return string(raw)
}
