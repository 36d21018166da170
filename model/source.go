package model

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"

	"train/host"
	"train/quant"
)

// A model source is what a user names with -model: a Hugging Face directory or
// random:NAME (random weights, nothing on disk). The functions below read either
// the same way, so every command accepts both.

// SourceConfig reads the architecture of a model directory or random:NAME and
// checks that train supports it.
func SourceConfig(name string) (Config, error) {
	if IsRandomModel(name) {
		return RandomConfig(name)
	}
	cfg, err := LoadConfig(name)
	if err != nil {
		return cfg, fmt.Errorf("model %s: %w", name, err)
	}
	if err := cfg.Supported(); err != nil {
		return cfg, fmt.Errorf("model %s: %w", name, err)
	}
	return cfg, nil
}

// LoadSourceStage returns the weights one pipeline stage needs, to give to
// NewModel, reading (or drawing) nothing else: layers [lo, hi), the embedding
// when withEmbed, the final norm and head when withHead. The layers are read
// one at a time as NewModel uploads them, and random weights are drawn on the
// backend, so the host never holds the model (Weights.Base is the identity of
// what was read, complete once NewModel returns; Close closes the files). A
// cancelled ctx stops the reading between tensors with ctx's error: loading a
// large model takes minutes, and a signal must not wait for it.
func LoadSourceStage(ctx context.Context, name string, cfg Config, seed int64, lo, hi int, withEmbed, withHead bool) (*Weights, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if IsRandomModel(name) {
		if lo < 0 || hi > cfg.NumLayers || lo > hi {
			return nil, fmt.Errorf("random weights: layer range [%d,%d) is outside the model's %d layers", lo, hi, cfg.NumLayers)
		}
		return deviceRandomWeights(cfg, name, seed), nil
	}
	m, err := OpenModelDir(name)
	if err != nil {
		return nil, fmt.Errorf("model %s: %w", name, err)
	}
	w, err := m.lazyWeights(ctx, cfg, lo, hi, withEmbed, withHead)
	if err != nil {
		m.Close()
		return nil, fmt.Errorf("model %s: %w", name, err)
	}
	return w, nil
}

// CheckSourceTensors checks, from the safetensors headers alone (no weights
// are read), that a model directory holds every tensor cfg implies, each of
// its shape and a float dtype; random:NAME has nothing to check. It is what
// a run does before planning, so that weights that do not belong to
// config.json fail in a second, naming the tensor, and not after the plan and
// a long load. The error lists the first few problems; train check lists all.
func CheckSourceTensors(name string, cfg Config) error {
	if IsRandomModel(name) {
		return nil
	}
	m, err := OpenModelDir(name)
	if err != nil {
		return fmt.Errorf("model %s: %w", name, err)
	}
	defer m.Close()
	if cfg.HeadDim <= 0 {
		return nil // Supported has refused it already
	}
	missing, shaped, dtyped, _, _ := tensorProblems(m, cfg, nil)
	problems := append(append(shaped, missing...), dtyped...) // a wrong shape says most about what is wrong
	if len(problems) == 0 {
		return nil
	}
	const shown = 3
	msg := strings.Join(problems[:min(shown, len(problems))], "; ")
	if len(problems) > shown {
		msg += fmt.Sprintf("; and %d more", len(problems)-shown)
	}
	return fmt.Errorf("model %s: the weights do not match its config.json: %s (train check %s lists every problem)", name, msg, name)
}

// LoadSource returns every weight of the model named by a Hugging Face
// directory or random:NAME (random weights drawn from seed).
func LoadSource(name string, seed int64) (*Weights, error) {
	if IsRandomModel(name) {
		cfg, err := RandomConfig(name)
		if err != nil {
			return nil, err
		}
		return RandomWeights(cfg, uint64(seed), 0, cfg.NumLayers, true, true, host.AvailableMemory())
	}
	w, err := LoadModel(name)
	if err != nil {
		return nil, fmt.Errorf("model %s: %w", name, err)
	}
	return w, nil
}

// NF4Layout is how a model named by a -model value is held in 4 bits (QLoRA,
// -quantize nf4): a bitsandbytes 4-bit checkpoint's own layout (stored is
// true: its weights are uploaded as stored), else bitsandbytes' QLoRA
// default, blocks of 64 with double quantization, quantized at load. A
// quantization train does not support is refused by name.
func NF4Layout(name string) (layout *quant.Options, stored bool, err error) {
	layout = &quant.Options{BlockSize: quant.DefaultBlockSize, DoubleQuant: true}
	if IsRandomModel(name) {
		return layout, false, nil
	}
	if st, err := os.Stat(name); err == nil && !st.IsDir() {
		return layout, false, nil // a single file (GGUF) has no bitsandbytes config
	}
	qc, err := quant.LoadConfig(name)
	if errors.Is(err, fs.ErrNotExist) || (err == nil && qc == nil) {
		return layout, false, nil
	}
	if err == nil {
		err = qc.Supported()
	}
	if err != nil {
		return nil, false, fmt.Errorf("model %s: %w", name, err)
	}
	layout.DoubleQuant = qc.DoubleQuant
	return layout, true, nil
}

// SetQuantize applies a -quantize value of evaluation and generation to opt:
// "" keeps the weights as stored (a 4-bit checkpoint dequantized), "nf4"
// holds the base weights as a QLoRA run holds them (NF4Layout). NewModel
// keeps base weights in 4 bits only under an adapter, so a model without one
// gets an adapter that changes nothing (rank 1, B = 0).
func SetQuantize(opt *Options, value, modelName string, cfg *Config) error {
	switch value {
	case "":
		return nil
	case "nf4":
	default:
		return fmt.Errorf("-quantize %q: want nf4, or nothing for the weights as stored", value)
	}
	layout, _, err := NF4Layout(modelName)
	if err != nil {
		return err
	}
	opt.NF4 = layout
	if opt.LoRA == nil {
		opt.LoRA, err = NewLoRA(cfg, LoRAConfig{Rank: 1, Alpha: 1}, 0)
	}
	return err
}
