package quant

import (
	"bytes"
	"encoding/json"
	"math"
	"math/rand/v2"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"train/format/safetensors"
	"train/internal/testcheck"
)

// fixtureCheckpoints are the script's two tiny Llama checkpoints, with and
// without double quantization.
var fixtureCheckpoints = map[string]Options{"bnb-4bit-dq": {DoubleQuant: true}, "bnb-4bit": {}}

// TestFixtureCheckpoint reads the pre-quantized checkpoints the script wrote in
// bitsandbytes' serialised layout: every projection's dequantized weights equal
// the script's (SHA-256 of the float32 and bf16 values), quantizing the same
// generated weights here gives the same stored codes and scales, and AddBnb
// writes every companion tensor byte for byte as the script did.
func TestFixtureCheckpoint(t *testing.T) {
	e := readExpected(t)
	for dir, opt := range fixtureCheckpoints {
		t.Run(dir, func(t *testing.T) {
			path := filepath.Join(needFixture(t, dir), "model.safetensors")
			cfg, err := LoadConfig(filepath.Join(fixtureDir, dir))
			if err != nil {
				t.Fatal(err)
			}
			if cfg == nil || cfg.DoubleQuant != opt.DoubleQuant || cfg.Supported() != nil || cfg.String() == "" {
				t.Fatalf("config: %+v", cfg)
			}
			f, err := safetensors.Open(path)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			want := e.Ckpts[dir]
			if len(want.Weights) != 7 {
				t.Fatalf("expected.json lists %d weights for %s", len(want.Weights), dir)
			}
			for name, ww := range want.Weights {
				if !IsQuantized(f, name) {
					t.Fatalf("%s is not stored quantized", name)
				}
				q, err := ReadWeight(cfg, f, name)
				if err != nil {
					t.Fatal(err)
				}
				if !slices.Equal(q.Shape, ww.Shape) || (q.Nested != nil) != opt.DoubleQuant {
					t.Fatalf("%s: shape %v nested %v", name, q.Shape, q.Nested != nil)
				}
				f32 := make([]float32, q.Len())
				bf := make([]uint16, q.Len())
				must(t, q.Dequantize(f32))
				must(t, q.DequantizeBF16(bf))
				if digest(f32LE(f32)) != ww.DequantF32 || digest(u16Bytes(bf)) != ww.DequantBF16 {
					t.Errorf("%s: dequantized weights differ from the script's", name)
				}
				// Quantizing the same weights here stores the same bytes.
				mine, err := Quantize(name, genWeights(ww.Seed, q.Len(), true), ww.Shape, opt)
				if err != nil {
					t.Fatal(err)
				}
				g := memSource(t, func(sw *safetensors.Writer) { must(t, AddBnb(sw, name, mine, "bfloat16")) })
				for _, ti := range g.Tensors() {
					theirs, ok := f.Tensor(ti.Name)
					if !ok || theirs.DType != ti.DType || !slices.Equal(theirs.Shape, ti.Shape) {
						t.Errorf("%s: the script wrote %+v, AddBnb %+v", ti.Name, theirs, ti)
						continue
					}
					a, _ := g.ReadRaw(ti.Name)
					b, _ := f.ReadRaw(ti.Name)
					sameBytes(t, dir+"/"+ti.Name, a, b)
				}
			}
		})
	}
}

// memSource is a Source over tensors written in memory, for the error cases.
func memSource(t *testing.T, add func(w *safetensors.Writer)) *safetensors.File {
	t.Helper()
	var w safetensors.Writer
	add(&w)
	var buf bytes.Buffer
	if _, err := w.WriteTo(&buf); err != nil {
		t.Fatal(err)
	}
	f, err := safetensors.Parse("mem.safetensors", bytes.NewReader(buf.Bytes()), int64(buf.Len()))
	if err != nil {
		t.Fatal(err)
	}
	return f
}

var nf4Config = &Config{Method: "bitsandbytes", LoadIn4Bit: true, QuantType: "nf4", DoubleQuant: true, ComputeDType: "bfloat16", QuantStorage: "uint8"}

func TestReadWeightRoundTrip(t *testing.T) {
	r := rand.New(rand.NewPCG(9, 9))
	for _, dq := range []bool{false, true} {
		w := normalWeights(r, 96*130+1, 0.02) // odd, 196 blocks
		q, err := Quantize("w", w, []int{96*130 + 1}, Options{DoubleQuant: dq})
		must(t, err)
		src := memSource(t, func(sw *safetensors.Writer) { must(t, AddBnb(sw, "m.weight", q, "float16")) })
		got, err := ReadWeight(nf4Config, src, "m.weight")
		must(t, err)
		a, b := make([]uint16, q.Len()), make([]uint16, q.Len())
		must(t, q.DequantizeBF16(a))
		must(t, got.DequantizeBF16(b))
		if !slices.Equal(a, b) {
			t.Fatalf("dq %v: dequantized weights differ after a round trip", dq)
		}
		qs, err := ReadQuantState(src, "m.weight")
		must(t, err)
		if qs.DType != "float16" || qs.Nested != dq || qs.BlockSize != 64 {
			t.Errorf("quant state %+v", qs)
		}
		if dq && (qs.NestedOffset != q.Nested.Offset || qs.NestedBlockSize != 256) {
			t.Errorf("nested quant state %+v, offset %v", qs, q.Nested.Offset)
		}
		if StoredBytes(src, "m.weight") != q.Bytes() {
			t.Errorf("StoredBytes %d, NF4.Bytes %d", StoredBytes(src, "m.weight"), q.Bytes())
		}
		for _, s := range companionSuffixes[:4] {
			if w, ok := CompanionOf("m.weight" + s); !ok || w != "m.weight" {
				t.Errorf("CompanionOf(m.weight%s) = %q, %v", s, w, ok)
			}
		}
	}
	if _, ok := CompanionOf("model.norm.weight"); ok {
		t.Error("a plain weight is no companion")
	}
}

// TestReadWeightRefuses breaks one thing at a time in a good weight's tensors.
func TestReadWeightRefuses(t *testing.T) {
	w := normalWeights(rand.New(rand.NewPCG(1, 3)), 64*300, 0.02)
	q, err := Quantize("w", w, []int{64 * 3, 100}, Options{DoubleQuant: true})
	must(t, err)
	goodSrc := memSource(t, func(sw *safetensors.Writer) { must(t, AddBnb(sw, "x.weight", q, "bfloat16")) })
	// edit rebuilds the tensors with one of them replaced (nil data: dropped).
	edit := func(suffix string, dt safetensors.DType, shape []int, data []byte) *safetensors.File {
		return memSource(t, func(sw *safetensors.Writer) {
			for _, ti := range goodSrc.Tensors() {
				raw, _ := goodSrc.ReadRaw(ti.Name)
				if ti.Name == "x.weight"+suffix {
					if data == nil {
						continue
					}
					must(t, sw.AddRaw(ti.Name, dt, shape, data))
					continue
				}
				must(t, sw.AddRaw(ti.Name, ti.DType, ti.Shape, raw))
			}
			if _, ok := goodSrc.Tensor("x.weight" + suffix); !ok && data != nil {
				must(t, sw.AddRaw("x.weight"+suffix, dt, shape, data))
			}
		})
	}
	state := func(s string) *safetensors.File { return edit(quantStateNF4, safetensors.U8, []int{len(s)}, []byte(s)) }
	badMap := f32LE(NF4Code[:])
	badMap[20] ^= 1
	cases := []struct {
		name string
		cfg  *Config
		src  *safetensors.File
		want string
	}{
		{"no config", nil, goodSrc, "x.weight: config.json has no quantization_config"},
		{"fp4 config", &Config{Method: "bitsandbytes", LoadIn4Bit: true, QuantType: "fp4", ComputeDType: "bfloat16", QuantStorage: "uint8"}, goodSrc,
			`bnb_4bit_quant_type "fp4" is not supported; supported: nf4`},
		{"gptq config", &Config{Method: "gptq"}, goodSrc, `quantization_config.quant_method "gptq" is not supported`},
		{"not quantized", nf4Config, edit(quantStateNF4, "", nil, nil), "x.weight is not stored quantized: there is no x.weight.quant_state.bitsandbytes__nf4"},
		{"fp4 state", nf4Config, edit(quantStateFP4, safetensors.U8, []int{2}, []byte("{}")), "x.weight is quantized as fp4"},
		{"missing absmax", nf4Config, edit(".absmax", "", nil, nil), "missing tensor x.weight.absmax"},
		{"float absmax with nested state", nf4Config, edit(".absmax", safetensors.F32, []int{300}, make([]byte, 1200)),
			"tensor x.weight.absmax has dtype F32, want U8"},
		{"short packed", nf4Config, edit("", safetensors.U8, []int{100, 1}, make([]byte, 100)), "tensor x.weight [100 1] holds 100 bytes, want 9600"},
		{"bf16 packed under uint8 storage", nf4Config, edit("", safetensors.BF16, []int{4800, 1}, make([]byte, 9600)), "tensor x.weight has dtype BF16, want U8"},
		{"wrong quant_map", nf4Config, edit(".quant_map", safetensors.F32, []int{16}, badMap), "x.weight.quant_map[5] = "},
		{"short nested map", nf4Config, edit(".nested_quant_map", safetensors.F32, []int{255}, make([]byte, 1020)),
			"tensor x.weight.nested_quant_map [255] holds 1020 bytes, want 1024"},
		{"NaN nested absmax", nf4Config, edit(".nested_absmax", safetensors.F32, []int{2}, f32LE([]float32{1, float32(math.NaN())})),
			"x.weight: nested absmax[1] is NaN"},
		{"state shape disagrees", nf4Config, state(`{"quant_type": "nf4", "blocksize": 64, "dtype": "bfloat16", "shape": [10, 10], "nested_blocksize": 256, "nested_dtype": "float32", "nested_offset": 0.01}`),
			"tensor x.weight [9600 1] holds 9600 bytes, want 50"},
		{"state fp4", nf4Config, state(`{"quant_type": "fp4", "blocksize": 64, "dtype": "bfloat16", "shape": [192, 100]}`),
			`quant_type "fp4" is not supported; supported: nf4`},
		{"state unknown key", nf4Config, state(`{"quant_type": "nf4", "blocksize": 64, "dtype": "bfloat16", "shape": [192, 100], "zero_point": 3}`),
			`unknown field "zero_point"`},
		{"state half nested", nf4Config, state(`{"quant_type": "nf4", "blocksize": 64, "dtype": "bfloat16", "shape": [192, 100], "nested_offset": 0.1}`),
			"nested_blocksize, nested_dtype and nested_offset must come together"},
		{"state bad blocksize", nf4Config, state(`{"quant_type": "nf4", "blocksize": 48, "dtype": "bfloat16", "shape": [192, 100]}`),
			"blocksize: block size 48 is not one of bitsandbytes'"},
		{"state int8 dtype", nf4Config, state(`{"quant_type": "nf4", "blocksize": 64, "dtype": "int8", "shape": [192, 100]}`),
			`dtype "int8" is not supported`},
		{"nested absmax without nested state", nf4Config, state(`{"quant_type": "nf4", "blocksize": 64, "dtype": "bfloat16", "shape": [192, 100]}`),
			"x.weight has a nested_absmax but its quant state has no nested_offset"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := ReadWeight(c.cfg, c.src, "x.weight")
			testcheck.ErrorContains(t, err, c.want)
		})
	}
	if _, err := ReadWeight(nf4Config, goodSrc, "x.weight"); err != nil {
		t.Fatalf("the unedited weight: %v", err)
	}
}

func TestParseConfig(t *testing.T) {
	parse := func(q string) (*Config, error) {
		return ParseConfig("config.json", []byte(`{"architectures": ["LlamaForCausalLM"], "quantization_config": `+q+`}`))
	}
	if c, err := ParseConfig("config.json", []byte(`{"hidden_size": 8}`)); c != nil || err != nil {
		t.Errorf("no quantization_config: %+v, %v", c, err)
	}
	if c, err := parse("null"); c != nil || err != nil {
		t.Errorf("null quantization_config: %+v, %v", c, err)
	}
	c, err := parse(`{"load_in_4bit": true, "bnb_4bit_quant_type": "nf4", "bnb_4bit_compute_dtype": "torch.bfloat16", "llm_int8_skip_modules": ["lm_head"]}`)
	if err != nil || c.Method != "bitsandbytes" || c.ComputeDType != "bfloat16" || c.QuantStorage != "uint8" || c.DoubleQuant ||
		!slices.Equal(c.SkipModules, []string{"lm_head"}) || c.Supported() != nil {
		t.Errorf("old-style 4-bit config: %+v, %v", c, err)
	}
	if got := c.String(); got != "bitsandbytes 4-bit nf4, compute bfloat16" {
		t.Errorf("String() = %q", got)
	}
	problems := []struct{ q, want string }{
		{`{"quant_method": "gptq", "bits": 4}`, `quantization_config.quant_method "gptq" is not supported; supported: bitsandbytes 4-bit nf4`},
		{`{"quant_method": "awq"}`, `quant_method "awq" is not supported`},
		{`{"quant_method": "bitsandbytes", "load_in_8bit": true}`, "bitsandbytes 8-bit (load_in_8bit, LLM.int8()) is not supported"},
		{`{"quant_method": "bitsandbytes", "load_in_4bit": true}`, `bnb_4bit_quant_type "fp4" is not supported; supported: nf4`},
		{`{"quant_method": "bitsandbytes", "load_in_4bit": true, "bnb_4bit_quant_type": "nf4", "bnb_4bit_compute_dtype": "float64"}`,
			`bnb_4bit_compute_dtype "float64" is not supported`},
		{`{"quant_method": "bitsandbytes", "load_in_4bit": true, "bnb_4bit_quant_type": "nf4", "bnb_4bit_quant_storage": "int32"}`,
			`bnb_4bit_quant_storage "int32" is not supported`},
		{`{"quant_method": "bitsandbytes"}`, "neither load_in_4bit nor load_in_8bit is true"},
	}
	for _, p := range problems {
		c, err := parse(p.q)
		if err != nil {
			t.Fatalf("%s: %v", p.q, err)
		}
		testcheck.ErrorContains(t, c.Supported(), p.want)
	}
	malformed := []struct{ q, want string }{
		{`[1]`, "quantization_config is not a JSON object"},
		{`{"bits": 4}`, "quantization_config names no quant_method"},
		{`{"quant_method": "bitsandbytes", "load_in_4bit": "yes"}`, `quantization_config.load_in_4bit is "yes": want a boolean`},
		{`{"quant_method": "bitsandbytes", "llm_int8_skip_modules": "lm_head"}`, "want a list of strings"},
		{`{"quant_method": 4}`, "quantization_config.quant_method is 4: want a string"},
	}
	for _, m := range malformed {
		_, err := parse(m.q)
		testcheck.ErrorContains(t, err, m.want)
	}
	_, err = ParseConfig("config.json", []byte(`{"quantization_config": `))
	testcheck.ErrorContains(t, err, "config.json: not a JSON object")
}

func TestPythonFloat(t *testing.T) {
	for f, want := range map[float64]string{0.01: "0.01", 1: "1.0", 1e-05: "1e-05", 1.5e-7: "1.5e-07", 0.0123456789: "0.0123456789", 1e16: "1e+16", 0: "0.0"} {
		if got := pythonFloat(f); got != want {
			t.Errorf("pythonFloat(%v) = %q, Python writes %q", f, got, want)
		}
	}
}

// FuzzQuantState feeds arbitrary bytes to the quant state parser: it must never
// panic, and what it accepts must be a state the rest of the reader can trust.
func FuzzQuantState(f *testing.F) {
	f.Add([]byte(`{"quant_type": "nf4", "blocksize": 64, "dtype": "bfloat16", "shape": [4096, 4096], "nested_blocksize": 256, "nested_dtype": "float32", "nested_offset": 0.0123}`))
	f.Add([]byte(`{"quant_type": "nf4", "blocksize": 64, "dtype": "float16", "shape": [3]}`))
	f.Add([]byte(`{"quant_type": "fp4", "blocksize": 64, "dtype": "bfloat16", "shape": null}`))
	f.Add([]byte(`{"quant_type": "nf4", "blocksize": 4096, "dtype": "float32", "shape": [1099511627776, 2]}`))
	f.Add([]byte(`{"quant_type": "nf4", "blocksize": 64, "dtype": "float32", "shape": [], "nested_blocksize": 256, "nested_dtype": "float32", "nested_offset": 1e39}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		qs, err := ParseQuantState("w", data)
		if err != nil {
			if qs != nil || !strings.HasPrefix(err.Error(), "w.quant_state.bitsandbytes__nf4: ") {
				t.Fatalf("error %q with state %+v", err, qs)
			}
			return
		}
		if qs.QuantType != "nf4" || checkBlockSize(qs.BlockSize) != nil {
			t.Fatalf("accepted %+v", qs)
		}
		n, err := shapeLen(qs.Shape)
		if err != nil || n < 0 || n > maxWeights {
			t.Fatalf("accepted shape %v (%d, %v)", qs.Shape, n, err)
		}
		if qs.Nested && (checkBlockSize(qs.NestedBlockSize) != nil || math.IsInf(float64(qs.NestedOffset), 0) || math.IsNaN(float64(qs.NestedOffset))) {
			t.Fatalf("accepted nested %+v", qs)
		}
		if _, err := json.Marshal(qs); err != nil {
			t.Fatal(err)
		}
	})
}
