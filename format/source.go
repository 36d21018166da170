package format

import (
	"context"
	"fmt"
	"io"
	"os"

	"train/format/gguf"
	"train/model"
	"train/tokenizer"
)

// The commands that run a model (generate, eval) name it with -model: a
// Hugging Face directory, random:NAME, or a GGUF file. The functions below
// add the GGUF file to what model's source functions read, weights and
// embedded tokenizer alike, so that each command accepts all three.

// IsGGUF reports whether path is a file that starts with GGUF's magic.
func IsGGUF(path string) bool {
	f, err := os.Open(path)
	if err != nil {
		return false
	}
	defer f.Close()
	magic := make([]byte, 4)
	_, err = io.ReadFull(f, magic)
	return err == nil && string(magic) == "GGUF"
}

// SourceConfig is model.SourceConfig, and for a GGUF file the configuration
// its metadata describes (the header alone is read).
func SourceConfig(name string) (model.Config, error) {
	if !IsGGUF(name) {
		return model.SourceConfig(name)
	}
	g, err := gguf.Open(name)
	if err != nil {
		return model.Config{}, fmt.Errorf("model %s: %w", name, err)
	}
	defer g.Close()
	return gguf.ReadConfig(g)
}

// LoadSource returns every weight of the model, to give to model.NewModel: as
// model.LoadSourceStage reads a directory or draws random:NAME layer by layer,
// and for a GGUF file all of it at once (quantized tensors dequantized to
// float32). cfg is SourceConfig's; a GGUF file that describes another model
// (changed since) is an error.
func LoadSource(ctx context.Context, name string, cfg model.Config, seed int64) (*model.Weights, error) {
	if !IsGGUF(name) {
		return model.LoadSourceStage(ctx, name, cfg, seed, 0, cfg.NumLayers, true, true)
	}
	w, err := LoadModel(name)
	if err != nil {
		return nil, fmt.Errorf("model %s: %w", name, err)
	}
	if w.Config.NumLayers != cfg.NumLayers || w.Config.HiddenSize != cfg.HiddenSize || w.Config.VocabSize != cfg.VocabSize {
		return nil, fmt.Errorf("model %s: changed while it was read", name)
	}
	return w, nil
}

// LoadTokenizer is tokenizer.Load for a tokenizer.json or a directory holding
// one, and for a GGUF file the tokenizer embedded in its metadata.
func LoadTokenizer(path string) (*tokenizer.Tokenizer, error) {
	if !IsGGUF(path) {
		return tokenizer.Load(path)
	}
	g, err := gguf.Open(path)
	if err != nil {
		return nil, fmt.Errorf("tokenizer: %w", err)
	}
	defer g.Close()
	return gguf.Tokenizer(g)
}
