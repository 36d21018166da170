package model

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"train/format/safetensors"
	"train/internal/testcheck"
)

func TestCheckStories(t *testing.T) {
	needStories(t)
	r, err := Check(storiesDir)
	if err != nil {
		t.Fatal(err)
	}
	if !r.Compatible() {
		t.Fatalf("stories260K is not compatible: %q", r.Incompatibilities)
	}
	if len(r.Warnings) != 0 {
		t.Errorf("warnings: %q", r.Warnings)
	}
	if r.Parameters != 260032 || !r.TiedEmbeddings || r.KVHeads != 4 || r.HeadDim != 8 || r.TokenizerVocab != 512 || r.Tensors != 47 {
		t.Errorf("report: %+v", r)
	}
	var b bytes.Buffer
	if err := r.WriteText(&b); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"architecture      LlamaForCausalLM (model_type llama)",
		"attention heads   8 query, 4 key/value (grouped-query: 2 query heads per key/value head)",
		"vocab             512 (tokenizer.json: 512)",
		"rope              default, theta 10000",
		"tied embeddings   yes",
		"parameters        260,032 (260.0K)",
		"checkpoint        model.safetensors: 47 tensors (F32 47)",
		"compatible        yes",
	} {
		if !strings.Contains(b.String(), want+"\n") {
			t.Errorf("text report lacks %q:\n%s", want, b.String())
		}
	}
}

// TestCheckIncompatibilities makes one defect at a time in an otherwise good model
// and expects exactly that defect, on its own line.
func TestCheckIncompatibilities(t *testing.T) {
	base := func() testModelDir { return testModelDir{cfg: tinyConfig(t), tokenizerVocab: 512} }
	cases := []struct {
		name  string
		edit  func(s *testModelDir)
		want  string
		exact bool // the only incompatibility
	}{
		{"architecture", func(s *testModelDir) {
			s.configEdit = func(m map[string]any) { m["architectures"] = []string{"MistralForCausalLM"} }
		}, "architecture MistralForCausalLM is not supported; supported: LlamaForCausalLM", true},
		{"no architecture", func(s *testModelDir) { s.configEdit = func(m map[string]any) { delete(m, "architectures") } },
			"config.json names no architecture (architectures is missing); supported: LlamaForCausalLM", true},
		{"kv heads do not divide heads", func(s *testModelDir) { s.cfg.NumKVHeads = 3 },
			"num_key_value_heads 3 does not divide num_attention_heads 4", true},
		{"hidden not heads x head_dim", func(s *testModelDir) {
			s.cfg.HiddenSize = 66
			s.configEdit = func(m map[string]any) { delete(m, "head_dim") }
		}, "hidden_size 66 is not num_attention_heads 4 x head_dim: config.json has no head_dim and 66 is not divisible by 4", true},
		{"odd head_dim", func(s *testModelDir) { s.cfg.HeadDim = 15 }, "head_dim 15 is odd", true},
		{"activation", func(s *testModelDir) { s.configEdit = func(m map[string]any) { m["hidden_act"] = "gelu" } },
			`hidden_act "gelu" is not supported; supported: silu`, true},
		{"attention bias", func(s *testModelDir) { s.configEdit = func(m map[string]any) { m["attention_bias"] = true } },
			"attention_bias is true: attention projections with biases are not supported", true},
		{"mlp bias", func(s *testModelDir) { s.configEdit = func(m map[string]any) { m["mlp_bias"] = true } },
			"mlp_bias is true: MLP projections with biases are not supported", true},
		{"rope type", func(s *testModelDir) {
			s.configEdit = func(m map[string]any) {
				m["rope_scaling"] = map[string]any{"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32}
			}
		}, `rope type "yarn" is not supported; supported: default, llama3`, true},
		{"legacy rope type key", func(s *testModelDir) {
			s.configEdit = func(m map[string]any) { m["rope_scaling"] = map[string]any{"type": "dynamic", "factor": 2.0} }
		}, `rope type "dynamic" is not supported`, true},
		{"llama3 rope bands", func(s *testModelDir) { s.cfg.Rope.HighFreqFactor = 1 },
			"rope type llama3 needs high_freq_factor (1) greater than low_freq_factor (1)", true},
		{"bos outside vocab", func(s *testModelDir) { s.configEdit = func(m map[string]any) { m["bos_token_id"] = 1000 } },
			"bos_token_id 1000 is outside the vocabulary of 512 tokens", true},
		{"missing tensor", func(s *testModelDir) { s.drop = []string{LayerTensorName(2, "up_proj")} },
			"missing tensor model.layers.2.mlp.up_proj.weight (expected shape [176 64])", true},
		{"missing lm_head", func(s *testModelDir) { s.drop = []string{"lm_head.weight"} },
			"missing tensor lm_head.weight (expected shape [512 64])", true},
		{"mis-shaped tensor", func(s *testModelDir) {
			s.reshape = map[string][]int{LayerTensorName(1, "k_proj"): {16, 64}}
		}, "tensor model.layers.1.self_attn.k_proj.weight has shape [16 64], but config.json implies [32 64]", true},
		{"layer count disagrees", func(s *testModelDir) {
			s.configEdit = func(m map[string]any) { m["num_hidden_layers"] = 8 }
		}, "... and 16 more missing tensors", false},
		{"integer tensor", func(s *testModelDir) { s.rawDType = map[string]safetensors.DType{"model.norm.weight": safetensors.I32} },
			"tensor model.norm.weight has dtype I32; supported: F32, BF16, F16, F64", true},
		{"tokenizer larger than vocab", func(s *testModelDir) { s.tokenizerVocab = 600 },
			"vocab_size 512 is smaller than the 600 tokens of tokenizer.json: ids 512..599 have no embedding row", true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s := base()
			c.edit(&s)
			dir, _ := s.write(t)
			r, err := Check(dir)
			if err != nil {
				t.Fatal(err)
			}
			found := false
			for _, line := range r.Incompatibilities {
				found = found || strings.Contains(line, c.want)
			}
			if !found || (c.exact && len(r.Incompatibilities) != 1) {
				t.Fatalf("incompatibilities %q\nwant exactly one containing %q", r.Incompatibilities, c.want)
			}
		})
	}
}

func TestCheckLimitsLongLists(t *testing.T) {
	s := testModelDir{cfg: tinyConfig(t)}
	s.configEdit = func(m map[string]any) { m["num_hidden_layers"] = 8 }
	dir, _ := s.write(t)
	r, err := Check(dir)
	if err != nil {
		t.Fatal(err)
	}
	// 4 missing layers x 9 tensors: 20 listed, then a count.
	if len(r.Incompatibilities) != checkListLimit+1 || r.Incompatibilities[checkListLimit] != "... and 16 more missing tensors" {
		t.Errorf("%d lines: %q", len(r.Incompatibilities), r.Incompatibilities)
	}
}

func TestCheckWarnings(t *testing.T) {
	cfg := tinyConfig(t)
	cfg.TieEmbeddings = true
	s := testModelDir{cfg: cfg, keepLMHead: true, tokenizerVocab: 500,
		extra: map[string][]int{"model.layers.0.self_attn.rotary_emb.inv_freq": {8}}}
	dir, _ := s.write(t)
	r, err := Check(dir)
	if err != nil {
		t.Fatal(err)
	}
	if !r.Compatible() {
		t.Fatalf("incompatible: %q", r.Incompatibilities)
	}
	want := []string{
		"lm_head.weight is present but tie_word_embeddings is true: it is ignored and the embedding is used",
		"unexpected tensor model.layers.0.self_attn.rotary_emb.inv_freq [8] (ignored)",
	}
	if strings.Join(r.Warnings, "\n") != strings.Join(want, "\n") {
		t.Errorf("warnings %q\nwant %q", r.Warnings, want)
	}
	if r.TokenizerVocab != 500 {
		t.Errorf("tokenizer vocab %d", r.TokenizerVocab)
	}
}

func TestCheckBrokenFiles(t *testing.T) {
	cfg := tinyConfig(t)

	dir, _ := testModelDir{cfg: cfg}.write(t)
	path := filepath.Join(dir, "model.safetensors")
	st, _ := os.Stat(path)
	os.Truncate(path, st.Size()-1)
	r, err := Check(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Incompatibilities) != 1 || !strings.Contains(r.Incompatibilities[0], "exceed data section") {
		t.Errorf("truncated weights: %q", r.Incompatibilities)
	}
	if r.Parameters == 0 {
		t.Error("the config should still be described")
	}

	os.Remove(path)
	r, _ = Check(dir)
	if len(r.Incompatibilities) != 1 || !strings.Contains(r.Incompatibilities[0], "no model.safetensors or model.safetensors.index.json") {
		t.Errorf("no weights: %q", r.Incompatibilities)
	}

	dir, _ = testModelDir{cfg: cfg}.write(t)
	os.WriteFile(filepath.Join(dir, "tokenizer.json"), []byte("{oops"), 0o644)
	r, _ = Check(dir)
	if len(r.Incompatibilities) != 1 || !strings.Contains(r.Incompatibilities[0], "tokenizer.json: not a tokenizer.json: line 1 column 2") {
		t.Errorf("bad tokenizer: %q", r.Incompatibilities)
	}

	os.Remove(filepath.Join(dir, "config.json"))
	_, err = Check(dir)
	testcheck.ErrorContains(t, err, "config.json")

	os.WriteFile(filepath.Join(dir, "config.json"), []byte("{\"hidden_size\": }"), 0o644)
	_, err = Check(dir)
	testcheck.ErrorContains(t, err, "config.json: not a JSON object: line 1 column 17")
}

func TestTokenizerVocabSizeUnigram(t *testing.T) {
	path := filepath.Join(t.TempDir(), "tokenizer.json")
	writeTestJSON(t, path, map[string]any{"model": map[string]any{"type": "Unigram", "vocab": [][]any{{"<unk>", 0}, {"a", -1.5}, {"b", -2}}}})
	if n, err := TokenizerVocabSize(path); err != nil || n != 3 {
		t.Errorf("got %d, %v", n, err)
	}
}

func TestTokenizerVocabSizeLlama3(t *testing.T) {
	path := "../../shared/tokenizers/llama3/tokenizer.json"
	if _, err := os.Stat(path); err != nil {
		t.Skipf("skipping: %s not found (../shared is absent): %v", path, err)
	}
	if n, err := TokenizerVocabSize(path); err != nil || n != 128256 {
		t.Errorf("got %d, %v; want 128256", n, err)
	}
}

// TestCheckRandom: every named architecture passes, with the parameter counts
// Hugging Face reports for the real models.
func TestCheckRandom(t *testing.T) {
	params := map[string]int64{
		"llama-3.1-8b":  8030261248,
		"llama-3.1-70b": 70553706496,
		"llama-3.2-1b":  1235814400,
		"llama-3.2-3b":  3212749824,
	}
	for _, name := range RandomModelNames() {
		r, err := Check(RandomPrefix + name)
		if err != nil {
			t.Fatal(err)
		}
		if !r.Compatible() || !r.Random {
			t.Errorf("%s: %q", name, r.Incompatibilities)
		}
		if want, ok := params[name]; ok && r.Parameters != want {
			t.Errorf("%s: %d parameters, want %d", name, r.Parameters, want)
		}
	}
	_, err := Check("random:llama-9")
	testcheck.ErrorContains(t, err, `unknown random model "random:llama-9"; valid: random:llama-3.1-70b, random:llama-3.1-8b, random:llama-3.2-1b`)
}

// TestWeightSizes pins the size conventions: bf16 is 2 bytes a parameter; NF4 is
// 4 bits per linear weight plus a float32 absmax per 64, the rest bf16.
func TestWeightSizes(t *testing.T) {
	c, _ := RandomConfig("llama-3.1-8b")
	if c.BF16Bytes() != 2*8030261248 {
		t.Errorf("bf16 %d", c.BF16Bytes())
	}
	linear := int64(32) * (4096*4096*2 + 1024*4096*2 + 3*14336*4096)
	other := int64(8030261248) - linear
	// Per weight: 4 bits, 8 bits per 64, 32 bits per 64*256; and a 1 KiB map per tensor.
	if want := linear/2 + linear/64 + 4*linear/(64*256) + 32*7*1024 + 2*other; c.NF4Bytes() != want {
		t.Errorf("nf4 %d, want %d", c.NF4Bytes(), want)
	}
}

func TestReportJSON(t *testing.T) {
	r, err := Check("random:tiny")
	if err != nil {
		t.Fatal(err)
	}
	data, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	json.Unmarshal(data, &m)
	if m["architecture"] != "LlamaForCausalLM" || m["rope"].(map[string]any)["type"] != "llama3" ||
		m["incompatibilities"] == nil || m["parameters"].(float64) != float64(r.Parameters) {
		t.Errorf("json: %s", data)
	}
}
