package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	fileformat "train/format"
	"train/format/gguf"
	"train/format/peft"
	"train/model"
	"train/ops"
)

const (
	exportBase    = "model/testdata/parity/tiny"
	exportAdapter = "model/testdata/parity/lora"
)

// exportInputs are the parity fixture's input ids.
func exportInputs(t *testing.T) [][]int {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(exportAdapter, "inputs.json"))
	if err != nil {
		t.Fatal(err)
	}
	var in struct {
		InputIDs [][]int `json:"input_ids"`
	}
	if err := json.Unmarshal(raw, &in); err != nil {
		t.Fatal(err)
	}
	return in.InputIDs
}

// exportLogits runs w (with adapter l when not nil) on ids and returns its logits [B, T, V].
func exportLogits(t *testing.T, w *model.Weights, l *model.LoRA, ids [][]int) []float32 {
	t.Helper()
	m, err := model.NewModel(ops.NewCPU(), w, model.Options{LoRA: l})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	b := &model.Batch{B: len(ids), T: len(ids[0])}
	for _, row := range ids {
		for _, id := range row {
			b.IDs = append(b.IDs, int32(id))
		}
	}
	if _, _, err := m.Forward(b); err != nil {
		t.Fatal(err)
	}
	logits, err := m.Logits()
	if err != nil {
		t.Fatal(err)
	}
	return append([]float32(nil), logits...)
}

// baseAdapterLogits are the reference: the base model with the adapter applied as a branch.
func baseAdapterLogits(t *testing.T, ids [][]int) []float32 {
	t.Helper()
	w, err := model.LoadModel(exportBase)
	if err != nil {
		t.Fatal(err)
	}
	l, err := peft.Read(exportAdapter, w.Config)
	if err != nil {
		t.Fatal(err)
	}
	return exportLogits(t, w, l, ids)
}

func exportRelL2(a, b []float32) float64 {
	if len(a) != len(b) {
		return math.Inf(1)
	}
	var num, den float64
	for i := range a {
		d := float64(a[i]) - float64(b[i])
		num += d * d
		den += float64(b[i]) * float64(b[i])
	}
	return math.Sqrt(num / den)
}

func runExportOK(t *testing.T, args ...string) string {
	t.Helper()
	var stdout, stderr bytes.Buffer
	if err := runExport(args, &stdout, &stderr); err != nil {
		t.Fatalf("train export %s: %v\n%s", strings.Join(args, " "), err, stderr.String())
	}
	return stdout.String()
}

func TestExportFormats(t *testing.T) {
	ids := exportInputs(t)
	want := baseAdapterLogits(t, ids)
	dir := t.TempDir()
	check := func(what string, got []float32, tol float64) {
		t.Helper()
		if rel := exportRelL2(got, want); rel > tol {
			t.Errorf("%s: logits differ from base+adapter: relative L2 %.2g > %g", what, rel, tol)
		} else {
			t.Logf("%s: relative L2 vs base+adapter %.2g", what, rel)
		}
	}

	// peft: the adapter re-read onto the base model.
	peftDir := filepath.Join(dir, "peft")
	runExportOK(t, "-model", exportBase, "-adapter", exportAdapter, "-format", "peft", "-out", peftDir)
	base, err := model.LoadModel(exportBase)
	if err != nil {
		t.Fatal(err)
	}
	l, err := peft.Read(peftDir, base.Config)
	if err != nil {
		t.Fatal(err)
	}
	check("peft", exportLogits(t, base, l, ids), 1e-6)

	// hf: merged, single file and sharded.
	for _, shard := range []string{"5GB", "40KB"} {
		hfDir := filepath.Join(dir, "hf-"+shard)
		runExportOK(t, "-model", exportBase, "-adapter", exportAdapter, "-format", "hf", "-out", hfDir, "-shard-size", shard)
		_, errIndex := os.Stat(filepath.Join(hfDir, "model.safetensors.index.json"))
		if (shard == "40KB") != (errIndex == nil) {
			t.Errorf("-shard-size %s: index present = %v", shard, errIndex == nil)
		}
		w, err := model.LoadModel(hfDir)
		if err != nil {
			t.Fatal(err)
		}
		check("hf "+shard, exportLogits(t, w, nil, ids), 1e-5)
	}
	hfBF16 := filepath.Join(dir, "hf-bf16")
	runExportOK(t, "-model", exportBase, "-adapter", exportAdapter, "-format", "hf", "-out", hfBF16, "-dtype", "bf16")
	w, err := model.LoadModel(hfBF16)
	if err != nil {
		t.Fatal(err)
	}
	check("hf bf16", exportLogits(t, w, nil, ids), 0.1) // bf16 rounding (2^-9 per weight) amplified ~20x by this random model, as f16 is

	// gguf: merged, read back with our reader (q/k un-permuted).
	for _, dt := range []struct {
		name string
		tol  float64
	}{{"f32", 1e-5}, {"f16", 5e-3}, {"bf16", 0.1}} {
		path := filepath.Join(dir, "gguf", "tiny-"+dt.name+".gguf")
		runExportOK(t, "-model", exportBase, "-adapter", exportAdapter, "-format", "gguf", "-out", path, "-dtype", dt.name)
		w, err := fileformat.LoadModel(path)
		if err != nil {
			t.Fatal(err)
		}
		check("gguf "+dt.name, exportLogits(t, w, nil, ids), dt.tol)
	}
}

func TestExportStoriesGGUFWithTokenizer(t *testing.T) {
	src := "../shared/models/stories260K"
	if _, err := os.Stat(src); err != nil {
		t.Skipf("stories260K is not here (%v)", err)
	}
	out := filepath.Join(t.TempDir(), "s.gguf")
	runExportOK(t, "-model", src, "-format", "gguf", "-out", out)
	g, err := gguf.Open(out)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	if m, _ := g.String("tokenizer.ggml.model"); m != "llama" {
		t.Errorf("tokenizer.ggml.model %q", m)
	}
	if n, _ := g.String("general.name"); n != "stories260K" {
		t.Errorf("general.name %q", n)
	}
	hf := filepath.Join(t.TempDir(), "hf")
	runExportOK(t, "-model", src, "-format", "hf", "-out", hf)
	if _, err := os.Stat(filepath.Join(hf, "tokenizer.json")); err != nil {
		t.Error(err)
	}
}

func TestExportUsageErrors(t *testing.T) {
	for _, args := range [][]string{
		{"-model", exportBase, "-format", "peft", "-out", t.TempDir()},                                              // no adapter
		{"-model", exportBase, "-format", "onnx", "-out", t.TempDir()},                                              // unknown format
		{"-model", exportBase, "-format", "hf", "-out", t.TempDir(), "-dtype", "f16"},                               // f16 safetensors
		{"-model", exportBase, "-format", "hf", "-out", t.TempDir(), "-shard-size", "big"},                          // bad size
		{"-format", "hf", "-out", t.TempDir()},                                                                      // no model
		{"-model", exportBase, "-adapter", exportAdapter, "-format", "peft", "-out", t.TempDir(), "-dtype", "bf16"}, // peft is f32
	} {
		var stdout, stderr bytes.Buffer
		err := runExport(args, &stdout, &stderr)
		if !errors.As(err, new(*usageError)) {
			t.Errorf("train export %s: %v, want a usage error", strings.Join(args, " "), err)
		}
	}
	// A wrong-shaped adapter is an error naming the file.
	var stdout, stderr bytes.Buffer
	err := runExport([]string{"-model", "../shared/models/stories260K", "-adapter", exportAdapter, "-format", "hf", "-out", t.TempDir()}, &stdout, &stderr)
	if _, serr := os.Stat("../shared/models/stories260K"); serr == nil && (err == nil || !strings.Contains(err.Error(), "adapter_model.safetensors")) {
		t.Errorf("adapter for another model: %v", err)
	}
}

// TestWriteExportCheckInputs writes what scripts/check-exports.py needs into
// $EXPORT_CHECK_DIR: the base model (base/), the adapter exported in peft layout
// (peft/), the merged model in Hugging Face layout (hf/), and our logits of
// base+adapter for the fixture's input ids (ours.json). Skipped without the
// variable.
func TestWriteExportCheckInputs(t *testing.T) {
	out := os.Getenv("EXPORT_CHECK_DIR")
	if out == "" {
		t.Skip("set EXPORT_CHECK_DIR to write the inputs of scripts/check-exports.py")
	}
	base, err := model.LoadModel(exportBase)
	if err != nil {
		t.Fatal(err)
	}
	if err := model.WriteHFModel(filepath.Join(out, "base"), base, "", 0); err != nil {
		t.Fatal(err)
	}
	runExportOK(t, "-model", exportBase, "-adapter", exportAdapter, "-format", "peft", "-out", filepath.Join(out, "peft"))
	runExportOK(t, "-model", exportBase, "-adapter", exportAdapter, "-format", "hf", "-out", filepath.Join(out, "hf"))
	ids := exportInputs(t)
	logits := baseAdapterLogits(t, ids)
	V := base.Config.VocabSize
	T := len(ids[0])
	nested := make([][][]float32, len(ids))
	for b := range nested {
		nested[b] = make([][]float32, T)
		for p := range nested[b] {
			nested[b][p] = logits[(b*T+p)*V : (b*T+p+1)*V]
		}
	}
	js, err := json.Marshal(map[string]any{"input_ids": ids, "logits": nested, "vocab_size": V})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(out, "ours.json"), js, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("wrote base/, peft/, hf/ and ours.json to %s", out)
}
