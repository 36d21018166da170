// Package model holds the Llama model: its configuration as Hugging Face writes it,
// the weights read from safetensors files, LoRA adapters, and the forward and backward
// passes of the whole model written out per op over the ops package.
package model

// Config is a Llama-family architecture, as read from a Hugging Face config.json
// or named by a random:NAME model. All sizes are in elements.
type Config struct {
	Architecture     string  // "LlamaForCausalLM"
	ModelType        string  // "llama"
	HiddenSize       int     // d_model
	IntermediateSize int     // MLP inner width
	NumLayers        int     // decoder layers
	NumHeads         int     // query heads
	NumKVHeads       int     // key/value heads (GQA); equals NumHeads when absent
	HeadDim          int     // per-head width; HiddenSize/NumHeads when absent
	VocabSize        int     // embedding rows
	MaxPositions     int     // max_position_embeddings
	RMSNormEps       float64 // rms_norm_eps
	TieEmbeddings    bool    // lm_head shares the embedding matrix
	HiddenAct        string  // must be "silu"
	AttentionBias    bool    // q/k/v/o projections carry a bias (rejected by Check)
	MLPBias          bool    // gate/up/down projections carry a bias (rejected by Check)
	BOSTokenID       int     // -1 when absent
	EOSTokenIDs      []int   // eos_token_id (a number or a list)
	Rope             Rope    // rotary embedding parameters
	TorchDType       string  // dtype the checkpoint was saved in, informational
}

// Rope describes the rotary position embedding. Type "default" applies no scaling;
// "llama3" follows transformers' _compute_llama3_parameters.
type Rope struct {
	Theta                         float64
	Type                          string // "default" or "llama3"
	Factor                        float64
	LowFreqFactor                 float64
	HighFreqFactor                float64
	OriginalMaxPositionEmbeddings int
}

// KVDim is the width of the k and v projections' outputs.
func (c *Config) KVDim() int { return c.NumKVHeads * c.HeadDim }

// QDim is the width of the q projection's output (and the o projection's input).
func (c *Config) QDim() int { return c.NumHeads * c.HeadDim }
