package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"math/rand/v2"
	"os"
	"strings"
	"testing"
	"unicode/utf8"

	"train/format/peft"
	"train/model"
	"train/tokenizer"
)

// generateMain runs `train generate args...` through mainExit once the command
// is in main.go's table, and until then through runGenerate the way mainExit
// would, so the test does not depend on the order the two land in.
func generateMain(args []string, out, errOut *bytes.Buffer) int {
	for _, c := range commands() {
		if c.name == "generate" {
			return mainExit(append([]string{"generate"}, args...), out, errOut)
		}
	}
	err := runGenerate(args, out, errOut)
	switch {
	case err == nil, errors.Is(err, flag.ErrHelp):
		return 0
	case errors.As(err, new(*usageError)):
		errOut.WriteString("train generate: " + err.Error() + "\n")
		return 2
	}
	errOut.WriteString("train generate: " + err.Error() + "\n")
	return 1
}

func generateNeedsStories(t *testing.T) {
	t.Helper()
	if _, err := os.Stat(storiesDir); err != nil {
		t.Skipf("skipping: %s not found (../shared is absent): %v", storiesDir, err)
	}
}

// TestGenerateGreedyFromBOS: greedy decoding from BOS alone prints transformers'
// greedy continuation (model/testdata/parity/stories260k.json), decoded, and the
// speed on stderr.
func TestGenerateGreedyFromBOS(t *testing.T) {
	generateNeedsStories(t)
	raw, err := os.ReadFile("model/testdata/parity/stories260k.json")
	if err != nil {
		t.Fatal(err)
	}
	var ref struct {
		GreedyFromBOS []int `json:"greedy_from_bos"`
	}
	if err := json.Unmarshal(raw, &ref); err != nil {
		t.Fatal(err)
	}
	tok, err := tokenizer.Load(storiesDir + "/tokenizer.json")
	if err != nil {
		t.Fatal(err)
	}
	cont := ref.GreedyFromBOS[1:]
	want := tok.DecodeSkipSpecial(cont) + "\n"
	if !strings.HasPrefix(want, "Once upon a time") {
		t.Fatalf("the fixture's continuation decodes to %q", want)
	}
	var out, errOut bytes.Buffer
	args := []string{"-model", storiesDir, "-prompt", "", "-max-tokens", "63"}
	if len(cont) != 63 {
		t.Fatalf("fixture continuation has %d tokens", len(cont))
	}
	if code := generateMain(args, &out, &errOut); code != 0 {
		t.Fatalf("exit %d: %s", code, errOut.String())
	}
	if out.String() != want {
		t.Errorf("output\n%q\nwant\n%q", out.String(), want)
	}
	if !strings.Contains(errOut.String(), "tokens/s") || !strings.Contains(errOut.String(), "63 new tokens") {
		t.Errorf("stderr %q lacks the token count and speed", errOut.String())
	}
}

// TestGeneratePromptAndSampling: a prompt from the flag or from stdin gives the
// same text; sampling is reproducible for a seed.
func TestGeneratePromptAndSampling(t *testing.T) {
	generateNeedsStories(t)
	run := func(stdin string, args ...string) string {
		t.Helper()
		var out, errOut bytes.Buffer
		args = append([]string{"-model", storiesDir, "-max-tokens", "30"}, args...)
		if err := runGenerateFrom(args, strings.NewReader(stdin), &out, &errOut); err != nil {
			t.Fatalf("%v: %v", args, err)
		}
		return out.String()
	}
	greedy := run("", "-prompt", "Once upon a time, there was a")
	if len(strings.TrimSpace(greedy)) == 0 || !strings.HasPrefix(greedy, " ") {
		t.Errorf("continuation %q: want text starting with the space before the next word", greedy)
	}
	if got := run("Once upon a time, there was a\n", "-prompt", "-"); got != greedy {
		t.Errorf("prompt from stdin gave %q, from the flag %q", got, greedy)
	}
	sampled := []string{"-prompt", "Lily", "-temperature", "1", "-top-p", "0.95", "-top-k", "40"}
	a := run("", append(sampled, "-seed", "3")...)
	b := run("", append(sampled, "-seed", "3")...)
	if a != b {
		t.Errorf("seed 3 gave %q then %q", a, b)
	}
}

func TestGenerateErrors(t *testing.T) {
	generateNeedsStories(t)
	for _, c := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"-prompt", "x"}, 2, "-model is required"},
		{[]string{"-model", storiesDir, "-max-tokens", "0"}, 2, "-max-tokens"},
		{[]string{"-model", storiesDir, "-temperature", "-1"}, 2, "temperature"},
		{[]string{"-model", storiesDir, "-system", "be brief"}, 2, "-system needs -chat"},
		{[]string{"-model", storiesDir, "-chat", "-prompt", "hi"}, 1, "<|start_header_id|>"},
		{[]string{"-model", storiesDir, "-prompt", strings.Repeat("Once upon a time ", 200)}, 1, "longer than the model's context of 512"},
		{[]string{"-model", storiesDir, "-bos=false"}, 1, "nothing to continue"},
		{[]string{"-model", storiesDir, "-tokenizer", "../shared/tokenizers/llama3"}, 1, "more than the model's vocabulary of 512"},
		{[]string{"-model", storiesDir, "-device", "tpu"}, 1, "tpu"},
		{[]string{"-model", "random:tiny"}, 2, "-tokenizer is required"},
	} {
		if strings.Contains(strings.Join(c.args, " "), "llama3") {
			if _, err := os.Stat("../shared/tokenizers/llama3"); err != nil {
				continue
			}
		}
		var out, errOut bytes.Buffer
		code := generateMain(c.args, &out, &errOut)
		if code != c.code || !strings.Contains(errOut.String(), c.want) {
			t.Errorf("%v: exit %d, stderr %q; want exit %d and %q", c.args, code, errOut.String(), c.code, c.want)
		}
	}
}

// TestTextStreamWholeCharacters: characters the vocabulary lacks become several
// byte tokens; streamed one token at a time they come out whole, and the pieces
// add up to the decoding of the whole sequence.
func TestTextStreamWholeCharacters(t *testing.T) {
	generateNeedsStories(t)
	tok, err := tokenizer.Load(storiesDir + "/tokenizer.json")
	if err != nil {
		t.Fatal(err)
	}
	prompt := tok.Encode("Once upon", true)
	gen := tok.Encode(" a time 日本語 and émoji 🙂 end", false)
	full := tok.DecodeSkipSpecial(append(append([]int(nil), prompt...), gen...))
	ts := newTextStream(tok, prompt)
	var got strings.Builder
	for _, id := range gen {
		piece := ts.push(id)
		if strings.ContainsRune(piece, utf8.RuneError) {
			t.Fatalf("piece %q holds a split character", piece)
		}
		got.WriteString(piece)
	}
	got.WriteString(ts.flush())
	if want := strings.TrimPrefix(full, tok.DecodeSkipSpecial(prompt)); got.String() != want {
		t.Errorf("streamed %q, want %q", got.String(), want)
	}
}

// TestGenerateAdapter: a fresh adapter (B = 0) leaves the greedy text as the base
// model's; one with trained-looking B changes it.
func TestGenerateAdapter(t *testing.T) {
	generateNeedsStories(t)
	w, err := model.LoadModel(storiesDir)
	if err != nil {
		t.Fatal(err)
	}
	run := func(adapter string) string {
		t.Helper()
		var out, errOut bytes.Buffer
		args := []string{"-model", storiesDir, "-prompt", "Once upon a time", "-max-tokens", "30"}
		if adapter != "" {
			args = append(args, "-adapter", adapter)
		}
		if code := generateMain(args, &out, &errOut); code != 0 {
			t.Fatalf("%v: exit %d: %s", args, code, errOut.String())
		}
		return out.String()
	}
	write := func(scaleB float32) string {
		t.Helper()
		l, err := model.NewLoRA(&w.Config, model.LoRAConfig{Rank: 4, Alpha: 8}, 1)
		if err != nil {
			t.Fatal(err)
		}
		rng := rand.New(rand.NewPCG(2, 3))
		for _, layer := range l.Layers {
			for _, p := range layer {
				for i := range p.B {
					p.B[i] = scaleB * float32(2*rng.Float64()-1)
				}
			}
		}
		dir := t.TempDir()
		if err := peft.Write(dir, l, &w.Config, storiesDir); err != nil {
			t.Fatal(err)
		}
		return dir
	}
	base := run("")
	if got := run(write(0)); got != base {
		t.Errorf("a zero adapter changed the text:\n%q\nbase\n%q", got, base)
	}
	if got := run(write(0.5)); got == base {
		t.Errorf("a non-zero adapter left the text as the base model's: %q", got)
	}
}
