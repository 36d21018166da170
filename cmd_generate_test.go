package main

import (
	"bytes"
	"os"
	"strings"
	"testing"
)

// generateMain runs `train generate args...` as the program would.
func generateMain(args []string, out, errOut *bytes.Buffer) int {
	return mainExit(append([]string{"generate"}, args...), out, errOut)
}

func generateNeedsStories(t *testing.T) {
	t.Helper()
	if _, err := os.Stat(storiesDir); err != nil {
		t.Skipf("skipping: %s not found (../shared is absent): %v", storiesDir, err)
	}
}

// TestGenerateCommand: the flags reach the generation (a prompt from the flag
// or from stdin gives the same text, a seed gives the same sample) and the
// text goes to stdout, the speed to stderr.
func TestGenerateCommand(t *testing.T) {
	generateNeedsStories(t)
	run := func(stdin string, args ...string) string {
		t.Helper()
		var out, errOut bytes.Buffer
		args = append([]string{"-model", storiesDir, "-max-tokens", "30"}, args...)
		if err := runGenerateFrom(args, strings.NewReader(stdin), &out, &errOut); err != nil {
			t.Fatalf("%v: %v", args, err)
		}
		if !strings.Contains(errOut.String(), "tokens/s") || !strings.HasSuffix(out.String(), "\n") {
			t.Errorf("%v: stdout %q, stderr %q: want the text and a newline, then the speed", args, out.String(), errOut.String())
		}
		return out.String()
	}
	greedy := run("", "-prompt", "Once upon a time, there was a")
	if got := run("Once upon a time, there was a\n", "-prompt", "-"); got != greedy {
		t.Errorf("prompt from stdin gave %q, from the flag %q", got, greedy)
	}
	sampled := []string{"-prompt", "Lily", "-temperature", "1", "-top-p", "0.95", "-top-k", "40"}
	a := run("", append(sampled, "-seed", "3")...)
	b := run("", append(sampled, "-seed", "3")...)
	if a != b || a == run("", append(sampled, "-seed", "4")...) {
		t.Errorf("seed 3 gave %q then %q, the same as seed 4", a, b)
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
		{[]string{"-model", storiesDir, "-precision", "fp8"}, 2, `precision "fp8" is not one of auto, fp32, bf16, fp16`},
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
