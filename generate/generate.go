// Package generate continues a prompt with a model, the way to try a model
// before and after fine-tuning. The prompt becomes token ids (the text with BOS
// in front, or the Llama 3 chat template), a decoder with a KV cache runs it
// once, and then a sampler picks one token at a time, each fed back, until an
// end-of-sequence token, the token limit or the model's context ends it. The
// new text is written as it comes, whole characters only.
package generate

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"time"

	"train/data"
	"train/device"
	"train/format"
	"train/format/peft"
	"train/model"
	"train/tokenizer"
)

// Options say what to continue, with which model, and how.
type Options struct {
	Model     string // Hugging Face model directory, a GGUF file, or random:NAME
	ModelSeed int64  // seed of a random:NAME model's weights
	Adapter   string // LoRA adapter directory in peft format; "" for none
	Quantize  string // "nf4": the base weights in 4 bits, as a QLoRA run holds them; "" as stored
	Tokenizer string // tokenizer.json, a directory holding one, or a GGUF file; "" for the model's own

	Prompt string // the text to continue; with Chat, the user's message
	System string // with Chat, a system message before the user's; "" for none
	Chat   bool   // apply the Llama 3 chat template; the model answers as the assistant
	BOS    bool   // put the BOS token in front of a plain prompt (Chat always does)

	IDs       bool           // print the new token ids (a line of them, space-separated) instead of the text
	MaxTokens int            // most new tokens to generate, at least 1
	Sampler   *model.Sampler // how to pick each token; nil is greedy

	Device    string // cpu, cuda or auto
	Precision string // auto (bf16 on a GPU that has it, else fp16; fp32 on the CPU), fp32, bf16 or fp16
}

// Run loads the tokenizer, the model and the adapter, continues the prompt
// and writes the new text to stdout as it comes (not the prompt, not the stop
// token), then a newline; the speed and why it stopped go to stderr.
func Run(o Options, stdout, stderr io.Writer) error {
	tokPath := o.Tokenizer
	if tokPath == "" {
		tokPath = o.Model
	}
	tok, err := format.LoadTokenizer(tokPath) // a directory means its tokenizer.json, a GGUF file its embedded one
	if err != nil {
		return err
	}
	be, err := device.Open(o.Device, 0)
	if err != nil {
		return err
	}
	defer device.Close(be)
	cfg, err := format.SourceConfig(o.Model)
	if err != nil {
		return err
	}
	w, err := format.LoadSource(context.Background(), o.Model, cfg, o.ModelSeed)
	if err != nil {
		return err
	}
	defer w.Close()
	if n := tok.VocabSize(); n > cfg.VocabSize {
		return fmt.Errorf("tokenizer %s has %d tokens, more than the model's vocabulary of %d: is it this model's tokenizer?", tokPath, n, cfg.VocabSize)
	}
	ids, err := prompt(tok, cfg, o)
	if err != nil {
		return err
	}
	if cfg.MaxPositions > 0 && len(ids) > cfg.MaxPositions {
		return fmt.Errorf("the prompt is %d tokens, longer than the model's context of %d (max_position_embeddings)", len(ids), cfg.MaxPositions)
	}
	var opt model.Options
	if opt.Compute, err = device.ComputeType(o.Precision, be); err != nil {
		return err
	}
	if o.Adapter != "" {
		if opt.LoRA, err = peft.Read(o.Adapter, cfg); err != nil {
			return err
		}
	}
	if err := model.SetQuantize(&opt, o.Quantize, o.Model, &cfg); err != nil {
		return err
	}
	m, err := model.NewModel(be, w, opt)
	if err != nil {
		return err
	}
	defer m.Close()

	maxLen := len(ids) + o.MaxTokens - 1 // the last token is never fed back
	if cfg.MaxPositions > 0 {
		maxLen = min(maxLen, cfg.MaxPositions)
	}
	dec, err := model.NewDecoder(m, maxLen)
	if err != nil {
		return err
	}
	defer dec.Close()
	s := o.Sampler
	if s == nil {
		if s, err = model.NewSampler(model.SamplerOptions{}); err != nil {
			return err
		}
	}
	return stream(dec, s, tok, ids, stopTokens(tok, cfg), o, stdout, stderr)
}

// prompt turns the prompt text into token ids: the chat template with Chat,
// else the text with BOS in front when asked.
func prompt(tok *tokenizer.Tokenizer, cfg model.Config, o Options) ([]int, error) {
	if o.Chat {
		roles, contents := []string{"user"}, []string{o.Prompt}
		if o.System != "" {
			roles, contents = []string{"system", "user"}, []string{o.System, o.Prompt}
		}
		ct, err := data.ChatTemplateFor(tok, tok.ConfigPath())
		if err != nil {
			return nil, err
		}
		ids, err := data.ChatPrompt(tok, ct, roles, contents)
		if err != nil {
			return nil, fmt.Errorf("-chat: %w", err)
		}
		return ids, nil
	}
	var ids []int
	if o.BOS {
		bos := tok.BOS()
		if bos < 0 {
			bos = cfg.BOSTokenID
		}
		if bos < 0 {
			return nil, errors.New("neither the tokenizer nor the model's config.json names a BOS token: run with -bos=false")
		}
		ids = append(ids, bos)
	}
	ids = append(ids, tok.Encode(o.Prompt, false)...)
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

// stream runs the prompt through the decoder, then samples up to maxTokens
// tokens, feeding each back, and streams their text to stdout. The stop token
// itself is not printed.
func stream(dec *model.Decoder, s *model.Sampler, tok *tokenizer.Tokenizer, prompt []int, stop map[int]bool, o Options, stdout, stderr io.Writer) error {
	maxTokens := o.MaxTokens
	start := time.Now()
	logits, err := dec.Append(prompt)
	if err != nil {
		return fmt.Errorf("prompt: %w", err)
	}
	promptTime := time.Since(start)
	ts := tokenizer.NewStream(tok, prompt)
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
		text := ts.Push(id)
		if o.IDs {
			text = strconv.Itoa(id)
			if n > 1 {
				text = " " + text
			}
		}
		if err := write(text); err != nil {
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
	rest := ts.Flush()
	if o.IDs {
		rest = ""
	}
	if err := write(rest + "\n"); err != nil {
		return err
	}
	fmt.Fprintf(stderr, "generate: prompt %d tokens in %s (%.1f tokens/s); %d new tokens in %s (%.1f tokens/s); stopped: %s\n",
		len(prompt), promptTime.Round(time.Millisecond), perSecond(len(prompt), promptTime),
		n, genTime.Round(time.Millisecond), perSecond(n, genTime), why)
	return nil
}

// perSecond is n per d, or 0 for a duration too short to measure.
func perSecond(n int, d time.Duration) float64 {
	if d <= 0 {
		return 0
	}
	return float64(n) / d.Seconds()
}
