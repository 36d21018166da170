package data

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"unicode"

	"github.com/ardanlabs/jinja"
)

// A chat template is the Jinja program of tokenizer_config.json's
// chat_template: transformers' apply_chat_template renders it with the
// messages, add_generation_prompt and the tokenizer's special tokens
// (bos_token, eos_token), then encodes the text without adding special tokens
// (the template writes BOS itself where it wants one). ChatTemplate does the
// same through github.com/ardanlabs/jinja, which compiles with
// transformers' trim_blocks and lstrip_blocks and defines raise_exception.
//
// Which tokens are the assistant's is not part of the text, so it is found
// by rendering: for the k-th message, an assistant reply, the conversation
// before it with the generation prompt is a prefix of the conversation up to
// and including it, and what lies between the two is the reply (with the
// end-of-turn text the template writes after it; whitespace after that is not
// scored). Those byte spans are mapped to the token ids of the whole text
// (chatSpans), so the ids are exactly transformers' whatever the template.

// ChatTemplate is a compiled chat_template and the special tokens it is
// rendered with.
type ChatTemplate struct {
	name string // the file it came from, for errors
	src  string // its source, part of a token cache's key
	tmpl *jinja.Template
	vars map[string]any // bos_token, eos_token
}

// llama3Template is the chat_template of Meta's Llama 3 (8B/70B Instruct)
// tokenizer_config.json. The Formatter renders it by hand (chatMessages),
// which gives transformers' ids (TestChatTemplateMatchesTransformers) and the
// same ids as rendering it through Jinja (TestJinjaLlama3MatchesBuiltin).
const llama3Template = "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"

// ChatTokenizer is what choosing a tokenizer's chat template needs of it
// (tokenizer.Tokenizer implements it).
type ChatTokenizer interface {
	ChatTemplate() string
	Token(id int) (string, bool)
	BOS() int
	EOS() int
}

// ChatTemplateFor compiles tok's chat template (read from the file name, for
// errors), or returns nil when the Formatter's built-in Llama 3 rendering
// applies: the tokenizer has no template, or Llama 3's own. A template the
// library cannot compile is an error naming the file.
func ChatTemplateFor(tok ChatTokenizer, name string) (*ChatTemplate, error) {
	src := tok.ChatTemplate()
	if src == "" || src == llama3Template {
		return nil, nil
	}
	specials := map[string]string{}
	for key, id := range map[string]int{"bos_token": tok.BOS(), "eos_token": tok.EOS()} {
		if s, ok := tok.Token(id); ok && id >= 0 {
			specials[key] = s
		}
	}
	return CompileChatTemplate(name, src, specials)
}

// CompileChatTemplate compiles a chat_template's source (from the file name)
// to be rendered with specials (bos_token, eos_token: their text) defined.
func CompileChatTemplate(name, src string, specials map[string]string) (*ChatTemplate, error) {
	tmpl, err := jinja.Compile(src)
	if err != nil {
		return nil, fmt.Errorf("%s: chat_template: %w", name, err)
	}
	vars := map[string]any{}
	for k, v := range specials {
		vars[k] = v
	}
	return &ChatTemplate{name: name, src: src, tmpl: tmpl, vars: vars}, nil
}

// Render renders msgs as apply_chat_template does with add_generation_prompt
// gen. An error the template raises (raise_exception) is returned with the
// file's name.
func (c *ChatTemplate) Render(msgs []message, gen bool) (string, error) {
	list := make([]any, len(msgs))
	for i, m := range msgs {
		list[i] = map[string]any{"role": *m.Role, "content": *m.Content}
	}
	vars := make(map[string]any, len(c.vars)+2)
	for k, v := range c.vars {
		vars[k] = v
	}
	vars["messages"], vars["add_generation_prompt"] = list, gen
	s, err := c.tmpl.Render(vars)
	if err != nil {
		return "", fmt.Errorf("chat template of %s: %w", c.name, err)
	}
	return s, nil
}

// templateChat renders checked messages with f.Chat and scores the
// assistant's replies (every token with PromptLoss).
func (f *Formatter) templateChat(msgs []message) (TokenExample, error) {
	text, spans, err := f.Chat.assistantSpans(msgs)
	if err != nil {
		return TokenExample{}, err
	}
	if len(spans) == 0 && !f.PromptLoss {
		return TokenExample{}, errors.New("no assistant message: nothing would be trained on (set data.prompt_loss to train on every token)")
	}
	ids, tokSpans := chatSpans(f.Tok, text, spans)
	b := &exBuilder{promptLoss: f.PromptLoss}
	b.grow(len(ids))
	at := 0
	for _, s := range tokSpans {
		b.add(ids[at:s[0]], false)
		b.add(ids[s[0]:s[1]], true)
		at = s[1]
	}
	b.add(ids[at:], false)
	return b.done(f.Vocab)
}

// assistantSpans renders msgs and finds the byte span of each assistant
// reply in the text (see the comment at the top of the file).
func (c *ChatTemplate) assistantSpans(msgs []message) (text string, spans [][2]int, err error) {
	if text, err = c.Render(msgs, false); err != nil {
		return "", nil, err
	}
	for k, m := range msgs {
		if *m.Role != "assistant" {
			continue
		}
		upto := text
		if k+1 < len(msgs) {
			if upto, err = c.Render(msgs[:k+1], false); err != nil {
				return "", nil, err
			}
			if !strings.HasPrefix(text, upto) {
				return "", nil, fmt.Errorf("chat template of %s: the conversation up to message %d does not render as the start of the whole one, so its reply cannot be told apart", c.name, k)
			}
		}
		before, err := c.prefixBefore(msgs[:k], upto)
		if err != nil {
			return "", nil, fmt.Errorf("message %d: %w", k, err)
		}
		end := len(strings.TrimRightFunc(upto, unicode.IsSpace))
		if end > len(before) {
			spans = append(spans, [2]int{len(before), end})
		}
	}
	return text, spans, nil
}

// prefixBefore renders the messages before a reply, with the generation
// prompt when the template has one (else without), as a prefix of upto, the
// rendering that ends with the reply. The empty conversation renders as ""
// when the template refuses it (many read messages[0]).
func (c *ChatTemplate) prefixBefore(msgs []message, upto string) (string, error) {
	for _, gen := range []bool{true, false} {
		s, err := c.Render(msgs, gen)
		if err != nil && len(msgs) == 0 {
			s, err = "", nil
		}
		if err != nil {
			return "", err
		}
		if strings.HasPrefix(upto, s) {
			return s, nil
		}
	}
	return "", fmt.Errorf("chat template of %s: the conversation before an assistant reply does not render as the start of the one with it, so the reply cannot be told apart", c.name)
}

// chatSpans encodes text as apply_chat_template does (no special tokens
// added; those the template wrote become their ids) and maps byte spans of
// text to token spans: [first token holding a byte of the span, one past the
// last). The text is encoded once whole; a span edge falls between two tokens
// when encoding the text up to it gives a prefix of those ids. Most edges do
// (they follow a special token or a word), and cutting the text at every edge
// and encoding the pieces finds them all in one pass; otherwise each edge is
// checked by encoding the text up to it.
func chatSpans(tok Tokenizer, text string, spans [][2]int) (ids []int, tokSpans [][2]int) {
	ids = tok.Encode(text, false)
	var edges []int
	for _, s := range spans {
		edges = append(edges, s[0], s[1])
	}
	at := make([]int, len(edges))
	var joined []int
	prev := 0
	for i, e := range edges {
		joined = append(joined, tok.Encode(text[prev:e], false)...)
		at[i], prev = len(joined), e
	}
	joined = append(joined, tok.Encode(text[prev:], false)...)
	if !slices.Equal(joined, ids) {
		for i, e := range edges {
			pre := tok.Encode(text[:e], false)
			n := 0
			for n < len(pre) && n < len(ids) && pre[n] == ids[n] {
				n++
			}
			if n < len(pre) && i%2 == 1 {
				n++ // a token across a span's end holds its last bytes: score it
			}
			at[i] = min(n, len(ids))
		}
	}
	for i := 0; i < len(at); i += 2 {
		tokSpans = append(tokSpans, [2]int{at[i], max(at[i], at[i+1])})
	}
	return ids, tokSpans
}
