package model

// Writing a model in Hugging Face layout, as transformers' save_pretrained does:
// config.json, the weights in model.safetensors or, above a size limit, in shards
// model-0000X-of-0000N.safetensors listed by model.safetensors.index.json, and the
// tokenizer files copied beside them.

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"

	"train/format/safetensors"
	"train/internal/fileio"
)

// DefaultMaxShardBytes is transformers' default max_shard_size ("5GB").
const DefaultMaxShardBytes = 5_000_000_000

// TokenizerFiles are the files copied from a tokenizer directory on export, where present.
var TokenizerFiles = []string{"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json"}

// WriteHFModel writes w to dir in Hugging Face layout with F32 weights; see
// WriteHFModelAs.
func WriteHFModel(dir string, w *Weights, tokenizerDir string, maxShardBytes int64) error {
	return WriteHFModelAs(dir, w, tokenizerDir, maxShardBytes, safetensors.F32)
}

// WriteHFModelAs writes every tensor of w (which must hold the whole model) to
// dir as dtype (F32, BF16 or F16), with config.json, and copies TokenizerFiles from
// tokenizerDir when it is not empty. The weights go to one model.safetensors when
// their size is at most maxShardBytes (<= 0 means DefaultMaxShardBytes), and
// otherwise to shards split as transformers splits them: tensors in state-dict
// order, a new shard whenever the next tensor would take the current one past
// the limit (a tensor larger than the limit alone in its shard). Weight files of
// an earlier save in dir that this save does not write are removed, as
// save_pretrained does, so the directory never mixes two layouts.
func WriteHFModelAs(dir string, w *Weights, tokenizerDir string, maxShardBytes int64, dtype safetensors.DType) error {
	if dtype != safetensors.F32 && dtype != safetensors.BF16 && dtype != safetensors.F16 {
		return fmt.Errorf("export %s: dtype %s: Hugging Face export writes F32, BF16 or F16", dir, dtype)
	}
	if maxShardBytes <= 0 {
		maxShardBytes = DefaultMaxShardBytes
	}
	specs, err := fullModelTensors(w)
	if err != nil {
		return fmt.Errorf("export %s: %w", dir, err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("export: %w", err)
	}
	cfg := w.Config
	cfg.TorchDType = "float32"
	switch dtype {
	case safetensors.BF16:
		cfg.TorchDType = "bfloat16"
	case safetensors.F16:
		cfg.TorchDType = "float16"
	}
	if cfg.Architecture == "" {
		cfg.Architecture = "LlamaForCausalLM"
	}
	if cfg.ModelType == "" {
		cfg.ModelType = "llama"
	}
	js, err := MarshalConfig(cfg)
	if err != nil {
		return err
	}
	if err := writeFileAtomic(filepath.Join(dir, "config.json"), js); err != nil {
		return err
	}

	// Split into shards.
	var shards [][]namedTensor
	var cur []namedTensor
	var curSize, total int64
	for _, t := range specs {
		size := int64(len(t.data)) * int64(dtype.Size())
		total += size
		if len(cur) > 0 && curSize+size > maxShardBytes {
			shards = append(shards, cur)
			cur, curSize = nil, 0
		}
		cur = append(cur, t)
		curSize += size
	}
	shards = append(shards, cur)

	written := map[string]bool{}
	if len(shards) == 1 {
		if err := writeShard(filepath.Join(dir, singleWeightsFile), shards[0], dtype); err != nil {
			return err
		}
		written[singleWeightsFile] = true
	} else {
		index := struct {
			Metadata  map[string]int64  `json:"metadata"`
			WeightMap map[string]string `json:"weight_map"`
		}{map[string]int64{"total_size": total}, map[string]string{}}
		for i, shard := range shards {
			name := fmt.Sprintf("model-%05d-of-%05d.safetensors", i+1, len(shards))
			if err := writeShard(filepath.Join(dir, name), shard, dtype); err != nil {
				return err
			}
			written[name] = true
			for _, t := range shard {
				index.WeightMap[t.name] = name
			}
		}
		js, err := json.MarshalIndent(index, "", "  ")
		if err != nil {
			return fmt.Errorf("export: encoding %s: %w", weightsIndexFile, err)
		}
		if err := writeFileAtomic(filepath.Join(dir, weightsIndexFile), append(js, '\n')); err != nil {
			return err
		}
		written[weightsIndexFile] = true
	}
	if err := removeStaleWeights(dir, written); err != nil {
		return err
	}
	if tokenizerDir != "" {
		if err := CopyTokenizerFiles(tokenizerDir, dir); err != nil {
			return err
		}
	}
	return nil
}

type namedTensor struct {
	name  string
	shape []int
	data  []float32
}

// CheckWhole reports whether w holds the whole model, every tensor at the size
// its Config implies, as a file of the whole model (a Hugging Face export, a
// GGUF) needs; the error names the first tensor that is missing or of the
// wrong size.
func (w *Weights) CheckWhole() error {
	_, err := fullModelTensors(w)
	return err
}

// fullModelTensors lists every tensor of the whole model in transformers'
// state-dict order (embedding; per layer self_attn q,k,v,o, mlp gate,up,down, the
// two norms; final norm; lm_head unless tied), checking each one's size.
func fullModelTensors(w *Weights) ([]namedTensor, error) {
	if w == nil {
		return nil, errors.New("no weights")
	}
	c := &w.Config
	if len(w.Layers) != c.NumLayers {
		return nil, fmt.Errorf("weights hold %d layers, config says %d", len(w.Layers), c.NumLayers)
	}
	h := c.HiddenSize
	var out []namedTensor
	var err error
	add := func(name string, data []float32, shape ...int) {
		n := 1
		for _, d := range shape {
			n *= d
		}
		if err == nil && len(data) != n {
			err = fmt.Errorf("tensor %s has %d values, want %v (the whole model is needed)", name, len(data), shape)
		}
		out = append(out, namedTensor{name, shape, data})
	}
	add("model.embed_tokens.weight", w.Embed, c.VocabSize, h)
	for i, l := range w.Layers {
		if l == nil {
			return nil, fmt.Errorf("layer %d is not held (the whole model is needed)", i)
		}
		for _, s := range Linears {
			o, in := c.LinearShape(s)
			add(LayerTensorName(i, s), *l.Linear(s), o, in)
		}
		add(LayerTensorName(i, "input_layernorm"), l.AttnNorm, h)
		add(LayerTensorName(i, "post_attention_layernorm"), l.MLPNorm, h)
	}
	add("model.norm.weight", w.FinalNorm, h)
	if !c.TieEmbeddings {
		add("lm_head.weight", w.LMHead, c.VocabSize, h)
	}
	return out, err
}

func writeShard(path string, ts []namedTensor, dtype safetensors.DType) error {
	var sw safetensors.Writer
	sw.SetMetadata("format", "pt")
	for _, t := range ts {
		if err := sw.AddFloat32(t.name, dtype, t.shape, t.data); err != nil {
			return fmt.Errorf("export %s: %w", path, err)
		}
	}
	return sw.WriteFile(path)
}

var hfWeightFile = regexp.MustCompile(`^model(-\d+-of-\d+)?\.safetensors$`)

// removeStaleWeights deletes weight files of an earlier save that this one did not write.
func removeStaleWeights(dir string, written map[string]bool) error {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("export: %w", err)
	}
	for _, e := range entries {
		n := e.Name()
		if written[n] || e.IsDir() || !(hfWeightFile.MatchString(n) || n == weightsIndexFile) {
			continue
		}
		if err := os.Remove(filepath.Join(dir, n)); err != nil {
			return fmt.Errorf("export: removing stale %s: %w", n, err)
		}
	}
	return nil
}

// CopyTokenizerFiles copies those of TokenizerFiles that exist in from into to.
// tokenizer.json must be among them.
func CopyTokenizerFiles(from, to string) error {
	found := false
	for _, name := range TokenizerFiles {
		src := filepath.Join(from, name)
		data, err := fileio.ReadFile(src, 256<<20)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return fmt.Errorf("export: tokenizer: %w", err)
		}
		found = found || name == "tokenizer.json"
		if err := writeFileAtomic(filepath.Join(to, name), data); err != nil {
			return err
		}
	}
	if !found {
		return fmt.Errorf("export: tokenizer: %s has no tokenizer.json", from)
	}
	return nil
}

// writeFileAtomic writes data to path through a synced temporary file and a rename.
func writeFileAtomic(path string, data []byte) error {
	return fileio.WriteAtomic(path, func(w io.Writer) error {
		_, err := w.Write(data)
		return err
	})
}
