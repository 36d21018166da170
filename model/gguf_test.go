package model

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"train/internal/testcheck"
)

const stories260K = "../../shared/models/stories260K"

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
// safetensors rows after ggufUnpermute (by head_count for q, head_count_kv for
// k); output.weight is present in the GGUF and equals the (tied) embedding.
func TestGGUFStories260KEqualsSafetensors(t *testing.T) {
	needStoriesGGUF(t)
	g, err := ReadGGUF(filepath.Join(stories260K, "stories260Ktok512.gguf"))
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	if g.Version != 3 || g.Alignment != 32 || len(g.Tensors) != 48 {
		t.Fatalf("version %d, alignment %d, %d tensors", g.Version, g.Alignment, len(g.Tensors))
	}
	w, c, err := GGUFToWeights(g)
	if err != nil {
		t.Fatal(err)
	}
	ref, err := LoadModel(stories260K)
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
	orig, err := ReadGGUF(filepath.Join(stories260K, "stories260Ktok512.gguf"))
	if err != nil {
		t.Fatal(err)
	}
	defer orig.Close()
	w, err := LoadModel(stories260K)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "s.gguf")
	if err := WriteGGUF(path, w, GGUFOptions{Type: GGMLTypeF32, Name: "stories260K", TokenizerDir: stories260K}); err != nil {
		t.Fatal(err)
	}
	g, err := ReadGGUF(path)
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

func ggufRoundTrip(t *testing.T, w *Weights, typ GGMLType, tokDir string) *Weights {
	t.Helper()
	path := filepath.Join(t.TempDir(), "m.gguf")
	if err := WriteGGUF(path, w, GGUFOptions{Type: typ, TokenizerDir: tokDir}); err != nil {
		t.Fatal(err)
	}
	back, err := LoadAny(path)
	if err != nil {
		t.Fatal(err)
	}
	return back
}

func TestGGUFRoundTrip(t *testing.T) {
	srcs := []string{"testdata/parity/tiny"}
	if _, err := os.Stat(stories260K); err == nil {
		srcs = append(srcs, stories260K)
	}
	for _, src := range srcs {
		w, err := LoadModel(src)
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
		}{{GGMLTypeF32, 0}, {GGMLTypeF16, 1.0 / 2048}, {GGMLTypeBF16, 1.0 / 256}} {
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
	w, err := LoadModel("testdata/parity/tiny")
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "m.gguf")
	if err := WriteGGUF(path, w, GGUFOptions{Type: GGMLTypeF32}); err != nil {
		t.Fatal(err)
	}
	g, err := ReadGGUF(path)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	f, err := g.ReadFloat32("rope_freqs.weight")
	if err != nil {
		t.Fatal(err)
	}
	// llama.cpp divides each inverse frequency by its factor; that must give the
	// scaled frequencies our model uses.
	inv, err := RopeInvFreq(&w.Config)
	if err != nil {
		t.Fatal(err)
	}
	plain := w.Config
	plain.Rope.Type = "default"
	base, err := RopeInvFreq(&plain)
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

func TestFloat32ToF16(t *testing.T) {
	// Every half converts to float32 and back to itself.
	for h := 0; h < 1<<16; h++ {
		if h&0x7c00 == 0x7c00 && h&0x3ff != 0 {
			continue // NaN
		}
		if got := float32ToF16(f16ToFloat32(uint16(h))); got != uint16(h) {
			t.Fatalf("half %#04x -> %v -> %#04x", h, f16ToFloat32(uint16(h)), got)
		}
	}
	for _, c := range []struct {
		f    float32
		want uint16
	}{
		{1 + 1.0/2048, 0x3c00},          // tie, even stays
		{1 + 3.0/2048, 0x3c02},          // tie, odd rounds up
		{65520, 0x7c00},                 // rounds to infinity
		{65519, 0x7bff},                 // largest finite
		{5.960464477539063e-08, 0x0001}, // smallest subnormal
		{2.98e-08, 0x0000},              // below half of it
		{-2.0, 0xc000},
	} {
		if got := float32ToF16(c.f); got != c.want {
			t.Errorf("float32ToF16(%v) = %#04x, want %#04x", c.f, got, c.want)
		}
	}
}

func smallGGUF(t testing.TB) []byte {
	var g GGUFWriter
	if err := g.Set("general.architecture", "llama"); err != nil {
		t.Fatal(err)
	}
	g.Set("a.u32", uint32(7))
	g.Set("a.list", []string{"x", "yz"})
	g.Set("a.f", []float32{1, 2})
	g.Set("a.b", true)
	if err := g.AddTensor("t", GGMLTypeF16, []int{2, 3}, []float32{1, 2, 3, 4, 5, 6}); err != nil {
		t.Fatal(err)
	}
	g.AddTensor("u", GGMLTypeBF16, []int{3}, []float32{-1, 0.5, 8})
	var b bytes.Buffer
	if _, err := g.WriteTo(&b); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func TestGGUFReaderErrors(t *testing.T) {
	data := smallGGUF(t)
	g, err := ParseGGUF("small", bytes.NewReader(data), int64(len(data)))
	if err != nil {
		t.Fatal(err)
	}
	if v, _ := g.Uint("a.u32"); v != 7 || len(g.Metadata["a.list"].([]string)) != 2 || g.Metadata["a.b"] != true {
		t.Fatalf("metadata %v", g.Metadata)
	}
	if ti, _ := g.Tensor("t"); ti.Dims[0] != 3 || ti.Dims[1] != 2 || ti.Offset%32 != 0 {
		t.Fatalf("tensor t %+v", ti)
	}
	v, err := g.ReadFloat32("u")
	if err != nil || v[0] != -1 || v[1] != 0.5 || v[2] != 8 {
		t.Fatalf("u = %v, %v", v, err)
	}
	for _, c := range []struct {
		name string
		data []byte
		want string
	}{
		{"magic", append([]byte("GGUG"), data[4:]...), "not a GGUF file"},
		{"truncated data", data[:len(data)-40], "runs past the end"},
		{"truncated header", data[:40], "implausible"},
		{"truncated metadata", data[:150], "past the end"},
		{"version", append(append([]byte("GGUF"), 9, 0, 0, 0), data[8:]...), "version 9"},
		{"huge kv count", append(append([]byte(nil), data[:16]...), 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0), "implausible"},
	} {
		_, err := ParseGGUF(c.name, bytes.NewReader(c.data), int64(len(c.data)))
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: error %v, want one containing %q", c.name, err, c.want)
		}
	}
	// An unsupported (quantized) type reads as a clear error.
	var gw GGUFWriter
	gw.AddTensor("q", GGMLTypeF32, []int{32}, make([]float32, 32))
	var b bytes.Buffer
	gw.WriteTo(&b)
	q := b.Bytes()
	// The type field follows name (8+1 bytes), n_dims (4) and one dim (8) after the 24-byte header.
	typeAt := 24 + 9 + 4 + 8
	q[typeAt] = 8 // Q8_0: 32 elements in 34 bytes, within the 128 written
	gq, err := ParseGGUF("q", bytes.NewReader(q), int64(len(q)))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := gq.ReadFloat32("q"); err == nil || !strings.Contains(err.Error(), "unsupported type Q8_0") {
		t.Errorf("reading a Q8_0 tensor: %v", err)
	}
}

func TestLoadAny(t *testing.T) {
	w, err := LoadAny("testdata/parity/tiny")
	if err != nil {
		t.Fatal(err)
	}
	if w.Config.NumLayers != 2 {
		t.Fatalf("layers %d", w.Config.NumLayers)
	}
	if _, err := LoadAny("testdata/parity/tiny/config.json"); err == nil || !strings.Contains(err.Error(), "not a GGUF file") {
		t.Errorf("a JSON file: %v", err)
	}
}

func FuzzParseGGUF(f *testing.F) {
	f.Add(smallGGUF(f))
	if data, err := os.ReadFile(filepath.Join(stories260K, "stories260Ktok512.gguf")); err == nil {
		f.Add(data[:14200])
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		g, err := ParseGGUF("fuzz", bytes.NewReader(data), int64(len(data)))
		if err != nil {
			return
		}
		for _, ti := range g.Tensors {
			if ti.NumElements() <= 1<<20 {
				g.ReadFloat32(ti.Name) // must not panic
			}
		}
		GGUFToWeights(g) // must not panic
	})
}
