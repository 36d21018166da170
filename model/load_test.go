package model

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"testing"

	"train/format/safetensors"
	"train/internal/testcheck"
	"train/ops"
)

// testModelDir describes a Hugging Face model directory for a test to generate:
// config.json from cfg (then edited by configEdit), random weights in dtype, split
// over shards files (0 or 1: a single model.safetensors), with tensors dropped,
// reshaped or added to make it broken, and a tokenizer.json of tokenizerVocab ids.
type testModelDir struct {
	cfg            Config
	dtype          safetensors.DType
	shards         int
	drop           []string
	reshape        map[string][]int
	rawDType       map[string]safetensors.DType // store these tensors as zero bytes of this dtype
	extra          map[string][]int
	keepLMHead     bool // write lm_head.weight even when tied
	configEdit     func(m map[string]any)
	tokenizerVocab int
}

// write generates the directory and returns it with the weights written (as
// float32, before any dtype rounding).
func (s testModelDir) write(t *testing.T) (string, *Weights) {
	t.Helper()
	dir := t.TempDir()
	cfg := s.cfg
	w, err := RandomWeights(cfg, 7, 0, cfg.NumLayers, true, true, 0)
	if err != nil {
		t.Fatal(err)
	}
	// Norm weights of 1 would hide a mix-up between two norms.
	for i, l := range w.Layers {
		for j := range l.AttnNorm {
			l.AttnNorm[j] = 1 + float32(i*100+j)/1000
			l.MLPNorm[j] = 2 + float32(i*100+j)/1000
		}
	}
	tensors := w.NamedTensors()
	if s.keepLMHead {
		tensors["lm_head.weight"] = make([]float32, cfg.VocabSize*cfg.HiddenSize)
	}
	for _, name := range s.drop {
		delete(tensors, name)
	}
	shapes := map[string][]int{}
	for _, spec := range cfg.ExpectedTensors() {
		shapes[spec.Name] = spec.Shape
	}
	shapes["lm_head.weight"] = []int{cfg.VocabSize, cfg.HiddenSize}
	for name, shape := range s.reshape {
		shapes[name] = shape
		tensors[name] = make([]float32, shapeProduct(shape))
	}
	for name, shape := range s.extra {
		shapes[name] = shape
		tensors[name] = make([]float32, shapeProduct(shape))
	}
	names := make([]string, 0, len(tensors))
	for n := range tensors {
		names = append(names, n)
	}
	sort.Strings(names)
	dtype := s.dtype
	if dtype == "" {
		dtype = safetensors.F32
	}
	nfiles := max(s.shards, 1)
	writers := make([]safetensors.Writer, nfiles)
	weightMap := map[string]string{}
	for i, n := range names {
		k := i * nfiles / len(names)
		file := singleWeightsFile
		if s.shards > 0 {
			file = fmt.Sprintf("model-%05d-of-%05d.safetensors", k+1, nfiles)
		}
		weightMap[n] = file
		var err error
		if dt, ok := s.rawDType[n]; ok {
			err = writers[k].AddRaw(n, dt, shapes[n], make([]byte, shapeProduct(shapes[n])*dt.Size()))
		} else {
			err = writers[k].AddFloat32(n, dtype, shapes[n], tensors[n])
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	for k := range writers {
		writers[k].SetMetadata("format", "pt")
		file := singleWeightsFile
		if s.shards > 0 {
			file = fmt.Sprintf("model-%05d-of-%05d.safetensors", k+1, nfiles)
		}
		if err := writers[k].WriteFile(filepath.Join(dir, file)); err != nil {
			t.Fatal(err)
		}
	}
	if s.shards > 0 {
		writeTestJSON(t, filepath.Join(dir, weightsIndexFile), map[string]any{"metadata": map[string]any{"total_size": 0}, "weight_map": weightMap})
	}
	data, err := MarshalConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if s.configEdit != nil {
		data = editConfig(t, string(data), s.configEdit)
	}
	if err := os.WriteFile(filepath.Join(dir, "config.json"), data, 0o644); err != nil {
		t.Fatal(err)
	}
	if s.tokenizerVocab > 0 {
		vocab := map[string]int{}
		for i := 0; i < s.tokenizerVocab-2; i++ {
			vocab[fmt.Sprintf("t%d", i)] = i
		}
		writeTestJSON(t, filepath.Join(dir, "tokenizer.json"), map[string]any{
			"version":      "1.0",
			"added_tokens": []map[string]any{{"id": s.tokenizerVocab - 1, "content": "<|end|>", "special": true}},
			"model":        map[string]any{"type": "BPE", "vocab": vocab, "merges": []string{}},
		})
	}
	return dir, w
}

func shapeProduct(shape []int) int {
	n := 1
	for _, d := range shape {
		n *= d
	}
	return n
}

func writeTestJSON(t *testing.T, path string, v any) {
	t.Helper()
	data, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
}

func tinyConfig(t *testing.T) Config {
	t.Helper()
	c, err := RandomConfig("random:tiny")
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestLoadWeightsSingleFile(t *testing.T) {
	cfg := tinyConfig(t)
	dir, want := testModelDir{cfg: cfg}.write(t)
	got, err := LoadWeights(dir, cfg, 0, cfg.NumLayers, true, true)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatal("loaded weights differ from those written")
	}
	cfg2, err := LoadConfig(dir)
	if err != nil || !reflect.DeepEqual(cfg2, cfg) {
		t.Fatalf("config round trip: %+v, %v", cfg2, err)
	}
}

func TestLoadWeightsBF16(t *testing.T) {
	cfg := tinyConfig(t)
	dir, want := testModelDir{cfg: cfg, dtype: safetensors.BF16}.write(t)
	got, err := LoadWeights(dir, cfg, 0, cfg.NumLayers, true, true)
	if err != nil {
		t.Fatal(err)
	}
	wantT, gotT := want.NamedTensors(), got.NamedTensors()
	if len(wantT) != len(gotT) {
		t.Fatalf("%d tensors, want %d", len(gotT), len(wantT))
	}
	for name, w := range wantT {
		g := gotT[name]
		for i := range w {
			if r := math.Float32frombits(uint32(ops.ToBF16(w[i])) << 16); g[i] != r {
				t.Fatalf("%s[%d] = %v, want %v (bf16 of %v)", name, i, g[i], r, w[i])
			}
		}
	}
}

// TestLoadWeightsShardedPart loads one pipeline stage's part from a sharded
// checkpoint and proves it reads nothing else: after the other shards are cut
// short, the part still loads, while the rest fails.
func TestLoadWeightsShardedPart(t *testing.T) {
	cfg := tinyConfig(t)
	dir, want := testModelDir{cfg: cfg, shards: 3}.write(t)
	m, err := OpenModelDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if len(m.Files) != 3 {
		t.Fatalf("%d files", len(m.Files))
	}
	got, err := m.LoadWeights(cfg, 1, 3, false, false)
	if err != nil {
		t.Fatal(err)
	}
	if got.Embed != nil || got.FinalNorm != nil || got.LMHead != nil || got.Layers[0] != nil || got.Layers[3] != nil {
		t.Error("loaded more than layers [1,3)")
	}
	for i := 1; i < 3; i++ {
		if !reflect.DeepEqual(got.Layers[i], want.Layers[i]) {
			t.Errorf("layer %d differs", i)
		}
	}

	// Find which shard holds layer 0's q_proj and cut every other shard to its header.
	_, keep, _ := m.Tensor(LayerTensorName(0, "q_proj"))
	for _, f := range m.Files {
		if f != keep {
			if err := os.Truncate(f.Name, dataStart(t, f.Name)); err != nil {
				t.Fatal(err)
			}
		}
	}
	var inKeep []string
	for _, ti := range keep.Tensors() {
		inKeep = append(inKeep, ti.Name)
	}
	for _, name := range inKeep {
		if _, _, err := m.ReadFloat32(name); err != nil {
			t.Errorf("tensor %s in the untouched shard: %v", name, err)
		}
	}
	_, err = m.LoadWeights(cfg, 0, cfg.NumLayers, true, true)
	testcheck.ErrorContains(t, err, "file truncated since it was opened?")
}

// dataStart is the offset of the data section of the safetensors file at path:
// after the 8-byte header length and the header.
func dataStart(t *testing.T, path string) int64 {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var n uint64
	if err := binary.Read(f, binary.LittleEndian, &n); err != nil {
		t.Fatal(err)
	}
	return 8 + int64(n)
}

func TestLoadWeightsTied(t *testing.T) {
	cfg := tinyConfig(t)
	cfg.TieEmbeddings = true
	dir, want := testModelDir{cfg: cfg, keepLMHead: true}.write(t) // a stray lm_head is ignored
	got, err := LoadWeights(dir, cfg, cfg.NumLayers-1, cfg.NumLayers, false, true)
	if err != nil {
		t.Fatal(err)
	}
	if got.LMHead != nil || !reflect.DeepEqual(got.Embed, want.Embed) || !reflect.DeepEqual(got.FinalNorm, want.FinalNorm) {
		t.Error("tied head stage must hold the embedding and final norm, and no lm_head")
	}
	got, err = LoadWeights(dir, cfg, 0, 1, false, false)
	if err != nil || got.Embed != nil {
		t.Errorf("a middle stage of a tied model holds the embedding (%v)", err)
	}
}

func TestLoadWeightsErrors(t *testing.T) {
	cfg := tinyConfig(t)

	dir, _ := testModelDir{cfg: cfg, reshape: map[string][]int{LayerTensorName(1, "q_proj"): {32, 64}}}.write(t)
	_, err := LoadWeights(dir, cfg, 0, cfg.NumLayers, true, true)
	testcheck.ErrorContains(t, err, "model.safetensors: tensor model.layers.1.self_attn.q_proj.weight has shape [32 64], but config.json implies [64 64]")

	dir, _ = testModelDir{cfg: cfg, drop: []string{LayerTensorName(2, "up_proj")}}.write(t)
	_, err = LoadWeights(dir, cfg, 0, cfg.NumLayers, true, true)
	testcheck.ErrorContains(t, err, dir+": missing tensor model.layers.2.mlp.up_proj.weight (expected shape [176 64])")
	if _, err = LoadWeights(dir, cfg, 0, 2, true, true); err != nil {
		t.Errorf("layers [0,2) do not need the missing tensor: %v", err)
	}

	dir, _ = testModelDir{cfg: cfg, rawDType: map[string]safetensors.DType{"model.norm.weight": safetensors.I32}}.write(t)
	_, err = LoadWeights(dir, cfg, 0, cfg.NumLayers, true, true)
	testcheck.ErrorContains(t, err, "tensor model.norm.weight: dtype I32 cannot be read as floats")

	_, err = LoadWeights(dir, cfg, 2, 9, true, true)
	testcheck.ErrorContains(t, err, "layer range [2,9) is outside the model's 4 layers")
}

func TestOpenModelDirErrors(t *testing.T) {
	cfg := tinyConfig(t)
	shard := func(k int) string { return fmt.Sprintf("model-%05d-of-00003.safetensors", k) }

	dir, _ := testModelDir{cfg: cfg, shards: 3}.write(t)
	os.Remove(filepath.Join(dir, shard(2)))
	_, err := OpenModelDir(dir)
	testcheck.ErrorContains(t, err, filepath.Join(dir, weightsIndexFile)+": shard "+shard(2)+" named in the index is missing")

	editIndex := func(dir string, f func(wm map[string]any)) {
		path := filepath.Join(dir, weightsIndexFile)
		data, _ := os.ReadFile(path)
		var idx map[string]any
		json.Unmarshal(data, &idx)
		f(idx["weight_map"].(map[string]any))
		writeTestJSON(t, path, idx)
	}
	dir, _ = testModelDir{cfg: cfg, shards: 3}.write(t)
	editIndex(dir, func(wm map[string]any) { wm["model.norm.weight"] = shard(1) })
	_, err = OpenModelDir(dir)
	testcheck.ErrorContains(t, err, "tensor model.norm.weight is mapped to "+shard(1)+", which does not contain it")

	dir, _ = testModelDir{cfg: cfg, shards: 3}.write(t)
	editIndex(dir, func(wm map[string]any) { wm["model.norm.weight"] = "../" + shard(3) })
	_, err = OpenModelDir(dir)
	testcheck.ErrorContains(t, err, `tensor model.norm.weight: shard name "../`+shard(3)+`" is not a plain file name`)

	dir, _ = testModelDir{cfg: cfg, shards: 3}.write(t)
	os.WriteFile(filepath.Join(dir, weightsIndexFile), []byte(`{"weight_map": [}`), 0o644)
	_, err = OpenModelDir(dir)
	testcheck.ErrorContains(t, err, weightsIndexFile+": not a safetensors index: line 1 column 17")

	dir, _ = testModelDir{cfg: cfg, shards: 3}.write(t)
	os.WriteFile(filepath.Join(dir, weightsIndexFile), []byte(`{"metadata": {}}`), 0o644)
	_, err = OpenModelDir(dir)
	testcheck.ErrorContains(t, err, "weight_map is missing or empty")

	dir = t.TempDir()
	os.WriteFile(filepath.Join(dir, "pytorch_model.bin"), nil, 0o644)
	_, err = OpenModelDir(dir)
	testcheck.ErrorContains(t, err, dir+": no model.safetensors or model.safetensors.index.json (found pytorch_model.bin; train reads Hugging Face safetensors only)")

	// A corrupt shard is reported with its own name.
	dir, _ = testModelDir{cfg: cfg, shards: 3}.write(t)
	path := filepath.Join(dir, shard(3))
	f, _ := os.OpenFile(path, os.O_WRONLY, 0)
	f.WriteAt(binary.LittleEndian.AppendUint64(nil, 1<<40), 0)
	f.Close()
	_, err = OpenModelDir(dir)
	testcheck.ErrorContains(t, err, path+": header length 1099511627776 exceeds")
}

func TestLoadModelStories(t *testing.T) {
	needStories(t)
	w, err := LoadModel(storiesDir)
	if err != nil {
		t.Fatal(err)
	}
	if len(w.Embed) != 512*64 || w.LMHead != nil || len(w.FinalNorm) != 64 || len(w.Layers) != 5 {
		t.Fatalf("unexpected shapes: embed %d, lm_head %v, norm %d, layers %d", len(w.Embed), w.LMHead != nil, len(w.FinalNorm), len(w.Layers))
	}
	for i, l := range w.Layers {
		if len(l.K) != 32*64 || len(l.Down) != 64*172 {
			t.Errorf("layer %d: k %d, down %d", i, len(l.K), len(l.Down))
		}
	}
	// Values read independently with Python's struct module.
	for _, c := range []struct {
		got, want float32
	}{
		{w.Embed[0], -0.29474878311157227},
		{w.Embed[512*64-1], -0.424032598733902},
		{w.Layers[4].Down[5], -0.14393137395381927},
		{w.FinalNorm[3], 1.1078318357467651},
	} {
		if c.got != c.want {
			t.Errorf("got %v, want %v", c.got, c.want)
		}
	}
}

// TestLoadSourceStageCancelled: a cancelled context stops loading with its
// error, for a model directory and for random weights alike, so that a signal
// during start-up does not wait for the whole model.
func TestLoadSourceStageCancelled(t *testing.T) {
	cfg := tinyConfig(t)
	dir, _ := testModelDir{cfg: cfg}.write(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	for _, name := range []string{dir, "random:tiny"} {
		if _, err := LoadSourceStage(ctx, name, cfg, 1, 0, cfg.NumLayers, true, true); !errors.Is(err, context.Canceled) {
			t.Errorf("%s with a cancelled context: %v, want context.Canceled", name, err)
		}
		if _, err := LoadSourceStage(context.Background(), name, cfg, 1, 0, cfg.NumLayers, true, true); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
}

// TestCheckSourceTensors: the headers alone show weights that do not belong
// to config.json, naming a mis-shaped tensor first; random:NAME and a
// matching directory pass.
func TestCheckSourceTensors(t *testing.T) {
	cfg := tinyConfig(t)
	good, _ := testModelDir{cfg: cfg}.write(t)
	if err := CheckSourceTensors(good, cfg); err != nil {
		t.Errorf("matching directory: %v", err)
	}
	if err := CheckSourceTensors("random:tiny", cfg); err != nil {
		t.Errorf("random:tiny: %v", err)
	}
	bad, _ := testModelDir{cfg: cfg, drop: []string{"model.norm.weight"},
		reshape: map[string][]int{"model.layers.1.mlp.up_proj.weight": {8, 8}}}.write(t)
	err := CheckSourceTensors(bad, cfg)
	if err == nil || !strings.HasPrefix(err.Error(), "model "+bad+": the weights do not match its config.json: tensor model.layers.1.mlp.up_proj.weight has shape [8 8]") ||
		!strings.Contains(err.Error(), "missing tensor model.norm.weight") {
		t.Errorf("mis-shaped and missing tensors: %v", err)
	}
}
