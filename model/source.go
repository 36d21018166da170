package model

import (
	"context"
	"fmt"
	"strings"

	"train/host"
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

// LoadSourceStage returns the weights one pipeline stage needs, reading (or
// drawing) nothing else: layers [lo, hi), the embedding when withEmbed, the
// final norm and head when withHead, and the identity of what it loaded
// (Base). Random weights come from seed and are refused when they would not
// fit the host's available memory. A cancelled ctx stops it between tensors
// (pieces of a tensor for random weights) with ctx's error: loading a large
// model takes minutes, and a signal must not wait for it.
func LoadSourceStage(ctx context.Context, name string, cfg Config, seed int64, lo, hi int, withEmbed, withHead bool) (*Weights, Base, error) {
	if IsRandomModel(name) {
		w, err := randomWeights(ctx, cfg, uint64(seed), lo, hi, withEmbed, withHead, host.AvailableMemory())
		return w, Base{Random: name, Seed: seed}, err
	}
	m, err := OpenModelDir(name)
	if err != nil {
		return nil, Base{}, fmt.Errorf("model %s: %w", name, err)
	}
	defer m.Close()
	w, base, err := m.LoadWeightsBase(ctx, cfg, lo, hi, withEmbed, withHead)
	if err != nil {
		return nil, Base{}, fmt.Errorf("model %s: %w", name, err)
	}
	return w, base, nil
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
