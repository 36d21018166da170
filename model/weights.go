package model

import (
	"fmt"

	"train/quant"
)

// Linear names the seven projections of a decoder layer, in the order peft and
// transformers list them. They are also the LoRA target names.
var Linears = []string{"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}

// Layer holds one decoder layer's weights in host memory as float32, each matrix
// row-major [out, in] exactly as Hugging Face stores nn.Linear weights.
type Layer struct {
	AttnNorm []float32 // input_layernorm.weight [hidden]
	Q        []float32 // self_attn.q_proj.weight [heads*head_dim, hidden]
	K        []float32 // self_attn.k_proj.weight [kv_heads*head_dim, hidden]
	V        []float32 // self_attn.v_proj.weight [kv_heads*head_dim, hidden]
	O        []float32 // self_attn.o_proj.weight [hidden, heads*head_dim]
	MLPNorm  []float32 // post_attention_layernorm.weight [hidden]
	Gate     []float32 // mlp.gate_proj.weight [intermediate, hidden]
	Up       []float32 // mlp.up_proj.weight [intermediate, hidden]
	Down     []float32 // mlp.down_proj.weight [hidden, intermediate]
	// Quantized holds, by short name ("q_proj"), projections stored in 4-bit
	// NF4 by bitsandbytes (a *-bnb-4bit checkpoint); their float32 field is
	// nil. A QLoRA model uploads them as they are; any other dequantizes them.
	Quantized map[string]*quant.NF4
}

// Weights is the part of a model one process holds. A pipeline stage holds only
// its layers: Layers[i] is nil for a layer held elsewhere, Embed is nil unless the
// stage runs the embedding, and FinalNorm/LMHead are nil unless it computes the loss.
// With tied embeddings LMHead is nil and Embed serves as the output matrix.
type Weights struct {
	Config    Config
	Embed     []float32 // model.embed_tokens.weight [vocab, hidden]
	Layers    []*Layer  // len = Config.NumLayers
	FinalNorm []float32 // model.norm.weight [hidden]
	LMHead    []float32 // lm_head.weight [vocab, hidden]; nil when tied

	// A lazily loaded model (LoadSourceStage) holds no layer on the host:
	// NewModel asks load for each layer of its stage as it uploads it and
	// keeps nothing, so the host holds one layer at a time whatever the
	// model's size. With random set the tensors are not on the host at all:
	// the backend draws them (Backend.FillNormal) where they live.
	load   func(layer int) (*Layer, error)
	random *randomSource
	base   *Base        // the identity of what was read, growing as layers load
	closer func() error // closes the files load reads
}

// Base is the identity of the weights read so far: for a lazily loaded model
// it is complete once NewModel has loaded the stage.
func (w *Weights) Base() Base {
	if w.base == nil {
		return Base{}
	}
	return *w.base
}

// Close releases the files a lazily loaded model reads from; it does nothing
// for weights held in memory.
func (w *Weights) Close() error {
	if w.closer == nil {
		return nil
	}
	err := w.closer()
	w.closer = nil
	return err
}

// layer returns layer i: the one held, or the one load reads.
func (w *Weights) layer(i int) (*Layer, error) {
	if l := w.Layers[i]; l != nil || w.load == nil {
		return l, nil
	}
	return w.load(i)
}

// TensorSpec is one tensor the model expects, by its Hugging Face name.
type TensorSpec struct {
	Name  string
	Shape []int
}

// LayerTensorName is the Hugging Face name of a decoder layer's tensor, for a
// short name such as "q_proj" or "input_layernorm".
func LayerTensorName(layer int, short string) string {
	switch short {
	case "input_layernorm", "post_attention_layernorm":
		return fmt.Sprintf("model.layers.%d.%s.weight", layer, short)
	case "q_proj", "k_proj", "v_proj", "o_proj":
		return fmt.Sprintf("model.layers.%d.self_attn.%s.weight", layer, short)
	case "gate_proj", "up_proj", "down_proj":
		return fmt.Sprintf("model.layers.%d.mlp.%s.weight", layer, short)
	}
	return fmt.Sprintf("model.layers.%d.%s", layer, short)
}

// LinearShape is the [out, in] shape of a projection named as in Linears.
func (c *Config) LinearShape(short string) (out, in int) {
	switch short {
	case "q_proj":
		return c.QDim(), c.HiddenSize
	case "k_proj", "v_proj":
		return c.KVDim(), c.HiddenSize
	case "o_proj":
		return c.HiddenSize, c.QDim()
	case "gate_proj", "up_proj":
		return c.IntermediateSize, c.HiddenSize
	case "down_proj":
		return c.HiddenSize, c.IntermediateSize
	}
	return 0, 0
}

// Linear returns the weight of the projection named short ("q_proj", ...).
func (l *Layer) Linear(short string) *[]float32 {
	switch short {
	case "q_proj":
		return &l.Q
	case "k_proj":
		return &l.K
	case "v_proj":
		return &l.V
	case "o_proj":
		return &l.O
	case "gate_proj":
		return &l.Gate
	case "up_proj":
		return &l.Up
	case "down_proj":
		return &l.Down
	}
	return nil
}

// ExpectedTensors lists every tensor a full checkpoint of c must contain, with its shape.
func (c *Config) ExpectedTensors() []TensorSpec {
	h := c.HiddenSize
	specs := []TensorSpec{{"model.embed_tokens.weight", []int{c.VocabSize, h}}}
	for i := 0; i < c.NumLayers; i++ {
		specs = append(specs, TensorSpec{LayerTensorName(i, "input_layernorm"), []int{h}})
		for _, s := range Linears {
			out, in := c.LinearShape(s)
			specs = append(specs, TensorSpec{LayerTensorName(i, s), []int{out, in}})
		}
		specs = append(specs, TensorSpec{LayerTensorName(i, "post_attention_layernorm"), []int{h}})
	}
	specs = append(specs, TensorSpec{"model.norm.weight", []int{h}})
	if !c.TieEmbeddings {
		specs = append(specs, TensorSpec{"lm_head.weight", []int{c.VocabSize, h}})
	}
	return specs
}

// Dequantize replaces every projection w holds in 4 bits (Layer.Quantized)
// with its float32 dequantization, for code that reads the weights on the
// host (merging an adapter, export).
func (w *Weights) Dequantize() error {
	for i, l := range w.Layers {
		if l == nil {
			continue
		}
		for s, q := range l.Quantized {
			v, err := dequantized(q, LayerTensorName(i, s))
			if err != nil {
				return err
			}
			*l.Linear(s) = v
		}
		l.Quantized = nil
	}
	return nil
}

// dequantized expands a weight stored in 4 bits to float32 on the host, for
// code that does not keep it in 4 bits: the numbers bitsandbytes'
// dequantize_4bit gives.
func dequantized(q *quant.NF4, name string) ([]float32, error) {
	v := make([]float32, q.Len())
	if err := q.Dequantize(v); err != nil {
		return nil, fmt.Errorf("model: %s: %w", name, err)
	}
	return v, nil
}

// RoundTripNF4 replaces every projection with what 4-bit NF4 under opt gives
// back for it: the base a QLoRA run computed with, into which its adapter
// merges. Projections already held in 4 bits are dequantized as stored, as
// a QLoRA run uploads them, not quantized a second time.
func (w *Weights) RoundTripNF4(opt quant.Options) error {
	for i, l := range w.Layers {
		if l == nil {
			continue
		}
		for _, s := range Linears {
			p := l.Linear(s)
			if *p == nil || l.Quantized[s] != nil {
				continue
			}
			out, in := w.Config.LinearShape(s)
			q, err := quant.Quantize(LayerTensorName(i, s), *p, []int{out, in}, opt)
			if err != nil {
				return err
			}
			if err := q.Dequantize(*p); err != nil {
				return err
			}
		}
	}
	return w.Dequantize()
}
