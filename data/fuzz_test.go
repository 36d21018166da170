package data

import (
	"testing"
)

// FuzzExample feeds arbitrary JSONL lines to every format of Formatter.Example:
// an error or an example whose ids are inside the vocabulary and whose labels
// line up with them, never a panic.
func FuzzExample(f *testing.F) {
	for _, s := range []string{
		`{"text": "Lily had a red ball."}`,
		`{"prompt": "2+2=", "completion": "4"}`,
		`{"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}`,
		`{"input_ids": [1, 2, 3], "labels": [-100, 2, 3]}`,
		`{"input_ids": [1, 2, 3], "labels": [1]}`,
		`{"input_ids": [-5, 99999999999]}`,
		`{"input_ids": [1.5]}`,
		`{"messages": [{"role": "assistant"}]}`,
		`{"messages": {"role": "user"}}`,
		`{"text": "x", "extra": 1}`,
		`{"text": null}`,
		`[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]`,
		`{"prompt": "\u0000\ud800", "completion": ""}`,
		``,
	} {
		f.Add([]byte(s), false)
	}
	f.Fuzz(func(t *testing.T, line []byte, promptLoss bool) {
		for _, fm := range []*Formatter{
			{Tok: byteTok{}, Vocab: 400, PromptLoss: promptLoss},
			{Tok: byteTok{noChat: true}, Vocab: 400},
			{Vocab: 400},
		} {
			ex, err := fm.Example(line)
			if err != nil {
				continue
			}
			if len(ex.Labels) != len(ex.InputIDs) {
				t.Fatalf("%q: %d ids, %d labels", line, len(ex.InputIDs), len(ex.Labels))
			}
			for i, id := range ex.InputIDs {
				if id < 0 || id >= fm.Vocab {
					t.Fatalf("%q: id %d outside the vocabulary of %d", line, id, fm.Vocab)
				}
				if l := ex.Labels[i]; l != -100 && (l < 0 || l >= fm.Vocab) {
					t.Fatalf("%q: label %d outside the vocabulary", line, l)
				}
			}
		}
	})
}
