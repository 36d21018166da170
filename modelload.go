package main

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"strings"

	"train/model"
	"train/shard"
)

// loadModelConfig reads the architecture of a model directory or random:NAME and
// checks that train supports it.
func loadModelConfig(name string) (model.Config, error) {
	if model.IsRandomModel(name) {
		return model.RandomConfig(name)
	}
	cfg, err := model.LoadConfig(name)
	if err != nil {
		return cfg, fmt.Errorf("model %s: %w", name, err)
	}
	if err := cfg.Supported(); err != nil {
		return cfg, fmt.Errorf("model %s: %w", name, err)
	}
	return cfg, nil
}

// loadStageWeights returns the weights one pipeline stage needs, reading (or
// drawing) nothing else: its layers, the embedding on the first stage, the final
// norm and head on the last.
func loadStageWeights(name string, cfg model.Config, seed int64, r shard.Rank) (*model.Weights, error) {
	if model.IsRandomModel(name) {
		return model.RandomWeights(cfg, uint64(seed), r.Lo, r.Hi, r.Embed, r.Head, availableMemory())
	}
	w, err := model.LoadWeights(name, cfg, r.Lo, r.Hi, r.Embed, r.Head)
	if err != nil {
		return nil, fmt.Errorf("model %s: %w", name, err)
	}
	return w, nil
}

// loadModelWeights returns every weight of the model named by a Hugging Face
// directory or random:NAME (random weights drawn from seed).
func loadModelWeights(name string, seed int64) (*model.Weights, error) {
	if model.IsRandomModel(name) {
		cfg, err := model.RandomConfig(name)
		if err != nil {
			return nil, err
		}
		return model.RandomWeights(cfg, uint64(seed), 0, cfg.NumLayers, true, true, availableMemory())
	}
	w, err := model.LoadModel(name)
	if err != nil {
		return nil, fmt.Errorf("model %s: %w", name, err)
	}
	return w, nil
}

// availableMemory is the host memory the kernel reports as available, in bytes, so
// that a model too large for this machine is refused before allocation instead of
// being killed by the OOM killer halfway. 0 when unknown (no limit).
func availableMemory() int64 {
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) >= 2 && fields[0] == "MemAvailable:" {
			kb, err := strconv.ParseInt(fields[1], 10, 64)
			if err != nil {
				return 0
			}
			return kb * 1024
		}
	}
	return 0
}
