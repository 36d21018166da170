package model

import (
	"errors"
	"fmt"
	"slices"

	"train/ops"
	"train/quant"
)

// Model runs the forward and backward passes of layers [Lo,Hi) of a Llama on an
// ops.Backend: the whole model when the range is every layer, or one pipeline
// stage. The first stage (Lo == 0) runs the embedding; the last (Hi ==
// NumLayers) runs the final norm, the lm_head and the loss. Between stages the
// hidden states [B*T, C] travel in StageInput/StageOutput and their gradient
// in StageGrad.
//
// Parameters and their gradients live in two allocations made by NewModel;
// activations in one allocation planned per batch shape (B, T). In full
// fine-tuning every weight of the stage has a gradient; with LoRA only the
// adapter's A and B do, and no base-weight gradient is computed.
//
// Use: m.Forward(batch) returns the summed loss and the count of labels that
// count; m.Backward(scale) then adds d(scale * lossSum)/dθ into the gradients
// (so scale = 1/total valid labels of the whole step, across micro-batches and
// ranks, gives the mean loss's gradient); Grads/Grad read them by Hugging Face
// or peft name; ZeroGrads starts the next step. A Model is not safe for
// concurrent use.
type Model struct {
	be         ops.Backend
	cfg        Config
	lo, hi     int
	first      bool // runs the embedding
	last       bool // runs the head and the loss
	checkpoint bool
	offload    bool // Options.Offload
	keepAttn   bool // Options.KeepAttention (with checkpoint)
	headChunk  int  // Options.HeadChunk
	training   bool

	lora      *LoRAConfig // nil in full fine-tuning
	loraScale float32

	compute  ops.DType      // weights and activations: F32 or BF16
	nf4      *quant.Options // QLoRA's 4-bit base weights, or nil
	quantBuf ops.Buf        // U8: every 4-bit weight's codes
	deq      ops.Buf        // the compute-type workspace 4-bit weights are dequantized into
	params   []*Param
	byName   map[string]*Param
	paramBuf ops.Buf // F32 values: every tensor, or in BF16 only the trainable masters
	workBuf  ops.Buf // BF16: every tensor's compute copy; nil in F32
	gradBuf  ops.Buf

	embed     *Param // first stage, and last stage when tied
	finalNorm *Param // last stage
	head      *Param // last stage: lm_head, or embed when tied
	// headGrad keeps a tied head's gradient apart from the embedding's when one
	// stage runs both, so the two are summed once at the end (FinishGrads) as a
	// pipeline sums them across its first and last stage: the same order, so the
	// same bits, whatever the split.
	headGrad ops.Buf
	// layerDone, when set, is called after each layer's backward (see
	// SetLayerDone).
	layerDone func(layer int) error
	layers    []*stageLayer

	invFreq []float32
	ropeP   int // rows in the rope tables
	ropeBuf ops.Buf
	ropeCos ops.Buf
	ropeSin ops.Buf
	// slots hold the activations of micro-batches in flight (SetSlots); acts
	// is the current slot's, where Forward writes and Backward reads.
	slots []*actPlan
	cur   int
	acts  *actPlan
}

type modelState int

const (
	stateIdle      modelState = iota // no forward since the last backward
	stateForwarded                   // Forward ran; logits valid; Backward may run
)

// Options choose the stage, the adapter and the memory policy of a Model.
type Options struct {
	// Lo and Hi are the layers [Lo,Hi) this model runs; Hi == 0 means all.
	Lo, Hi int
	// LoRA, when not nil, freezes the base weights and trains this adapter,
	// whose matrices are copied to the backend (later changes to it are not seen).
	LoRA *LoRA
	// Checkpoint keeps only each layer's input during forward and recomputes
	// the layer in backward; the gradients are bitwise the same as without.
	Checkpoint bool
	// Offload, with Checkpoint, keeps those layer inputs in host memory
	// (Backend.AllocHost): each is copied out after the layer before it runs
	// and back before its backward, so the device holds two whatever the
	// layer count (70B at 65k tokens: 80 x 1 GiB). The gradients are bitwise
	// the same. On a backend with a second stream (ops.AsyncCopier) the
	// copies overlap the compute: a layer's input goes out while the next
	// layer runs and comes back while the layer above runs its backward.
	Offload bool
	// KeepAttention, with Checkpoint, also keeps each layer's attention
	// output and log-sum-exp from the forward ([N, Q] in the compute type and
	// [B, H, T] float32 per layer), so the recomputation skips the attention,
	// its largest part at long sequences. The gradients are bitwise the same
	// (the attention is deterministic).
	KeepAttention bool
	// Compute is the type of weights and activations: ops.F32 (the zero
	// value), or ops.BF16 or ops.F16 for mixed precision, where trainable tensors keep an
	// F32 master copy and F32 gradients and everything else is bfloat16.
	Compute ops.DType
	// HeadChunk is how many tokens' logits the last stage holds at once: the
	// head and the loss run over the tokens in chunks of this many, so no
	// [tokens, vocab] buffer exists (4 GiB at 16k tokens of Llama 3 in bf16).
	// 0 is DefaultHeadChunk.
	HeadChunk int
	// NF4, with LoRA, holds the frozen weights of the seven projections in
	// 4-bit NF4 (QLoRA) with these options (block size, double
	// quantization): quantized at upload, tensor by tensor, on the backend,
	// or uploaded as stored from a bitsandbytes 4-bit checkpoint, whose
	// layout must then be these options'. Before each use a weight is
	// dequantized into one workspace shared by every layer; the backward
	// dequantizes again instead of keeping a copy. Embeddings, norms and the
	// head stay in the compute type, as peft with bitsandbytes leaves them.
	NF4 *quant.Options
}

// HeadChunkElems is the logits the default chunk of the head holds: 2^27
// values, 256 MiB in bf16, which keeps the head's GEMMs large (1,046 tokens
// of Llama 3's 128,256-token vocabulary) and its memory small.
const HeadChunkElems = 1 << 27

// headChunk is the tokens per chunk of the head and loss for a vocabulary of V.
func headChunk(opt int, V int) int {
	if opt > 0 {
		return opt
	}
	return max(1, HeadChunkElems/V)
}

// Param is one tensor of the model on the backend, with its gradient.
type Param struct {
	Name  string  // Hugging Face name, or peft name for LoRA matrices
	Shape []int   // row-major shape
	Value ops.Buf // the values: F32 when trainable (the master), else of the compute type
	// W is what the passes read: Value itself, or in mixed precision a
	// trainable tensor's BF16 copy, refreshed from Value by RefreshCompute.
	W    ops.Buf
	Grad ops.Buf // the F32 gradient; nil when frozen
	// NF4 is a frozen projection held in 4 bits (Options.NF4); its Value and
	// W are nil.
	NF4 *ops.NF4

	host      []float32 // the weights until uploaded
	trainable bool
	layer     int    // the decoder layer the tensor belongs to, or -1
	short     string // its short name in the layer ("q_proj", "input_layernorm")
}

// Batch is one micro-batch of B sequences of T tokens, row-major [B, T].
type Batch struct {
	B, T int
	// IDs are the input token ids; needed on the first stage, and on the last
	// stage when Labels is nil.
	IDs []int32
	// Labels are aligned with IDs as transformers expects: the model shifts
	// them, so position t is scored on Labels[t+1]. -100 is ignored. nil means
	// IDs. The last position of each row, and with Segments each position whose
	// next token starts another segment, predicts nothing.
	Labels []int32
	// Positions are the rotary positions; nil means 0..T-1 in every row. Packed
	// examples restart at 0.
	Positions []int32
	// Segments, when not nil, confine attention (and next-token targets) to
	// tokens of the same segment id: packed examples do not see each other.
	Segments []int32
	// Seed drives LoRA dropout in training mode; give each micro-batch its own.
	Seed uint64
}

// Linear projection indices, in Linears order.
const (
	linQ = iota
	linK
	linV
	linO
	linGate
	linUp
	linDown
	numLinears
)

// stageLayer is one decoder layer's parameters.
type stageLayer struct {
	attnNorm, mlpNorm *Param
	lin               [numLinears]*Param
	lora              [numLinears]*loraParam // nil where not adapted
}

type loraParam struct {
	A, B *Param // [r, in], [out, r]
}

// NewModel uploads the weights of layers [opt.Lo, opt.Hi) of w (and the
// embedding, head and adapter as the stage needs) to be and returns the model.
// Every tensor the stage needs must be present with its shape.
func NewModel(be ops.Backend, w *Weights, opt Options) (*Model, error) {
	if w == nil {
		return nil, errors.New("model: no weights")
	}
	cfg := w.Config
	if err := cfg.Supported(); err != nil {
		return nil, err
	}
	if cfg.HiddenSize <= 0 || cfg.IntermediateSize <= 0 || cfg.NumLayers <= 0 || cfg.NumHeads <= 0 || cfg.VocabSize <= 0 {
		return nil, fmt.Errorf("model: sizes must be positive (hidden %d, intermediate %d, layers %d, heads %d, vocab %d)",
			cfg.HiddenSize, cfg.IntermediateSize, cfg.NumLayers, cfg.NumHeads, cfg.VocabSize)
	}
	lo, hi := opt.Lo, opt.Hi
	if hi == 0 {
		hi = cfg.NumLayers
	}
	if lo < 0 || lo >= hi || hi > cfg.NumLayers {
		return nil, fmt.Errorf("model: layer range [%d,%d) outside the model's %d layers", lo, hi, cfg.NumLayers)
	}
	if len(w.Layers) != cfg.NumLayers {
		return nil, fmt.Errorf("model: weights hold %d layers, config says %d", len(w.Layers), cfg.NumLayers)
	}
	inv, err := RopeInvFreq(&cfg)
	if err != nil {
		return nil, fmt.Errorf("model: %w", err)
	}
	if !opt.Compute.IsFloat() {
		return nil, fmt.Errorf("model: compute type %v: want f32, bf16 or f16", opt.Compute)
	}
	if opt.Offload && !opt.Checkpoint {
		return nil, errors.New("model: offloading layer inputs to host memory needs activation checkpointing (the inputs are all it keeps)")
	}
	m := &Model{
		be: be, cfg: cfg, lo: lo, hi: hi, first: lo == 0, last: hi == cfg.NumLayers,
		checkpoint: opt.Checkpoint, offload: opt.Offload, keepAttn: opt.Checkpoint && opt.KeepAttention, headChunk: opt.HeadChunk, invFreq: inv, byName: map[string]*Param{}, compute: opt.Compute,
		slots: make([]*actPlan, 1),
	}
	full := opt.LoRA == nil
	if !full {
		lc := opt.LoRA.Config
		if err := lc.Validate(); err != nil {
			return nil, err
		}
		if len(opt.LoRA.Layers) != cfg.NumLayers {
			return nil, fmt.Errorf("model: adapter has %d layers, model %d", len(opt.LoRA.Layers), cfg.NumLayers)
		}
		m.lora, m.loraScale = &lc, float32(lc.Scale())
	}
	if opt.NF4 != nil {
		if full {
			return nil, errors.New("model: 4-bit NF4 base weights (QLoRA) need a LoRA adapter: full fine-tuning trains the weights themselves")
		}
		o := *opt.NF4
		if o.BlockSize == 0 {
			o.BlockSize = quant.DefaultBlockSize
		}
		if o.BlockSize < 32 || o.BlockSize > 4096 || o.BlockSize&(o.BlockSize-1) != 0 {
			return nil, fmt.Errorf("model: NF4 block size %d is not one of bitsandbytes' (32, 64, ..., 4096)", o.BlockSize)
		}
		m.nf4 = &o
	}
	if err := m.addParams(w, opt.LoRA); err != nil {
		return nil, err
	}
	if err := m.allocParams(w); err != nil {
		m.Close()
		return nil, err
	}
	return m, nil
}

// addParams lists the stage's tensors in checkpoint order, checking the
// shape of each tensor held on the host. A lazily loaded stage's layers are
// checked as they load (upload).
func (m *Model) addParams(w *Weights, lora *LoRA) error {
	cfg := &m.cfg
	h, V := cfg.HiddenSize, cfg.VocabSize
	full := lora == nil
	lazy := w.load != nil || w.random != nil
	var err error
	// stored marks a projection the layer holds in 4 bits: the uploader
	// reads it from the layer (as stored, or dequantized).
	stored := false
	add := func(name string, host []float32, trainable bool, shape ...int) *Param {
		if err != nil {
			return nil
		}
		p := &Param{Name: name, Shape: shape, host: host, trainable: trainable, layer: -1}
		if host == nil && !stored && !lazy {
			err = fmt.Errorf("model: weights lack %s %v", name, shape)
			return nil
		}
		if host != nil {
			if err = checkHostLen(p, host); err != nil {
				return nil
			}
		}
		m.params = append(m.params, p)
		m.byName[name] = p
		return p
	}
	if m.first || (m.last && cfg.TieEmbeddings) {
		m.embed = add("model.embed_tokens.weight", w.Embed, full, V, h)
	}
	for l := m.lo; l < m.hi; l++ {
		wl := w.Layers[l]
		if wl == nil && !lazy {
			return fmt.Errorf("model: weights lack layer %d", l)
		}
		if wl == nil {
			wl = &Layer{}
		}
		sl := &stageLayer{}
		inLayer := func(p *Param, short string) *Param {
			if p != nil {
				p.layer, p.short = l, short
			}
			return p
		}
		sl.attnNorm = inLayer(add(LayerTensorName(l, "input_layernorm"), wl.AttnNorm, full, h), "input_layernorm")
		for j, s := range Linears {
			out, in := cfg.LinearShape(s)
			host := *wl.Linear(s)
			stored = host == nil && wl.Quantized[s] != nil
			sl.lin[j] = inLayer(add(LayerTensorName(l, s), host, full, out, in), s)
			stored = false
		}
		sl.mlpNorm = inLayer(add(LayerTensorName(l, "post_attention_layernorm"), wl.MLPNorm, full, h), "post_attention_layernorm")
		if lora != nil {
			r := lora.Config.Rank
			for j, s := range Linears {
				pair := lora.Layers[l][s]
				if pair == nil {
					continue
				}
				out, in := cfg.LinearShape(s)
				sl.lora[j] = &loraParam{
					A: add(LoRATensorName(l, s, "A"), pair.A, true, r, in),
					B: add(LoRATensorName(l, s, "B"), pair.B, true, out, r),
				}
			}
		}
		m.layers = append(m.layers, sl)
	}
	if m.last {
		m.finalNorm = add("model.norm.weight", w.FinalNorm, full, h)
		if cfg.TieEmbeddings {
			m.head = m.embed
		} else {
			m.head = add("lm_head.weight", w.LMHead, full, V, h)
		}
	}
	return err
}

// checkHostLen checks that host holds exactly p's shape.
func checkHostLen(p *Param, host []float32) error {
	if len(host) != p.size() {
		return fmt.Errorf("model: %s has %d values, want %v = %d", p.Name, len(host), p.Shape, p.size())
	}
	return nil
}

// quantized reports whether p is held in 4 bits.
func (m *Model) quantized(p *Param) bool {
	if m.nf4 == nil || p.layer < 0 || p.trainable {
		return false
	}
	return slices.Contains(Linears, p.short)
}

// allocParams places the parameters in one allocation per type and every
// gradient in another, and uploads the values. In F32 every tensor has one F32
// copy. In BF16 every tensor has a BF16 copy (W) and a trainable one also an
// F32 master (Value), so the optimizer updates full-precision values. A 4-bit
// weight (QLoRA) has its codes in a U8 allocation and its scales among the F32
// values, and the compute-type workspace it is dequantized into is sized for
// the largest. The layers of a lazily loaded stage are read one at a time.
func (m *Model) allocParams(w *Weights) error {
	var vp, wp, gp, qp ops.Plan
	maxQ := 0
	for _, p := range m.params {
		switch {
		case m.quantized(p):
			p.NF4 = m.planNF4(&vp, &qp, p.size())
			maxQ = max(maxQ, p.size())
		case m.compute == ops.F32:
			vp.Add(&p.Value, p.size())
		case p.trainable:
			vp.Add(&p.Value, p.size())
			wp.Add(&p.W, p.size())
		default:
			wp.Add(&p.Value, p.size())
		}
		if p.trainable {
			gp.Add(&p.Grad, p.size())
		}
	}
	if m.first && m.last && m.cfg.TieEmbeddings && m.embed.trainable {
		gp.Add(&m.headGrad, m.embed.size())
	}
	var err error
	if m.paramBuf, err = vp.Alloc(m.be, ops.F32); err != nil {
		return fmt.Errorf("model: parameters: %w", err)
	}
	if m.compute != ops.F32 {
		if m.workBuf, err = wp.Alloc(m.be, m.compute); err != nil {
			return fmt.Errorf("model: %v parameters: %w", m.compute, err)
		}
	}
	if m.gradBuf, err = gp.Alloc(m.be, ops.F32); err != nil {
		return fmt.Errorf("model: gradients: %w", err)
	}
	if maxQ > 0 {
		if m.quantBuf, err = qp.Alloc(m.be, ops.U8); err != nil {
			return fmt.Errorf("model: 4-bit weights: %w", err)
		}
		if m.deq, err = m.be.Alloc(m.compute, maxQ); err != nil {
			return fmt.Errorf("model: the 4-bit weights' %v workspace: %w", m.compute, err)
		}
	}
	up := &uploader{m: m, w: w, cur: -1}
	defer up.free()
	for _, p := range m.params {
		if p.W == nil {
			p.W = p.Value
		}
		if err := up.upload(p); err != nil {
			return err
		}
		p.host = nil // the caller's slice; not kept
	}
	m.RefreshCompute()
	return m.be.Sync()
}

// planNF4 reserves a 4-bit weight of n values: its codes in qp, its scales
// (float32 absmaxes, or with double quantization one byte per block in qp and
// the absmax2s and the 8-bit map in vp).
func (m *Model) planNF4(vp, qp *ops.Plan, n int) *ops.NF4 {
	w := &ops.NF4{N: n, BlockSize: m.nf4.BlockSize}
	blocks := w.Blocks()
	qp.Add(&w.Packed, (n+1)/2)
	if !m.nf4.DoubleQuant {
		vp.Add(&w.Absmax, blocks)
		return w
	}
	w.NestedBlock = quant.NestedBlockSize
	qp.Add(&w.Codes, blocks)
	vp.Add(&w.Absmax2, (blocks+w.NestedBlock-1)/w.NestedBlock)
	vp.Add(&w.Map, 256)
	return w
}

// Compute is the type of the model's weights and activations.
func (m *Model) Compute() ops.DType { return m.compute }

// RefreshCompute copies every trainable tensor's Value into its compute copy
// W; call it after changing Values (an optimizer step, an upload). In F32 the
// two are one buffer and it does nothing.
func (m *Model) RefreshCompute() {
	for _, p := range m.params {
		if p.W != p.Value {
			m.be.Cast(p.W, p.Value, p.size())
		}
	}
}

func (p *Param) size() int {
	n := 1
	for _, d := range p.Shape {
		n *= d
	}
	return n
}

// Config returns the model's architecture.
func (m *Model) Config() Config { return m.cfg }

// Layers returns the stage's layer range [lo, hi).
func (m *Model) Layers() (lo, hi int) { return m.lo, m.hi }

// SetTraining turns training mode on or off. It matters only for LoRA dropout,
// which is the identity when off (evaluation, the default).
func (m *Model) SetTraining(on bool) { m.training = on }

// Params lists the stage's tensors in checkpoint order (LoRA matrices after
// their layer). The optimizer updates Value from Grad where Grad is not nil.
func (m *Model) Params() []*Param { return append([]*Param(nil), m.params...) }

// Param returns a tensor by its Hugging Face or peft name, or nil.
func (m *Model) Param(name string) *Param { return m.byName[name] }

// Forward runs the stage on one micro-batch. On the last stage it returns the
// sum of the cross-entropy losses over the labels that count and their number;
// other stages return 0, 0 and leave their output in StageOutput. A stage other
// than the first reads its input from StageInput, which the caller fills
// (after Plan) before calling Forward.
func (m *Model) Forward(b *Batch) (lossSum float64, count int, err error) {
	if m.acts != nil {
		m.acts.state = stateIdle
	}
	if b == nil {
		return 0, 0, errors.New("model: nil batch")
	}
	targets, pos, count, maxPos, err := m.prepare(b)
	if err != nil {
		return 0, 0, err
	}
	if err := m.Plan(b.B, b.T); err != nil {
		return 0, 0, err
	}
	if err := m.ensureRope(maxPos + 1); err != nil {
		return 0, 0, err
	}
	p, be, c := m.acts, m.be, &m.cfg
	if m.first {
		if err := be.UploadInt(p.ids, b.IDs); err != nil {
			return 0, 0, err
		}
	}
	if m.last {
		if err := be.UploadInt(p.targets, targets); err != nil {
			return 0, 0, err
		}
	}
	if err := be.UploadInt(p.pos, pos); err != nil {
		return 0, 0, err
	}
	p.segUsed = b.Segments != nil && !oneSegmentPerRow(b.Segments, p.B, p.T)
	if p.segUsed {
		if err := be.UploadInt(p.seg, b.Segments); err != nil {
			return 0, 0, err
		}
	}
	p.seed = b.Seed
	N, C, V := p.N, c.HiddenSize, c.VocabSize

	if m.first {
		be.EmbeddingForward(p.resid[0], p.ids, m.embed.W, N, C, V)
	}
	for l := m.lo; l < m.hi; l++ {
		x, out := p.layerIO(m, l)
		k := (l + 1 - m.lo) % 2 // out is work[k] with offload
		if p.host != nil && l+1 < m.hi {
			m.offloadWait(p, k) // the copy out of work[k], two layers ago, must be done before it is written
		}
		m.layerForward(l, p.layer(m, l), x, out, false)
		if p.host != nil && l+1 < m.hi {
			m.offloadCopy(p, k, p.resid[l+1-m.lo], out) // the next layer's input, saved on the host while it runs
		}
	}
	if !m.last {
		if err := be.Sync(); err != nil {
			return 0, 0, fmt.Errorf("model: forward: %w", err)
		}
		p.state = stateForwarded
		return 0, 0, nil
	}
	be.RMSNormForward(p.xf, p.rstdF, p.resid[m.hi-m.lo], m.finalNorm.W, N, C, float32(c.RMSNormEps))
	// The head and the loss, a chunk of tokens at a time: only the chunk's
	// logits exist, and only the losses are kept (backward recomputes them).
	for r0 := 0; r0 < N; r0 += p.chunk {
		R := min(p.chunk, N-r0)
		be.MatmulNT(p.logits, p.xf.Slice(r0*C, R*C), m.head.W, R, V, C, 1, 0)
		be.CrossEntropyForward(p.losses.Slice(r0, R), p.logits, p.targets.Slice(r0, R), R, V)
	}
	losses := make([]float64, N)
	if err := be.Download64(losses, p.losses); err != nil {
		return 0, 0, fmt.Errorf("model: forward: %w", err)
	}
	for _, l := range losses {
		lossSum += l
	}
	p.state = stateForwarded
	return lossSum, count, nil
}

// Backward adds to the gradients d(scale·lossSum)/dθ for the micro-batch of the
// last Forward: scale is 1/(valid labels across the whole step) for the mean
// loss. On a stage other than the last the caller first fills StageGrad with the
// gradient of StageOutput (already scaled); on a stage other than the first,
// StageGrad then holds the gradient of StageInput. Backward overwrites the
// logits (the softmax gradient is formed in place) and needs a new Forward
// before it can run again.
func (m *Model) Backward(scale float32) error {
	if m.acts == nil || m.acts.state != stateForwarded {
		return errors.New("model: Backward without a Forward before it")
	}
	m.acts.state = stateIdle
	p, be, c := m.acts, m.be, &m.cfg
	N, C, V := p.N, c.HiddenSize, c.VocabSize
	if m.last {
		// Per chunk of tokens: the logits again, their gradient in place, the
		// chunk's share of the head's gradient and the gradient of the norm's
		// output.
		hg := m.headGradBuf()
		for r0 := 0; r0 < N; r0 += p.chunk {
			R := min(p.chunk, N-r0)
			xf := p.xf.Slice(r0*C, R*C)
			be.MatmulNT(p.logits, xf, m.head.W, R, V, C, 1, 0)
			be.CrossEntropyBackward(p.logits, p.logits, p.targets.Slice(r0, R), R, V, scale) // logits now hold dlogits
			if hg != nil {
				be.MatmulTN(hg, p.logits, xf, V, C, R, 1, 1)
			}
			be.MatmulNN(p.dln.Slice(r0*C, R*C), p.logits, m.head.W, R, C, V, 1, 0)
		}
		be.Zero(p.dresid, N*C)
		be.RMSNormBackward(p.dresid, m.finalNorm.Grad, p.dln, p.resid[m.hi-m.lo], m.finalNorm.W, p.rstdF, N, C)
	}
	fetched := -1 // the layer whose input is on its way back from the host
	for l := m.hi - 1; l >= m.lo; l-- {
		a := p.layer(m, l)
		x, out := p.layerIO(m, l)
		if p.host != nil && l > m.lo {
			// The layer's input, back from the host: fetched during the
			// layer above (the first one now), waited for here; then the
			// next one's, into the other buffer, which this layer does not
			// touch (the recomputation skips out).
			k := (l - m.lo) % 2
			if fetched != l {
				m.offloadCopy(p, k, x, p.resid[l-m.lo])
			}
			m.offloadWait(p, k)
			if l-1 > m.lo {
				xn, _ := p.layerIO(m, l-1)
				m.offloadCopy(p, 1-k, xn, p.resid[l-1-m.lo])
				fetched = l - 1
			}
		}
		if m.checkpoint {
			m.layerForward(l, a, x, out, true)
		}
		m.layerBackward(l, a, x)
		if m.layerDone != nil {
			if err := m.be.Sync(); err != nil {
				return fmt.Errorf("model: backward: %w", err)
			}
			if err := m.layerDone(l); err != nil {
				return err
			}
		}
	}
	if m.first && m.embed.Grad != nil {
		be.EmbeddingBackward(m.embed.Grad, p.dresid, p.ids, N, C, V)
	}
	if err := be.Sync(); err != nil {
		return fmt.Errorf("model: backward: %w", err)
	}
	return nil
}

// prepare validates a batch against the stage and builds, on the host, the
// shifted targets (last stage), the positions, the count of valid targets and
// the largest position.
func (m *Model) prepare(b *Batch) (targets, pos []int32, count, maxPos int, err error) {
	V := m.cfg.VocabSize
	if b.B <= 0 || b.T <= 0 {
		return nil, nil, 0, 0, fmt.Errorf("model: batch shape [%d, %d] must be positive", b.B, b.T)
	}
	if b.B > 1<<30/b.T {
		return nil, nil, 0, 0, fmt.Errorf("model: batch shape [%d, %d] too large", b.B, b.T)
	}
	N, T := b.B*b.T, b.T
	checkLen := func(what string, v []int32) error {
		if v != nil && len(v) != N {
			return fmt.Errorf("model: batch %s has %d values, want B*T = %d*%d = %d", what, len(v), b.B, T, N)
		}
		return nil
	}
	for _, f := range []struct {
		what string
		v    []int32
	}{{"input_ids", b.IDs}, {"labels", b.Labels}, {"position ids", b.Positions}, {"segment ids", b.Segments}} {
		if err := checkLen(f.what, f.v); err != nil {
			return nil, nil, 0, 0, err
		}
	}
	if m.first {
		if b.IDs == nil {
			return nil, nil, 0, 0, errors.New("model: batch has no input_ids")
		}
		for i, id := range b.IDs {
			if id < 0 || int(id) >= V {
				return nil, nil, 0, 0, fmt.Errorf("model: input_ids[%d][%d] = %d outside the vocabulary [0,%d)", i/T, i%T, id, V)
			}
		}
	}
	pos = b.Positions
	if pos == nil {
		pos = make([]int32, N)
		for i := range pos {
			pos[i] = int32(i % T)
		}
	}
	limit := max(m.cfg.MaxPositions, T)
	for i, v := range pos {
		if v < 0 || int(v) >= limit {
			return nil, nil, 0, 0, fmt.Errorf("model: position_ids[%d][%d] = %d outside [0,%d)", i/T, i%T, v, limit)
		}
		maxPos = max(maxPos, int(v))
	}
	if !m.last {
		return nil, pos, 0, maxPos, nil
	}
	labels := b.Labels
	if labels == nil {
		labels = b.IDs
	}
	if labels == nil {
		return nil, nil, 0, 0, errors.New("model: batch has neither labels nor input_ids")
	}
	for i, y := range labels {
		if y != ops.IgnoreIndex && (y < 0 || int(y) >= V) {
			return nil, nil, 0, 0, fmt.Errorf("model: labels[%d][%d] = %d is neither -100 nor in the vocabulary [0,%d)", i/T, i%T, y, V)
		}
	}
	targets, count = shiftLabels(labels, b.Segments, T)
	return targets, pos, count, maxPos, nil
}

// shiftLabels returns the per-position targets of labels [B*T] as transformers
// shifts them (position t predicts label t+1, the last position of a row
// nothing) and the number that are not -100. With segments, a position whose
// next token belongs to another segment predicts nothing either, so packed
// examples are scored exactly as separate rows.
func shiftLabels(labels, segments []int32, T int) (targets []int32, count int) {
	targets = make([]int32, len(labels))
	for i, y := range labels {
		targets[i] = ops.IgnoreIndex
		if i%T == 0 {
			continue // the label of a row's first token is predicted by nobody
		}
		if segments != nil && segments[i] != segments[i-1] {
			continue // nor is the first label of a packed example
		}
		targets[i-1] = y
		if y != ops.IgnoreIndex {
			count++
		}
	}
	return targets, count
}

// LabelCount is the number of labels of b that count towards the loss (what
// Forward returns as count), computed on the host: every rank can learn a
// step's total before its backward passes, whatever its pipeline stage. b must
// be well-formed (Forward validates it).
func LabelCount(b *Batch) int {
	labels := b.Labels
	if labels == nil {
		labels = b.IDs
	}
	if b.T <= 0 || len(labels) != b.B*b.T || (b.Segments != nil && len(b.Segments) != len(labels)) {
		return 0
	}
	_, n := shiftLabels(labels, b.Segments, b.T)
	return n
}

// Logits returns the logits [B*T, V] of the last Forward on the last stage,
// computed again a chunk at a time (training never holds them all). Call it
// between Forward and Backward.
func (m *Model) Logits() ([]float32, error) {
	if !m.last {
		return nil, errors.New("model: logits exist only on the last stage")
	}
	p := m.acts
	if p == nil || p.state != stateForwarded {
		return nil, errors.New("model: no logits: call Forward (and not yet Backward)")
	}
	C, V := m.cfg.HiddenSize, m.cfg.VocabSize
	out := make([]float32, int64(p.N)*int64(V))
	for r0 := 0; r0 < p.N; r0 += p.chunk {
		R := min(p.chunk, p.N-r0)
		m.be.MatmulNT(p.logits, p.xf.Slice(r0*C, R*C), m.head.W, R, V, C, 1, 0)
		if err := m.be.Download(out[r0*V:(r0+R)*V], p.logits.Slice(0, R*V)); err != nil {
			return nil, fmt.Errorf("model: logits: %w", err)
		}
	}
	return out, nil
}

// StageInput is the buffer [B*T, C] holding the stage's input hidden states:
// the embedding output on the first stage; on others, what the caller receives
// from the previous stage before Forward. Valid after Plan for that shape.
func (m *Model) StageInput() ops.Buf {
	return m.actsOrNil(func(p *actPlan) ops.Buf { return p.resid[0] })
}

// StageOutput is the buffer [B*T, C] of the stage's output hidden states after
// Forward: what a stage other than the last sends on.
func (m *Model) StageOutput() ops.Buf {
	return m.actsOrNil(func(p *actPlan) ops.Buf { return p.resid[len(p.resid)-1] })
}

// StageGrad is the buffer [B*T, C] of the residual stream's gradient: before
// Backward on a stage other than the last, the caller writes the gradient of
// StageOutput into it; after Backward it holds the gradient of StageInput.
func (m *Model) StageGrad() ops.Buf { return m.actsOrNil(func(p *actPlan) ops.Buf { return p.dresid }) }

func (m *Model) actsOrNil(f func(*actPlan) ops.Buf) ops.Buf {
	if m.acts == nil {
		return nil
	}
	return f(m.acts)
}

// ZeroGrads sets every gradient to zero, to start a step.
func (m *Model) ZeroGrads() {
	if m.gradBuf != nil {
		m.be.Zero(m.gradBuf, m.gradBuf.Len())
	}
}

// SetLayerDone makes Backward call f after each decoder layer's backward, once
// that layer's parameter gradients are final for this micro-batch (in
// decreasing layer order), so a caller can start reducing them while the layers
// below are still being computed. nil turns it off; an error from f stops the
// backward with it.
func (m *Model) SetLayerDone(f func(layer int) error) { m.layerDone = f }

// headGradBuf is where the head's gradient accumulates.
func (m *Model) headGradBuf() ops.Buf {
	if m.headGrad != nil {
		return m.headGrad
	}
	return m.head.Grad
}

// FinishGrads adds into the tied embedding's gradient the head's part, which
// Backward keeps apart. Grad and Grads call it; a caller that reads Param.Grad
// directly calls it once after the step's last Backward.
func (m *Model) FinishGrads() {
	if m.headGrad == nil {
		return
	}
	n := m.embed.size()
	m.be.Add(m.embed.Grad, m.embed.Grad, m.headGrad, n)
	m.be.Zero(m.headGrad, n)
}

// Grad downloads the gradient of the named tensor.
func (m *Model) Grad(name string) ([]float32, error) {
	m.FinishGrads()
	p := m.byName[name]
	if p == nil {
		return nil, fmt.Errorf("model: no tensor %q in layers [%d,%d)", name, m.lo, m.hi)
	}
	if p.Grad == nil {
		return nil, fmt.Errorf("model: %s is frozen: it has no gradient", name)
	}
	g := make([]float32, p.size())
	if err := m.be.Download(g, p.Grad); err != nil {
		return nil, fmt.Errorf("model: gradient of %s: %w", name, err)
	}
	return g, nil
}

// Grads downloads every gradient, by Hugging Face name in full fine-tuning
// (model.layers.0.self_attn.q_proj.weight; a tied embedding once, holding both
// of its uses) and by peft name with LoRA
// (base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight).
func (m *Model) Grads() (map[string][]float32, error) {
	out := map[string][]float32{}
	for _, p := range m.params {
		if p.Grad == nil {
			continue
		}
		g, err := m.Grad(p.Name)
		if err != nil {
			return nil, err
		}
		out[p.Name] = g
	}
	return out, nil
}

// Value downloads the current values of the named tensor.
func (m *Model) Value(name string) ([]float32, error) {
	p := m.byName[name]
	if p == nil {
		return nil, fmt.Errorf("model: no tensor %q in layers [%d,%d)", name, m.lo, m.hi)
	}
	src := p.Value
	if p.NF4 != nil {
		src = m.deq.Slice(0, p.size())
		m.be.DequantNF4(src, *p.NF4)
	}
	v := make([]float32, p.size())
	if err := m.be.Download(v, src); err != nil {
		return nil, fmt.Errorf("model: %s: %w", name, err)
	}
	return v, nil
}

// SetValue uploads new values for the named tensor (tests, adapters loaded
// after construction).
func (m *Model) SetValue(name string, v []float32) error {
	p := m.byName[name]
	if p == nil {
		return fmt.Errorf("model: no tensor %q in layers [%d,%d)", name, m.lo, m.hi)
	}
	if len(v) != p.size() {
		return fmt.Errorf("model: %s has %d values, want %v", name, len(v), p.Shape)
	}
	if p.NF4 != nil {
		return fmt.Errorf("model: %s is held in 4-bit NF4: its values cannot be set", name)
	}
	for _, a := range m.slots { // the saved activations no longer match the weights
		if a != nil {
			a.state = stateIdle
		}
	}
	if err := m.be.Upload(p.Value, v); err != nil {
		return err
	}
	if p.W != p.Value {
		m.be.Cast(p.W, p.Value, p.size())
	}
	return nil
}

// LoRATensors downloads the adapter matrices of the stage by peft name, for
// export.
func (m *Model) LoRATensors() (map[string][]float32, error) {
	if m.lora == nil {
		return nil, errors.New("model: no LoRA adapter")
	}
	out := map[string][]float32{}
	for _, sl := range m.layers {
		for _, lp := range sl.lora {
			if lp == nil {
				continue
			}
			for _, p := range []*Param{lp.A, lp.B} {
				v, err := m.Value(p.Name)
				if err != nil {
					return nil, err
				}
				out[p.Name] = v
			}
		}
	}
	return out, nil
}

// Close frees the model's device memory.
func (m *Model) Close() {
	m.freeActs()
	for _, b := range []ops.Buf{m.paramBuf, m.workBuf, m.gradBuf, m.ropeBuf, m.quantBuf, m.deq} {
		if b != nil {
			m.be.Free(b)
		}
	}
	m.paramBuf, m.workBuf, m.gradBuf, m.ropeBuf, m.quantBuf, m.deq = nil, nil, nil, nil, nil, nil
}
