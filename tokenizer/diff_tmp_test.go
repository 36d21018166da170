package tokenizer

import (
	"bufio"
	"encoding/json"
	"os"
	"slices"
	"testing"
)

func TestDiffTmp(t *testing.T) {
	for _, c := range []struct{ file, tok string }{{"/work/.device/2/llama3.jsonl", llama3Path}, {"/work/.device/2/stories.jsonl", stories260K}} {
		tf := loadShared(t, c.tok)
		fo, err := LoadWithOptions(c.tok, Options{FileOnly: true})
		if err != nil {
			t.Fatal(err)
		}
		f, _ := os.Open(c.file)
		sc := bufio.NewScanner(f)
		sc.Buffer(nil, 1<<24)
		n, bad := 0, 0
		for sc.Scan() {
			var r struct {
				Text                             string
				IDs                              []int `json:"ids"`
				IDsS                             []int `json:"ids_with_special"`
				Decoded                          string
				FileIDs                          []int  `json:"file_ids"`
				FileIDsS                         []int  `json:"file_ids_with_special"`
				FileDecoded                      string `json:"file_decoded"`
			}
			json.Unmarshal(sc.Bytes(), &r)
			n++
			report := func(what string, got, want any) {
				bad++
				if bad < 15 {
					t.Errorf("%s %s %q\n got %v\nwant %v", c.file[len(c.file)-12:], what, r.Text, got, want)
				}
			}
			if g := tf.Encode(r.Text, false); !slices.Equal(g, r.IDs) && len(g)+len(r.IDs) > 0 {
				report("tf", g, r.IDs)
			}
			if g := tf.Encode(r.Text, true); !slices.Equal(g, r.IDsS) {
				report("tf special", g, r.IDsS)
			}
			if g := tf.Decode(r.IDs); g != r.Decoded {
				report("tf decode", g, r.Decoded)
			}
			if g := fo.Encode(r.Text, false); !slices.Equal(g, r.FileIDs) && len(g)+len(r.FileIDs) > 0 {
				report("file", g, r.FileIDs)
			}
			if g := fo.Encode(r.Text, true); !slices.Equal(g, r.FileIDsS) {
				report("file special", g, r.FileIDsS)
			}
			if g := fo.Decode(r.FileIDs); g != r.FileDecoded {
				report("file decode", g, r.FileDecoded)
			}
		}
		t.Logf("%s: %d texts, %d mismatches", c.file, n, bad)
	}
}
