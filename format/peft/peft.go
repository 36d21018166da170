// Package peft reads and writes LoRA adapters in the layout Hugging Face's
// peft library saves them in (save_pretrained with safe_serialization=True):
// a directory holding
//
//	adapter_config.json        the hyper-parameters: peft_type "LORA", r, lora_alpha,
//	                           lora_dropout, use_rslora, target_modules, ...
//	adapter_model.safetensors  for every adapted projection of every layer,
//	                           base_model.model.model.layers.N.{self_attn,mlp}.P.lora_A.weight [r, in]
//	                           and ...lora_B.weight [out, r]
//
// Read checks the config against what this trainer computes: every key that
// would change the adapter's result in a way it does not implement (DoRA,
// biases, per-module ranks, a subset of layers, ...) is refused by name, and
// every tensor must be present with the shape the model implies, with nothing
// else beside them. Write saves a model.LoRA so that
// peft.PeftModel.from_pretrained loads it onto the base model.
//
// The tests read the fixtures peft wrote (model/testdata/parity), round-trip
// an adapter, check every refusal, and fuzz the config parser
// (FuzzAdapterConfig).
package peft

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"

	"train/format/safetensors"
	"train/internal/fileio"
	"train/model"
)

// projBlock is the submodule holding a projection: self_attn or mlp.
func projBlock(proj string) string {
	if proj == "gate_proj" || proj == "up_proj" || proj == "down_proj" {
		return "mlp"
	}
	return "self_attn"
}

// peftConfigFile mirrors the adapter_config.json keys that change what an adapter
// computes. Keys peft writes that do not (paths, versions, task type) are ignored;
// keys that would change the computation in ways this trainer does not implement
// are read so that they can be refused by name.
type peftConfigFile struct {
	PEFTType          string          `json:"peft_type"`
	R                 *int            `json:"r"`
	LoraAlpha         *float64        `json:"lora_alpha"`
	LoraDropout       float64         `json:"lora_dropout"`
	UseRSLoRA         bool            `json:"use_rslora"`
	UseDoRA           bool            `json:"use_dora"`
	Bias              string          `json:"bias"`
	FanInFanOut       bool            `json:"fan_in_fan_out"`
	TargetModules     json.RawMessage `json:"target_modules"`
	LayersToTransform json.RawMessage `json:"layers_to_transform"`
	RankPattern       map[string]any  `json:"rank_pattern"`
	AlphaPattern      map[string]any  `json:"alpha_pattern"`
	ModulesToSave     json.RawMessage `json:"modules_to_save"`
	LoraBias          bool            `json:"lora_bias"`
}

// Read reads a LoRA adapter saved by peft (adapter_config.json and
// adapter_model.safetensors) for the model cfg, checking that every tensor it needs
// is present with the right shape and that nothing else is.
func Read(dir string, cfg model.Config) (*model.LoRA, error) {
	cfgPath := filepath.Join(dir, "adapter_config.json")
	raw, err := fileio.ReadFile(cfgPath, 1<<20)
	if err != nil {
		return nil, fmt.Errorf("adapter: %w", err)
	}
	lc, err := parseConfig(cfgPath, raw)
	if err != nil {
		return nil, err
	}
	wPath := filepath.Join(dir, "adapter_model.safetensors")
	f, err := safetensors.Open(wPath)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("adapter: %s is missing (adapter_model.bin is not supported; save with safe_serialization=True)", wPath)
		}
		return nil, fmt.Errorf("adapter: %w", err)
	}
	defer f.Close()
	l, err := model.NewLoRA(&cfg, lc, 0)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", cfgPath, err)
	}
	for layer := 0; layer < cfg.NumLayers; layer++ {
		for _, proj := range lc.Targets {
			out, in := cfg.LinearShape(proj)
			pair := l.Layers[layer][proj]
			for _, ab := range []string{"A", "B"} {
				name := model.LoRATensorName(layer, proj, ab)
				want, dst := []int{lc.Rank, in}, pair.A
				if ab == "B" {
					want, dst = []int{out, lc.Rank}, pair.B
				}
				info, ok := f.Tensor(name)
				if !ok {
					return nil, fmt.Errorf("%s: tensor %s is missing (adapter_config.json targets %s)", wPath, name, strings.Join(lc.Targets, ","))
				}
				if !slices.Equal(info.Shape, want) {
					return nil, fmt.Errorf("%s: tensor %s has shape %v, want %v for r=%d on this model", wPath, name, info.Shape, want, lc.Rank)
				}
				if err := f.ReadFloat32Into(name, dst); err != nil {
					return nil, err
				}
			}
		}
	}
	for _, t := range f.Tensors() {
		if !isLoRAOf(l, t.Name) {
			return nil, fmt.Errorf("%s: unexpected tensor %s (not a LoRA matrix of a targeted projection of this %d-layer model)", wPath, t.Name, cfg.NumLayers)
		}
	}
	return l, nil
}

// parseConfig decodes the adapter_config.json at path, refusing what Read
// cannot honour.
func parseConfig(path string, raw []byte) (model.LoRAConfig, error) {
	var pc peftConfigFile
	if err := json.Unmarshal(raw, &pc); err != nil {
		return model.LoRAConfig{}, fmt.Errorf("%s: not a peft adapter config: %w", path, err)
	}
	return pc.loraConfig(path)
}

func isLoRAOf(l *model.LoRA, name string) bool {
	for i, layer := range l.Layers {
		for proj := range layer {
			if name == model.LoRATensorName(i, proj, "A") || name == model.LoRATensorName(i, proj, "B") {
				return true
			}
		}
	}
	return false
}

func (pc *peftConfigFile) loraConfig(path string) (model.LoRAConfig, error) {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%s: %s", path, fmt.Sprintf(format, args...))
	}
	switch {
	case pc.PEFTType != "LORA":
		return model.LoRAConfig{}, bad("peft_type %q is not supported; only LORA adapters are", pc.PEFTType)
	case pc.R == nil || *pc.R < 1 || *pc.R > 65536:
		return model.LoRAConfig{}, bad("r must be an integer in [1, 65536]")
	case pc.LoraAlpha == nil || *pc.LoraAlpha <= 0:
		return model.LoRAConfig{}, bad("lora_alpha must be positive")
	case pc.LoraDropout < 0 || pc.LoraDropout >= 1:
		return model.LoRAConfig{}, bad("lora_dropout %v is outside [0, 1)", pc.LoraDropout)
	case pc.UseDoRA:
		return model.LoRAConfig{}, bad("use_dora is not supported")
	case pc.Bias != "" && pc.Bias != "none":
		return model.LoRAConfig{}, bad("bias %q is not supported; only \"none\"", pc.Bias)
	case pc.LoraBias:
		return model.LoRAConfig{}, bad("lora_bias is not supported")
	case pc.FanInFanOut:
		return model.LoRAConfig{}, bad("fan_in_fan_out is not supported (Llama projections are nn.Linear)")
	case len(pc.RankPattern) > 0 || len(pc.AlphaPattern) > 0:
		return model.LoRAConfig{}, bad("rank_pattern / alpha_pattern are not supported: every target must share r and lora_alpha")
	case !isJSONNull(pc.LayersToTransform):
		return model.LoRAConfig{}, bad("layers_to_transform is not supported: adapters must cover every layer")
	case !isJSONNull(pc.ModulesToSave):
		return model.LoRAConfig{}, bad("modules_to_save is not supported")
	}
	targets, err := peftTargets(pc.TargetModules)
	if err != nil {
		return model.LoRAConfig{}, bad("%v", err)
	}
	return model.LoRAConfig{Rank: *pc.R, Alpha: *pc.LoraAlpha, Dropout: pc.LoraDropout, RSLoRA: pc.UseRSLoRA, Targets: targets}, nil
}

func isJSONNull(raw json.RawMessage) bool {
	s := strings.TrimSpace(string(raw))
	return s == "" || s == "null"
}

// peftTargets reads target_modules: a list of module names, "all-linear", or a
// regular expression matched against full module names as peft does.
func peftTargets(raw json.RawMessage) ([]string, error) {
	var list []string
	if err := json.Unmarshal(raw, &list); err == nil {
		seen := map[string]bool{}
		for _, t := range list {
			short := t[strings.LastIndex(t, ".")+1:]
			if !isLinear(short) {
				return nil, fmt.Errorf("target_modules entry %q is not one of %s", t, strings.Join(model.Linears, ", "))
			}
			seen[short] = true
		}
		return orderedLinears(seen), nil
	}
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		return nil, errors.New("target_modules must be a list of names or a string")
	}
	if s == "all-linear" {
		return append([]string(nil), model.Linears...), nil
	}
	re, err := regexp.Compile("^(?:" + s + ")$")
	if err != nil {
		return nil, fmt.Errorf("target_modules regex %q: %w", s, err)
	}
	seen := map[string]bool{}
	for _, proj := range model.Linears {
		if re.MatchString("model.layers.0." + projBlock(proj) + "." + proj) {
			seen[proj] = true
		}
	}
	if len(seen) == 0 {
		return nil, fmt.Errorf("target_modules regex %q matches no projection", s)
	}
	return orderedLinears(seen), nil
}

func isLinear(s string) bool {
	for _, l := range model.Linears {
		if l == s {
			return true
		}
	}
	return false
}

func orderedLinears(set map[string]bool) []string {
	var out []string
	for _, l := range model.Linears {
		if set[l] {
			out = append(out, l)
		}
	}
	return out
}

// Write saves l in peft's format, loadable with
// peft.PeftModel.from_pretrained: adapter_config.json and adapter_model.safetensors (F32).
func Write(dir string, l *model.LoRA, cfg *model.Config, baseModel string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("adapter: %w", err)
	}
	lc := l.Config
	targets := model.SortedTargets(lc.Targets)
	doc := map[string]any{
		"peft_type":               "LORA",
		"task_type":               "CAUSAL_LM",
		"base_model_name_or_path": baseModel,
		"r":                       lc.Rank,
		"lora_alpha":              lc.Alpha,
		"lora_dropout":            lc.Dropout,
		"use_rslora":              lc.RSLoRA,
		"use_dora":                false,
		"bias":                    "none",
		"fan_in_fan_out":          false,
		"target_modules":          targets,
		"inference_mode":          true,
		"init_lora_weights":       true,
	}
	js, err := json.MarshalIndent(doc, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "adapter_config.json"), append(js, '\n'), 0o644); err != nil {
		return fmt.Errorf("adapter: %w", err)
	}
	var w safetensors.Writer
	for i, layer := range l.Layers {
		for _, proj := range targets {
			out, in := cfg.LinearShape(proj)
			p := layer[proj]
			if err := w.AddFloat32(model.LoRATensorName(i, proj, "A"), safetensors.F32, []int{lc.Rank, in}, p.A); err != nil {
				return err
			}
			if err := w.AddFloat32(model.LoRATensorName(i, proj, "B"), safetensors.F32, []int{out, lc.Rank}, p.B); err != nil {
				return err
			}
		}
	}
	return w.WriteFile(filepath.Join(dir, "adapter_model.safetensors"))
}
