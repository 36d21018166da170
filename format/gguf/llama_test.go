package gguf

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"train/internal/testcheck"
	"train/model"
)

func needStoriesGGUF(t testing.TB) {
	t.Helper()
	if _, err := os.Stat(stories260K); err != nil {
		t.Skipf("stories260K is not here (%v): run from a checkout beside ../shared", err)
	}
}

// TestGGUFStories260KEqualsSafetensors: llama.cpp's GGUF of stories260K (converted
// from the llama2.c checkpoint) read with our reader equals the Hugging Face
// safetensors copy tensor by tensor. Found by experiment and tested exactly here:
// every tensor's bytes are the same with the dims reversed (ne = [in, out]), except
// q and k, whose rows are in llama.cpp's interleaved rope order and equal the
// safetensors rows after unpermute (by head_count for q, head_count_kv for
// k); output.weight is present in the GGUF and equals the (tied) embedding.
func TestGGUFStories260KEqualsSafetensors(t *testing.T) {
	needStoriesGGUF(t)
	g, err := Open(filepath.Join(stories260K, "stories260Ktok512.gguf"))
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	if g.Version != 3 || g.Alignment != 32 || len(g.Tensors) != 48 {
		t.Fatalf("version %d, alignment %d, %d tensors", g.Version, g.Alignment, len(g.Tensors))
	}
	w, c, err := ReadModel(g)
	if err != nil {
		t.Fatal(err)
	}
	ref, err := model.LoadModel(stories260K)
	if err != nil {
		t.Fatal(err)
	}
	rc := ref.Config
	if c.HiddenSize != rc.HiddenSize || c.IntermediateSize != rc.IntermediateSize || c.NumLayers != rc.NumLayers ||
		c.NumHeads != rc.NumHeads || c.NumKVHeads != rc.NumKVHeads || c.HeadDim != rc.HeadDim || c.VocabSize != rc.VocabSize ||
		c.Rope != rc.Rope || float32(c.RMSNormEps) != float32(rc.RMSNormEps) || c.BOSTokenID != 1 || len(c.EOSTokenIDs) != 1 || c.EOSTokenIDs[0] != 2 {
		t.Fatalf("config from GGUF %+v\nsafetensors %+v", c, rc)
	}
	// The GGUF stores output.weight although the model is tied: it must be the embedding.
	if c.TieEmbeddings || w.LMHead == nil {
		t.Fatal("stories260K's GGUF has output.weight; the import should keep it")
	}
	testcheck.EqualTensors(t, "output.weight vs embedding", map[string][]float32{"x": w.LMHead}, map[string][]float32{"x": ref.Embed}, 0)
	got := w.NamedTensors()
	delete(got, "lm_head.weight")
	testcheck.EqualTensors(t, "stories260K GGUF vs safetensors", got, ref.NamedTensors(), 0)

	// Without the unpermutation q and k differ: the test would notice it missing.
	rawQ, err := g.ReadFloat32("blk.0.attn_q.weight")
	if err != nil {
		t.Fatal(err)
	}
	same := true
	for i := range rawQ {
		same = same && rawQ[i] == ref.Layers[0].Q[i]
	}
	if same {
		t.Fatal("blk.0.attn_q.weight equals q_proj without unpermuting: the permutation is not exercised")
	}
}

func ggufArraysEqual(t *testing.T, what string, got, want any) {
	t.Helper()
	var n int
	var eq func(i int) bool
	switch a := got.(type) {
	case []string:
		b, _ := want.([]string)
		n, eq = max(len(a), len(b)), func(i int) bool { return len(a) == len(b) && a[i] == b[i] }
	case []float32:
		b, _ := want.([]float32)
		n, eq = max(len(a), len(b)), func(i int) bool { return len(a) == len(b) && a[i] == b[i] }
	case []int32:
		b, _ := want.([]int32)
		n, eq = max(len(a), len(b)), func(i int) bool { return len(a) == len(b) && a[i] == b[i] }
	default:
		t.Fatalf("%s: unexpected type %T", what, got)
	}
	if n == 0 {
		t.Fatalf("%s: empty or of another type (%T vs %T)", what, got, want)
	}
	for i := 0; i < n; i++ {
		if !eq(i) {
			t.Fatalf("%s: differs at %d (%T vs %T)", what, i, got, want)
		}
	}
}

// TestGGUFTokenizerFromTokenizerJSON: the tokenizer metadata we derive from
// stories260K's tokenizer.json equals what llama.cpp wrote into its GGUF: the
// token strings, scores, token types and special ids.
func TestGGUFTokenizerFromTokenizerJSON(t *testing.T) {
	needStoriesGGUF(t)
	orig, err := Open(filepath.Join(stories260K, "stories260Ktok512.gguf"))
	if err != nil {
		t.Fatal(err)
	}
	defer orig.Close()
	w, err := model.LoadModel(stories260K)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "s.gguf")
	if err := WriteModel(path, w, ModelOptions{Type: F32, Name: "stories260K", TokenizerDir: stories260K}); err != nil {
		t.Fatal(err)
	}
	g, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	for _, k := range []string{"tokenizer.ggml.tokens", "tokenizer.ggml.scores", "tokenizer.ggml.token_type"} {
		ggufArraysEqual(t, k, g.Metadata[k], orig.Metadata[k])
	}
	for _, k := range []string{"tokenizer.ggml.model", "general.architecture"} {
		a, _ := g.String(k)
		b, _ := orig.String(k)
		if a != b {
			t.Errorf("%s = %q, llama.cpp wrote %q", k, a, b)
		}
	}
	for _, k := range []string{"tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id", "tokenizer.ggml.unknown_token_id",
		"llama.embedding_length", "llama.feed_forward_length", "llama.attention.head_count", "llama.attention.head_count_kv",
		"llama.block_count", "llama.rope.dimension_count"} {
		a, ok1 := g.Uint(k)
		b, ok2 := orig.Uint(k)
		if !ok1 || !ok2 || a != b {
			t.Errorf("%s = %d (%v), llama.cpp wrote %d (%v)", k, a, ok1, b, ok2)
		}
	}
	if a, _ := g.Float("llama.attention.layer_norm_rms_epsilon"); a != 9.999999747378752e-06 {
		t.Errorf("rms eps %v", a)
	}
	if add, ok := g.Metadata["tokenizer.ggml.add_bos_token"].(bool); !ok || !add {
		t.Errorf("add_bos_token %v", g.Metadata["tokenizer.ggml.add_bos_token"])
	}
}

// writeOpen writes w with opt to a temporary file and opens it (closed when the
// test ends).
func writeOpen(t *testing.T, w *model.Weights, opt ModelOptions) *File {
	t.Helper()
	path := filepath.Join(t.TempDir(), "m.gguf")
	if err := WriteModel(path, w, opt); err != nil {
		t.Fatal(err)
	}
	g, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { g.Close() })
	return g
}

func ggufRoundTrip(t *testing.T, w *model.Weights, typ GGMLType, tokDir string) *model.Weights {
	t.Helper()
	g := writeOpen(t, w, ModelOptions{Type: typ, TokenizerDir: tokDir})
	back, _, err := ReadModel(g)
	if err != nil {
		t.Fatal(err)
	}
	return back
}

func TestGGUFRoundTrip(t *testing.T) {
	srcs := []string{"../../model/testdata/parity/tiny"}
	if _, err := os.Stat(stories260K); err == nil {
		srcs = append(srcs, stories260K)
	}
	for _, src := range srcs {
		w, err := model.LoadModel(src)
		if err != nil {
			t.Fatal(err)
		}
		tokDir := ""
		if _, err := os.Stat(filepath.Join(src, "tokenizer.json")); err == nil {
			tokDir = src
		}
		for _, tc := range []struct {
			typ GGMLType
			tol float64
		}{{F32, 0}, {F16, 1.0 / 2048}, {BF16, 1.0 / 256}} {
			back := ggufRoundTrip(t, w, tc.typ, tokDir)
			c, bc := w.Config, back.Config
			bc.TorchDType, c.TorchDType = "", ""
			if bc.Rope != c.Rope || bc.RMSNormEps != c.RMSNormEps || bc.TieEmbeddings != c.TieEmbeddings || bc.HeadDim != c.HeadDim ||
				bc.NumKVHeads != c.NumKVHeads || bc.VocabSize != c.VocabSize || bc.MaxPositions != c.MaxPositions || bc.BOSTokenID != c.BOSTokenID {
				t.Fatalf("%s %s: config %+v, want %+v", src, tc.typ, bc, c)
			}
			testcheck.EqualTensors(t, src+" GGUF "+tc.typ.String(), back.NamedTensors(), w.NamedTensors(), tc.tol)
		}
	}
}

func TestGGUFLlama3RopeFactors(t *testing.T) {
	w, err := model.LoadModel("../../model/testdata/parity/tiny")
	if err != nil {
		t.Fatal(err)
	}
	g := writeOpen(t, w, ModelOptions{Type: F32})
	f, err := g.ReadFloat32("rope_freqs.weight")
	if err != nil {
		t.Fatal(err)
	}
	// llama.cpp divides each inverse frequency by its factor; that must give the
	// scaled frequencies our model uses.
	inv, err := model.RopeInvFreq(&w.Config)
	if err != nil {
		t.Fatal(err)
	}
	plain := w.Config
	plain.Rope.Type = "default"
	base, err := model.RopeInvFreq(&plain)
	if err != nil {
		t.Fatal(err)
	}
	if len(f) != len(inv) {
		t.Fatalf("%d factors for %d frequencies", len(f), len(inv))
	}
	for i := range f {
		if d := float64(base[i]/f[i]) - float64(inv[i]); d > 1e-6*float64(inv[i]) || -d > 1e-6*float64(inv[i]) {
			t.Errorf("frequency %d: base/factor %v, model %v", i, base[i]/f[i], inv[i])
		}
	}
}

// TestGGUFQuantizedModel writes stories260K (or the tiny parity model) as Q8_0
// and Q4_0: general.file_type is llama.cpp's, every tensor has the type
// matrixType gives (norms F32; ffn_down, whose rows of 172 values do not fit
// 32-blocks, F16; the tied token_embd, which is also the output, Q8_0 under
// Q4_0), and every weight reads back within its type's bound.
func TestGGUFQuantizedModel(t *testing.T) {
	src := stories260K
	if _, err := os.Stat(src); err != nil {
		src = "../../model/testdata/parity/tiny"
	}
	w, err := model.LoadModel(src)
	if err != nil {
		t.Fatal(err)
	}
	for _, typ := range []GGMLType{Q8_0, Q4_0} {
		g := writeOpen(t, w, ModelOptions{Type: typ})
		if ft, _ := g.Uint("general.file_type"); ft != map[GGMLType]uint64{Q8_0: 7, Q4_0: 2}[typ] {
			t.Errorf("%s: general.file_type %d", typ, ft)
		}
		c := w.Config
		for _, ti := range g.Tensors {
			want := matrixType(typ, ti.Name == "output.weight" || (ti.Name == "token_embd.weight" && c.TieEmbeddings), int(ti.Dims[0]))
			if len(ti.Dims) == 1 {
				want = F32
			}
			if ti.Type != want {
				t.Errorf("%s: %s stored as %s, want %s", typ, ti.Name, ti.Type, want)
			}
		}
		if src == stories260K {
			for name, want := range map[string]GGMLType{"blk.0.ffn_down.weight": F16, "blk.0.ffn_up.weight": typ, "token_embd.weight": Q8_0, "blk.0.attn_norm.weight": F32} {
				if ti, _ := g.Tensor(name); ti.Type != want {
					t.Errorf("%s: %s is %s, want %s", typ, name, ti.Type, want)
				}
			}
		}
		back, _, err := ReadModel(g)
		if err != nil {
			t.Fatal(err)
		}
		got, ref := back.NamedTensors(), w.NamedTensors()
		for name, x := range ref {
			y := got[name]
			if len(y) != len(x) {
				t.Fatalf("%s: %s has %d values, want %d", typ, name, len(y), len(x))
			}
			if len(x)%QuantBlock != 0 || strings.Contains(name, "norm") || strings.Contains(name, "down_proj") {
				testcheck.EqualTensors(t, typ.String()+" "+name, map[string][]float32{name: y}, map[string][]float32{name: x}, 1.0/2048)
				continue
			}
			bt := typ
			if strings.Contains(name, "embed") && typ == Q4_0 {
				bt = Q8_0 // the tied output
			}
			if i, e, b := quantBoundViolation(bt, x, y); i >= 0 {
				t.Errorf("%s: %s[%d] = %v read back as %v: error %g over the bound %g", typ, name, i, x[i], y[i], e, b)
			}
		}
	}
}
