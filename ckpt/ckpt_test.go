package ckpt

import (
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Test tensors carry values derived from the step, so every read is checkable.
const (
	testRows = 6
	testCols = 1000
)

func valF32(step int64, i int) float32 {
	// Small weights near zero with a structure, like trained ones.
	return float32(math.Sin(float64(i)*0.37+float64(step))) * 0.02 * float32(1+step%3)
}

func valBF16(step int64, i int) uint16 { return uint16(0x3c00 + (int(step)*7+i)%0x200) }

func stateOf(step int64, rank int) []byte {
	return []byte(fmt.Sprintf(`{"step":%d,"rank":%d}`, step, rank))
}

// writeStep writes a checkpoint of step as world ranks would: rank r holds
// rows of "w" (f32) split unevenly, a contiguous part of "b" (bf16) and its state.
func writeStep(run string, step int64, world int, opts Options, keep Retention) (string, error) {
	dir, err := PrepareDir(run, step)
	if err != nil {
		return "", err
	}
	n := testRows * testCols
	w32 := make([]float32, n)
	b16 := make([]uint16, n)
	for i := range w32 {
		w32[i], b16[i] = valF32(step, i), valBF16(step, i)
	}
	for r := 0; r < world; r++ {
		sw, err := NewShardWriter(dir, r, opts)
		if err != nil {
			return "", err
		}
		lo, hi := n*r/world, n*(r+1)/world
		lo = max(0, lo-7*r) // uneven, overlapping a little
		if err := sw.AddF32("w", []int{testRows, testCols}, int64(lo), w32[lo:hi]); err != nil {
			sw.Close()
			return "", err
		}
		if err := sw.AddBF16("b", []int{n}, int64(n*r/world), b16[n*r/world:n*(r+1)/world]); err != nil {
			sw.Close()
			return "", err
		}
		if err := sw.AddBytes(fmt.Sprintf("rank/%05d/state.json", r), stateOf(step, r)); err != nil {
			sw.Close()
			return "", err
		}
		if _, err := sw.Close(); err != nil {
			return "", err
		}
	}
	return Commit(run, step, Manifest{WorldSize: world, Config: "[train]\nsteps = 10\n", Plan: `{"pp":1}`,
		ModelSource: "random:tiny", TokenizerSource: "bytes"}, keep)
}

// checkStep reads everything back from dir and compares with step's values.
func checkStep(dir string, step int64, world int) error {
	r, err := Open(dir)
	if err != nil {
		return err
	}
	defer r.Close()
	if r.Manifest().Step != step {
		return fmt.Errorf("manifest step %d, want %d", r.Manifest().Step, step)
	}
	n := testRows * testCols
	got := make([]float32, n)
	if err := r.ReadF32("w", 0, int64(n), got); err != nil {
		return err
	}
	for i := range got {
		if got[i] != valF32(step, i) {
			return fmt.Errorf("w[%d] = %v, want %v", i, got[i], valF32(step, i))
		}
	}
	gb := make([]uint16, n)
	if err := r.ReadBF16("b", 0, int64(n), gb); err != nil {
		return err
	}
	for i := range gb {
		if gb[i] != valBF16(step, i) {
			return fmt.Errorf("b[%d] = %#x, want %#x", i, gb[i], valBF16(step, i))
		}
	}
	for rk := 0; rk < world; rk++ {
		b, err := r.ReadBytes(fmt.Sprintf("rank/%05d/state.json", rk))
		if err != nil {
			return err
		}
		if string(b) != string(stateOf(step, rk)) {
			return fmt.Errorf("state of rank %d = %s", rk, b)
		}
	}
	return nil
}

func TestRoundTrip(t *testing.T) {
	for _, tc := range []struct {
		name string
		opts Options
		want string
	}{
		{"raw", Options{ChunkBytes: 4096}, CompNone},
		{"zstd-bytegroup", Options{Compress: true, ChunkBytes: 4096, Workers: 3}, CompZstdByteGroup},
		{"zstd-plain", Options{Compress: true, NoByteGroup: true, ChunkBytes: 4096, Level: 9}, CompZstd},
		{"one-chunk", Options{Compress: true}, CompZstdByteGroup},
	} {
		t.Run(tc.name, func(t *testing.T) {
			run := t.TempDir()
			dir, err := writeStep(run, 7, 1, tc.opts, Retention{})
			if err != nil {
				t.Fatal(err)
			}
			if err := checkStep(dir, 7, 1); err != nil {
				t.Fatal(err)
			}
			r, err := Open(dir)
			if err != nil {
				t.Fatal(err)
			}
			defer r.Close()
			kinds := map[string]int{}
			for _, e := range r.Manifest().Entries {
				if e.DType != Bytes {
					kinds[e.Compression]++
				}
			}
			if kinds[tc.want] == 0 {
				t.Errorf("compression kinds %v, want some %s", kinds, tc.want)
			}
			if got := r.Names(); strings.Join(got, ",") != "b,rank/00000/state.json,w" {
				t.Errorf("Names() = %v", got)
			}
			if ti, ok := r.Lookup("w"); !ok || ti.DType != F32 || fmt.Sprint(ti.Shape) != "[6 1000]" {
				t.Errorf("Lookup(w) = %+v %v", ti, ok)
			}
			// A range inside one chunk and one across chunks, widened bf16.
			got := make([]float32, 2500)
			if err := r.ReadF32("b", 1234, 2500, got); err != nil {
				t.Fatal(err)
			}
			for i, v := range got {
				if want := math.Float32frombits(uint32(valBF16(7, 1234+i)) << 16); v != want {
					t.Fatalf("b[%d] as f32 = %v, want %v", 1234+i, v, want)
				}
			}
			if rep, err := Verify(dir); err != nil || len(rep.Problems) != 0 || rep.Entries == 0 {
				t.Fatalf("Verify: %+v %v", rep, err)
			}
		})
	}
}

func TestEmptyAndEdgeEntries(t *testing.T) {
	run := t.TempDir()
	dir, _ := PrepareDir(run, 1)
	w, err := NewShardWriter(dir, 0, Options{Compress: true})
	if err != nil {
		t.Fatal(err)
	}
	if err := w.AddBytes("empty", nil); err != nil {
		t.Fatal(err)
	}
	if err := w.AddF32("scalar", nil, 0, []float32{3.5}); err != nil {
		t.Fatal(err)
	}
	if err := w.AddF32("bad", []int{2, 2}, 2, make([]float32, 3)); err == nil {
		t.Error("range outside shape accepted")
	}
	if err := w.AddBF16("scalar", nil, 0, []uint16{1}); err == nil {
		t.Error("same name with another dtype accepted")
	}
	if _, err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if err := w.AddBytes("late", []byte("x")); err == nil {
		t.Error("add after Close accepted")
	}
	dir, err = Commit(run, 1, Manifest{WorldSize: 1}, Retention{})
	if err != nil {
		t.Fatal(err)
	}
	r, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if b, err := r.ReadBytes("empty"); err != nil || len(b) != 0 {
		t.Errorf("empty = %q, %v", b, err)
	}
	v := make([]float32, 1)
	if err := r.ReadF32("scalar", 0, 1, v); err != nil || v[0] != 3.5 {
		t.Errorf("scalar = %v, %v", v, err)
	}
	if err := r.ReadF32("nope", 0, 1, v); !errors.Is(err, ErrNotCovered) {
		t.Errorf("missing tensor: %v", err)
	}
}

func TestReshardRanges(t *testing.T) {
	run := t.TempDir()
	const world = 3
	dir, err := writeStep(run, 4, world, Options{Compress: true, ChunkBytes: 1000}, Retention{})
	if err != nil {
		t.Fatal(err)
	}
	r, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if got := len(r.Manifest().Files); got != world {
		t.Fatalf("%d files, want %d", got, world)
	}
	n := testRows * testCols
	// A different layout: 4 "new ranks" read their own ranges, plus odd ranges.
	ranges := [][2]int{{0, n / 4}, {n / 4, n / 2}, {n / 2, 3 * n / 4}, {3 * n / 4, n},
		{1, 2}, {1999, 2001}, {n/3 - 5, n/3 + 5}, {2*n/3 - 100, n}, {n - 1, n}, {17, 17}}
	for _, rg := range ranges {
		got := make([]float32, rg[1]-rg[0])
		if err := r.ReadF32("w", int64(rg[0]), int64(rg[1]-rg[0]), got); err != nil {
			t.Fatalf("range %v: %v", rg, err)
		}
		for i, v := range got {
			if v != valF32(4, rg[0]+i) {
				t.Fatalf("range %v: w[%d] = %v, want %v", rg, rg[0]+i, v, valF32(4, rg[0]+i))
			}
		}
	}
	if err := r.ReadF32("w", int64(n-1), 2, make([]float32, 2)); err == nil {
		t.Error("range past the end accepted")
	}

	// A tensor with a hole: rank 0 has [0,100), rank 1 [150,300).
	run2 := t.TempDir()
	dir2, _ := PrepareDir(run2, 1)
	for rk, rg := range [][2]int{{0, 100}, {150, 300}} {
		w, err := NewShardWriter(dir2, rk, Options{})
		if err != nil {
			t.Fatal(err)
		}
		if err := w.AddF32("h", []int{300}, int64(rg[0]), make([]float32, rg[1]-rg[0])); err != nil {
			t.Fatal(err)
		}
		if _, err := w.Close(); err != nil {
			t.Fatal(err)
		}
	}
	dir2, err = Commit(run2, 1, Manifest{WorldSize: 2}, Retention{})
	if err != nil {
		t.Fatal(err)
	}
	r2, err := Open(dir2)
	if err != nil {
		t.Fatal(err)
	}
	defer r2.Close()
	err = r2.ReadF32("h", 50, 200, make([]float32, 200))
	if !errors.Is(err, ErrNotCovered) || !strings.Contains(err.Error(), "[100,150)") {
		t.Errorf("hole: %v", err)
	}
	if err := r2.ReadF32("h", 150, 150, make([]float32, 150)); err != nil {
		t.Errorf("covered part: %v", err)
	}
}

func TestCommitNeedsEveryRank(t *testing.T) {
	run := t.TempDir()
	dir, _ := PrepareDir(run, 3)
	w, _ := NewShardWriter(dir, 0, Options{})
	w.AddBytes("x", []byte("y"))
	if _, err := w.Close(); err != nil {
		t.Fatal(err)
	}
	_, err := Commit(run, 3, Manifest{WorldSize: 2}, Retention{})
	if err == nil || !strings.Contains(err.Error(), IndexName(1)) {
		t.Fatalf("commit with a rank missing: %v", err)
	}
	if _, err := Latest(run); !errors.Is(err, ErrNoCheckpoint) {
		t.Fatalf("Latest after a failed commit: %v", err)
	}
}

func steps(t *testing.T, run string) []int64 {
	t.Helper()
	infos, err := List(run)
	if err != nil {
		t.Fatal(err)
	}
	var s []int64
	for _, in := range infos {
		s = append(s, in.Step)
	}
	return s
}

func TestRetention(t *testing.T) {
	run := t.TempDir()
	keep := Retention{KeepLast: 3, KeepEvery: 5}
	for step := int64(1); step <= 12; step++ {
		if _, err := writeStep(run, step, 1, Options{}, keep); err != nil {
			t.Fatal(err)
		}
	}
	if got := fmt.Sprint(steps(t, run)); got != "[5 10 11 12]" {
		t.Errorf("kept %s, want [5 10 11 12]", got)
	}
	// Leftovers older than the newest complete checkpoint are cleaned up.
	os.MkdirAll(TmpDir(run, 11), 0o755)
	os.MkdirAll(StepDir(run, 3), 0o755) // no DONE
	os.MkdirAll(TmpDir(run, 20), 0o755) // newer: maybe being written
	if _, err := writeStep(run, 13, 1, Options{}, keep); err != nil {
		t.Fatal(err)
	}
	if got := fmt.Sprint(steps(t, run)); got != "[5 10 11 12 13 20]" {
		t.Errorf("after cleanup %s, want [5 10 11 12 13 20]", got)
	}
	b, _ := os.ReadFile(filepath.Join(Dir(run), LatestName))
	if string(b) != "step-00000013\n" {
		t.Errorf("latest pointer %q", b)
	}
	// The zero Retention keeps everything.
	run2 := t.TempDir()
	for step := int64(1); step <= 4; step++ {
		writeStep(run2, step, 1, Options{}, Retention{})
	}
	if got := fmt.Sprint(steps(t, run2)); got != "[1 2 3 4]" {
		t.Errorf("zero Retention kept %s", got)
	}
	// Redoing a step replaces it.
	if _, err := writeStep(run2, 2, 1, Options{Compress: true}, Retention{}); err != nil {
		t.Fatal(err)
	}
	if err := checkStep(StepDir(run2, 2), 2, 1); err != nil {
		t.Fatal(err)
	}
}

func TestLatestSkipsIncompleteAndCorrupt(t *testing.T) {
	run := t.TempDir()
	if _, err := Latest(run); !errors.Is(err, ErrNoCheckpoint) {
		t.Fatalf("empty run: %v", err)
	}
	for step := int64(1); step <= 4; step++ {
		if _, err := writeStep(run, step, 2, Options{Compress: true}, Retention{}); err != nil {
			t.Fatal(err)
		}
	}
	latest := func() int64 {
		in, err := Latest(run)
		if err != nil {
			t.Fatal(err)
		}
		return in.Step
	}
	if s := latest(); s != 4 {
		t.Fatalf("Latest = %d", s)
	}
	os.Remove(filepath.Join(StepDir(run, 4), DoneName))
	os.MkdirAll(TmpDir(run, 5), 0o755)
	if s := latest(); s != 3 {
		t.Fatalf("Latest without DONE = %d, want 3", s)
	}
	mpath := filepath.Join(StepDir(run, 3), ManifestName)
	b, _ := os.ReadFile(mpath)
	b[len(b)/2] ^= 1
	os.WriteFile(mpath, b, 0o644)
	if s := latest(); s != 2 {
		t.Fatalf("Latest with a corrupt manifest = %d, want 2", s)
	}
	os.Truncate(filepath.Join(StepDir(run, 2), ShardName(1)), 100)
	if s := latest(); s != 1 {
		t.Fatalf("Latest with a truncated shard = %d, want 1", s)
	}
	infos, _ := List(run)
	var st []string
	for _, in := range infos {
		st = append(st, fmt.Sprintf("%d:%s:%v", in.Step, in.Status, in.Latest))
	}
	if got := strings.Join(st, " "); got != "1:complete:true 2:corrupt:false 3:corrupt:false 4:incomplete:false 5:tmp:false" {
		t.Errorf("List = %s", got)
	}
}

// damage builds a good 2-rank checkpoint and lets f break it.
func damage(t *testing.T, f func(dir string)) string {
	t.Helper()
	run := t.TempDir()
	dir, err := writeStep(run, 9, 2, Options{Compress: true, ChunkBytes: 2048}, Retention{})
	if err != nil {
		t.Fatal(err)
	}
	f(dir)
	return dir
}

// rewriteManifest edits the manifest and re-pins it in DONE, as a manifest
// that is self-consistent but disagrees with the files would be.
func rewriteManifest(t *testing.T, dir string, edit func(m *Manifest)) {
	t.Helper()
	m, err := readManifest(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	edit(m)
	b, _ := marshal(m)
	os.WriteFile(filepath.Join(dir, ManifestName), b, 0o644)
	db, _ := marshal(done{Step: m.Step, ManifestSize: int64(len(b)), ManifestCRC32C: checksum(b)})
	os.WriteFile(filepath.Join(dir, DoneName), db, 0o644)
}

func TestClearErrors(t *testing.T) {
	shard1 := ShardName(1)
	for _, tc := range []struct {
		name   string
		breakf func(t *testing.T, dir string)
		atOpen bool     // Open fails (else reading or Verify fails)
		want   []string // substrings of the error
		is     error
	}{
		{"truncated", func(t *testing.T, dir string) {
			os.Truncate(filepath.Join(dir, shard1), 1000)
		}, true, []string{shard1, "truncated", "1000 bytes", "manifest expects"}, ErrCorrupt},
		{"corrupted", func(t *testing.T, dir string) {
			p := filepath.Join(dir, shard1)
			b, _ := os.ReadFile(p)
			for i := 100; i < len(b); i += 97 {
				b[i] ^= 0x40
			}
			os.WriteFile(p, b, 0o644)
		}, false, []string{shard1, "entry"}, ErrCorrupt},
		{"missing", func(t *testing.T, dir string) {
			os.Remove(filepath.Join(dir, shard1))
		}, true, []string{shard1, "missing shard file"}, ErrCorrupt},
		{"no-done", func(t *testing.T, dir string) {
			os.Remove(filepath.Join(dir, DoneName))
		}, true, []string{"no DONE"}, ErrIncomplete},
		{"manifest-sizes", func(t *testing.T, dir string) {
			rewriteManifest(t, dir, func(m *Manifest) { m.Files[1].Size += 10 })
		}, true, []string{shard1, "manifest expects"}, ErrCorrupt},
		{"manifest-entry-beyond-file", func(t *testing.T, dir string) {
			rewriteManifest(t, dir, func(m *Manifest) { m.Entries[len(m.Entries)-1].Offset += 1 << 20 })
		}, true, []string{"beyond the end of"}, ErrCorrupt},
		{"manifest-checksum", func(t *testing.T, dir string) {
			rewriteManifest(t, dir, func(m *Manifest) { m.Entries[len(m.Entries)-1].CRC32C++ })
		}, false, []string{"checksum mismatch", "manifest expects"}, ErrCorrupt},
		{"version", func(t *testing.T, dir string) {
			rewriteManifest(t, dir, func(m *Manifest) { m.Version = 99 })
		}, true, []string{"version 99"}, ErrVersion},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := damage(t, func(dir string) { tc.breakf(t, dir) })
			r, err := Open(dir)
			if tc.atOpen {
				if err == nil {
					r.Close()
					t.Fatal("Open succeeded")
				}
			} else {
				if err != nil {
					t.Fatalf("Open: %v", err)
				}
				err = checkStep(dir, 9, 2)
				r.Close()
				if err == nil {
					t.Fatal("reading succeeded")
				}
			}
			for _, s := range tc.want {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error %q does not say %q", err, s)
				}
			}
			if !errors.Is(err, tc.is) {
				t.Errorf("error %q is not %v", err, tc.is)
			}
			rep, verr := Verify(dir)
			if verr == nil || len(rep.Problems) == 0 {
				t.Errorf("Verify passed a broken checkpoint: %+v", rep)
			}
		})
	}
}
