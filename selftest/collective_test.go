package selftest

import (
	"bytes"
	"fmt"
	"io"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"train/collective"
)

// twoRanks runs check as ranks 0 and 1 of a world on this host (the
// single-host rendezvous in a temporary directory) and returns what each rank
// printed and returned.
func twoRanks(t *testing.T, check func(world collective.Config, stdout io.Writer) error) ([]bytes.Buffer, []error) {
	t.Helper()
	dir := t.TempDir()
	var wg sync.WaitGroup
	outs := make([]bytes.Buffer, 2)
	errs := make([]error, 2)
	for r := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			world := collective.Config{Rank: r, Size: 2, Source: "test", JobID: "selftest-" + t.Name(), RendezvousDir: dir,
				SecretFile: filepath.Join(dir, "job-secret"), Timeout: 20 * time.Second}
			errs[r] = check(world, &outs[r])
		}()
	}
	wg.Wait()
	return outs, errs
}

// TestCollectiveTwoRanks: every rank checks and prints its own line.
func TestCollectiveTwoRanks(t *testing.T) {
	outs, errs := twoRanks(t, func(world collective.Config, stdout io.Writer) error {
		return Collective(world, CollectiveOptions{Short: true}, stdout)
	})
	for r := range 2 {
		line := outs[r].String()
		if errs[r] != nil || !strings.HasPrefix(line, fmt.Sprintf("selftest collective: rank %d/2 (host ", r)) ||
			!strings.Contains(line, ", local rank 0, test): ok, ") || strings.Count(line, "\n") != 1 {
			t.Errorf("rank %d: %v:\n%s", r, errs[r], line)
		}
	}
}

// TestCollectiveCannotJoin: a rank that cannot join says so on its line and
// fails.
func TestCollectiveCannotJoin(t *testing.T) {
	var out bytes.Buffer
	err := Collective(collective.Config{Rank: 1, Size: 2}, CollectiveOptions{Short: true}, &out) // no job id, no token
	if err == nil {
		t.Fatal("joined a world without a rendezvous")
	}
	if !strings.HasPrefix(out.String(), "selftest collective: rank 1/2 (host ") || !strings.Contains(out.String(), "single process): FAIL: "+err.Error()) {
		t.Errorf("output:\n%s", &out)
	}
}
