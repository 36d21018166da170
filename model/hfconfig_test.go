package model

import (
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"testing"

	"train/internal/testcheck"
)

// storiesDir is the real pretrained model in ../shared; tests that need it skip
// when a fresh clone has no ../shared.
const storiesDir = "../../shared/models/stories260K"

func needStories(t *testing.T) {
	t.Helper()
	if _, err := os.Stat(filepath.Join(storiesDir, "model.safetensors")); err != nil {
		t.Skipf("skipping: %s not found (../shared is absent in this checkout): %v", storiesDir, err)
	}
}

// llama31Config is Meta-Llama-3.1-8B-Instruct's config.json as transformers 4.43 writes it.
const llama31Config = `{
  "architectures": ["LlamaForCausalLM"],
  "attention_bias": false,
  "attention_dropout": 0.0,
  "bos_token_id": 128000,
  "eos_token_id": [128001, 128008, 128009],
  "hidden_act": "silu",
  "hidden_size": 4096,
  "initializer_range": 0.02,
  "intermediate_size": 14336,
  "max_position_embeddings": 131072,
  "mlp_bias": false,
  "model_type": "llama",
  "num_attention_heads": 32,
  "num_hidden_layers": 32,
  "num_key_value_heads": 8,
  "pretraining_tp": 1,
  "rms_norm_eps": 1e-05,
  "rope_scaling": {
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
    "rope_type": "llama3"
  },
  "rope_theta": 500000.0,
  "tie_word_embeddings": false,
  "torch_dtype": "bfloat16",
  "transformers_version": "4.43.0.dev0",
  "use_cache": true,
  "vocab_size": 128256
}`

func TestParseConfigLlama31(t *testing.T) {
	c, err := ParseConfig("config.json", []byte(llama31Config))
	if err != nil {
		t.Fatal(err)
	}
	want, _ := RandomConfig("llama-3.1-8b")
	want.EOSTokenIDs = []int{128001, 128008, 128009}
	if !reflect.DeepEqual(c, want) {
		t.Errorf("got  %+v\nwant %+v", c, want)
	}
	if err := c.Supported(); err != nil {
		t.Error(err)
	}
}

// TestParseConfigRopeParameters reads the form transformers 5 writes: rope_theta
// inside rope_parameters, no rope_scaling.
func TestParseConfigRopeParameters(t *testing.T) {
	doc := editConfig(t, llama31Config, func(m map[string]any) {
		delete(m, "rope_scaling")
		delete(m, "rope_theta")
		delete(m, "torch_dtype")
		m["dtype"] = "bfloat16"
		m["rope_parameters"] = map[string]any{
			"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0,
			"low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192,
		}
	})
	c, err := ParseConfig("config.json", doc)
	if err != nil {
		t.Fatal(err)
	}
	want := Rope{Theta: 500000, Type: "llama3", Factor: 32, LowFreqFactor: 1, HighFreqFactor: 4, OriginalMaxPositionEmbeddings: 8192}
	if c.Rope != want || c.TorchDType != "bfloat16" {
		t.Errorf("rope %+v dtype %q, want %+v bfloat16", c.Rope, c.TorchDType, want)
	}

	// Default rope in the new form.
	doc = editConfig(t, llama31Config, func(m map[string]any) {
		delete(m, "rope_scaling")
		m["rope_theta"] = 1.0 // the one inside wins
		m["rope_parameters"] = map[string]any{"rope_type": "default", "rope_theta": 10000}
	})
	c, err = ParseConfig("config.json", doc)
	if err != nil {
		t.Fatal(err)
	}
	if c.Rope != (Rope{Theta: 10000, Type: "default"}) {
		t.Errorf("rope = %+v", c.Rope)
	}
}

func TestParseConfigDefaults(t *testing.T) {
	c, err := ParseConfig("config.json", []byte(`{"architectures":["LlamaForCausalLM"],"hidden_size":64,
		"intermediate_size":128,"num_hidden_layers":2,"num_attention_heads":4,"vocab_size":100,
		"rope_scaling":null,"head_dim":null,"eos_token_id":7}`))
	if err != nil {
		t.Fatal(err)
	}
	want := Config{
		Architecture: "LlamaForCausalLM", HiddenSize: 64, IntermediateSize: 128, NumLayers: 2,
		NumHeads: 4, NumKVHeads: 4, HeadDim: 16, VocabSize: 100, MaxPositions: 2048, RMSNormEps: 1e-6,
		HiddenAct: "silu", BOSTokenID: -1, EOSTokenIDs: []int{7}, Rope: Rope{Theta: 10000, Type: "default"},
	}
	if !reflect.DeepEqual(c, want) {
		t.Errorf("got  %+v\nwant %+v", c, want)
	}
}

// TestParseConfigRecordsUnsupported: unsupported choices parse (Check must name
// them all) rather than fail one at a time.
func TestParseConfigRecordsUnsupported(t *testing.T) {
	doc := editConfig(t, llama31Config, func(m map[string]any) {
		m["rope_scaling"] = map[string]any{"type": "linear", "factor": 2.0}
		m["hidden_act"] = "gelu"
		m["attention_bias"] = true
		delete(m, "num_key_value_heads")
	})
	c, err := ParseConfig("config.json", doc)
	if err != nil {
		t.Fatal(err)
	}
	if c.Rope.Type != "linear" || c.Rope.Factor != 2 || c.HiddenAct != "gelu" || !c.AttentionBias || c.NumKVHeads != 32 {
		t.Errorf("got %+v", c)
	}
	// Without head_dim and with hidden_size not divisible by the heads, HeadDim is 0.
	doc = editConfig(t, llama31Config, func(m map[string]any) { m["hidden_size"] = 4000; m["num_attention_heads"] = 48 })
	if c, err = ParseConfig("config.json", doc); err != nil || c.HeadDim != 0 {
		t.Errorf("HeadDim = %d, %v; want 0", c.HeadDim, err)
	}
}

func TestParseConfigErrors(t *testing.T) {
	edit := func(f func(m map[string]any)) []byte { return editConfig(t, llama31Config, f) }
	cases := []struct {
		name string
		doc  []byte
		want string
	}{
		{"not JSON", []byte("{\n  \"hidden_size\": 4096,\n  oops\n}"), "m/config.json: not a JSON object: line 3 column 3: invalid character 'o'"},
		{"empty file", []byte(""), "m/config.json: not a JSON object"},
		{"a list", []byte("[1]"), "m/config.json: not a JSON object"},
		{"null", []byte("null"), "m/config.json: not a JSON object (null)"},
		{"string size", edit(func(m map[string]any) { m["hidden_size"] = "4096" }), `m/config.json: hidden_size: want a number, got "4096"`},
		{"fractional size", edit(func(m map[string]any) { m["num_hidden_layers"] = 2.5 }), "m/config.json: num_hidden_layers: want an integer in [1, 1024], got 2.5"},
		{"absurd size", edit(func(m map[string]any) { m["vocab_size"] = 1e15 }), "m/config.json: vocab_size: want an integer in [1, 16777216], got 1000000000000000"},
		{"huge number", []byte(`{"hidden_size": 1e999}`), "m/config.json: hidden_size: want an integer in [1, 131072], got 1e999"},
		{"zero heads", edit(func(m map[string]any) { m["num_attention_heads"] = 0 }), "m/config.json: num_attention_heads: want an integer in [1, 4096], got 0"},
		{"missing size", edit(func(m map[string]any) { delete(m, "intermediate_size") }), "m/config.json: intermediate_size: missing (required)"},
		{"negative eps", edit(func(m map[string]any) { m["rms_norm_eps"] = -1 }), "m/config.json: rms_norm_eps: want a finite number in (0, 1], got -1"},
		{"bool as string", edit(func(m map[string]any) { m["tie_word_embeddings"] = "false" }), `m/config.json: tie_word_embeddings: want true or false, got "false"`},
		{"architectures not a list", edit(func(m map[string]any) { m["architectures"] = "LlamaForCausalLM" }), "m/config.json: architectures: want a list of strings"},
		{"eos list of strings", edit(func(m map[string]any) { m["eos_token_id"] = []any{1, "x"} }), `m/config.json: eos_token_id[1]: want a number, got "x"`},
		{"eos negative", edit(func(m map[string]any) { m["eos_token_id"] = -3 }), "m/config.json: eos_token_id: want an integer in [0, 1073741824], got -3"},
		{"rope_scaling not an object", edit(func(m map[string]any) { m["rope_scaling"] = 8 }), "m/config.json: rope_scaling: want an object, got 8"},
		{"llama3 without factor", edit(func(m map[string]any) {
			m["rope_scaling"] = map[string]any{"rope_type": "llama3", "low_freq_factor": 1, "high_freq_factor": 4, "original_max_position_embeddings": 8192}
		}), "m/config.json: rope_scaling.factor: required for rope type llama3"},
		{"llama3 without original max", edit(func(m map[string]any) {
			m["rope_scaling"] = map[string]any{"rope_type": "llama3", "factor": 8, "low_freq_factor": 1, "high_freq_factor": 4}
		}), "m/config.json: rope_scaling.original_max_position_embeddings: required for rope type llama3"},
		{"rope factor wrong type", edit(func(m map[string]any) {
			m["rope_scaling"] = map[string]any{"rope_type": "llama3", "factor": "8", "low_freq_factor": 1, "high_freq_factor": 4, "original_max_position_embeddings": 8192}
		}), `m/config.json: rope_scaling.factor: want a number, got "8"`},
		{"rope theta zero", edit(func(m map[string]any) { m["rope_theta"] = 0 }), "m/config.json: rope_theta: want a finite number in (0,"},
		{"rope type not a string", edit(func(m map[string]any) { m["rope_scaling"] = map[string]any{"rope_type": 3} }), "m/config.json: rope_scaling.rope_type: want a string, got 3"},
		{"nested rope_parameters", edit(func(m map[string]any) {
			m["rope_parameters"] = map[string]any{"full_attention": map[string]any{"rope_type": "default"}}
		}), "m/config.json: rope_parameters.full_attention: nested per-layer-type rope parameters are not supported"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := ParseConfig("m/config.json", c.doc)
			testcheck.ErrorContains(t, err, c.want)
		})
	}
}

func TestLoadConfigFiles(t *testing.T) {
	dir := t.TempDir()
	_, err := LoadConfig(dir)
	testcheck.ErrorContains(t, err, filepath.Join(dir, "config.json"))
	os.WriteFile(filepath.Join(dir, "config.json"), []byte("not json"), 0o644)
	_, err = LoadConfig(dir)
	testcheck.ErrorContains(t, err, filepath.Join(dir, "config.json")+": not a JSON object: line 1 column 2")
}

func TestLoadConfigStories(t *testing.T) {
	needStories(t)
	c, err := LoadConfig(storiesDir)
	if err != nil {
		t.Fatal(err)
	}
	want := Config{
		Architecture: "LlamaForCausalLM", ModelType: "llama", HiddenSize: 64, IntermediateSize: 172,
		NumLayers: 5, NumHeads: 8, NumKVHeads: 4, HeadDim: 8, VocabSize: 512, MaxPositions: 512,
		RMSNormEps: 1e-5, TieEmbeddings: true, HiddenAct: "silu", BOSTokenID: 1, EOSTokenIDs: []int{2},
		Rope: Rope{Theta: 10000, Type: "default"}, TorchDType: "float32",
	}
	if !reflect.DeepEqual(c, want) {
		t.Errorf("got  %+v\nwant %+v", c, want)
	}
}

// TestMarshalConfigRoundTrip: every preset written as config.json reads back the same.
func TestMarshalConfigRoundTrip(t *testing.T) {
	for _, name := range RandomModelNames() {
		c, _ := RandomConfig(name)
		data, err := MarshalConfig(c)
		if err != nil {
			t.Fatal(err)
		}
		back, err := ParseConfig(name, data)
		if err != nil {
			t.Fatalf("%s: %v\n%s", name, err, data)
		}
		if !reflect.DeepEqual(back, c) {
			t.Errorf("%s: round trip\ngot  %+v\nwant %+v", name, back, c)
		}
	}
}

// editConfig decodes a config.json, lets f change it, and encodes it again.
func editConfig(t *testing.T, doc string, f func(m map[string]any)) []byte {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal([]byte(doc), &m); err != nil {
		t.Fatal(err)
	}
	f(m)
	out, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// FuzzParseConfig: any bytes give an error or a config whose sizes are within the
// bounds, never a panic.
func FuzzParseConfig(f *testing.F) {
	f.Add([]byte(llama31Config))
	f.Add([]byte(`{"hidden_size":64,"intermediate_size":1,"num_hidden_layers":1,"num_attention_heads":3,"vocab_size":1,"rope_parameters":{"rope_type":"llama3"}}`))
	f.Add([]byte(`{"hidden_size":64,"intermediate_size":1,"num_hidden_layers":1,"num_attention_heads":4,"vocab_size":1,"eos_token_id":[1,2],"rope_scaling":{"type":"yarn","factor":2}}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := ParseConfig("config.json", data)
		if err != nil {
			return
		}
		if c.HiddenSize < 1 || c.HiddenSize > MaxHiddenSize || c.NumLayers < 1 || c.NumLayers > MaxLayers ||
			c.VocabSize < 1 || c.VocabSize > MaxVocabSize || c.HeadDim < 0 || c.HeadDim > MaxHeadDim || c.NumKVHeads < 1 {
			t.Fatalf("out of bounds: %+v", c)
		}
		_ = c.Incompatibilities()
		_ = c.ParamCount()
	})
}
