package quant

// Reading bitsandbytes' serialised 4-bit checkpoints: what the *-bnb-4bit Hugging
// Face repositories hold. config.json carries a quantization_config (transformers'
// BitsAndBytesConfig.to_dict); each quantized weight W (the seven projections;
// embeddings, norms and lm_head stay in bf16) is stored as these tensors, as
// Linear4bit._save_to_state_dict and QuantState.as_dict(packed=True) write them:
//
//	W                                uint8 [(n+1)/2, 1]  the packed 4-bit codes (another dtype if bnb_4bit_quant_storage says so; the bytes are the same)
//	W.absmax                         float32 [blocks], or uint8 [blocks] with double quantization
//	W.quant_map                      float32 [16]        the NF4 code book
//	W.nested_absmax                  float32 [ceil(blocks/256)]   (double quantization only)
//	W.nested_quant_map               float32 [256]       the dynamic 8-bit map (double quantization only)
//	W.quant_state.bitsandbytes__nf4  uint8 [len]         JSON: quant_type, blocksize, dtype, shape,
//	                                                     and nested_blocksize, nested_dtype, nested_offset
//
// Every tensor is checked against the others and the JSON before anything is
// built from it, and anything but 4-bit nf4 is refused by name.

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"math"
	"path/filepath"
	"strconv"
	"strings"

	"train/format/safetensors"
	"train/internal/fileio"
)

// Config is a checkpoint's quantization_config, the keys train reads. Defaults
// are transformers' BitsAndBytesConfig defaults for keys that are absent.
type Config struct {
	Method       string   `json:"quant_method"`                    // "bitsandbytes", or e.g. "gptq", "awq"
	LoadIn4Bit   bool     `json:"load_in_4bit"`                    // bitsandbytes 4-bit
	LoadIn8Bit   bool     `json:"load_in_8bit"`                    // bitsandbytes LLM.int8()
	QuantType    string   `json:"bnb_4bit_quant_type"`             // "nf4" or "fp4" (absent: fp4)
	DoubleQuant  bool     `json:"bnb_4bit_use_double_quant"`       // 8-bit absmaxes
	ComputeDType string   `json:"bnb_4bit_compute_dtype"`          // bfloat16, float16, float32 (absent: float32)
	QuantStorage string   `json:"bnb_4bit_quant_storage"`          // dtype the packed bytes are stored as (absent: uint8)
	SkipModules  []string `json:"llm_int8_skip_modules,omitempty"` // modules left unquantized
}

// maxConfigBytes bounds config.json, as model.LoadConfig does.
const maxConfigBytes = 16 << 20

// LoadConfig reads the quantization_config of dir/config.json: nil when there is
// none (a plain checkpoint).
func LoadConfig(dir string) (*Config, error) {
	path := filepath.Join(dir, "config.json")
	data, err := fileio.ReadFile(path, maxConfigBytes)
	if err != nil {
		return nil, err
	}
	return ParseConfig(path, data)
}

// ParseConfig decodes the quantization_config of a config.json (name is used in
// errors): nil when the key is absent or null. It decodes whatever method the
// config names; whether train supports it is Problems' and Supported's to say.
func ParseConfig(name string, configJSON []byte) (*Config, error) {
	var top map[string]json.RawMessage
	if err := json.Unmarshal(configJSON, &top); err != nil {
		return nil, fmt.Errorf("%s: not a JSON object: %w", name, err)
	}
	raw, ok := top["quantization_config"]
	if !ok || string(raw) == "null" {
		return nil, nil
	}
	var q map[string]json.RawMessage
	if err := json.Unmarshal(raw, &q); err != nil || q == nil {
		return nil, fmt.Errorf("%s: quantization_config is not a JSON object", name)
	}
	var errs []error
	get := func(key string, dst any) {
		v, ok := q[key]
		if !ok || string(v) == "null" {
			return
		}
		if err := json.Unmarshal(v, dst); err != nil {
			errs = append(errs, fmt.Errorf("quantization_config.%s is %s: want a %s", key, clip(v), kind(dst)))
		}
	}
	c := &Config{QuantType: "fp4", ComputeDType: "float32", QuantStorage: "uint8"}
	get("quant_method", &c.Method)
	// Older transformers wrote the flags with a leading underscore too, or only there.
	get("_load_in_4bit", &c.LoadIn4Bit)
	get("load_in_4bit", &c.LoadIn4Bit)
	get("_load_in_8bit", &c.LoadIn8Bit)
	get("load_in_8bit", &c.LoadIn8Bit)
	get("bnb_4bit_quant_type", &c.QuantType)
	get("bnb_4bit_use_double_quant", &c.DoubleQuant)
	get("bnb_4bit_compute_dtype", &c.ComputeDType)
	get("bnb_4bit_quant_storage", &c.QuantStorage)
	get("llm_int8_skip_modules", &c.SkipModules)
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	if c.Method == "" {
		_, has4 := q["load_in_4bit"]
		_, has8 := q["load_in_8bit"]
		if !has4 && !has8 {
			return nil, fmt.Errorf("%s: quantization_config names no quant_method", name)
		}
		c.Method = "bitsandbytes" // transformers before quant_method existed
	}
	c.ComputeDType = strings.TrimPrefix(c.ComputeDType, "torch.")
	c.QuantStorage = strings.TrimPrefix(c.QuantStorage, "torch.")
	return c, nil
}

func clip(raw []byte) string {
	if len(raw) > 40 {
		return string(raw[:40]) + "..."
	}
	return string(raw)
}

func kind(dst any) string {
	switch dst.(type) {
	case *bool:
		return "boolean"
	case *[]string:
		return "list of strings"
	}
	return "string"
}

// storageDTypes maps each bnb_4bit_quant_storage train reads to the safetensors
// dtype of the packed tensor. The packed bytes are the same whatever the
// storage dtype (bitsandbytes views the uint8 buffer as that dtype), so all of
// them read alike.
var storageDTypes = map[string]safetensors.DType{
	"uint8": safetensors.U8, "int8": safetensors.I8,
	"bfloat16": safetensors.BF16, "float16": safetensors.F16, "float32": safetensors.F32,
}

// Problems lists, one line each, every property of c that train does not
// support; none for bitsandbytes 4-bit nf4.
func (c *Config) Problems() []string {
	if c.Method != "bitsandbytes" {
		return []string{fmt.Sprintf("quantization_config.quant_method %q is not supported; supported: bitsandbytes 4-bit nf4 (the *-bnb-4bit checkpoints)", c.Method)}
	}
	var out []string
	switch {
	case c.LoadIn8Bit:
		out = append(out, "bitsandbytes 8-bit (load_in_8bit, LLM.int8()) is not supported; supported: 4-bit nf4 (load_in_4bit)")
	case !c.LoadIn4Bit:
		out = append(out, "quantization_config is bitsandbytes but neither load_in_4bit nor load_in_8bit is true")
	}
	if c.LoadIn4Bit && c.QuantType != "nf4" {
		out = append(out, fmt.Sprintf("bnb_4bit_quant_type %q is not supported; supported: nf4", c.QuantType))
	}
	switch c.ComputeDType {
	case "bfloat16", "float16", "float32":
	default:
		out = append(out, fmt.Sprintf("bnb_4bit_compute_dtype %q is not supported; supported: bfloat16, float16, float32", c.ComputeDType))
	}
	if _, ok := storageDTypes[c.QuantStorage]; !ok {
		out = append(out, fmt.Sprintf("bnb_4bit_quant_storage %q is not supported; supported: uint8, int8, bfloat16, float16, float32", c.QuantStorage))
	}
	return out
}

// Supported returns nil when train reads checkpoints quantized as c says, and
// otherwise an error naming every problem.
func (c *Config) Supported() error {
	if p := c.Problems(); len(p) > 0 {
		return fmt.Errorf("quantization not supported: %s", strings.Join(p, "; "))
	}
	return nil
}

// String describes c in a few words: "bitsandbytes 4-bit nf4, double quant,
// compute bfloat16".
func (c *Config) String() string {
	if c.Method != "bitsandbytes" {
		return c.Method
	}
	if !c.LoadIn4Bit {
		if c.LoadIn8Bit {
			return "bitsandbytes 8-bit"
		}
		return "bitsandbytes"
	}
	s := "bitsandbytes 4-bit " + c.QuantType
	if c.DoubleQuant {
		s += ", double quant"
	}
	s += ", compute " + c.ComputeDType
	if c.QuantStorage != "uint8" {
		s += ", storage " + c.QuantStorage
	}
	return s
}

// QuantState is the JSON blob of W.quant_state.bitsandbytes__nf4: the
// non-tensor part of bitsandbytes' QuantState.as_dict.
type QuantState struct {
	QuantType       string  // "nf4"
	BlockSize       int     // weights per absmax
	DType           string  // the weight's dtype before quantization: bfloat16, float16 or float32
	Shape           []int   // the weight's shape
	Nested          bool    // double quantization: the fields below are set
	NestedBlockSize int     // absmaxes per absmax2
	NestedDType     string  // "float32"
	NestedOffset    float32 // the mean subtracted from the absmaxes
}

// Companion tensor suffixes of a quantized weight W.
const (
	quantStateNF4 = ".quant_state.bitsandbytes__nf4"
	quantStateFP4 = ".quant_state.bitsandbytes__fp4"
)

var companionSuffixes = []string{".absmax", ".quant_map", ".nested_absmax", ".nested_quant_map", quantStateNF4, quantStateFP4}

// maxQuantState bounds the JSON blob (a real one is about 200 bytes).
const maxQuantState = 64 << 10

// ParseQuantState decodes and checks a quant_state JSON blob; name (the
// weight's) is used in errors. Keys bitsandbytes does not write are refused, as
// its QuantState.from_dict refuses them.
func ParseQuantState(name string, data []byte) (*QuantState, error) {
	fail := func(format string, a ...any) (*QuantState, error) {
		return nil, fmt.Errorf("%s%s: %s", name, quantStateNF4, fmt.Sprintf(format, a...))
	}
	if len(data) > maxQuantState {
		return fail("%d bytes, more than the %d a quant state can hold", len(data), maxQuantState)
	}
	var raw struct {
		QuantType       *string  `json:"quant_type"`
		BlockSize       *int     `json:"blocksize"`
		DType           *string  `json:"dtype"`
		Shape           *[]int64 `json:"shape"`
		NestedBlockSize *int     `json:"nested_blocksize"`
		NestedDType     *string  `json:"nested_dtype"`
		NestedOffset    *float64 `json:"nested_offset"`
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&raw); err != nil {
		return fail("not bitsandbytes' quant state JSON: %v", err)
	}
	if dec.More() {
		return fail("trailing data after the JSON object")
	}
	switch {
	case raw.QuantType == nil:
		return fail("no quant_type")
	case *raw.QuantType != "nf4":
		return fail("quant_type %q is not supported; supported: nf4", *raw.QuantType)
	case raw.BlockSize == nil:
		return fail("no blocksize")
	case raw.DType == nil:
		return fail("no dtype")
	case raw.Shape == nil:
		return fail("no shape")
	}
	qs := &QuantState{QuantType: *raw.QuantType, BlockSize: *raw.BlockSize, DType: *raw.DType}
	if err := checkBlockSize(qs.BlockSize); err != nil {
		return fail("blocksize: %v", err)
	}
	switch qs.DType {
	case "bfloat16", "float16", "float32":
	default:
		return fail("dtype %q is not supported; supported: bfloat16, float16, float32", qs.DType)
	}
	if len(*raw.Shape) > 8 {
		return fail("shape has %d dimensions", len(*raw.Shape))
	}
	for _, d := range *raw.Shape {
		if d < 0 || d > maxWeights {
			return fail("shape %v has an invalid dimension %d", *raw.Shape, d)
		}
		qs.Shape = append(qs.Shape, int(d))
	}
	if _, err := shapeLen(qs.Shape); err != nil {
		return fail("%v", err)
	}
	nested := 0
	for _, set := range []bool{raw.NestedBlockSize != nil, raw.NestedDType != nil, raw.NestedOffset != nil} {
		if set {
			nested++
		}
	}
	switch nested {
	case 0:
		return qs, nil
	case 3:
	default:
		return fail("nested_blocksize, nested_dtype and nested_offset must come together (double quantization)")
	}
	qs.Nested, qs.NestedBlockSize, qs.NestedDType = true, *raw.NestedBlockSize, *raw.NestedDType
	if err := checkBlockSize(qs.NestedBlockSize); err != nil {
		return fail("nested_blocksize: %v", err)
	}
	if qs.NestedDType != "float32" {
		return fail("nested_dtype %q is not supported; supported: float32", qs.NestedDType)
	}
	off := *raw.NestedOffset
	if math.IsNaN(off) || math.IsInf(off, 0) || math.Abs(off) > math.MaxFloat32 {
		return fail("nested_offset %v is not a finite float32", off)
	}
	qs.NestedOffset = float32(off) // as from_dict's torch.tensor(float(...)) rounds it
	return qs, nil
}

// Source is where a quantized weight's tensors are read from: one safetensors
// file (*safetensors.File), or every shard of a model directory.
type Source interface {
	Tensor(name string) (safetensors.TensorInfo, bool)
	ReadRaw(name string) ([]byte, error)
}

// IsQuantized reports whether the weight name is stored quantized in src: it
// has a bitsandbytes quant_state companion (nf4 or fp4).
func IsQuantized(src Source, name string) bool {
	_, nf4 := src.Tensor(name + quantStateNF4)
	_, fp4 := src.Tensor(name + quantStateFP4)
	return nf4 || fp4
}

// CompanionOf returns the weight a companion tensor belongs to
// ("x.weight.absmax" -> "x.weight"), if name is one.
func CompanionOf(name string) (weight string, ok bool) {
	for _, s := range companionSuffixes {
		if w, ok := strings.CutSuffix(name, s); ok {
			return w, true
		}
	}
	return "", false
}

// ReadQuantState reads and parses the quant state of the weight name.
func ReadQuantState(src Source, name string) (*QuantState, error) {
	if _, ok := src.Tensor(name + quantStateFP4); ok {
		return nil, fmt.Errorf("%s is quantized as fp4 (%s%s); supported: nf4", name, name, quantStateFP4)
	}
	if _, ok := src.Tensor(name + quantStateNF4); !ok {
		return nil, fmt.Errorf("%s is not stored quantized: there is no %s%s", name, name, quantStateNF4)
	}
	data, err := readRawBounded(src, name+quantStateNF4, maxQuantState)
	if err != nil {
		return nil, err
	}
	return ParseQuantState(name, data)
}

// ReadWeight reads the bitsandbytes 4-bit weight name from src, a checkpoint
// whose config.json's quantization_config is cfg: the packed codes, the scales
// (float32 absmaxes, or the double-quantized ones with their map and offset)
// and the shape, each tensor checked against the quant state. It refuses, by
// name, a config train does not support (nil cfg: not a quantized checkpoint),
// fp4, a quant_map that is not the NF4 code book, and any size that does not fit.
func ReadWeight(cfg *Config, src Source, name string) (*NF4, error) {
	if cfg == nil {
		return nil, fmt.Errorf("%s: config.json has no quantization_config, so no weight is stored quantized", name)
	}
	if err := cfg.Supported(); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	qs, err := ReadQuantState(src, name)
	if err != nil {
		return nil, err
	}
	n, _ := shapeLen(qs.Shape)
	blocks := ceilDiv(n, qs.BlockSize)
	q := &NF4{Shape: qs.Shape, BlockSize: qs.BlockSize}

	// The packed codes: (n+1)/2 bytes in whatever dtype bnb_4bit_quant_storage names.
	if q.Packed, err = readTensor(src, name, storageDTypes[cfg.QuantStorage], int64((n+1)/2)); err != nil {
		return nil, err
	}
	code, err := readF32(src, name+".quant_map", 16)
	if err != nil {
		return nil, err
	}
	for k, v := range code {
		if math.Float32bits(v) != math.Float32bits(NF4Code[k]) {
			return nil, fmt.Errorf("%s.quant_map[%d] = %v, but NF4's code book has %v: not bitsandbytes' nf4", name, k, v, NF4Code[k])
		}
	}
	if !qs.Nested {
		if _, ok := src.Tensor(name + ".nested_absmax"); ok {
			return nil, fmt.Errorf("%s has a nested_absmax but its quant state has no nested_offset", name)
		}
		if q.Absmax, err = readF32(src, name+".absmax", blocks); err != nil {
			return nil, err
		}
	} else {
		nq := &Nested{BlockSize: qs.NestedBlockSize, Offset: qs.NestedOffset}
		if nq.Codes, err = readTensor(src, name+".absmax", safetensors.U8, int64(blocks)); err != nil {
			return nil, err
		}
		if nq.Absmax, err = readF32(src, name+".nested_absmax", ceilDiv(blocks, nq.BlockSize)); err != nil {
			return nil, err
		}
		m, err := readF32(src, name+".nested_quant_map", 256)
		if err != nil {
			return nil, err
		}
		copy(nq.Map[:], m)
		q.Nested = nq
	}
	if err := q.Validate(); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return q, nil
}

// readTensor reads a tensor that must have dtype dt and hold exactly size bytes.
func readTensor(src Source, name string, dt safetensors.DType, size int64) ([]byte, error) {
	t, ok := src.Tensor(name)
	if !ok {
		return nil, fmt.Errorf("missing tensor %s", name)
	}
	if t.DType != dt {
		return nil, fmt.Errorf("tensor %s has dtype %s, want %s", name, t.DType, dt)
	}
	if got := t.End - t.Begin; got != size {
		return nil, fmt.Errorf("tensor %s %v holds %d bytes, want %d", name, t.Shape, got, size)
	}
	return src.ReadRaw(name)
}

// readF32 reads a float32 tensor of exactly n elements.
func readF32(src Source, name string, n int) ([]float32, error) {
	b, err := readTensor(src, name, safetensors.F32, 4*int64(n))
	if err != nil {
		return nil, err
	}
	v := make([]float32, n)
	for i := range v {
		v[i] = math.Float32frombits(binary.LittleEndian.Uint32(b[4*i:]))
	}
	return v, nil
}

// readRawBounded reads a tensor of at most limit bytes.
func readRawBounded(src Source, name string, limit int64) ([]byte, error) {
	t, ok := src.Tensor(name)
	if !ok {
		return nil, fmt.Errorf("missing tensor %s: %w", name, fs.ErrNotExist)
	}
	if size := t.End - t.Begin; size > limit {
		return nil, fmt.Errorf("tensor %s holds %d bytes, more than %d", name, size, limit)
	}
	return src.ReadRaw(name)
}

// StoredBytes is what the weight name takes in memory as stored quantized in
// src: its packed codes and scales (the absmaxes, or their 8-bit codes with the
// nested absmaxes and map), from the tensors' headers alone.
func StoredBytes(src Source, name string) int64 {
	var n int64
	for _, s := range []string{"", ".absmax", ".nested_absmax", ".nested_quant_map"} {
		if t, ok := src.Tensor(name + s); ok {
			n += t.End - t.Begin
		}
	}
	return n
}

// AddBnb adds q to w under the weight name as bitsandbytes serialises it (the
// layout above, uint8 storage, the quant state JSON as Python's json.dumps
// writes it): what ReadWeight reads back. dtype is the weight's dtype before
// quantization (bfloat16, float16 or float32).
func AddBnb(w *safetensors.Writer, name string, q *NF4, dtype string) error {
	if err := q.Validate(); err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	dims := make([]string, len(q.Shape))
	for i, d := range q.Shape {
		dims[i] = strconv.Itoa(d)
	}
	state := fmt.Sprintf(`{"quant_type": "nf4", "blocksize": %d, "dtype": %q, "shape": [%s]`, q.BlockSize, dtype, strings.Join(dims, ", "))
	add := func(suffix string, dt safetensors.DType, shape []int, raw []byte) error {
		return w.AddRaw(name+suffix, dt, shape, raw)
	}
	errs := []error{
		add("", safetensors.U8, []int{len(q.Packed), 1}, q.Packed),
		add(".quant_map", safetensors.F32, []int{16}, f32LE(NF4Code[:])),
	}
	if nq := q.Nested; nq != nil {
		state += fmt.Sprintf(`, "nested_blocksize": %d, "nested_dtype": "float32", "nested_offset": %s`,
			nq.BlockSize, pythonFloat(float64(nq.Offset)))
		errs = append(errs,
			add(".absmax", safetensors.U8, []int{len(nq.Codes)}, nq.Codes),
			add(".nested_absmax", safetensors.F32, []int{len(nq.Absmax)}, f32LE(nq.Absmax)),
			add(".nested_quant_map", safetensors.F32, []int{256}, f32LE(nq.Map[:])))
	} else {
		errs = append(errs, add(".absmax", safetensors.F32, []int{len(q.Absmax)}, f32LE(q.Absmax)))
	}
	state += "}"
	errs = append(errs, add(quantStateNF4, safetensors.U8, []int{len(state)}, []byte(state)))
	return errors.Join(errs...)
}

func f32LE(v []float32) []byte {
	b := make([]byte, 0, 4*len(v))
	for _, x := range v {
		b = binary.LittleEndian.AppendUint32(b, math.Float32bits(x))
	}
	return b
}

// pythonFloat formats f as Python's repr does: the shortest decimal that reads
// back as f, in exponent form below 1e-4 and from 1e16 on, with a ".0" on
// integral values.
func pythonFloat(f float64) string {
	if a := math.Abs(f); a != 0 && (a < 1e-4 || a >= 1e16) {
		s := strconv.FormatFloat(f, 'e', -1, 64)
		// Python writes at least two exponent digits, as Go does: 1e-05.
		return s
	}
	s := strconv.FormatFloat(f, 'f', -1, 64)
	if !strings.ContainsAny(s, ".") {
		s += ".0"
	}
	return s
}
