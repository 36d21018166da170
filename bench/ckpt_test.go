package bench

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"train/ckpt"
)

// TestCkptRandom saves and loads a one-layer random model in every mode, in a
// directory given, and checks the report's shape (never the times) and that
// the checkpoints are gone after.
func TestCkptRandom(t *testing.T) {
	dir := t.TempDir()
	var out bytes.Buffer
	err := Ckpt(CkptOptions{Random: "random:tiny", Layers: 1, Dir: dir, Level: ckpt.DefaultLevel, Workers: 1, Time: time.Millisecond}, &out)
	if err != nil {
		t.Fatal(err)
	}
	text := out.String()
	if !strings.HasPrefix(text, "zstd level 1, workers 1 (GOMAXPROCS ") {
		t.Errorf("first line:\n%s", text)
	}
	// The embedding and one layer's seven projections.
	for _, set := range []string{"random:tiny (1 layers + embedding) fp32: 8 tensors", "random:tiny (1 layers + embedding) bf16: 8 tensors"} {
		i := strings.Index(text, "\n"+set)
		if i < 0 {
			t.Errorf("no table for %q:\n%s", set, text)
			continue
		}
		table := strings.Split(strings.TrimSpace(text[i:]), "\n")
		if len(table) < 5 {
			t.Fatalf("table %q is short:\n%s", set, text)
		}
		if !strings.HasSuffix(table[1], "mode     stored  of raw  save GB/s  load GB/s") {
			t.Errorf("heading %q", table[1])
		}
		for j, mode := range []string{"raw", "zstd", "zstd+bytegroup"} {
			if f := strings.Fields(table[2+j]); len(f) != 6 || f[0] != mode {
				t.Errorf("%s: row %q, want mode %s and five numbers", set, table[2+j], mode)
			}
		}
	}
	if strings.Contains(text, "stories260K") {
		t.Errorf("no safetensors file was given, yet:\n%s", text)
	}
	if _, err := os.Stat(filepath.Join(dir, "run")); !os.IsNotExist(err) {
		t.Errorf("the benchmark's checkpoints are left in %s: %v", dir, err)
	}
}

func TestCkptBadSafetensors(t *testing.T) {
	err := Ckpt(CkptOptions{Safetensors: filepath.Join(t.TempDir(), "missing.safetensors"), Time: time.Millisecond}, &bytes.Buffer{})
	if err == nil || !strings.Contains(err.Error(), "missing.safetensors") {
		t.Errorf("a missing safetensors file: %v", err)
	}
}

func TestToBF16(t *testing.T) {
	got := toBF16([]ckptTensor{{name: "w", shape: []int{3}, f32: []float32{1, -2.5, 1.00390625}}})
	// 1.00390625 = 1 + 2^-8 lies halfway between two bfloat16 values: even wins.
	want := []uint16{0x3f80, 0xc020, 0x3f80}
	if len(got) != 1 || got[0].f32 != nil || got[0].name != "w" || len(got[0].bf16) != 3 {
		t.Fatalf("toBF16 = %+v", got)
	}
	for i, w := range want {
		if got[0].bf16[i] != w {
			t.Errorf("element %d: %#04x, want %#04x", i, got[0].bf16[i], w)
		}
	}
	if got[0].bytes() != 6 {
		t.Errorf("bytes = %d, want 6", got[0].bytes())
	}
}
