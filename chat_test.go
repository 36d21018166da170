package main

import (
	"bufio"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"train/data"
	"train/format/safetensors"
	"train/model"
	"train/tokenizer"
)

const llama3Tokenizer = "../shared/tokenizers/llama3/tokenizer.json"

// selfInstructChats converts ../shared's self-instruct seed tasks to chat lines:
// the instruction (and input, when there is one) as the user turn, the output as
// the assistant's.
func selfInstructChats(t *testing.T, path string, limit int) (lines [][]byte, outputs []string) {
	t.Helper()
	f, err := os.Open("../shared/data/self-instruct/seed_tasks.jsonl")
	if err != nil {
		t.Skipf("self-instruct data is not in ../shared (%v)", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() && len(lines) < limit {
		var task struct {
			Instruction string
			Instances   []struct{ Input, Output string }
		}
		if err := json.Unmarshal(sc.Bytes(), &task); err != nil {
			t.Fatal(err)
		}
		for _, in := range task.Instances {
			user := task.Instruction
			if in.Input != "" {
				user += "\n\n" + in.Input
			}
			line, _ := json.Marshal(map[string]any{"messages": []map[string]string{
				{"role": "system", "content": "You are a helpful assistant."},
				{"role": "user", "content": user},
				{"role": "assistant", "content": in.Output},
			}})
			lines = append(lines, line)
			outputs = append(outputs, in.Output)
		}
	}
	var buf strings.Builder
	for _, l := range lines {
		buf.Write(l)
		buf.WriteByte('\n')
	}
	if err := os.WriteFile(path, []byte(buf.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	return lines, outputs
}

// TestChatMasking: through the real Llama 3 tokenizer, exactly the assistant's
// reply and its <|eot_id|> are scored in every self-instruct conversation.
func TestChatMasking(t *testing.T) {
	tok, err := tokenizer.Load(llama3Tokenizer)
	if err != nil {
		t.Skipf("Llama 3 tokenizer not available: %v", err)
	}
	lines, outputs := selfInstructChats(t, filepath.Join(t.TempDir(), "chat.jsonl"), 60)
	f := &data.Formatter{Tok: tok, Vocab: 128256}
	for i, line := range lines {
		ex, err := f.Example(line)
		if err != nil {
			t.Fatalf("line %d: %v", i+1, err)
		}
		var scored []int
		for j, l := range ex.Labels {
			if l != data.IgnoreIndex {
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

// TestChatFineTune trains two steps through the chat path on a small model with the
// Llama 3 vocabulary, written to disk as a Hugging Face directory.
func TestChatFineTune(t *testing.T) {
	if _, err := os.Stat(llama3Tokenizer); err != nil {
		t.Skipf("Llama 3 tokenizer not available: %v", err)
	}
	dir := t.TempDir()
	chat := filepath.Join(dir, "chat.jsonl")
	selfInstructChats(t, chat, 40)
	cfg, err := model.RandomConfig("random:tiny")
	if err != nil {
		t.Fatal(err)
	}
	cfg.VocabSize, cfg.HiddenSize, cfg.IntermediateSize, cfg.NumLayers, cfg.HeadDim = 128256, 32, 64, 1, 8
	cfg.TieEmbeddings = true
	modelDir := writeRandomModel(t, filepath.Join(dir, "model"), cfg, nil)
	run := filepath.Join(dir, "run")
	runMain(t, "-model", modelDir, "-tokenizer", llama3Tokenizer, "-data", chat, "-method", "lora",
		"-steps", "2", "-batch", "1", "-seq", "128", "-lr", "1e-3", "-run", run)
	if n := len(readMetrics(t, run)); n != 3 {
		t.Fatalf("metrics.jsonl has %d lines, want 2 steps and an eval", n)
	}
}

// TestChatTemplateMatchesTransformers: the built-in Llama 3 chat rendering gives
// the ids of transformers' apply_chat_template (data/testdata/tokenizer/llama3_chat.jsonl,
// written by scripts/make-parity-fixtures.py), with and without the generation prompt.
func TestChatTemplateMatchesTransformers(t *testing.T) {
	tok, err := tokenizer.Load(llama3Tokenizer)
	if err != nil {
		t.Skipf("Llama 3 tokenizer not available: %v", err)
	}
	raw, err := os.ReadFile("data/testdata/tokenizer/llama3_chat.jsonl")
	if err != nil {
		t.Fatal(err)
	}
	f := &data.Formatter{Tok: tok, Vocab: 128256, PromptLoss: true}
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
		gen, err := data.ChatPrompt(tok, roles, contents)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(gen, ref.IDsGen) {
			t.Errorf("conversation %d: generation prompt ids\n%v\ntransformers\n%v", i, gen, ref.IDsGen)
		}
	}
}

// writeRandomModel writes a Hugging Face model directory with random weights for
// cfg, after letting edit change them.
func writeRandomModel(t *testing.T, dir string, cfg model.Config, edit func(*model.Weights)) string {
	t.Helper()
	w, err := model.RandomWeights(cfg, 7, 0, cfg.NumLayers, true, true, 0)
	if err != nil {
		t.Fatal(err)
	}
	if edit != nil {
		edit(w)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	cj, err := model.MarshalConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "config.json"), cj, 0o644); err != nil {
		t.Fatal(err)
	}
	shapes := map[string][]int{}
	for _, spec := range cfg.ExpectedTensors() {
		shapes[spec.Name] = spec.Shape
	}
	var st safetensors.Writer
	for name, v := range w.NamedTensors() {
		if err := st.AddFloat32(name, safetensors.F32, shapes[name], v); err != nil {
			t.Fatal(err)
		}
	}
	if err := st.WriteFile(filepath.Join(dir, "model.safetensors")); err != nil {
		t.Fatal(err)
	}
	return dir
}
