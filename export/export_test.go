package export

import (
	"bytes"
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"testing"

	fileformat "train/format"
	"train/format/gguf"
	"train/format/peft"
	"train/model"
	"train/ops"
)

const (
	exportBase    = "../model/testdata/parity/tiny"
	exportAdapter = "../model/testdata/parity/lora"
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

// runOK exports with o, which names the base model, the adapter and the
// format; it fails the test on an error and returns what Run reported.
func runOK(t *testing.T, o Options) string {
	t.Helper()
	var stdout bytes.Buffer
	if err := Run(o, &stdout); err != nil {
		t.Fatalf("export %+v: %v", o, err)
	}
	return stdout.String()
}

// fixture is an export of the parity model with its adapter, in format, to out.
func fixture(format, out string) Options {
	return Options{Model: exportBase, Adapter: exportAdapter, Format: format, Out: out, DType: "f32", MaxShard: 5e9}
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
	runOK(t, fixture("peft", peftDir))
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
	for _, shard := range []struct {
		name  string
		bytes int64
	}{{"5GB", 5e9}, {"40KB", 40e3}} {
		hfDir := filepath.Join(dir, "hf-"+shard.name)
		o := fixture("hf", hfDir)
		o.MaxShard = shard.bytes
		runOK(t, o)
		_, errIndex := os.Stat(filepath.Join(hfDir, "model.safetensors.index.json"))
		if (shard.name == "40KB") != (errIndex == nil) {
			t.Errorf("shards of %s: index present = %v", shard.name, errIndex == nil)
		}
		w, err := model.LoadModel(hfDir)
		if err != nil {
			t.Fatal(err)
		}
		check("hf "+shard.name, exportLogits(t, w, nil, ids), 1e-5)
	}
	hfBF16 := filepath.Join(dir, "hf-bf16")
	o := fixture("hf", hfBF16)
	o.DType = "bf16"
	runOK(t, o)
	w, err := model.LoadModel(hfBF16)
	if err != nil {
		t.Fatal(err)
	}
	check("hf bf16", exportLogits(t, w, nil, ids), 0.1) // bf16 rounding (2^-9 per weight) amplified ~20x by this random model, as f16 is
	hfF16 := filepath.Join(dir, "hf-f16")
	o = fixture("hf", hfF16)
	o.DType = "f16"
	runOK(t, o)
	if w, err = model.LoadModel(hfF16); err != nil {
		t.Fatal(err)
	}
	if w.Config.TorchDType != "float16" {
		t.Errorf("hf f16: config.json torch_dtype %q, want float16", w.Config.TorchDType)
	}
	check("hf f16", exportLogits(t, w, nil, ids), 1e-2) // f16 rounding (2^-12 per weight, norms included, unlike gguf) amplified as above

	// gguf: merged, read back with our reader (q/k un-permuted).
	for _, dt := range []struct {
		name string
		tol  float64
	}{{"f32", 1e-5}, {"f16", 5e-3}, {"bf16", 0.1}} {
		path := filepath.Join(dir, "gguf", "tiny-"+dt.name+".gguf")
		o := fixture("gguf", path)
		o.DType = dt.name
		runOK(t, o)
		w, err := fileformat.LoadModel(path)
		if err != nil {
			t.Fatal(err)
		}
		check("gguf "+dt.name, exportLogits(t, w, nil, ids), dt.tol)
	}
}

func TestExportStoriesGGUFWithTokenizer(t *testing.T) {
	src := "../../shared/models/stories260K"
	if _, err := os.Stat(src); err != nil {
		t.Skipf("stories260K is not here (%v)", err)
	}
	out := filepath.Join(t.TempDir(), "s.gguf")
	runOK(t, Options{Model: src, Format: "gguf", Out: out, DType: "f32"})
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
	runOK(t, Options{Model: src, Format: "hf", Out: hf, DType: "f32", MaxShard: 5e9})
	if _, err := os.Stat(filepath.Join(hf, "tokenizer.json")); err != nil {
		t.Error(err)
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
	runOK(t, fixture("peft", filepath.Join(out, "peft")))
	runOK(t, fixture("hf", filepath.Join(out, "hf")))
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

// TestExportWithoutTokenizer: a model directory without tokenizer.json is
// exported without one, and Warn says so.
func TestExportWithoutTokenizer(t *testing.T) {
	var warnings []string
	o := fixture("hf", t.TempDir())
	o.Adapter, o.Warn = "", func(msg string) { warnings = append(warnings, msg) }
	if got, want := runOK(t, o), "wrote Hugging Face model (f32) to "+o.Out+"\n"; got != want {
		t.Errorf("Run reported %q, want %q", got, want)
	}
	if want := "no tokenizer.json beside " + exportBase + ": writing none (give -tokenizer DIR)"; len(warnings) != 1 || warnings[0] != want {
		t.Errorf("warnings %q, want %q", warnings, want)
	}
	if _, err := os.Stat(filepath.Join(o.Out, "tokenizer.json")); err == nil {
		t.Error("a tokenizer.json was written")
	}
}
