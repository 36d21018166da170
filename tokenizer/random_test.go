package tokenizer

import (
	"bufio"
	"encoding/json"
	"os"
	"slices"
	"testing"
)

// randomReference is a line of testdata/*_random.jsonl (made by
// testdata/gen_reference.py with transformers 5.17 and tokenizers 0.23).
// file_ids and file_decoded, present where they differ, are what the Rust
// tokenizers library gives for tokenizer.json alone.
type randomReference struct {
	Text        string  `json:"text"`
	IDs         []int   `json:"ids"`
	Decoded     string  `json:"decoded"`
	FileIDs     []int   `json:"file_ids"`
	FileDecoded *string `json:"file_decoded"`
}

// TestRandomTextsMatchHuggingFace compares 1050 texts per tokenizer, built from
// pieces chosen for the edge cases (every kind of whitespace, contractions in
// any case, combining marks, emoji sequences, digit runs, special tokens and
// look-alikes, long words), with transformers and with tokenizers alone.
func TestRandomTextsMatchHuggingFace(t *testing.T) {
	for _, c := range []struct{ data, path string }{
		{"testdata/llama3_random.jsonl", llama3Path},
		{"testdata/stories260k_random.jsonl", stories260K},
	} {
		t.Run(c.data, func(t *testing.T) {
			tf := loadShared(t, c.path)
			file, err := LoadWithOptions(c.path, Options{FileOnly: true})
			if err != nil {
				t.Fatal(err)
			}
			f, err := os.Open(c.data)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			sc := bufio.NewScanner(f)
			sc.Buffer(nil, 1<<20)
			n, bad := 0, 0
			fail := func(format string, args ...any) {
				if bad++; bad <= 10 {
					t.Errorf(format, args...)
				}
			}
			for line := 1; sc.Scan(); line++ {
				var r randomReference
				if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
					t.Fatalf("%s:%d: %v", c.data, line, err)
				}
				n++
				fileIDs, fileDecoded := r.IDs, r.Decoded
				if r.FileDecoded != nil {
					fileIDs, fileDecoded = r.FileIDs, *r.FileDecoded
				}
				if got := tf.Encode(r.Text, false); !slices.Equal(got, r.IDs) && len(got)+len(r.IDs) > 0 {
					fail("%s:%d: Encode(%q)\n got %v\nwant %v", c.data, line, r.Text, got, r.IDs)
				}
				if got, want := tf.Encode(r.Text, true), append([]int{tf.BOS()}, r.IDs...); !slices.Equal(got, want) {
					fail("%s:%d: Encode(%q, special)\n got %v\nwant %v", c.data, line, r.Text, got, want)
				}
				if got := tf.Decode(r.IDs); got != r.Decoded {
					fail("%s:%d: Decode = %q, want %q", c.data, line, got, r.Decoded)
				}
				if got := file.Encode(r.Text, false); !slices.Equal(got, fileIDs) && len(got)+len(fileIDs) > 0 {
					fail("%s:%d: file-only Encode(%q)\n got %v\nwant %v", c.data, line, r.Text, got, fileIDs)
				}
				if got := file.Decode(fileIDs); got != fileDecoded {
					fail("%s:%d: file-only Decode = %q, want %q", c.data, line, got, fileDecoded)
				}
			}
			if err := sc.Err(); err != nil {
				t.Fatal(err)
			}
			t.Logf("%d texts, %d mismatches", n, bad)
		})
	}
}
