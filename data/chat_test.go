package data

import (
	"encoding/json"
	"errors"
	"io/fs"
	"os"
	"slices"
	"strings"
	"testing"

	"train/internal/fixture"
	"train/tokenizer"
)

const llama3Tokenizer = "../../shared/tokenizers/llama3/tokenizer.json"

// TestChatMasking: through the real Llama 3 tokenizer, exactly the assistant's
// reply and its <|eot_id|> are scored in every self-instruct conversation.
func TestChatMasking(t *testing.T) {
	tok, err := tokenizer.Load(llama3Tokenizer)
	if err != nil {
		t.Skipf("Llama 3 tokenizer not available: %v", err)
	}
	lines, outputs, err := fixture.SelfInstructChats("../../shared/data/self-instruct/seed_tasks.jsonl", 60)
	if errors.Is(err, fs.ErrNotExist) {
		t.Skipf("self-instruct data is not in ../shared (%v)", err)
	} else if err != nil {
		t.Fatal(err)
	}
	f := &Formatter{Tok: tok, Vocab: 128256}
	for i, line := range lines {
		ex, err := f.Example(line)
		if err != nil {
			t.Fatalf("line %d: %v", i+1, err)
		}
		var scored []int
		for j, l := range ex.Labels {
			if l != IgnoreIndex {
				scored = append(scored, ex.InputIDs[j])
			}
		}
		want := strings.TrimSpace(outputs[i]) + "<|eot_id|>"
		if got := tok.Decode(scored); got != want {
			t.Fatalf("line %d: scored tokens decode to %q, want the assistant reply %q", i+1, got, want)
		}
		if ex.InputIDs[0] != 128000 {
			t.Fatalf("line %d: first token %d, want <|begin_of_text|>", i+1, ex.InputIDs[0])
		}
	}
}

// TestChatTemplateMatchesTransformers: the built-in Llama 3 chat rendering gives
// the ids of transformers' apply_chat_template (testdata/tokenizer/llama3_chat.jsonl,
// written by scripts/make-parity-fixtures.py), with and without the generation prompt.
func TestChatTemplateMatchesTransformers(t *testing.T) {
	tok, err := tokenizer.Load(llama3Tokenizer)
	if err != nil {
		t.Skipf("Llama 3 tokenizer not available: %v", err)
	}
	raw, err := os.ReadFile("testdata/tokenizer/llama3_chat.jsonl")
	if err != nil {
		t.Fatal(err)
	}
	f := &Formatter{Tok: tok, Vocab: 128256, PromptLoss: true}
	for i, line := range strings.Split(strings.TrimSpace(string(raw)), "\n") {
		var ref struct {
			Messages []struct{ Role, Content string }
			IDs      []int `json:"ids"`
			IDsGen   []int `json:"ids_generation_prompt"`
		}
		if err := json.Unmarshal([]byte(line), &ref); err != nil {
			t.Fatal(err)
		}
		msgs, _ := json.Marshal(map[string]any{"messages": ref.Messages})
		ex, err := f.Example(msgs)
		if err != nil {
			t.Fatalf("conversation %d: %v", i, err)
		}
		if !slices.Equal(ex.InputIDs, ref.IDs) {
			t.Errorf("conversation %d: ids\n%v\ntransformers\n%v", i, ex.InputIDs, ref.IDs)
		}
		var roles, contents []string
		for _, m := range ref.Messages {
			roles, contents = append(roles, m.Role), append(contents, m.Content)
		}
		gen, err := ChatPrompt(tok, nil, roles, contents)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(gen, ref.IDsGen) {
			t.Errorf("conversation %d: generation prompt ids\n%v\ntransformers\n%v", i, gen, ref.IDsGen)
		}
	}
}
