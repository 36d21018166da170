package generate

import (
	"bytes"
	"encoding/json"
	"math/rand/v2"
	"os"
	"strings"
	"testing"

	"train/format/peft"
	"train/model"
	"train/tokenizer"
)

// storiesDir is the real pretrained stories260K model in ../shared.
const storiesDir = "../../shared/models/stories260K"

func needStories(t *testing.T) {
	t.Helper()
	if _, err := os.Stat(storiesDir); err != nil {
		t.Skipf("skipping: %s not found (../shared is absent): %v", storiesDir, err)
	}
}

// storiesOptions are the options of a greedy run of stories260K on the CPU.
func storiesOptions(prompt string, maxTokens int) Options {
	return Options{Model: storiesDir, ModelSeed: 1, Prompt: prompt, BOS: true, MaxTokens: maxTokens, Device: "cpu", Precision: "auto"}
}

// run generates with o and returns stdout and stderr.
func run(t *testing.T, o Options) (string, string) {
	t.Helper()
	var out, errOut bytes.Buffer
	if err := Run(o, &out, &errOut); err != nil {
		t.Fatalf("%+v: %v", o, err)
	}
	return out.String(), errOut.String()
}

// TestGreedyFromBOS: greedy decoding from BOS alone writes transformers' greedy
// continuation (model/testdata/parity/stories260k.json), decoded, and the
// speed on stderr.
func TestGreedyFromBOS(t *testing.T) {
	needStories(t)
	raw, err := os.ReadFile("../model/testdata/parity/stories260k.json")
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
	if len(cont) != 63 {
		t.Fatalf("fixture continuation has %d tokens", len(cont))
	}
	want := tok.DecodeSkipSpecial(cont) + "\n"
	if !strings.HasPrefix(want, "Once upon a time") {
		t.Fatalf("the fixture's continuation decodes to %q", want)
	}
	out, errOut := run(t, storiesOptions("", 63))
	if out != want {
		t.Errorf("output\n%q\nwant\n%q", out, want)
	}
	if !strings.Contains(errOut, "tokens/s") || !strings.Contains(errOut, "63 new tokens") {
		t.Errorf("stderr %q lacks the token count and speed", errOut)
	}
}

// TestSampling: a continuation starts with the space before the next word;
// sampling is reproducible for a seed.
func TestSampling(t *testing.T) {
	needStories(t)
	greedy, _ := run(t, storiesOptions("Once upon a time, there was a", 30))
	if len(strings.TrimSpace(greedy)) == 0 || !strings.HasPrefix(greedy, " ") {
		t.Errorf("continuation %q: want text starting with the space before the next word", greedy)
	}
	sampled := func(seed uint64) string {
		t.Helper()
		s, err := model.NewSampler(model.SamplerOptions{Temperature: 1, TopP: 0.95, TopK: 40, Seed: seed})
		if err != nil {
			t.Fatal(err)
		}
		o := storiesOptions("Lily", 30)
		o.Sampler = s
		out, _ := run(t, o)
		return out
	}
	if a, b := sampled(3), sampled(3); a != b {
		t.Errorf("seed 3 gave %q then %q", a, b)
	}
}

// TestErrors: what the model, the tokenizer or the prompt cannot do is an
// error that says so.
func TestErrors(t *testing.T) {
	needStories(t)
	for _, c := range []struct {
		edit func(*Options)
		want string
	}{
		{func(o *Options) { o.Chat = true }, "<|start_header_id|>"},
		{func(o *Options) { o.Prompt = strings.Repeat("Once upon a time ", 200) }, "longer than the model's context of 512"},
		{func(o *Options) { o.Prompt, o.BOS = "", false }, "nothing to continue"},
		{func(o *Options) { o.Device = "tpu" }, "tpu"},
		{func(o *Options) { o.Adapter = t.TempDir() }, "adapter_config.json"},
	} {
		o := storiesOptions("hi", 5)
		c.edit(&o)
		var out, errOut bytes.Buffer
		if err := Run(o, &out, &errOut); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: error %v, want one containing %q", o, err, c.want)
		}
	}
}

// TestAdapter: a fresh adapter (B = 0) leaves the greedy text as the base
// model's; one with trained-looking B changes it.
func TestAdapter(t *testing.T) {
	needStories(t)
	w, err := model.LoadModel(storiesDir)
	if err != nil {
		t.Fatal(err)
	}
	withAdapter := func(adapter string) string {
		t.Helper()
		o := storiesOptions("Once upon a time", 30)
		o.Adapter = adapter
		out, _ := run(t, o)
		return out
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
	base := withAdapter("")
	if got := withAdapter(write(0)); got != base {
		t.Errorf("a zero adapter changed the text:\n%q\nbase\n%q", got, base)
	}
	if got := withAdapter(write(0.5)); got == base {
		t.Errorf("a non-zero adapter left the text as the base model's: %q", got)
	}
}

// TestStopTokens: the model's EOS, the tokenizer's and Llama 3's end-of-turn
// tokens where the vocabulary has them.
func TestStopTokens(t *testing.T) {
	needStories(t)
	tok, err := tokenizer.Load(storiesDir + "/tokenizer.json")
	if err != nil {
		t.Fatal(err)
	}
	cfg := model.Config{EOSTokenIDs: []int{7, 9}}
	stop := stopTokens(tok, cfg)
	if !stop[7] || !stop[9] || !stop[tok.EOS()] || len(stop) != 3 {
		t.Errorf("stop tokens %v, want 7, 9 and the tokenizer's EOS %d", stop, tok.EOS())
	}
	llama3, err := tokenizer.Load("../../shared/tokenizers/llama3/tokenizer.json")
	if err != nil {
		t.Skipf("Llama 3 tokenizer not available: %v", err)
	}
	if stop := stopTokens(llama3, model.Config{}); !stop[128009] || !stop[128001] {
		t.Errorf("Llama 3 stop tokens %v, want <|eot_id|> 128009 and <|end_of_text|> 128001", stop)
	}
}
