package model

import "fmt"

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
