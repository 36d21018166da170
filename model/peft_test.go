package model

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestReadPEFTAdapterFixture(t *testing.T) {
	cfg, err := LoadConfig("testdata/parity/tiny")
	if err != nil {
		t.Fatal(err)
	}
	a, err := ReadPEFTAdapter("testdata/parity/lora", cfg)
	if err != nil {
		t.Fatal(err)
	}
	if c := a.Config; c.Rank != 4 || c.Alpha != 8 || c.RSLoRA || c.Scale() != 2 || len(c.Targets) != 7 {
		t.Fatalf("adapter %+v", c)
	}
	if got, want := len(a.Tensors()), 2*7*cfg.NumLayers; got != want {
		t.Fatalf("%d tensors, want %d", got, want)
	}
	rs, err := ReadPEFTAdapter("testdata/parity/rslora", cfg)
	if err != nil {
		t.Fatal(err)
	}
	if c := rs.Config; !c.RSLoRA || c.Rank != 2 || c.Scale() != 3/1.4142135623730951 {
		t.Fatalf("rslora adapter %+v scale %v", c, c.Scale())
	}
}

func TestPEFTAdapterRoundTrip(t *testing.T) {
	cfg, err := LoadConfig("testdata/parity/tiny")
	if err != nil {
		t.Fatal(err)
	}
	a, err := ReadPEFTAdapter("testdata/parity/lora", cfg)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := WritePEFTAdapter(dir, a, &cfg, "tiny"); err != nil {
		t.Fatal(err)
	}
	b, err := ReadPEFTAdapter(dir, cfg)
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
	cfg, err := LoadConfig("testdata/parity/tiny")
	if err != nil {
		t.Fatal(err)
	}
	weights, err := os.ReadFile("testdata/parity/lora/adapter_model.safetensors")
	if err != nil {
		t.Fatal(err)
	}
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
		_, err := ReadPEFTAdapter(dir, cfg)
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
	if _, err := ReadPEFTAdapter(dir, cfg); err == nil || !strings.Contains(err.Error(), "adapter_model.safetensors is missing") {
		t.Errorf("missing weights: %v", err)
	}
}
