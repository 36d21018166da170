package data

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// byteTok is a stand-in tokenizer: one id per byte, and Llama 3's chat tokens.
type byteTok struct{ noChat bool }

func (byteTok) Encode(s string, _ bool) []int { return ByteIDs(s) }
func (t byteTok) TokenID(s string) (int, bool) {
	if t.noChat {
		return 0, false
	}
	id, ok := map[string]int{"<|start_header_id|>": 300, "<|end_header_id|>": 301, "<|eot_id|>": 302}[s]
	return id, ok
}
func (byteTok) BOS() int { return 256 }
func (byteTok) EOS() int { return 257 }

func scoredText(ex TokenExample) string {
	var sb strings.Builder
	for _, l := range ex.Labels {
		switch {
		case l == IgnoreIndex:
			sb.WriteByte('_')
		case l < 256:
			sb.WriteByte(byte(l))
		default:
			sb.WriteByte('#')
		}
	}
	return sb.String()
}

func TestFormats(t *testing.T) {
	f := &Formatter{Tok: byteTok{}, Vocab: 400}
	cases := []struct{ line, ids, scored string }{
		{`{"text": "hi"}`, "#hi#", "#hi#"},
		{`{"prompt": "2+2=", "completion": "4"}`, "#2+2=4#", "_____4#"},
		{`{"messages": [{"role": "user", "content": " hi "}, {"role": "assistant", "content": "yo"}]}`,
			"##user#\n\nhi##assistant#\n\nyo#", "_________________________yo#"},
		{`{"input_ids": [1, 2], "labels": [-100, 2]}`, "\x01\x02", "_\x02"},
		// A system turn, then the conversation.
		{`{"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}`,
			"##system#\n\nbe brief##user#\n\nhi##assistant#\n\nyo#", "*yo#"},
		// ShareGPT: the same messages under other names.
		{`{"conversations": [{"from": "system", "value": "be brief"}, {"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}]}`,
			"##system#\n\nbe brief##user#\n\nhi##assistant#\n\nyo#", "*yo#"},
		// Alpaca with a chat tokenizer: user = instruction, a blank line, the input.
		{`{"instruction": "add", "input": "2 2", "output": "4"}`,
			"##user#\n\nadd\n\n2 2##assistant#\n\n4#", "*4#"},
		{`{"instruction": "say hi", "output": "hi", "system": "s"}`,
			"##system#\n\ns##user#\n\nsay hi##assistant#\n\nhi#", "*hi#"},
	}
	for _, tc := range cases {
		ex, err := f.Example([]byte(tc.line))
		if err != nil {
			t.Fatalf("%s: %v", tc.line, err)
		}
		var ids strings.Builder
		for _, id := range ex.InputIDs {
			if id < 256 {
				ids.WriteByte(byte(id))
			} else {
				ids.WriteByte('#')
			}
		}
		if ids.String() != tc.ids {
			t.Errorf("%s: ids %q, want %q", tc.line, ids.String(), tc.ids)
		}
		if rest, ok := strings.CutPrefix(tc.scored, "*"); ok { // "*" stands for every unscored token before rest
			tc.scored = strings.Repeat("_", len(tc.ids)-len(rest)) + rest
		}
		if got := scoredText(ex); got != tc.scored {
			t.Errorf("%s: scored %q, want %q", tc.line, got, tc.scored)
		}
	}
	// Alpaca without a chat template: Stanford Alpaca's prompt, the output scored.
	plain := &Formatter{Tok: byteTok{noChat: true}, Vocab: 400}
	for _, tc := range []struct{ line, prompt string }{
		{`{"instruction": "add", "input": "2 2", "output": "4"}`, fmt.Sprintf(alpacaWithInput, "add", "2 2")},
		{`{"instruction": "add", "input": " ", "output": "4"}`, fmt.Sprintf(alpacaNoInput, "add")},
	} {
		ex, err := plain.Example([]byte(tc.line))
		if err != nil {
			t.Fatalf("%s: %v", tc.line, err)
		}
		want := strings.Repeat("_", 1+len(tc.prompt)) + "4#"
		if got := scoredText(ex); got != want || len(ex.InputIDs) != len(want) || ex.InputIDs[1] != int(tc.prompt[0]) {
			t.Errorf("%s without a chat template: scored %q, want %q", tc.line, got, want)
		}
	}
	pl := &Formatter{Tok: byteTok{}, Vocab: 400, PromptLoss: true}
	ex, err := pl.Example([]byte(`{"prompt": "a", "completion": "b"}`))
	if err != nil || scoredText(ex) != "#ab#" {
		t.Errorf("prompt_loss: %q %v", scoredText(ex), err)
	}
}

func TestFormatErrors(t *testing.T) {
	f := &Formatter{Tok: byteTok{}, Vocab: 400}
	for _, tc := range []struct{ line, want string }{
		{`[1]`, "not a JSON object"},
		{`{"txt": "a"}`, "no known format"},
		{`{"text": 3}`, `"text" must be a string`},
		{`{"text": "a", "extra": 1}`, `unexpected key "extra"`},
		{`{"prompt": "a"}`, `missing "completion"`},
		{`{"messages": []}`, "is empty"},
		{`{"messages": "hi"}`, "must be a list"},
		{`{"messages": [{"role": "user"}]}`, `needs both "role" and "content"`},
		{`{"messages": [{"role": "robot", "content": "x"}]}`, `role "robot"`},
		{`{"messages": [{"role": "user", "content": "x"}]}`, "no assistant message"},
		{`{"conversations": [{"from": "bot", "value": "x"}]}`, `from "bot" is not one of human, gpt, system`},
		{`{"conversations": [{"from": "gpt"}]}`, `conversations[0] needs both "from" and "value"`},
		{`{"conversations": {}}`, `"conversations" must be a list`},
		{`{"instruction": "x"}`, `missing "output"`},
		{`{"instruction": "x", "output": "y", "history": []}`, `unexpected key "history"`},
		{`{"instruction": 1, "output": "y"}`, `"instruction" must be a string`},
	} {
		if _, err := f.Example([]byte(tc.line)); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: error %v, want %q", tc.line, err, tc.want)
		}
	}
	if _, err := (&Formatter{Vocab: 400}).Example([]byte(`{"text": "a"}`)); err == nil || !strings.Contains(err.Error(), "needs a tokenizer") {
		t.Errorf("no tokenizer: %v", err)
	}
	if _, err := (&Formatter{Tok: byteTok{noChat: true}, Vocab: 400}).Example([]byte(`{"messages": [{"role": "assistant", "content": "x"}]}`)); err == nil || !strings.Contains(err.Error(), "<|start_header_id|>") {
		t.Errorf("no chat tokens: %v", err)
	}
	if _, err := (&Formatter{Tok: byteTok{}, Vocab: 100}).Example([]byte(`{"text": "a"}`)); err == nil || !strings.Contains(err.Error(), "outside the model's vocabulary") {
		t.Errorf("vocab: %v", err)
	}
}

func TestReadExamplesSkipBad(t *testing.T) {
	f := &Formatter{Tok: byteTok{}, Vocab: 400}
	src := "{\"text\": \"a\"}\nnot json\n{\"text\": \"b\"}\n"
	ex, skipped, err := readExamples(context.Background(), strings.NewReader(src), "d.jsonl", f, true)
	if err != nil || len(ex) != 2 || skipped != 1 {
		t.Fatalf("got %d examples, %d skipped, %v", len(ex), skipped, err)
	}
	if _, _, err := readExamples(context.Background(), strings.NewReader(src), "d.jsonl", f, false); err == nil || !strings.Contains(err.Error(), "d.jsonl:2:") {
		t.Fatalf("error %v", err)
	}
	if _, _, err := readExamples(context.Background(), strings.NewReader("x\ny\n"), "d.jsonl", f, true); err == nil || !strings.Contains(err.Error(), "all 2 lines were malformed") {
		t.Fatalf("error %v", err)
	}
}

func TestChatPrompt(t *testing.T) {
	ids, err := ChatPrompt(byteTok{}, nil, []string{"user"}, []string{" hi\n"})
	if err != nil {
		t.Fatal(err)
	}
	var sb strings.Builder
	for _, id := range ids {
		if id < 256 {
			sb.WriteByte(byte(id))
		} else {
			sb.WriteByte('#')
		}
	}
	if got, want := sb.String(), "##user#\n\nhi##assistant#\n\n"; got != want {
		t.Fatalf("prompt %q, want %q", got, want)
	}
}

// TestCheckFirstLine: the first non-blank line is formatted (a later bad line
// is for ReadExamples to find); a missing file and a bad first line fail,
// naming file:line; with no formatter the file need only open.
func TestCheckFirstLine(t *testing.T) {
	dir := t.TempDir()
	write := func(name, src string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(src), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	f := &Formatter{Vocab: 10}
	good := write("good.jsonl", "\n{\"input_ids\": [1, 2]}\n{\"input_ids\": \"later\"}\n")
	bad := write("bad.jsonl", "\n{\"input_ids\": [1, 20]}\n")
	if err := CheckFirstLine(good, f); err != nil {
		t.Errorf("good first line: %v", err)
	}
	if err := CheckFirstLine(bad, f); err == nil || !strings.Contains(err.Error(), "bad.jsonl:2: input_ids[1] = 20") {
		t.Errorf("bad first line: %v", err)
	}
	if err := CheckFirstLine(bad, nil); err != nil {
		t.Errorf("bad first line, no formatter: %v", err)
	}
	if err := CheckFirstLine(filepath.Join(dir, "missing.jsonl"), nil); err == nil {
		t.Error("missing file: no error")
	}
}

// TestReadExamplesCancelled: a cancelled context stops the reading with its
// error.
func TestReadExamplesCancelled(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, _, err := readExamples(ctx, strings.NewReader("{\"input_ids\": [1]}\n"), "d.jsonl", &Formatter{Vocab: 10}, false)
	if !errors.Is(err, context.Canceled) {
		t.Errorf("got %v, want context.Canceled", err)
	}
}
