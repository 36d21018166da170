package model

import (
	"fmt"

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
// fit the host's available memory.
func LoadSourceStage(name string, cfg Config, seed int64, lo, hi int, withEmbed, withHead bool) (*Weights, Base, error) {
	if IsRandomModel(name) {
		w, err := RandomWeights(cfg, uint64(seed), lo, hi, withEmbed, withHead, host.AvailableMemory())
		return w, Base{Random: name, Seed: seed}, err
	}
	m, err := OpenModelDir(name)
	if err != nil {
		return nil, Base{}, fmt.Errorf("model %s: %w", name, err)
	}
	defer m.Close()
	w, base, err := m.LoadWeightsBase(cfg, lo, hi, withEmbed, withHead)
	if err != nil {
		return nil, Base{}, fmt.Errorf("model %s: %w", name, err)
	}
	return w, base, nil
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
