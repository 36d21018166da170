package data

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
)

// Tokenizer is what the data formats need of a tokenizer (tokenizer.Tokenizer
// implements it): encoding without special tokens, special-token lookup, and the
// BOS/EOS ids (-1 when the tokenizer has none).
type Tokenizer interface {
	Encode(text string, addSpecial bool) []int
	TokenID(token string) (int, bool)
	BOS() int
	EOS() int
}

// Formatter turns one JSONL line in any of the supported formats into a token
// example:
//
//	{"text": "..."}                                  BOS text EOS, every token scored
//	{"prompt": "...", "completion": "..."}           BOS prompt completion EOS, completion and EOS scored
//	{"messages": [{"role": "...", "content": "..."}]} the chat template, assistant turns scored
//	{"conversations": [{"from": "human", "value": "..."}, ...]}  ShareGPT: the same, roles renamed
//	{"instruction": "...", "input": "...", "output": "..."}     Alpaca: see alpaca
//	{"input_ids": [...], "labels": [...]}            as given (labels default to input_ids)
//
// With PromptLoss every token is scored. The format is chosen by the keys present.
type Formatter struct {
	Tok        Tokenizer // nil allows only the input_ids format
	Vocab      int       // ids must be below it
	PromptLoss bool
	// Columns renames a record's keys before its format is chosen: ours ->
	// theirs (ParseColumns), for datasets whose columns have other names.
	Columns map[string]string
	// Chat renders chats (messages, ShareGPT, Alpaca) with the tokenizer's
	// chat_template (ChatTemplateFor); nil is the built-in Llama 3
	// rendering, which needs the tokenizer's Llama 3 header tokens.
	Chat *ChatTemplate
}

// formatKeys are the keys the formats read, the names data.columns may give.
var formatKeys = []string{"text", "prompt", "completion", "messages", "conversations", "instruction", "input", "output", "system", "input_ids", "labels"}

// columnsRead is every key a record may carry for f: the formats' keys and
// the dataset's names that Columns renames to them.
func (f *Formatter) columnsRead() map[string]bool {
	keep := map[string]bool{}
	for _, k := range formatKeys {
		keep[k] = true
	}
	for _, theirs := range f.Columns {
		keep[theirs] = true
	}
	return keep
}

// ParseColumns reads a data.columns value, "ours=theirs,...": each ours one of
// the formats' keys, at most once, and each theirs not empty. "" is none.
func ParseColumns(s string) (map[string]string, error) {
	if strings.TrimSpace(s) == "" {
		return nil, nil
	}
	m := map[string]string{}
	for _, pair := range strings.Split(s, ",") {
		ours, theirs, ok := strings.Cut(strings.TrimSpace(pair), "=")
		ours, theirs = strings.TrimSpace(ours), strings.TrimSpace(theirs)
		switch {
		case !ok || theirs == "":
			return nil, fmt.Errorf("%q: want ours=theirs, e.g. instruction=question", pair)
		case !slices.Contains(formatKeys, ours):
			return nil, fmt.Errorf("%q: %s is not a key the formats read (%s)", pair, ours, strings.Join(formatKeys, ", "))
		case m[ours] != "":
			return nil, fmt.Errorf("%s is renamed twice", ours)
		}
		m[ours] = theirs
	}
	return m, nil
}

// Example parses and tokenizes one line.
func (f *Formatter) Example(line []byte) (TokenExample, error) {
	var keys map[string]json.RawMessage
	if err := json.Unmarshal(line, &keys); err != nil {
		return TokenExample{}, fmt.Errorf("not a JSON object: %w", err)
	}
	if len(f.Columns) > 0 {
		renamed := false
		for ours, theirs := range f.Columns {
			if v, ok := keys[theirs]; ok && theirs != ours {
				delete(keys, theirs)
				keys[ours], renamed = v, true
			}
		}
		if renamed {
			line, _ = json.Marshal(keys) // the token format parses the line itself
		}
	}
	has := func(k string) bool { _, ok := keys[k]; return ok }
	switch {
	case has("input_ids") || has("labels"):
		return parseTokenLine(line, f.Vocab)
	case has("messages"):
		return f.chat(keys)
	case has("conversations"):
		return f.shareGPT(keys)
	case has("instruction") || has("output"):
		return f.alpaca(keys)
	case has("prompt") || has("completion"):
		return f.promptCompletion(keys)
	case has("text"):
		return f.text(keys)
	}
	return TokenExample{}, errors.New(`no known format: want "text", "prompt"+"completion", "messages", "conversations" (ShareGPT), "instruction"+"output" (Alpaca) or "input_ids"`)
}

func (f *Formatter) needTok() error {
	if f.Tok == nil {
		return errors.New("text data needs a tokenizer: give -tokenizer tokenizer.json or a model directory that has one")
	}
	return nil
}

// onlyKeys rejects keys outside allowed, so that a misspelt key is not silently
// dropped from training.
func onlyKeys(keys map[string]json.RawMessage, allowed ...string) error {
	for k := range keys {
		ok := false
		for _, a := range allowed {
			ok = ok || k == a
		}
		if !ok {
			return fmt.Errorf("unexpected key %q next to %q", k, allowed[0])
		}
	}
	return nil
}

func stringField(keys map[string]json.RawMessage, k string) (string, error) {
	raw, ok := keys[k]
	if !ok {
		return "", fmt.Errorf("missing %q", k)
	}
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		return "", fmt.Errorf("%q must be a string", k)
	}
	return s, nil
}

// ex builds an example from pieces of ids, each scored or not.
type exBuilder struct {
	ids, labels []int
	promptLoss  bool
}

func (b *exBuilder) add(ids []int, scored bool) {
	b.grow(len(ids))
	b.ids = append(b.ids, ids...)
	if scored || b.promptLoss {
		b.labels = append(b.labels, ids...)
		return
	}
	for range ids {
		b.labels = append(b.labels, IgnoreIndex)
	}
}

// grow makes room for n more tokens at once: a long text is millions, and
// growing by appends copied them over and over.
func (b *exBuilder) grow(n int) {
	b.ids, b.labels = slices.Grow(b.ids, n), slices.Grow(b.labels, n)
}

func (b *exBuilder) addSpecial(id int, scored bool) {
	if id >= 0 {
		b.add([]int{id}, scored)
	}
}

func (b *exBuilder) done(vocab int) (TokenExample, error) {
	if len(b.ids) == 0 {
		return TokenExample{}, errors.New("the example has no tokens")
	}
	for i, id := range b.ids {
		if id < 0 || id >= vocab {
			return TokenExample{}, fmt.Errorf("token %d at %d is outside the model's vocabulary [0, %d): the tokenizer does not belong to this model", id, i, vocab)
		}
	}
	return TokenExample{InputIDs: b.ids, Labels: b.labels}, nil
}

func (f *Formatter) text(keys map[string]json.RawMessage) (TokenExample, error) {
	if err := onlyKeys(keys, "text"); err != nil {
		return TokenExample{}, err
	}
	if err := f.needTok(); err != nil {
		return TokenExample{}, err
	}
	s, err := stringField(keys, "text")
	if err != nil {
		return TokenExample{}, err
	}
	ids := f.Tok.Encode(s, false)
	b := &exBuilder{promptLoss: true}
	b.grow(len(ids) + 2)
	b.addSpecial(f.Tok.BOS(), true)
	b.add(ids, true)
	b.addSpecial(f.Tok.EOS(), true)
	return b.done(f.Vocab)
}

func (f *Formatter) promptCompletion(keys map[string]json.RawMessage) (TokenExample, error) {
	if err := onlyKeys(keys, "prompt", "completion"); err != nil {
		return TokenExample{}, err
	}
	if err := f.needTok(); err != nil {
		return TokenExample{}, err
	}
	p, err := stringField(keys, "prompt")
	if err != nil {
		return TokenExample{}, err
	}
	c, err := stringField(keys, "completion")
	if err != nil {
		return TokenExample{}, err
	}
	return f.promptThenCompletion(p, c)
}

// promptThenCompletion is BOS prompt completion EOS, the completion and EOS
// scored (everything with PromptLoss).
func (f *Formatter) promptThenCompletion(prompt, completion string) (TokenExample, error) {
	pIDs, cIDs := f.Tok.Encode(prompt, false), f.Tok.Encode(completion, false)
	b := &exBuilder{promptLoss: f.PromptLoss}
	b.grow(len(pIDs) + len(cIDs) + 2)
	b.addSpecial(f.Tok.BOS(), false)
	b.add(pIDs, false)
	b.add(cIDs, true)
	b.addSpecial(f.Tok.EOS(), true)
	return b.done(f.Vocab)
}

// chat renders messages with the Llama 3 chat template, as tokenizer_config.json's
// template for Llama 3 does it:
//
//	<|begin_of_text|> then per message
//	<|start_header_id|>{role}<|end_header_id|>\n\n{content, trimmed}<|eot_id|>
//
// Each text piece between special tokens is encoded on its own, as Hugging Face
// tokenizers split special tokens out before the model runs. Assistant content and
// its <|eot_id|> are scored; headers and other roles' turns are not.
func (f *Formatter) chat(keys map[string]json.RawMessage) (TokenExample, error) {
	if err := onlyKeys(keys, "messages"); err != nil {
		return TokenExample{}, err
	}
	if err := f.needTok(); err != nil {
		return TokenExample{}, err
	}
	var msgs []message
	if err := json.Unmarshal(keys["messages"], &msgs); err != nil {
		return TokenExample{}, errors.New(`"messages" must be a list of {"role": "...", "content": "..."}`)
	}
	if len(msgs) == 0 {
		return TokenExample{}, errors.New(`"messages" is empty`)
	}
	for i, m := range msgs {
		if m.Role == nil || m.Content == nil {
			return TokenExample{}, fmt.Errorf("messages[%d] needs both \"role\" and \"content\"", i)
		}
	}
	return f.chatMessages(msgs, "messages")
}

// message is one turn of a chat: both fields are set.
type message struct {
	Role    *string `json:"role"`
	Content *string `json:"content"`
}

// chatMessages renders checked messages with f.Chat or, without one, the
// Llama 3 chat template (what names the list in errors).
func (f *Formatter) chatMessages(msgs []message, what string) (TokenExample, error) {
	if f.Chat != nil {
		return f.templateChat(msgs)
	}
	sp, err := llama3Specials(f.Tok)
	if err != nil {
		return TokenExample{}, err
	}
	b := &exBuilder{promptLoss: f.PromptLoss}
	b.addSpecial(f.Tok.BOS(), false)
	nl := f.Tok.Encode("\n\n", false)
	assistant := 0
	for i, m := range msgs {
		switch *m.Role {
		case "system", "user", "assistant", "ipython", "tool":
		default:
			return TokenExample{}, fmt.Errorf("%s[%d]: role %q is not one of system, user, assistant, tool, ipython", what, i, *m.Role)
		}
		scored := *m.Role == "assistant"
		if scored {
			assistant++
		}
		b.addSpecial(sp.start, false)
		b.add(f.Tok.Encode(*m.Role, false), false)
		b.addSpecial(sp.end, false)
		body := f.Tok.Encode("\n\n"+strings.TrimSpace(*m.Content), false)
		// The blank line belongs to the header: score only what follows it.
		k := 0
		if len(body) >= len(nl) && slices.Equal(body[:len(nl)], nl) {
			k = len(nl)
		}
		b.add(body[:k], false)
		b.add(body[k:], scored)
		b.addSpecial(sp.eot, scored)
	}
	if assistant == 0 && !f.PromptLoss {
		return TokenExample{}, errors.New("no assistant message: nothing would be trained on (set data.prompt_loss to train on every token)")
	}
	return b.done(f.Vocab)
}

// shareGPT reads a ShareGPT conversation, {"conversations": [{"from":
// "human"|"gpt"|"system", "value": "..."}]} (also "user", "assistant" and
// "tool" as from), as the same messages with peft/axolotl's role names, and
// renders it with the chat template: the replies of "gpt" are scored.
func (f *Formatter) shareGPT(keys map[string]json.RawMessage) (TokenExample, error) {
	if err := onlyKeys(keys, "conversations"); err != nil {
		return TokenExample{}, err
	}
	if err := f.needTok(); err != nil {
		return TokenExample{}, err
	}
	var turns []struct {
		From  *string `json:"from"`
		Value *string `json:"value"`
	}
	if err := json.Unmarshal(keys["conversations"], &turns); err != nil {
		return TokenExample{}, errors.New(`"conversations" must be a list of {"from": "human"|"gpt"|"system", "value": "..."}`)
	}
	if len(turns) == 0 {
		return TokenExample{}, errors.New(`"conversations" is empty`)
	}
	roles := map[string]string{"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system", "tool": "tool"}
	msgs := make([]message, len(turns))
	for i, t := range turns {
		if t.From == nil || t.Value == nil {
			return TokenExample{}, fmt.Errorf("conversations[%d] needs both \"from\" and \"value\"", i)
		}
		role, ok := roles[*t.From]
		if !ok {
			return TokenExample{}, fmt.Errorf("conversations[%d]: from %q is not one of human, gpt, system (or user, assistant, tool)", i, *t.From)
		}
		msgs[i] = message{Role: &role, Content: t.Value}
	}
	return f.chatMessages(msgs, "conversations")
}

// Alpaca's prompt template (Stanford Alpaca), for tokenizers without a chat
// template: the input paragraph only when the example has one.
const (
	alpacaWithInput = "Below is an instruction that describes a task, paired with an input that provides further context. " +
		"Write a response that appropriately completes the request.\n\n### Instruction:\n%s\n\n### Input:\n%s\n\n### Response:\n"
	alpacaNoInput = "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n" +
		"### Instruction:\n%s\n\n### Response:\n"
)

// alpaca reads an Alpaca example, {"instruction": "...", "input": "...",
// "output": "..."} (input optional, and an optional "system"). With a chat
// template or a Llama 3 chat tokenizer it is a chat: [system,] user = instruction (then a blank line
// and the input when there is one), assistant = output. Otherwise it is
// prompt/completion with Stanford Alpaca's template as the prompt
// (alpacaWithInput, alpacaNoInput). Only the output (and EOS or <|eot_id|>)
// is scored unless PromptLoss.
func (f *Formatter) alpaca(keys map[string]json.RawMessage) (TokenExample, error) {
	if err := onlyKeys(keys, "instruction", "input", "output", "system"); err != nil {
		return TokenExample{}, err
	}
	if err := f.needTok(); err != nil {
		return TokenExample{}, err
	}
	get := func(k string, optional bool) (string, error) {
		if _, ok := keys[k]; !ok && optional {
			return "", nil
		}
		return stringField(keys, k)
	}
	var fields [4]string
	for i, k := range []string{"instruction", "input", "output", "system"} {
		var err error
		if fields[i], err = get(k, k == "input" || k == "system"); err != nil {
			return TokenExample{}, err
		}
	}
	instruction, input, output, system := fields[0], fields[1], fields[2], fields[3]
	if _, err := llama3Specials(f.Tok); err == nil || f.Chat != nil {
		user := instruction
		if strings.TrimSpace(input) != "" {
			user += "\n\n" + input
		}
		roles := []string{"user", "assistant"}
		contents := []string{user, output}
		if system != "" {
			roles, contents = append([]string{"system"}, roles...), append([]string{system}, contents...)
		}
		msgs := make([]message, len(roles))
		for i := range roles {
			msgs[i] = message{Role: &roles[i], Content: &contents[i]}
		}
		return f.chatMessages(msgs, "alpaca")
	}
	prompt := fmt.Sprintf(alpacaNoInput, instruction)
	if strings.TrimSpace(input) != "" {
		prompt = fmt.Sprintf(alpacaWithInput, instruction, input)
	}
	if system != "" {
		prompt = system + "\n\n" + prompt
	}
	return f.promptThenCompletion(prompt, output)
}

type chatSpecials struct{ start, end, eot int }

func llama3Specials(tok Tokenizer) (chatSpecials, error) {
	var sp chatSpecials
	for _, s := range []struct {
		name string
		dst  *int
	}{{"<|start_header_id|>", &sp.start}, {"<|end_header_id|>", &sp.end}, {"<|eot_id|>", &sp.eot}} {
		id, ok := tok.TokenID(s.name)
		if !ok {
			return sp, fmt.Errorf("chat data needs a chat_template in tokenizer_config.json or the Llama 3 chat tokens, and the tokenizer has neither (no %s)", s.name)
		}
		*s.dst = id
	}
	return sp, nil
}

// ReadExamples reads a dataset of examples in any supported format: a JSONL
// or Parquet file, a directory of them or a glob (DataFiles). A malformed
// record is an error naming file:line (file:row N in Parquet), or with
// skipBad a counted skip. A cancelled ctx stops it between records with ctx's
// error: tokenizing a large dataset takes a while, and a signal must not wait
// for it.
func ReadExamples(ctx context.Context, path string, f *Formatter, skipBad bool) (examples []TokenExample, skipped int, err error) {
	c := &collector{ctx: ctx, f: f, skipBad: skipBad}
	return c.finish(path, eachRecord(path, f.columnsRead(), c.add))
}

// CheckFirstLine opens a dataset (every file of a directory or glob) and
// formats its first record, so that a missing file, a file of the wrong
// format or data that needs a tokenizer it lacks fails before anything
// expensive starts; the whole dataset is read later. With f nil it only opens
// the files. An empty file passes here (ReadExamples names it).
func CheckFirstLine(path string, f *Formatter) error {
	files, err := DataFiles(path)
	if err != nil {
		return err
	}
	for i, file := range files {
		var keep map[string]bool
		if f != nil {
			keep = f.columnsRead()
		}
		r, err := openRecords(file, keep)
		if err != nil {
			return err
		}
		if i == 0 && f != nil {
			rec, where, err := r.next()
			switch {
			case errors.Is(err, io.EOF):
			case err != nil:
				r.Close()
				return fmt.Errorf("%s: %w", where, err)
			default:
				if _, err := f.Example(rec); err != nil {
					r.Close()
					return fmt.Errorf("%s: %w", where, err)
				}
			}
		}
		r.Close()
	}
	return nil
}

// readExamples is ReadExamples over JSON Lines from r (name for errors).
func readExamples(ctx context.Context, r io.Reader, name string, f *Formatter, skipBad bool) (examples []TokenExample, skipped int, err error) {
	c := &collector{ctx: ctx, f: f, skipBad: skipBad}
	return c.finish(name, drain(&jsonlRecords{br: bufio.NewReaderSize(r, 1<<16), path: name}, c.add))
}

// collector formats records into examples, counting malformed ones when it
// skips them.
type collector struct {
	ctx      context.Context
	f        *Formatter
	skipBad  bool
	examples []TokenExample
	skipped  int
}

func (c *collector) add(rec []byte, where string) error {
	if err := c.ctx.Err(); err != nil {
		return err
	}
	ex, err := c.f.Example(rec)
	switch {
	case err != nil && c.skipBad:
		c.skipped++
	case err != nil:
		return fmt.Errorf("%s: %w", where, err)
	default:
		c.examples = append(c.examples, ex)
	}
	return nil
}

func (c *collector) finish(name string, err error) ([]TokenExample, int, error) {
	if err != nil {
		return nil, c.skipped, err
	}
	if len(c.examples) == 0 {
		if c.skipped > 0 {
			return nil, c.skipped, fmt.Errorf("%s: all %d lines were malformed", name, c.skipped)
		}
		return nil, 0, fmt.Errorf("%s: no examples (the file is empty)", name)
	}
	return c.examples, c.skipped, nil
}

// ChatPrompt renders a conversation for generation with add_generation_prompt:
// through ct when not nil, else with the Llama 3 chat template (BOS, each
// message's turn, then the assistant header the model continues from). roles
// and contents pair up.
func ChatPrompt(tok Tokenizer, ct *ChatTemplate, roles, contents []string) ([]int, error) {
	if len(roles) != len(contents) || len(roles) == 0 {
		return nil, errors.New("chat prompt: want one content per role, at least one message")
	}
	if ct != nil {
		msgs := make([]message, len(roles))
		for i := range roles {
			msgs[i] = message{Role: &roles[i], Content: &contents[i]}
		}
		text, err := ct.Render(msgs, true)
		if err != nil {
			return nil, err
		}
		return tok.Encode(text, false), nil
	}
	sp, err := llama3Specials(tok)
	if err != nil {
		return nil, err
	}
	b := &exBuilder{}
	b.addSpecial(tok.BOS(), false)
	turn := func(role, content string, eot bool) {
		b.addSpecial(sp.start, false)
		b.add(tok.Encode(role, false), false)
		b.addSpecial(sp.end, false)
		b.add(tok.Encode("\n\n"+content, false), false)
		if eot {
			b.addSpecial(sp.eot, false)
		}
	}
	for i := range roles {
		turn(roles[i], strings.TrimSpace(contents[i]), true)
	}
	b.addSpecial(sp.start, false)
	b.add(tok.Encode("assistant", false), false)
	b.addSpecial(sp.end, false)
	b.add(tok.Encode("\n\n", false), false)
	return b.ids, nil
}
