package model

// A Hugging Face model directory holds config.json and the weights either in one
// model.safetensors or in shards model-0000X-of-0000N.safetensors listed by
// model.safetensors.index.json. OpenModelDir validates every header up front
// (cheap: headers are small) so that a broken or missing shard is reported before
// any training starts; tensors are then read one by one, only those a caller asks for.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"

	"train/format/safetensors"
	"train/internal/fileio"
	"train/quant"
)

const (
	singleWeightsFile = "model.safetensors"
	weightsIndexFile  = "model.safetensors.index.json"
	maxIndexBytes     = 64 << 20
	maxShards         = 10000
)

// ModelDir is an opened model directory: every safetensors header read and
// validated, and each tensor name mapped to the file holding it.
type ModelDir struct {
	Dir   string
	Files []*safetensors.File // in the order listed (one file, or the shards sorted by name)
	where map[string]*safetensors.File
}

// OpenModelDir opens the weights of the model in dir. It prefers model.safetensors,
// as transformers does, and otherwise follows model.safetensors.index.json.
func OpenModelDir(dir string) (*ModelDir, error) {
	m := &ModelDir{Dir: dir, where: map[string]*safetensors.File{}}
	single := filepath.Join(dir, singleWeightsFile)
	if _, err := os.Stat(single); err == nil {
		f, err := safetensors.Open(single)
		if err != nil {
			return nil, err
		}
		m.Files = []*safetensors.File{f}
		for _, t := range f.Tensors() {
			m.where[t.Name] = f
		}
		return m, nil
	}
	indexPath := filepath.Join(dir, weightsIndexFile)
	data, err := fileio.ReadFile(indexPath, maxIndexBytes)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, noWeightsError(dir)
	}
	if err != nil {
		return nil, err
	}
	var index struct {
		WeightMap map[string]string `json:"weight_map"`
	}
	if err := json.Unmarshal(data, &index); err != nil {
		return nil, fmt.Errorf("%s: not a safetensors index: %s", indexPath, jsonErrorWhere(data, err))
	}
	if len(index.WeightMap) == 0 {
		return nil, fmt.Errorf("%s: weight_map is missing or empty", indexPath)
	}
	byFile := map[string][]string{}
	for tensor, file := range index.WeightMap {
		// Shard names come from the file: keep them inside dir.
		if file == "" || file != filepath.Base(file) || file == "." || file == ".." || strings.ContainsAny(file, `/\`) {
			return nil, fmt.Errorf("%s: tensor %s: shard name %q is not a plain file name", indexPath, tensor, file)
		}
		byFile[file] = append(byFile[file], tensor)
	}
	if len(byFile) > maxShards {
		return nil, fmt.Errorf("%s: names %d shards, more than %d", indexPath, len(byFile), maxShards)
	}
	names := make([]string, 0, len(byFile))
	for name := range byFile {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		f, err := safetensors.Open(filepath.Join(dir, name))
		if err != nil {
			m.Close()
			if errors.Is(err, fs.ErrNotExist) {
				return nil, fmt.Errorf("%s: shard %s named in the index is missing (%d tensors, e.g. %s)",
					indexPath, name, len(byFile[name]), firstSorted(byFile[name]))
			}
			return nil, err
		}
		m.Files = append(m.Files, f)
		for _, tensor := range byFile[name] {
			if _, ok := f.Tensor(tensor); !ok {
				m.Close()
				return nil, fmt.Errorf("%s: tensor %s is mapped to %s, which does not contain it", indexPath, tensor, name)
			}
			m.where[tensor] = f
		}
	}
	return m, nil
}

func firstSorted(s []string) string {
	sort.Strings(s)
	return s[0]
}

// noWeightsError explains a directory without safetensors weights, naming the
// formats it does hold so the user knows to convert them.
func noWeightsError(dir string) error {
	found := func(patterns ...string) []string {
		var out []string
		for _, p := range patterns {
			m, _ := filepath.Glob(filepath.Join(dir, p))
			for _, f := range m {
				out = append(out, filepath.Base(f))
			}
		}
		return out
	}
	msg := fmt.Sprintf("%s: no %s or %s", dir, singleWeightsFile, weightsIndexFile)
	if st := found("*.safetensors"); len(st) > 0 {
		msg += fmt.Sprintf(" (found %s: shards need the index that lists their tensors)", strings.Join(st, ", "))
	} else if other := found("*.bin", "*.pt", "*.pth", "*.gguf"); len(other) > 0 {
		msg += fmt.Sprintf(" (found %s; train reads Hugging Face safetensors only)", strings.Join(other, ", "))
	}
	return errors.New(msg)
}

// Close closes every file.
func (m *ModelDir) Close() error {
	var errs []error
	for _, f := range m.Files {
		errs = append(errs, f.Close())
	}
	return errors.Join(errs...)
}

// Tensors lists every tensor of the model, sorted by name.
func (m *ModelDir) Tensors() []safetensors.TensorInfo {
	var out []safetensors.TensorInfo
	for name, f := range m.where {
		t, _ := f.Tensor(name)
		out = append(out, t)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// Tensor returns the named tensor's header entry and the file holding it.
func (m *ModelDir) Tensor(name string) (safetensors.TensorInfo, *safetensors.File, bool) {
	f, ok := m.where[name]
	if !ok {
		return safetensors.TensorInfo{}, nil, false
	}
	t, _ := f.Tensor(name)
	return t, f, true
}

// ReadFloat32 reads one tensor as float32 from whichever file holds it.
func (m *ModelDir) ReadFloat32(name string) ([]float32, []int, error) {
	f, ok := m.where[name]
	if !ok {
		return nil, nil, fmt.Errorf("%s: no tensor named %s", m.Dir, name)
	}
	return f.ReadFloat32(name)
}

// QuantSource is m as package quant reads a quantized weight: header entries
// and stored bytes by name, from whichever shard holds them (a quantized
// weight's companion tensors may sit in different shards).
func (m *ModelDir) QuantSource() quant.Source { return modelDirSource{m} }

type modelDirSource struct{ m *ModelDir }

func (s modelDirSource) Tensor(name string) (safetensors.TensorInfo, bool) {
	t, _, ok := s.m.Tensor(name)
	return t, ok
}

func (s modelDirSource) ReadRaw(name string) ([]byte, error) {
	f, ok := s.m.where[name]
	if !ok {
		return nil, fmt.Errorf("%s: no tensor named %s", s.m.Dir, name)
	}
	return f.ReadRaw(name)
}

// readExpected reads a tensor the model needs, checking its shape against the one
// config.json implies, and returns its identity as read (see Base).
func (m *ModelDir) readExpected(name string, shape []int) ([]float32, BaseTensor, error) {
	t, f, ok := m.Tensor(name)
	if !ok {
		return nil, BaseTensor{}, fmt.Errorf("%s: missing tensor %s (expected shape %v)", m.Dir, name, shape)
	}
	if !slices.Equal(t.Shape, shape) {
		return nil, BaseTensor{}, fmt.Errorf("%s: tensor %s has shape %v, but config.json implies %v", f.Name, name, t.Shape, shape)
	}
	data, _, sum, err := f.ReadFloat32Sum(name)
	return data, BaseTensor{Name: name, Shape: t.Shape, DType: string(t.DType), CRC32C: sum}, err
}

// LoadWeights reads the weights one process holds: decoder layers [lo, hi), the
// embedding if withEmbed, and the final norm and output matrix if withHead (with
// tied embeddings that output matrix is the embedding, so it is loaded too and
// LMHead stays nil; an lm_head.weight in a tied checkpoint is ignored, as
// transformers ignores it). Every tensor read is checked against the shape cfg
// implies and converted to float32; nothing else is read.
func (m *ModelDir) LoadWeights(cfg Config, lo, hi int, withEmbed, withHead bool) (*Weights, error) {
	w, _, err := m.LoadWeightsBase(context.Background(), cfg, lo, hi, withEmbed, withHead)
	return w, err
}

// LoadWeightsBase is LoadWeights that also returns the identity of every
// tensor it read (Base), computed as the tensors were read, and stops between
// tensors once ctx is cancelled (with ctx's error).
func (m *ModelDir) LoadWeightsBase(ctx context.Context, cfg Config, lo, hi int, withEmbed, withHead bool) (*Weights, Base, error) {
	r, err := m.newStageReader(ctx, cfg, lo, hi)
	if err != nil {
		return nil, Base{}, err
	}
	w := &Weights{Config: cfg, Layers: make([]*Layer, cfg.NumLayers)}
	if err := r.readEnds(w, withEmbed, withHead); err != nil {
		return nil, r.base, err
	}
	for i := lo; i < hi; i++ {
		if w.Layers[i], err = r.readLayer(i); err != nil {
			return nil, r.base, err
		}
	}
	return w, r.base, nil
}

// lazyWeights returns the weights of a stage as LoadWeightsBase does, but with
// the layers read only when NewModel uploads them (one at a time, each dropped
// once on the device). The embedding and head are read now. The Weights keep
// m open until their Close.
func (m *ModelDir) lazyWeights(ctx context.Context, cfg Config, lo, hi int, withEmbed, withHead bool) (*Weights, error) {
	r, err := m.newStageReader(ctx, cfg, lo, hi)
	if err != nil {
		return nil, err
	}
	w := &Weights{Config: cfg, Layers: make([]*Layer, cfg.NumLayers), base: &r.base, closer: m.Close}
	if err := r.readEnds(w, withEmbed, withHead); err != nil {
		return nil, err
	}
	w.load = func(i int) (*Layer, error) {
		if i < lo || i >= hi {
			return nil, fmt.Errorf("%s: layer %d is outside the stage's layers [%d,%d)", m.Dir, i, lo, hi)
		}
		return r.readLayer(i)
	}
	return w, nil
}

// stageReader reads the tensors of one stage, recording the identity of each.
type stageReader struct {
	ctx  context.Context
	m    *ModelDir
	cfg  Config
	qc   *quant.Config // config.json's quantization_config; nil for a plain checkpoint
	base Base
}

func (m *ModelDir) newStageReader(ctx context.Context, cfg Config, lo, hi int) (*stageReader, error) {
	if lo < 0 || hi > cfg.NumLayers || lo > hi {
		return nil, fmt.Errorf("%s: layer range [%d,%d) is outside the model's %d layers", m.Dir, lo, hi, cfg.NumLayers)
	}
	r := &stageReader{ctx: ctx, m: m, cfg: cfg}
	qc, err := quant.LoadConfig(m.Dir)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	r.qc = qc
	return r, nil
}

func (r *stageReader) read(dst *[]float32, name string, shape ...int) error {
	if err := r.ctx.Err(); err != nil {
		return err
	}
	data, id, err := r.m.readExpected(name, shape)
	if err != nil {
		return err
	}
	*dst = data
	r.base.Tensors = append(r.base.Tensors, id)
	return nil
}

// readEnds reads the embedding and the final norm and head as the stage needs.
func (r *stageReader) readEnds(w *Weights, withEmbed, withHead bool) error {
	cfg, h := &r.cfg, r.cfg.HiddenSize
	if withEmbed || (withHead && cfg.TieEmbeddings) {
		if err := r.read(&w.Embed, "model.embed_tokens.weight", cfg.VocabSize, h); err != nil {
			return err
		}
	}
	if withHead {
		if err := r.read(&w.FinalNorm, "model.norm.weight", h); err != nil {
			return err
		}
		if !cfg.TieEmbeddings {
			if err := r.read(&w.LMHead, "lm_head.weight", cfg.VocabSize, h); err != nil {
				return err
			}
		}
	}
	return nil
}

// readLayer reads decoder layer i: its norms and projections, each in float32,
// or a projection stored by bitsandbytes in 4 bits as it is stored (its
// identity is the CRC-32C of its packed codes).
func (r *stageReader) readLayer(i int) (*Layer, error) {
	h := r.cfg.HiddenSize
	l := &Layer{}
	if err := r.read(&l.AttnNorm, LayerTensorName(i, "input_layernorm"), h); err != nil {
		return nil, err
	}
	if err := r.read(&l.MLPNorm, LayerTensorName(i, "post_attention_layernorm"), h); err != nil {
		return nil, err
	}
	src := r.m.QuantSource()
	for _, s := range Linears {
		out, in := r.cfg.LinearShape(s)
		name := LayerTensorName(i, s)
		if !quant.IsQuantized(src, name) {
			if err := r.read(l.Linear(s), name, out, in); err != nil {
				return nil, err
			}
			continue
		}
		if err := r.ctx.Err(); err != nil {
			return nil, err
		}
		q, err := quant.ReadWeight(r.qc, src, name)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", r.m.Dir, err)
		}
		if !slices.Equal(q.Shape, []int{out, in}) {
			return nil, fmt.Errorf("%s: tensor %s has shape %v, but config.json implies %v", r.m.Dir, name, q.Shape, []int{out, in})
		}
		if l.Quantized == nil {
			l.Quantized = map[string]*quant.NF4{}
		}
		l.Quantized[s] = q
		r.base.Tensors = append(r.base.Tensors, BaseTensor{Name: name, Shape: q.Shape, DType: "NF4", CRC32C: crc32.Checksum(q.Packed, crc32.MakeTable(crc32.Castagnoli))})
	}
	return l, nil
}

// LoadWeights opens the model directory dir, loads the part of the weights named as
// in ModelDir.LoadWeights, and closes it.
func LoadWeights(dir string, cfg Config, lo, hi int, withEmbed, withHead bool) (*Weights, error) {
	m, err := OpenModelDir(dir)
	if err != nil {
		return nil, err
	}
	defer m.Close()
	return m.LoadWeights(cfg, lo, hi, withEmbed, withHead)
}

// LoadModel reads config.json and every weight of the model in dir.
func LoadModel(dir string) (*Weights, error) {
	cfg, err := LoadConfig(dir)
	if err != nil {
		return nil, err
	}
	if err := cfg.Supported(); err != nil {
		return nil, err
	}
	return LoadWeights(dir, cfg, 0, cfg.NumLayers, true, true)
}

// NamedTensors maps the Hugging Face name of every tensor w holds to its data, as
// they are written to a safetensors checkpoint (no lm_head when tied).
func (w *Weights) NamedTensors() map[string][]float32 {
	out := map[string][]float32{}
	put := func(name string, t []float32) {
		if t != nil {
			out[name] = t
		}
	}
	put("model.embed_tokens.weight", w.Embed)
	for i, l := range w.Layers {
		if l == nil {
			continue
		}
		put(LayerTensorName(i, "input_layernorm"), l.AttnNorm)
		put(LayerTensorName(i, "post_attention_layernorm"), l.MLPNorm)
		for _, s := range Linears {
			put(LayerTensorName(i, s), *l.Linear(s))
		}
	}
	put("model.norm.weight", w.FinalNorm)
	if !w.Config.TieEmbeddings {
		put("lm_head.weight", w.LMHead)
	}
	return out
}
