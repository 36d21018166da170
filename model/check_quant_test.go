package model

import (
	"bytes"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"train/format/safetensors"
	"train/ops"
	"train/quant"
)

// bnbConfig is quantization_config as transformers writes it for QLoRA.
var bnbConfig = map[string]any{
	"_load_in_4bit": true, "_load_in_8bit": false, "bnb_4bit_compute_dtype": "bfloat16",
	"bnb_4bit_quant_storage": "uint8", "bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": true,
	"llm_int8_skip_modules": nil, "load_in_4bit": true, "load_in_8bit": false, "quant_method": "bitsandbytes",
}

// writeBnbDir writes cfg as a bitsandbytes 4-bit checkpoint: the seven
// projections of every layer quantized to NF4 (double quantization) in
// bitsandbytes' serialised layout, the other tensors bf16. It returns the
// directory and what the expected tensors take in memory.
func writeBnbDir(t *testing.T, cfg Config) (string, int64) {
	t.Helper()
	dir, w := testModelDir{cfg: cfg}.write(t)
	tensors := w.NamedTensors()
	linear := map[string]bool{}
	for i := range cfg.NumLayers {
		for _, s := range Linears {
			linear[LayerTensorName(i, s)] = true
		}
	}
	var sw safetensors.Writer
	var mem int64
	for _, spec := range cfg.ExpectedTensors() {
		data := tensors[spec.Name]
		if !linear[spec.Name] {
			mustOK(t, sw.AddFloat32(spec.Name, safetensors.BF16, spec.Shape, data))
			mem += 2 * int64(len(data))
			continue
		}
		bf := make([]float32, len(data))
		for i, v := range data {
			bf[i] = ops.RoundBF16(v)
		}
		q, err := quant.Quantize(spec.Name, bf, spec.Shape, quant.Options{DoubleQuant: true})
		mustOK(t, err)
		mustOK(t, quant.AddBnb(&sw, spec.Name, q, "bfloat16"))
		mem += q.Bytes()
	}
	mustOK(t, sw.WriteFile(filepath.Join(dir, "model.safetensors")))
	data, err := os.ReadFile(filepath.Join(dir, "config.json"))
	mustOK(t, err)
	data = editConfig(t, string(data), func(m map[string]any) { m["quantization_config"] = bnbConfig })
	mustOK(t, os.WriteFile(filepath.Join(dir, "config.json"), data, 0o644))
	return dir, mem
}

func mustOK(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func reportText(t *testing.T, r *Report) string {
	t.Helper()
	var b bytes.Buffer
	mustOK(t, r.WriteText(&b))
	return b.String()
}

// TestCheckFormat: Check says whether a directory is a plain checkpoint or a
// bitsandbytes 4-bit one, and what its weights take in memory.
func TestCheckFormat(t *testing.T) {
	cfg := tinyConfig(t)
	plain, _ := testModelDir{cfg: cfg, tokenizerVocab: 512}.write(t)
	r, err := Check(plain)
	mustOK(t, err)
	if r.Format != "hf" || r.Quantization != nil || r.QuantizedWeights != 0 || r.MemoryBytes != r.BF16Bytes || !r.Compatible() {
		t.Errorf("plain checkpoint: format %q, %d quantized, %d bytes (bf16 %d), %q", r.Format, r.QuantizedWeights, r.MemoryBytes, r.BF16Bytes, r.Incompatibilities)
	}
	want := "format            plain Hugging Face checkpoint, not quantized: " + formatByteSize(r.BF16Bytes) + " as bf16, " + formatByteSize(r.NF4Bytes) + " as NF4 (QLoRA)\n"
	if text := reportText(t, r); !strings.Contains(text, want) {
		t.Errorf("plain report lacks %q:\n%s", want, text)
	}

	dir, mem := writeBnbDir(t, cfg)
	r, err = Check(dir)
	mustOK(t, err)
	n := len(Linears) * cfg.NumLayers
	if r.Format != "bnb-4bit" || r.QuantizedWeights != n || r.MemoryBytes != mem {
		t.Errorf("bnb-4bit checkpoint: format %q, %d quantized (want %d), %d bytes (want %d)", r.Format, r.QuantizedWeights, n, r.MemoryBytes, mem)
	}
	if !r.Compatible() {
		t.Errorf("bnb-4bit incompatibilities: %q", r.Incompatibilities)
	}
	for _, w := range r.Warnings {
		if strings.Contains(w, "unexpected tensor") {
			t.Errorf("a companion tensor is reported as unexpected: %s", w)
		}
	}
	want = "format            bitsandbytes 4-bit checkpoint (nf4, double quant, compute bfloat16): " +
		strconv.Itoa(n) + " of " + strconv.Itoa(n) + " linear weights quantized, " + formatByteSize(mem) + " in memory as stored"
	if text := reportText(t, r); !strings.Contains(text, want) {
		t.Errorf("bnb report lacks %q:\n%s", want, text)
	}
}

// TestCheckQuantizationProblems: other quantizations are named, and a
// quantized weight without a quantization_config, or of the wrong shape, is
// reported.
func TestCheckQuantizationProblems(t *testing.T) {
	cfg := tinyConfig(t)
	for _, c := range []struct {
		qc   map[string]any
		want string
	}{
		{map[string]any{"quant_method": "gptq", "bits": 4}, `config.json: quantization_config.quant_method "gptq" is not supported; supported: bitsandbytes 4-bit nf4`},
		{map[string]any{"quant_method": "bitsandbytes", "load_in_8bit": true}, "config.json: bitsandbytes 8-bit (load_in_8bit, LLM.int8()) is not supported"},
		{map[string]any{"quant_method": "bitsandbytes", "load_in_4bit": true, "bnb_4bit_quant_type": "fp4"}, `config.json: bnb_4bit_quant_type "fp4" is not supported`},
		{map[string]any{"quant_method": "bitsandbytes", "load_in_4bit": "yes"}, `quantization_config.load_in_4bit is "yes": want a boolean`},
	} {
		dir, _ := testModelDir{cfg: cfg, configEdit: func(m map[string]any) { m["quantization_config"] = c.qc }}.write(t)
		r, err := Check(dir)
		mustOK(t, err)
		if len(r.Incompatibilities) != 1 || !strings.Contains(r.Incompatibilities[0], c.want) {
			t.Errorf("%v: incompatibilities %q, want one containing %q", c.qc, r.Incompatibilities, c.want)
		}
	}

	// Quantized tensors but no quantization_config.
	dir, _ := writeBnbDir(t, cfg)
	data, _ := os.ReadFile(filepath.Join(dir, "config.json"))
	mustOK(t, os.WriteFile(filepath.Join(dir, "config.json"), editConfig(t, string(data), func(m map[string]any) { delete(m, "quantization_config") }), 0o644))
	r, err := Check(dir)
	mustOK(t, err)
	if r.Format != "hf" || !strings.Contains(strings.Join(r.Incompatibilities, "\n"),
		"tensor model.layers.0.self_attn.q_proj.weight is stored quantized by bitsandbytes, but config.json has no quantization_config") {
		t.Errorf("quantized tensors without a quantization_config: %q", r.Incompatibilities)
	}

	// config.json says more layers' width than the quantized weights hold.
	dir, _ = writeBnbDir(t, cfg)
	data, _ = os.ReadFile(filepath.Join(dir, "config.json"))
	mustOK(t, os.WriteFile(filepath.Join(dir, "config.json"), editConfig(t, string(data), func(m map[string]any) { m["intermediate_size"] = 200 }), 0o644))
	r, err = Check(dir)
	mustOK(t, err)
	if !strings.Contains(strings.Join(r.Incompatibilities, "\n"), "tensor model.layers.0.mlp.gate_proj.weight (bitsandbytes 4-bit) has shape [176 64], but config.json implies [200 64]") {
		t.Errorf("mis-shaped quantized weight: %q", r.Incompatibilities)
	}
}

// TestCheckBnbFixture: the checkpoint the fixture script wrote in
// bitsandbytes' serialised layout is recognised as one.
func TestCheckBnbFixture(t *testing.T) {
	dir := "../quant/testdata/nf4/bnb-4bit-dq"
	if _, err := os.Stat(dir); err != nil {
		t.Skipf("%s is absent (made by scripts/make-nf4-fixtures.py): %v", dir, err)
	}
	r, err := Check(dir)
	mustOK(t, err)
	if r.Format != "bnb-4bit" || r.QuantizedWeights != 7 || r.Quantization == nil || !r.Quantization.DoubleQuant || len(r.Incompatibilities) != 0 {
		t.Errorf("fixture: format %q, %d quantized, %+v, %q", r.Format, r.QuantizedWeights, r.Quantization, r.Incompatibilities)
	}
}
