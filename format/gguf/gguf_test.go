package gguf

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const stories260K = "../../../shared/models/stories260K"

func smallGGUF(t testing.TB) []byte {
	var g Writer
	if err := g.Set("general.architecture", "llama"); err != nil {
		t.Fatal(err)
	}
	g.Set("a.u32", uint32(7))
	g.Set("a.list", []string{"x", "yz"})
	g.Set("a.f", []float32{1, 2})
	g.Set("a.b", true)
	if err := g.AddTensor("t", F16, []int{2, 3}, []float32{1, 2, 3, 4, 5, 6}); err != nil {
		t.Fatal(err)
	}
	g.AddTensor("u", BF16, []int{3}, []float32{-1, 0.5, 8})
	var b bytes.Buffer
	if _, err := g.WriteTo(&b); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func TestGGUFReaderErrors(t *testing.T) {
	data := smallGGUF(t)
	g, err := Parse("small", bytes.NewReader(data), int64(len(data)))
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
		_, err := Parse(c.name, bytes.NewReader(c.data), int64(len(c.data)))
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: error %v, want one containing %q", c.name, err, c.want)
		}
	}
	// An unsupported (quantized) type reads as a clear error.
	var gw Writer
	gw.AddTensor("q", F32, []int{32}, make([]float32, 32))
	var b bytes.Buffer
	gw.WriteTo(&b)
	q := b.Bytes()
	// The type field follows name (8+1 bytes), n_dims (4) and one dim (8) after the 24-byte header.
	typeAt := 24 + 9 + 4 + 8
	q[typeAt] = 3 // Q4_1: 32 elements in 20 bytes, within the 128 written
	gq, err := Parse("q", bytes.NewReader(q), int64(len(q)))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := gq.ReadFloat32("q"); err == nil || !strings.Contains(err.Error(), "unsupported type Q4_1") {
		t.Errorf("reading a Q4_1 tensor: %v", err)
	}
}

func FuzzParseGGUF(f *testing.F) {
	f.Add(smallGGUF(f))
	if data, err := os.ReadFile(filepath.Join(stories260K, "stories260Ktok512.gguf")); err == nil {
		f.Add(data[:14200])
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		g, err := Parse("fuzz", bytes.NewReader(data), int64(len(data)))
		if err != nil {
			return
		}
		for _, ti := range g.Tensors {
			if ti.NumElements() <= 1<<20 {
				g.ReadFloat32(ti.Name) // must not panic
			}
		}
		ReadModel(g) // must not panic
	})
}
