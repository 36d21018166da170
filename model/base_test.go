package model

import (
	"context"
	"strings"
	"testing"

	"train/format/safetensors"
)

// TestLoadWeightsBase: a stage's Base lists exactly the tensors it read, with
// their stored dtype; the same directory gives the same Base, and one weight
// changed (same config.json, same headers) is named as the first difference.
func TestLoadWeightsBase(t *testing.T) {
	cfg := tinyConfig(t)
	dir, _ := testModelDir{cfg: cfg, dtype: safetensors.BF16}.write(t)
	load := func(dir string, lo, hi int, embed, head bool) Base {
		t.Helper()
		m, err := OpenModelDir(dir)
		if err != nil {
			t.Fatal(err)
		}
		defer m.Close()
		_, base, err := m.LoadWeightsBase(context.Background(), cfg, lo, hi, embed, head)
		if err != nil {
			t.Fatal(err)
		}
		return base
	}
	whole := load(dir, 0, cfg.NumLayers, true, true)
	if n := len(whole.Tensors); n != len(cfg.ExpectedTensors()) {
		t.Errorf("%d tensors identified, the model has %d", n, len(cfg.ExpectedTensors()))
	}
	if first := whole.Tensors[0]; first.Name != "model.embed_tokens.weight" || first.DType != "BF16" || first.CRC32C == 0 {
		t.Errorf("first tensor %+v: want the embedding, stored as BF16, with a checksum", first)
	}
	part := load(dir, 1, 2, false, false)
	if len(part.Tensors) != 9 || part.Tensors[0].Name != LayerTensorName(1, "input_layernorm") {
		t.Errorf("layer 1's stage identified %d tensors starting with %s, want layer 1's 9", len(part.Tensors), part.Tensors[0].Name)
	}
	if m := part.Mismatch(&whole); m != "" {
		t.Errorf("a stage of the same model: %s", m)
	}

	other, _ := testModelDir{cfg: cfg, dtype: safetensors.BF16}.write(t)
	f, err := safetensors.Open(other + "/model.safetensors")
	if err != nil {
		t.Fatal(err)
	}
	var w safetensors.Writer
	for _, ti := range f.Tensors() {
		v, _, err := f.ReadFloat32(ti.Name)
		if err != nil {
			t.Fatal(err)
		}
		if ti.Name == LayerTensorName(1, "v_proj") {
			v[3] += 1
		}
		if err := w.AddFloat32(ti.Name, ti.DType, ti.Shape, v); err != nil {
			t.Fatal(err)
		}
	}
	f.Close()
	if err := w.WriteFile(other + "/model.safetensors"); err != nil {
		t.Fatal(err)
	}
	changed := load(other, 0, cfg.NumLayers, true, true)
	if m := changed.Mismatch(&whole); !strings.Contains(m, "tensor "+LayerTensorName(1, "v_proj")+" differs") {
		t.Errorf("one changed weight: mismatch %q, want it named", m)
	}
}

// TestBaseMismatchRandom: random weights are their source and seed.
func TestBaseMismatchRandom(t *testing.T) {
	a := Base{Random: "random:tiny", Seed: 1}
	for _, tc := range []struct {
		b    Base
		want string
	}{
		{Base{Random: "random:tiny", Seed: 1}, ""},
		{Base{Random: "random:tiny", Seed: 7}, "the checkpoint's base is random:tiny with seed 1, this run's is random:tiny with seed 7"},
		{Base{Tensors: []BaseTensor{{Name: "x"}}}, "this run's is read from safetensors files"},
	} {
		if got := tc.b.Mismatch(&a); (tc.want == "") != (got == "") || !strings.Contains(got, tc.want) {
			t.Errorf("%+v against %+v: %q, want %q", tc.b, a, got, tc.want)
		}
	}
}
