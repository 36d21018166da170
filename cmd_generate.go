package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"
	"unicode/utf8"

	"train/data"
	"train/device"
	"train/format/peft"
	"train/model"
	"train/tokenizer"
)

// maxPromptBytes bounds a prompt read from stdin.
const maxPromptBytes = 16 << 20

// runGenerate continues a prompt with a model (and optional LoRA adapter),
// streaming the text to stdout: the way to try a model before and after
// fine-tuning.
func runGenerate(args []string, stdout, stderr io.Writer) error {
	return runGenerateFrom(args, os.Stdin, stdout, stderr)
}

// generateOptions are runGenerate's flags.
type generateOptions struct {
	model, adapter, tokenizer string
	prompt, system            string
	chat, bos                 bool
	maxTokens                 int
	sampler                   model.SamplerOptions
	modelSeed                 int64
	device, precision         string
}

// runGenerateFrom is runGenerate reading a "-" prompt from stdin (a parameter,
// for tests).
func runGenerateFrom(args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	fs := newFlagSet("generate", `Usage: train generate -model DIR [-adapter DIR] [-tokenizer PATH] -prompt "..." [-chat]

Continue a prompt with the model, printing the new text as it comes (the prompt
itself is not repeated), and the speed on stderr at the end. Generation stops at
an end-of-sequence token (the model's eos_token_id, the tokenizer's EOS, or
<|eot_id|>), after -max-tokens tokens, or when the model's context is full.
With -chat the prompt is the user's message in the Llama 3 chat template and the
model answers as the assistant. Temperature 0 (the default) is greedy decoding:
the same output every time.
Examples:
  train generate -model ../shared/models/stories260K -prompt "Once upon a time"
  train generate -model DIR -adapter runs/NAME/adapter -chat -prompt "What is 7*8?"
  echo "Tell me a story" | train generate -model DIR -chat -prompt - -temperature 0.8 -top-p 0.9`, stderr)
	var o generateOptions
	fs.StringVar(&o.model, "model", "", "Hugging Face model directory, or random:NAME")
	fs.StringVar(&o.adapter, "adapter", "", "LoRA adapter directory in peft format (adapter_config.json + adapter_model.safetensors)")
	fs.StringVar(&o.tokenizer, "tokenizer", "", "tokenizer.json, or a directory holding one (default: the model directory's)")
	fs.StringVar(&o.prompt, "prompt", "", `the text to continue, or "-" to read it from stdin; empty starts from BOS alone`)
	fs.BoolVar(&o.chat, "chat", false, "apply the Llama 3 chat template: the prompt is a user message")
	fs.StringVar(&o.system, "system", "", "with -chat, a system message before the user's")
	fs.BoolVar(&o.bos, "bos", true, "put the BOS token in front of a plain prompt (-chat always does)")
	fs.IntVar(&o.maxTokens, "max-tokens", 256, "most new tokens to generate")
	fs.Float64Var(&o.sampler.Temperature, "temperature", 0, "softmax temperature; 0 is greedy")
	fs.Float64Var(&o.sampler.TopP, "top-p", 1, "nucleus sampling: keep the most likely tokens holding this much probability (1: all)")
	fs.IntVar(&o.sampler.TopK, "top-k", 0, "keep only the k most likely tokens (0: all)")
	seed := fs.Uint64("seed", 1, "seed of the sampling (the same seed gives the same text)")
	fs.Int64Var(&o.modelSeed, "model-seed", 1, "seed of a random:NAME model's weights")
	fs.StringVar(&o.device, "device", "cpu", "cpu, cuda or auto")
	fs.StringVar(&o.precision, "precision", "auto", "auto (bf16 on a GPU, fp32 on the CPU), fp32 or bf16")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	o.sampler.Seed = *seed
	if o.model == "" {
		return usagef("-model is required (see train generate -h)")
	}
	if o.maxTokens < 1 {
		return usagef("-max-tokens %d must be at least 1", o.maxTokens)
	}
	if o.system != "" && !o.chat {
		return usagef("-system needs -chat")
	}
	sampler, err := model.NewSampler(o.sampler)
	if err != nil {
		return usagef("%v", err)
	}
	if o.tokenizer == "" {
		if model.IsRandomModel(o.model) {
			return usagef("-tokenizer is required with a random model")
		}
		o.tokenizer = o.model
	}
	if o.prompt == "-" {
		b, err := io.ReadAll(io.LimitReader(stdin, maxPromptBytes+1))
		if err != nil {
			return fmt.Errorf("reading the prompt from stdin: %w", err)
		}
		if len(b) > maxPromptBytes {
			return fmt.Errorf("the prompt on stdin is larger than %d MiB", maxPromptBytes>>20)
		}
		o.prompt = strings.TrimSuffix(string(b), "\n")
	}

	tokPath := o.tokenizer
	if st, err := os.Stat(tokPath); err == nil && st.IsDir() {
		tokPath = filepath.Join(tokPath, "tokenizer.json")
	}
	tok, err := tokenizer.Load(tokPath)
	if err != nil {
		return err
	}
	be, err := device.Open(o.device, 0)
	if err != nil {
		return err
	}
	defer device.Close(be)
	w, err := model.LoadSource(o.model, o.modelSeed)
	if err != nil {
		return err
	}
	cfg := w.Config
	if n := tok.VocabSize(); n > cfg.VocabSize {
		return fmt.Errorf("tokenizer %s has %d tokens, more than the model's vocabulary of %d: is it this model's tokenizer?", tokPath, n, cfg.VocabSize)
	}
	prompt, err := generatePrompt(tok, cfg, o)
	if err != nil {
		return err
	}
	if cfg.MaxPositions > 0 && len(prompt) > cfg.MaxPositions {
		return fmt.Errorf("the prompt is %d tokens, longer than the model's context of %d (max_position_embeddings)", len(prompt), cfg.MaxPositions)
	}
	var opt model.Options
	if opt.Compute, err = device.ComputeType(o.precision, be); err != nil {
		return usagef("%v", err)
	}
	if o.adapter != "" {
		if opt.LoRA, err = peft.Read(o.adapter, cfg); err != nil {
			return err
		}
	}
	m, err := model.NewModel(be, w, opt)
	if err != nil {
		return err
	}
	defer m.Close()

	maxLen := len(prompt) + o.maxTokens - 1 // the last token is never fed back
	if cfg.MaxPositions > 0 {
		maxLen = min(maxLen, cfg.MaxPositions)
	}
	dec, err := model.NewDecoder(m, maxLen)
	if err != nil {
		return err
	}
	defer dec.Close()
	return generate(dec, sampler, tok, prompt, stopTokens(tok, cfg), o.maxTokens, stdout, stderr)
}

// generatePrompt turns the prompt text into token ids: the chat template with
// -chat, else the text with BOS in front when asked.
func generatePrompt(tok *tokenizer.Tokenizer, cfg model.Config, o generateOptions) ([]int, error) {
	if o.chat {
		roles, contents := []string{"user"}, []string{o.prompt}
		if o.system != "" {
			roles, contents = []string{"system", "user"}, []string{o.system, o.prompt}
		}
		ids, err := data.ChatPrompt(tok, roles, contents)
		if err != nil {
			return nil, fmt.Errorf("-chat: %w", err)
		}
		return ids, nil
	}
	var ids []int
	if o.bos {
		bos := tok.BOS()
		if bos < 0 {
			bos = cfg.BOSTokenID
		}
		if bos < 0 {
			return nil, errors.New("neither the tokenizer nor the model's config.json names a BOS token: run with -bos=false")
		}
		ids = append(ids, bos)
	}
	ids = append(ids, tok.Encode(o.prompt, false)...)
	if len(ids) == 0 {
		return nil, errors.New("the prompt is empty and -bos=false: the model has nothing to continue")
	}
	return ids, nil
}

// stopTokens is every id that ends a generation: the model's eos_token_id (one
// or several), the tokenizer's EOS and, where the vocabulary has them, Llama 3's
// end-of-turn and end-of-text tokens.
func stopTokens(tok *tokenizer.Tokenizer, cfg model.Config) map[int]bool {
	stop := map[int]bool{}
	for _, id := range cfg.EOSTokenIDs {
		stop[id] = true
	}
	if id := tok.EOS(); id >= 0 {
		stop[id] = true
	}
	for _, s := range []string{"<|eot_id|>", "<|end_of_text|>"} {
		if id, ok := tok.TokenID(s); ok {
			stop[id] = true
		}
	}
	return stop
}

// generate runs the prompt through the decoder, then samples up to maxTokens
// tokens, feeding each back, and streams their text to stdout. The stop token
// itself is not printed.
func generate(dec *model.Decoder, s *model.Sampler, tok *tokenizer.Tokenizer, prompt []int, stop map[int]bool, maxTokens int, stdout, stderr io.Writer) error {
	start := time.Now()
	logits, err := dec.Append(prompt)
	if err != nil {
		return fmt.Errorf("prompt: %w", err)
	}
	promptTime := time.Since(start)
	ts := newTextStream(tok, prompt)
	write := func(text string) error {
		if text == "" {
			return nil
		}
		if _, err := io.WriteString(stdout, text); err != nil {
			return fmt.Errorf("writing output: %w", err)
		}
		return nil
	}
	start = time.Now()
	n, why := 0, "reached -max-tokens"
	for {
		id, err := s.Sample(logits)
		if err != nil {
			return fmt.Errorf("token %d: %w", n+1, err)
		}
		if stop[id] {
			why = "end of sequence"
			break
		}
		n++
		if err := write(ts.push(id)); err != nil {
			return err
		}
		if n == maxTokens {
			break
		}
		if dec.Len() == dec.MaxLen() {
			why = "the model's context is full"
			break
		}
		if logits, err = dec.Append([]int{id}); err != nil {
			return fmt.Errorf("token %d: %w", n, err)
		}
	}
	genTime := time.Since(start)
	if err := write(ts.flush() + "\n"); err != nil {
		return err
	}
	fmt.Fprintf(stderr, "generate: prompt %d tokens in %s (%.1f tokens/s); %d new tokens in %s (%.1f tokens/s); stopped: %s\n",
		len(prompt), promptTime.Round(time.Millisecond), perSecond(len(prompt), promptTime),
		n, genTime.Round(time.Millisecond), perSecond(n, genTime), why)
	return nil
}

func perSecond(n int, d time.Duration) float64 {
	if d <= 0 {
		return 0
	}
	return float64(n) / d.Seconds()
}

// textStream turns tokens into text as they arrive. Decoding token by token
// goes wrong two ways: a character may be split over several byte tokens (the
// first alone decodes to U+FFFD), and SentencePiece decoders drop the space of
// the first token of a string. So each new token is decoded together with the
// tokens before it, and only text beyond what those gave, ending in a whole
// character, is emitted (the scheme of Hugging Face's text-generation-inference).
type textStream struct {
	tok *tokenizer.Tokenizer
	ids []int
	// ids[prefix:read] is context already emitted; ids[read:] is not yet emitted.
	prefix, read int
}

// streamContext is how many prompt tokens give the first new token its context.
const streamContext = 6

func newTextStream(tok *tokenizer.Tokenizer, prompt []int) *textStream {
	n := len(prompt)
	return &textStream{tok: tok, ids: append([]int(nil), prompt...), prefix: max(0, n-streamContext), read: n}
}

// push adds a token and returns the text it completes, possibly "".
func (s *textStream) push(id int) string {
	s.ids = append(s.ids, id)
	prev := s.tok.DecodeSkipSpecial(s.ids[s.prefix:s.read])
	text := s.tok.DecodeSkipSpecial(s.ids[s.prefix:])
	if len(text) <= len(prev) {
		return ""
	}
	if r, _ := utf8.DecodeLastRuneInString(text); r == utf8.RuneError {
		return "" // a character still incomplete
	}
	s.prefix, s.read = s.read, len(s.ids)
	return beyond(prev, text)
}

// flush returns what is pending at the end, incomplete characters and all.
func (s *textStream) flush() string {
	prev := s.tok.DecodeSkipSpecial(s.ids[s.prefix:s.read])
	text := s.tok.DecodeSkipSpecial(s.ids[s.prefix:])
	s.prefix, s.read = s.read, len(s.ids)
	return beyond(prev, text)
}

// beyond is the part of text after prev. prev is normally a prefix of text;
// where a decoder rewrote the end of prev, the text from where they part is
// returned (at a character boundary), so the stream never stalls.
func beyond(prev, text string) string {
	i := 0
	for i < len(prev) && i < len(text) && prev[i] == text[i] {
		i++
	}
	for i > 0 && i < len(text) && !utf8.RuneStart(text[i]) {
		i--
	}
	return text[i:]
}
