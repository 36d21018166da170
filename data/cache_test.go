package data

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// cacheDataset writes a directory of a JSONL file (text, prompt/completion,
// a malformed line) and a Parquet file, and returns its path.
func cacheDataset(t *testing.T) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "ds")
	os.MkdirAll(dir, 0o755)
	var lines []string
	for i := range 40 {
		lines = append(lines, fmt.Sprintf(`{"text": "story %d %s"}`, i, strings.Repeat("ab", i)),
			fmt.Sprintf(`{"prompt": "q%d ", "completion": "a%d"}`, i, i))
	}
	lines = append(lines, `{"nope": 1}`)
	os.WriteFile(filepath.Join(dir, "a.jsonl"), []byte(strings.Join(lines, "\n")+"\n"), 0o644)
	writeParquet(t, filepath.Join(dir, "b.parquet"), []pqText{{"parquet one"}, {"parquet two"}})
	return dir
}

func cacheSpecFor(t *testing.T, data string) CacheSpec {
	return CacheSpec{Data: data, Format: &Formatter{Tok: byteTok{}, Vocab: 303}, SkipBad: true, Tokenizer: "tok-1",
		Dir: filepath.Join(t.TempDir(), "cache"), LockTimeout: 5 * time.Second}
}

// TestCacheMatchesReadExamples: a cache holds exactly the examples
// ReadExamples makes of the dataset (JSONL and Parquet, a malformed line
// skipped and counted), their Stats agree with the tokens, and it leaves no
// temporary folder or lock behind; opened again it is not rebuilt.
func TestCacheMatchesReadExamples(t *testing.T) {
	data := cacheDataset(t)
	s := cacheSpecFor(t, data)
	var reports int
	s.Progress = func(done, total int64, n int) { reports++ }
	c, built, err := LoadCache(context.Background(), s)
	if err != nil || !built {
		t.Fatalf("built %v, %v", built, err)
	}
	defer c.Close()
	want, skipped, err := ReadExamples(context.Background(), data, s.Format, true)
	if err != nil {
		t.Fatal(err)
	}
	if c.Len() != len(want) || c.Skipped != skipped || skipped != 1 || reports == 0 {
		t.Fatalf("cache: %d examples, %d skipped, %d progress reports; ReadExamples: %d, %d", c.Len(), c.Skipped, reports, len(want), skipped)
	}
	for i := range want {
		got, err := c.Example(i)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(got.InputIDs, want[i].InputIDs) || !slices.Equal(got.Labels, want[i].Labels) {
			t.Fatalf("example %d: %v %v, want %v %v", i, got.InputIDs, got.Labels, want[i].InputIDs, want[i].Labels)
		}
		n, scored := c.Stats(i)
		wn, ws := Slice(want).Stats(i)
		if n != wn || scored != ws {
			t.Fatalf("example %d: stats %d %d, want %d %d", i, n, scored, wn, ws)
		}
	}
	entries, _ := os.ReadDir(s.Dir)
	if len(entries) != 1 || !entries[0].IsDir() {
		t.Errorf("cache folder holds %v, want the one cache", entries)
	}
	again, built, err := LoadCache(context.Background(), s)
	if err != nil || built {
		t.Fatalf("second load: built %v, %v", built, err)
	}
	again.Close()
}

// TestCacheRebuilds: a changed data file, tokenizer or formatting option
// makes another cache; the same inputs find the same one.
func TestCacheRebuilds(t *testing.T) {
	data := cacheDataset(t)
	s := cacheSpecFor(t, data)
	first, err := s.CachePath()
	if err != nil {
		t.Fatal(err)
	}
	c, _, err := LoadCache(context.Background(), s)
	if err != nil {
		t.Fatal(err)
	}
	n := c.Len()
	c.Close()
	for _, tc := range []struct {
		name string
		edit func(s *CacheSpec)
	}{
		{"tokenizer", func(s *CacheSpec) { s.Tokenizer = "tok-2" }},
		{"prompt loss", func(s *CacheSpec) { s.Format = &Formatter{Tok: byteTok{}, Vocab: 303, PromptLoss: true} }},
		{"skip bad lines", func(s *CacheSpec) { s.SkipBad = false }},
	} {
		s2 := s
		tc.edit(&s2)
		if p, _ := s2.CachePath(); p == first {
			t.Errorf("%s changed: same cache %s", tc.name, p)
		}
	}
	// A line more in the data file: rebuilt, with one example more.
	f, _ := os.OpenFile(filepath.Join(data, "a.jsonl"), os.O_APPEND|os.O_WRONLY, 0)
	f.WriteString(`{"text": "one more"}` + "\n")
	f.Close()
	c, built, err := LoadCache(context.Background(), s)
	if err != nil || !built || c.Len() != n+1 {
		t.Fatalf("after the data changed: built %v, %v, %d examples (was %d)", built, err, c.Len(), n)
	}
	c.Close()
	if p, _ := s.CachePath(); p == first {
		t.Error("the changed data file kept its cache's name")
	}
}

// TestCacheOneBuilder: ranks loading one cache at once build it once; the
// others wait on the lock and open what it built.
func TestCacheOneBuilder(t *testing.T) {
	s := cacheSpecFor(t, cacheDataset(t))
	var wg sync.WaitGroup
	builds := make([]bool, 4)
	lens := make([]int, 4)
	errs := make([]error, 4)
	for r := range builds {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, built, err := LoadCache(context.Background(), s)
			if err == nil {
				lens[r] = c.Len()
				c.Close()
			}
			builds[r], errs[r] = built, err
		}()
	}
	wg.Wait()
	n := 0
	for r, b := range builds {
		if errs[r] != nil {
			t.Fatalf("rank %d: %v", r, errs[r])
		}
		if b {
			n++
		}
		if lens[r] != lens[0] {
			t.Errorf("rank %d read %d examples, rank 0 %d", r, lens[r], lens[0])
		}
	}
	if n != 1 {
		t.Errorf("%d ranks built the cache, want 1", n)
	}
}

// TestCacheLocks: a lock nobody refreshes (its builder on another host,
// gone) fails the wait with an error naming it, within the timeout; a lock
// left by a dead process of this host is taken over; a cancelled wait stops.
func TestCacheLocks(t *testing.T) {
	s := cacheSpecFor(t, cacheDataset(t))
	s.LockTimeout = 300 * time.Millisecond
	final, _ := s.CachePath()
	os.MkdirAll(s.Dir, 0o755)
	lock := final + ".lock"
	os.WriteFile(lock, []byte("elsewhere 12345\n"), 0o644)
	start := time.Now()
	_, _, err := LoadCache(context.Background(), s)
	if err == nil || !strings.Contains(err.Error(), lock) || !strings.Contains(err.Error(), "held by elsewhere 12345") || !strings.Contains(err.Error(), "has not been refreshed") {
		t.Fatalf("stale lock: %v", err)
	}
	if time.Since(start) > 5*time.Second {
		t.Errorf("gave up after %s, timeout %s", time.Since(start), s.LockTimeout)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	os.Chtimes(lock, time.Now(), time.Now())
	if _, _, err := LoadCache(ctx, s); err == nil || !strings.Contains(err.Error(), "context canceled") {
		t.Fatalf("cancelled wait: %v", err)
	}
	host, _ := os.Hostname()
	os.WriteFile(lock, []byte(fmt.Sprintf("%s %d\n", host, 1<<30)), 0o644) // no such process
	c, built, err := LoadCache(context.Background(), s)
	if err != nil || !built {
		t.Fatalf("dead local lock: built %v, %v", built, err)
	}
	c.Close()
}

// TestCacheErrors: a malformed line without skipping names file:line and
// leaves no cache; a cache with a damaged file is refused naming it.
func TestCacheErrors(t *testing.T) {
	data := cacheDataset(t)
	s := cacheSpecFor(t, data)
	s.SkipBad = false
	_, _, err := LoadCache(context.Background(), s)
	if err == nil || !strings.Contains(err.Error(), "a.jsonl:81:") {
		t.Fatalf("malformed line: %v", err)
	}
	if entries, _ := os.ReadDir(s.Dir); len(entries) != 0 {
		t.Errorf("a failed build left %v", entries)
	}
	s.SkipBad = true
	c, _, err := LoadCache(context.Background(), s)
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	os.Truncate(filepath.Join(c.Dir, "labels.i32"), 8)
	if _, _, err := LoadCache(context.Background(), s); err == nil || !strings.Contains(err.Error(), "labels.i32") {
		t.Fatalf("damaged cache: %v", err)
	}
}

// TestFillFromLayoutOnly: rows laid out without reading count the same
// scored labels, truncations and cut labels as rows read in full.
func TestFillFromLayoutOnly(t *testing.T) {
	var exs Slice
	for i := range 30 {
		n := 3 + i%11
		ex := TokenExample{}
		for j := range n {
			ex.InputIDs = append(ex.InputIDs, j+1)
			l := j + 1
			if j%3 == 0 {
				l = IgnoreIndex
			}
			ex.Labels = append(ex.Labels, l)
		}
		exs = append(exs, ex)
	}
	order := make([]int, len(exs))
	for i := range order {
		order[i] = len(exs) - 1 - i
	}
	for _, pack := range []bool{true, false} {
		read, skip := &Packer{T: 8, Pack: pack}, &Packer{T: 8, Pack: pack}
		for at := 0; at < len(order); {
			r, used, err := read.FillFrom(exs, order[at:], 3, true)
			if err != nil {
				t.Fatal(err)
			}
			r2, used2, err := skip.FillFrom(exs, order[at:], 3, false)
			if err != nil {
				t.Fatal(err)
			}
			if used != used2 || r.ScoredLabels() != r2.ScoredLabels() || r2.IDs != nil {
				t.Fatalf("pack %v at %d: read %d examples, %d scored; layout only %d, %d", pack, at, used, r.ScoredLabels(), used2, r2.ScoredLabels())
			}
			at += used
		}
		if read.Truncated != skip.Truncated || read.CutLabels != skip.CutLabels || read.Truncated == 0 {
			t.Errorf("pack %v: truncated %d/%d, cut labels %d/%d", pack, read.Truncated, skip.Truncated, read.CutLabels, skip.CutLabels)
		}
	}
}
