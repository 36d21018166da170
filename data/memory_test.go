package data_test

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"train/data"
	"train/tokenizer"
)

// TestLongLineMemory: reading one 4 MB {"text"} line with stories260K's
// tokenizer allocates a bounded multiple of the line, most of it the
// example's own ids and labels. It took about 95 bytes per byte (1.9 GB for a
// 20 MB line): the tokenizer merged the whole text as one word, and the line
// and the token lists grew by small appends.
func TestLongLineMemory(t *testing.T) {
	const tokPath = "../../shared/models/stories260K/tokenizer.json"
	if _, err := os.Stat(tokPath); err != nil {
		t.Skipf("stories260K is not at %s: this test runs in a checkout beside ../shared", tokPath)
	}
	tok, err := tokenizer.Load(tokPath)
	if err != nil {
		t.Fatal(err)
	}
	text := strings.Repeat("Once upon a time there was a little girl named Lily. ", 4<<20/54)
	line, err := json.Marshal(map[string]string{"text": text})
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "long.jsonl")
	if err := os.WriteFile(path, append(line, '\n'), 0o644); err != nil {
		t.Fatal(err)
	}
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	ex, _, err := data.ReadExamples(context.Background(), path, &data.Formatter{Tok: tok, Vocab: 512}, false)
	runtime.ReadMemStats(&after)
	if err != nil {
		t.Fatal(err)
	}
	perByte := float64(after.TotalAlloc-before.TotalAlloc) / float64(len(line))
	if perByte > 20 {
		t.Errorf("reading a %d-byte line (%d tokens) allocated %.1f bytes per byte; want at most 20", len(line), len(ex[0].InputIDs), perByte)
	}
	t.Logf("%d bytes, %d tokens: %.1f bytes allocated per byte of the line", len(line), len(ex[0].InputIDs), perByte)
}
