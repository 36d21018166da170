package model

import (
	"encoding/json"
	"os"
	"path/filepath"
	"sort"
	"testing"

	"train/format/safetensors"
	"train/internal/testcheck"
)

func TestWriteHFModelRoundTrip(t *testing.T) {
	for _, src := range []string{"testdata/parity/tiny", "../../shared/models/stories260K"} {
		if _, err := os.Stat(src); err != nil {
			t.Logf("skipping %s: %v", src, err)
			continue
		}
		w, err := LoadModel(src)
		if err != nil {
			t.Fatal(err)
		}
		want := w.NamedTensors()
		// Single file.
		one := t.TempDir()
		if err := WriteHFModel(one, w, "", 0); err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stat(filepath.Join(one, "model.safetensors")); err != nil {
			t.Fatal(err)
		}
		back, err := LoadModel(one)
		if err != nil {
			t.Fatal(err)
		}
		if back.Config.TieEmbeddings != w.Config.TieEmbeddings || back.Config.Rope != w.Config.Rope {
			t.Fatalf("config changed: %+v vs %+v", back.Config, w.Config)
		}
		testcheck.EqualTensors(t, src+" single", back.NamedTensors(), want, 0)

		// Sharded with a small limit, written over the single-file save.
		var total int64
		for _, v := range want {
			total += int64(4 * len(v))
		}
		limit := total / 5
		if err := WriteHFModel(one, w, "", limit); err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stat(filepath.Join(one, "model.safetensors")); err == nil {
			t.Fatal("the stale model.safetensors of the first save is still there")
		}
		raw, err := os.ReadFile(filepath.Join(one, "model.safetensors.index.json"))
		if err != nil {
			t.Fatal(err)
		}
		var index struct {
			Metadata  map[string]int64  `json:"metadata"`
			WeightMap map[string]string `json:"weight_map"`
		}
		if err := json.Unmarshal(raw, &index); err != nil {
			t.Fatal(err)
		}
		if index.Metadata["total_size"] != total || len(index.WeightMap) != len(want) {
			t.Fatalf("index: total_size %d (want %d), %d tensors (want %d)", index.Metadata["total_size"], total, len(index.WeightMap), len(want))
		}
		shards := map[string]bool{}
		for _, f := range index.WeightMap {
			shards[f] = true
		}
		var names []string
		for f := range shards {
			names = append(names, f)
		}
		sort.Strings(names)
		if len(names) < 5 || names[0] != "model-00001-of-"+names[0][15:] {
			t.Fatalf("shards %v", names)
		}
		for _, f := range names {
			st, err := os.Stat(filepath.Join(one, f))
			if err != nil {
				t.Fatal(err)
			}
			_ = st
		}
		back, err = LoadModel(one)
		if err != nil {
			t.Fatal(err)
		}
		testcheck.EqualTensors(t, src+" sharded", back.NamedTensors(), want, 0)

		// BF16: within bf16 rounding (relative 2^-8).
		bf := t.TempDir()
		if err := WriteHFModelAs(bf, w, "", 0, safetensors.BF16); err != nil {
			t.Fatal(err)
		}
		back, err = LoadModel(bf)
		if err != nil {
			t.Fatal(err)
		}
		if back.Config.TorchDType != "bfloat16" {
			t.Errorf("bf16 export: torch_dtype %q", back.Config.TorchDType)
		}
		testcheck.EqualTensors(t, src+" bf16", back.NamedTensors(), want, 1.0/256)
	}
}

func TestWriteHFModelTokenizer(t *testing.T) {
	src := "../../shared/models/stories260K"
	if _, err := os.Stat(src); err != nil {
		t.Skipf("stories260K is not here (%v)", err)
	}
	w, err := LoadModel(src)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := WriteHFModel(dir, w, src, 0); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"tokenizer.json", "tokenizer_config.json"} {
		a, err := os.ReadFile(filepath.Join(src, f))
		if err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(filepath.Join(dir, f))
		if err != nil {
			t.Fatal(err)
		}
		if string(a) != string(b) {
			t.Errorf("%s differs from the source", f)
		}
	}
	if err := WriteHFModel(t.TempDir(), w, t.TempDir(), 0); err == nil {
		t.Error("a tokenizer directory without tokenizer.json was accepted")
	}
}
