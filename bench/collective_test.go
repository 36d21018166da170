package bench

import (
	"bytes"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"train/collective"
)

// shortRun measures two small sizes, as few all-reduces as allowed.
var shortRun = CollectiveOptions{MinBytes: 4096, MaxBytes: 8192, DType: "float32", Time: time.Millisecond}

// TestCollectiveOneRank: alone, the peer is the stream within rank 0, and
// there is no ratio (no link carries anything).
func TestCollectiveOneRank(t *testing.T) {
	var out bytes.Buffer
	if err := Collective(collective.Config{Size: 1}, shortRun, &out); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != 6 {
		t.Fatalf("%d lines, want 6 (3 of heading, 1 of columns, 2 sizes):\n%s", len(lines), &out)
	}
	if !strings.HasPrefix(lines[0], "all-reduce float32 sum, ring over TCP: 1 ranks (single process), chunk 1024 KiB") {
		t.Errorf("heading: %s", lines[0])
	}
	if !strings.HasPrefix(lines[2], "raw GB/s: within rank 0,") {
		t.Errorf("peer: %s", lines[2])
	}
	for i, size := range []string{"4096", "8192"} {
		f := strings.Fields(lines[4+i])
		if len(f) != 7 || f[0] != size || f[6] != "-" {
			t.Errorf("row %q: want size %s and no ratio", lines[4+i], size)
		}
	}
}

// TestCollectiveTwoRanks: two ranks on one host compare with a stream from
// rank 1 to rank 0; only rank 0 prints.
func TestCollectiveTwoRanks(t *testing.T) {
	dir := t.TempDir()
	opts := shortRun
	opts.DType = "bf16"
	var wg sync.WaitGroup
	outs := make([]bytes.Buffer, 2)
	errs := make([]error, 2)
	for r := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cfg := collective.Config{Rank: r, Size: 2, Source: "test", JobID: "bench-" + t.Name(), RendezvousDir: dir,
				SecretFile: filepath.Join(dir, "job-secret"), Timeout: 20 * time.Second}
			errs[r] = Collective(cfg, opts, &outs[r])
		}()
	}
	wg.Wait()
	for r, err := range errs {
		if err != nil {
			t.Fatalf("rank %d: %v", r, err)
		}
	}
	text := outs[0].String()
	for _, want := range []string{"all-reduce bf16 sum, ring over TCP: 2 ranks (test)", ", rank 1 -> rank 0 ", "raw GB/s: rank 1 -> rank 0,"} {
		if !strings.Contains(text, want) {
			t.Errorf("rank 0's output lacks %q:\n%s", want, text)
		}
	}
	lines := strings.Split(strings.TrimSpace(text), "\n")
	for i, size := range []int{4096, 8192} {
		if len(lines) <= 4+i {
			t.Fatalf("no row for %d bytes:\n%s", size, text)
		}
		f := strings.Fields(lines[4+i])
		if len(f) != 7 || f[0] != fmt.Sprint(size) || f[6] == "-" {
			t.Errorf("row %q: want size %d and a ratio", lines[4+i], size)
		}
	}
	if outs[1].Len() != 0 {
		t.Errorf("rank 1 printed (only rank 0 speaks):\n%s", &outs[1])
	}
}

func TestFmtDur(t *testing.T) {
	for _, c := range []struct {
		s    float64
		want string
	}{{2.5, "2.50s"}, {0.0123, "12.30ms"}, {42e-6, "42.0us"}} {
		if got := fmtDur(c.s); got != c.want {
			t.Errorf("fmtDur(%v) = %q, want %q", c.s, got, c.want)
		}
	}
}
