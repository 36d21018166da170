package peft

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"train/model"
)

// fixtures holds the tiny model and the adapters peft saved for it
// (scripts/make-parity-fixtures.py).
const fixtures = "../../model/testdata/parity"

// tinyConfig is the configuration of the tiny model the fixture adapters were
// trained on.
func tinyConfig(t testing.TB) model.Config {
	t.Helper()
	cfg, err := model.LoadConfig(fixtures + "/tiny")
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// loraWeights is the fixture's adapter_model.safetensors (r=4 on every
// projection of the tiny model).
func loraWeights(t testing.TB) []byte {
	t.Helper()
	b, err := os.ReadFile(fixtures + "/lora/adapter_model.safetensors")
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestReadPEFTAdapterFixture(t *testing.T) {
	cfg := tinyConfig(t)
	a, err := Read(fixtures+"/lora", cfg)
	if err != nil {
		t.Fatal(err)
	}
	if c := a.Config; c.Rank != 4 || c.Alpha != 8 || c.RSLoRA || c.Scale() != 2 || len(c.Targets) != 7 {
		t.Fatalf("adapter %+v", c)
	}
	if got, want := len(a.Tensors()), 2*7*cfg.NumLayers; got != want {
		t.Fatalf("%d tensors, want %d", got, want)
	}
	rs, err := Read(fixtures+"/rslora", cfg)
	if err != nil {
		t.Fatal(err)
	}
	if c := rs.Config; !c.RSLoRA || c.Rank != 2 || c.Scale() != 3/1.4142135623730951 {
		t.Fatalf("rslora adapter %+v scale %v", c, c.Scale())
	}
}

func TestPEFTAdapterRoundTrip(t *testing.T) {
	cfg := tinyConfig(t)
	a, err := Read(fixtures+"/lora", cfg)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := Write(dir, a, &cfg, "tiny"); err != nil {
		t.Fatal(err)
	}
	b, err := Read(dir, cfg)
	if err != nil {
		t.Fatal(err)
	}
	bt := b.Tensors()
	for name, v := range a.Tensors() {
		w := bt[name]
		if len(w) != len(v) {
			t.Fatalf("%s: length %d vs %d", name, len(w), len(v))
		}
		for i := range v {
			if v[i] != w[i] {
				t.Fatalf("%s[%d]: %v vs %v", name, i, w[i], v[i])
			}
		}
	}
}

func TestPEFTAdapterErrors(t *testing.T) {
	cfg := tinyConfig(t)
	weights := loraWeights(t)
	cases := []struct{ config, want string }{
		{`not json`, "not a peft adapter config"},
		{`{"peft_type": "IA3", "r": 4, "lora_alpha": 8}`, `peft_type "IA3"`},
		{`{"peft_type": "LORA", "lora_alpha": 8, "target_modules": ["q_proj"]}`, "r must be"},
		{`{"peft_type": "LORA", "r": 4, "lora_alpha": 8, "use_dora": true, "target_modules": ["q_proj"]}`, "use_dora"},
		{`{"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["qkv_proj"]}`, `"qkv_proj"`},
		{`{"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj"], "layers_to_transform": [0]}`, "layers_to_transform"},
		{`{"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj"]}`, "unexpected tensor"},
		{`{"peft_type": "LORA", "r": 2, "lora_alpha": 8, "target_modules": "all-linear"}`, "has shape [4 48], want [2 48]"},
		{`{"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ".*\\.(q|k|v|o|gate|up|down)_proj"}`, ""},
	}
	for _, tc := range cases {
		dir := t.TempDir()
		os.WriteFile(filepath.Join(dir, "adapter_config.json"), []byte(tc.config), 0o644)
		os.WriteFile(filepath.Join(dir, "adapter_model.safetensors"), weights, 0o644)
		_, err := Read(dir, cfg)
		if tc.want == "" {
			if err != nil {
				t.Errorf("%s: %v", tc.config, err)
			}
			continue
		}
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: error %v, want one containing %q", tc.config, err, tc.want)
		}
	}
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "adapter_config.json"), []byte(`{"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj"]}`), 0o644)
	if _, err := Read(dir, cfg); err == nil || !strings.Contains(err.Error(), "adapter_model.safetensors is missing") {
		t.Errorf("missing weights: %v", err)
	}
}

// FuzzAdapterConfig feeds arbitrary adapter_config.json bytes to the config
// parser: it must return an error naming the file, or a configuration that
// NewLoRA accepts, whose targets are projections in Linears order without
// repeats; never a panic (wrong types, deep nesting, regular expressions in
// target_modules). A small enough adapter is then read against the fixture's
// weights, which must give an adapter or an error naming the directory.
func FuzzAdapterConfig(f *testing.F) {
	cfg := tinyConfig(f)
	weights := loraWeights(f)
	for _, name := range []string{"lora", "rslora"} {
		raw, err := os.ReadFile(filepath.Join(fixtures, name, "adapter_config.json"))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(raw)
	}
	for _, s := range []string{
		`{"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": "all-linear"}`,
		`{"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ".*\\.(q|k|v|o|gate|up|down)_proj"}`,
		`{"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": "(("}`,
		`{"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["model.layers.0.self_attn.q_proj", "q_proj"]}`,
		`{"peft_type": "LORA", "r": 65537, "lora_alpha": 8, "target_modules": ["q_proj"]}`,
		`{"peft_type": "LORA", "r": 4, "lora_alpha": 8, "lora_dropout": 1, "target_modules": ["q_proj"]}`,
		`{"peft_type": "LORA", "r": 4, "lora_alpha": 8, "rank_pattern": {"q_proj": 8}, "target_modules": ["q_proj"]}`,
		`{"peft_type": "LORA", "r": 4.5, "lora_alpha": 8}`,
		`[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		lc, err := parseConfig("adapter_config.json", raw)
		if err != nil {
			if !strings.HasPrefix(err.Error(), "adapter_config.json: ") {
				t.Fatalf("error does not name the file: %v", err)
			}
			return
		}
		if err := lc.Validate(); err != nil {
			t.Fatalf("accepted a configuration NewLoRA refuses: %v", err)
		}
		last := -1
		for _, target := range lc.Targets {
			i := slices.Index(model.Linears, target)
			if i <= last {
				t.Fatalf("targets %v are not projections in Linears order without repeats", lc.Targets)
			}
			last = i
		}
		if lc.Rank > 16 {
			return // a large adapter only allocates more; its tensors are refused as in the test above
		}
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, "adapter_config.json"), raw, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "adapter_model.safetensors"), weights, 0o644); err != nil {
			t.Fatal(err)
		}
		if _, err := Read(dir, cfg); err != nil && !strings.Contains(err.Error(), dir) {
			t.Fatalf("error does not name the adapter directory: %v", err)
		}
	})
}
