package data

import (
	"encoding/json"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"train/internal/fixture"
	"train/tokenizer"
)

const stories260KTokenizer = "../../shared/models/stories260K/tokenizer.json"

// chatTemplates are the real templates of testdata/chat_templates, by the
// name of their file.
var chatTemplates = []string{"llama-3.1", "llama-2-chat", "zephyr"}

// withTemplate is a tokenizer whose tokenizer_config.json held src.
type withTemplate struct {
	*tokenizer.Tokenizer
	src string
}

func (w withTemplate) ChatTemplate() string { return w.src }

// loadTok loads a tokenizer of ../shared, skipping the test without it.
func loadTok(t *testing.T, path string) *tokenizer.Tokenizer {
	t.Helper()
	tok, err := tokenizer.Load(path)
	if err != nil {
		t.Skipf("tokenizer not available in ../shared: %v", err)
	}
	return tok
}

// readTemplate reads testdata/chat_templates/NAME.json's chat_template.
func readTemplate(t *testing.T, name string) string {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join("testdata/chat_templates", name+".json"))
	if err != nil {
		t.Fatal(err)
	}
	var f struct {
		ChatTemplate string `json:"chat_template"`
	}
	if err := json.Unmarshal(raw, &f); err != nil {
		t.Fatal(err)
	}
	return f.ChatTemplate
}

// templateOf compiles a testdata template for tok.
func templateOf(t *testing.T, tok *tokenizer.Tokenizer, name string) *ChatTemplate {
	t.Helper()
	ct, err := ChatTemplateFor(withTemplate{tok, readTemplate(t, name)}, name+".json")
	if err != nil {
		t.Fatal(err)
	}
	if ct == nil {
		t.Fatalf("%s: taken for the built-in Llama 3 rendering", name)
	}
	return ct
}

// conversations reads testdata/chat_templates/conversations.jsonl.
func conversations(t *testing.T) [][]message {
	t.Helper()
	raw, err := os.ReadFile("testdata/chat_templates/conversations.jsonl")
	if err != nil {
		t.Fatal(err)
	}
	var convs [][]message
	for _, line := range strings.Split(strings.TrimSpace(string(raw)), "\n") {
		var c struct{ Messages []message }
		if err := json.Unmarshal([]byte(line), &c); err != nil {
			t.Fatal(err)
		}
		convs = append(convs, c.Messages)
	}
	return convs
}

func messagesLine(msgs []message) []byte {
	line, _ := json.Marshal(map[string]any{"messages": msgs})
	return line
}

// TestJinjaLlama3MatchesBuiltin: Llama 3's own template rendered through
// Jinja gives the built-in rendering's ids and labels, bit for bit, on the
// transformers fixture and on self-instruct chats, so choosing the built-in
// path for it changes nothing.
func TestJinjaLlama3MatchesBuiltin(t *testing.T) {
	tok := loadTok(t, llama3Tokenizer)
	if tok.ChatTemplate() != llama3Template {
		t.Fatalf("../shared's Llama 3 tokenizer_config.json holds another template than llama3Template")
	}
	ct, err := CompileChatTemplate("llama3", llama3Template, map[string]string{"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"})
	if err != nil {
		t.Fatal(err)
	}
	var lines [][]byte
	for _, c := range conversations(t) {
		lines = append(lines, messagesLine(c))
	}
	chats, _, err := fixture.SelfInstructChats("../../shared/data/self-instruct/seed_tasks.jsonl", 40)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		t.Fatal(err)
	}
	lines = append(lines, chats...)
	for _, promptLoss := range []bool{false, true} {
		builtin := &Formatter{Tok: tok, Vocab: 128256, PromptLoss: promptLoss}
		jinja := &Formatter{Tok: tok, Vocab: 128256, PromptLoss: promptLoss, Chat: ct}
		for i, line := range lines {
			want, err := builtin.Example(line)
			if err != nil {
				t.Fatalf("line %d: %v", i, err)
			}
			got, err := jinja.Example(line)
			if err != nil {
				t.Fatalf("line %d: %v", i, err)
			}
			if !slices.Equal(got.InputIDs, want.InputIDs) || !slices.Equal(got.Labels, want.Labels) {
				t.Fatalf("line %d (prompt loss %v): Jinja\n%v\n%v\nbuilt-in\n%v\n%v", i, promptLoss, got.InputIDs, got.Labels, want.InputIDs, want.Labels)
			}
		}
	}
}

// TestChatTemplateRender: each real template renders a conversation into the
// text its model was trained on (written out here by hand from the template).
func TestChatTemplateRender(t *testing.T) {
	tok := loadTok(t, llama3Tokenizer)
	s, u, a := "Be brief.", "Hi", "Hello"
	msgs := []message{{Role: ptr("system"), Content: &s}, {Role: ptr("user"), Content: &u}, {Role: ptr("assistant"), Content: &a}}
	want := map[string]string{
		"llama-3.1": "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\nBe brief.<|eot_id|>" +
			"<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\nHello<|eot_id|>",
		"llama-2-chat": "<|begin_of_text|>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi [/INST] Hello <|eot_id|>",
		"zephyr":       "<|system|>\nBe brief.<|eot_id|>\n<|user|>\nHi<|eot_id|>\n<|assistant|>\nHello<|eot_id|>\n",
	}
	for _, name := range chatTemplates {
		got, err := templateOf(t, tok, name).Render(msgs, false)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if got != want[name] {
			t.Errorf("%s: rendered\n%q\nwant\n%q", name, got, want[name])
		}
	}
}

func ptr(s string) *string { return &s }

// scoredRuns decodes each run of consecutive scored tokens of ex.
func scoredRuns(tok *tokenizer.Tokenizer, ex TokenExample) []string {
	var runs []string
	var run []int
	for i, l := range append(slices.Clone(ex.Labels), IgnoreIndex) {
		if l != IgnoreIndex {
			run = append(run, ex.InputIDs[i])
			continue
		}
		if len(run) > 0 {
			runs = append(runs, tok.Decode(run))
			run = nil
		}
	}
	return runs
}

// TestChatTemplateMasking: through every real template and both kinds of
// tokenizer (byte-level Llama 3, SentencePiece-style stories260K), exactly
// the assistant replies are scored: one run of scored tokens per reply,
// holding the reply and ending with the end-of-turn token, and nothing of
// the other messages.
func TestChatTemplateMasking(t *testing.T) {
	for _, path := range []string{llama3Tokenizer, stories260KTokenizer} {
		tok := loadTok(t, path)
		eos, _ := tok.Token(tok.EOS())
		for _, name := range chatTemplates {
			f := &Formatter{Tok: tok, Vocab: tok.VocabSize(), Chat: templateOf(t, tok, name)}
			end := eos
			if name == "llama-3.1" {
				end = "<|eot_id|>" // written by the template, not its eos_token
			}
			for i, c := range conversations(t) {
				ex, err := f.Example(messagesLine(c))
				if err != nil {
					t.Fatalf("%s, %s, conversation %d: %v", path, name, i, err)
				}
				var replies []string
				for _, m := range c {
					if *m.Role == "assistant" {
						replies = append(replies, strings.TrimSpace(*m.Content))
					}
				}
				runs := scoredRuns(tok, ex)
				if len(runs) != len(replies) {
					t.Fatalf("%s, %s, conversation %d: %d scored runs %q for %d replies", path, name, i, len(runs), runs, len(replies))
				}
				for j, r := range runs {
					if strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(r), end)) != replies[j] || !strings.HasSuffix(r, end) {
						t.Errorf("%s, %s, conversation %d: reply %d scored as %q, want %q then %s", path, name, i, j, r, replies[j], end)
					}
				}
			}
		}
	}
}

// TestChatTemplateErrors: a template that does not compile names its file;
// one that raises (Llama 2's on roles that do not alternate) says why.
func TestChatTemplateErrors(t *testing.T) {
	tok := loadTok(t, llama3Tokenizer)
	_, err := ChatTemplateFor(withTemplate{tok, "{% for m in messages %}{{ m.content }"}, "models/x/tokenizer_config.json")
	if err == nil || !strings.Contains(err.Error(), "models/x/tokenizer_config.json: chat_template") {
		t.Errorf("broken template: %v", err)
	}
	f := &Formatter{Tok: tok, Vocab: 128256, Chat: templateOf(t, tok, "llama-2-chat")}
	_, err = f.Example([]byte(`{"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]}`))
	if err == nil || !strings.Contains(err.Error(), "Conversation roles must alternate") {
		t.Errorf("raise_exception: %v", err)
	}
	// Alpaca and ShareGPT records go through the template too.
	for _, line := range []string{`{"instruction": "Say hi", "output": "hi"}`, `{"conversations": [{"from": "human", "value": "Say hi"}, {"from": "gpt", "value": "hi"}]}`} {
		ex, err := f.Example([]byte(line))
		if err != nil {
			t.Fatal(err)
		}
		if got := tok.Decode(ex.InputIDs); got != "<|begin_of_text|>[INST] Say hi [/INST] hi <|eot_id|>" {
			t.Errorf("%s: rendered %q", line, got)
		}
	}
}

// TestWriteChatTemplateCheckInputs writes what scripts/check-chat-templates.py
// needs into $CHAT_CHECK_DIR: both tokenizers of ../shared, the templates, and
// our ids of every conversation through every template (see the script).
func TestWriteChatTemplateCheckInputs(t *testing.T) {
	dir := os.Getenv("CHAT_CHECK_DIR")
	if dir == "" {
		t.Skip("set CHAT_CHECK_DIR to write the inputs of scripts/check-chat-templates.py")
	}
	out, err := os.Create(filepath.Join(mkdir(t, dir), "ours.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	enc := json.NewEncoder(out)
	for _, tk := range [][2]string{{"llama3", llama3Tokenizer}, {"stories260K", stories260KTokenizer}} {
		name, path := tk[0], tk[1]
		tok := loadTok(t, path)
		tdir := mkdir(t, filepath.Join(dir, "tokenizers", name))
		for _, file := range []string{"tokenizer.json", "tokenizer_config.json"} {
			b, err := os.ReadFile(filepath.Join(filepath.Dir(path), file))
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(tdir, file), b, 0o644); err != nil {
				t.Fatal(err)
			}
		}
		names := slices.Clone(chatTemplates)
		templates := map[string]*ChatTemplate{}
		sources := map[string]string{}
		for _, tn := range chatTemplates {
			templates[tn], sources[tn] = templateOf(t, tok, tn), readTemplate(t, tn)
		}
		if name == "llama3" {
			names = append(names, "llama3 (built-in)")
			templates["llama3 (built-in)"], sources["llama3 (built-in)"] = nil, llama3Template
		}
		for _, tn := range names {
			ct := templates[tn]
			f := &Formatter{Tok: tok, Vocab: tok.VocabSize(), PromptLoss: true, Chat: ct}
			for _, c := range conversations(t) {
				ex, err := f.Example(messagesLine(c))
				if err != nil {
					t.Fatal(err)
				}
				// The generation prompt: the conversation before its last reply.
				n := len(c) - 1
				var roles, contents []string
				for _, m := range c[:n] {
					roles, contents = append(roles, *m.Role), append(contents, *m.Content)
				}
				gen, err := ChatPrompt(tok, ct, roles, contents)
				if err != nil {
					t.Fatal(err)
				}
				rec := map[string]any{"tokenizer": name, "template": tn, "chat_template": sources[tn], "messages": c,
					"ids": ex.InputIDs, "generation_messages": n, "ids_generation_prompt": gen}
				if err := enc.Encode(rec); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	t.Logf("wrote %s", dir)
}

func mkdir(t *testing.T, dir string) string {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}
