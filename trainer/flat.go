package trainer

import (
	"errors"
	"fmt"
	"strings"
	"train/model"
	"train/ops"
	"train/optim"
)

// flatParams lays every trainable tensor of this rank's stage end to end in host
// memory, so that a gradient reduction is one collective over one buffer and a
// ZeRO-1 shard is one contiguous range of it. The optimizer works on the views of
// the range this rank owns (all of it without ZeRO-1).
type flatParams struct {
	value, grad []float32 // padded to a multiple of the data-parallel size
	views       []flatView
	lo, hi      int            // the owned range
	opt         []*optim.Param // the owned range, split at tensor boundaries
	optDup      []bool         // per opt entry: counted on another stage too (the tied head)
	optView     []flatView     // per opt entry: the tensor it is part of
	optStart    []int64        // per opt entry: its first element within that tensor
	embed       *flatView      // the embedding, for the tied-embedding sum; nil if not held
	tiedDup     bool           // this stage's embedding is the tied head, a copy of the first stage's
	// layers maps a decoder layer to the flat range of its tensors (contiguous:
	// the model lists a layer's tensors together), the unit of the gradient
	// buckets reduced while backward still runs; rest are the other tensors.
	layers map[int][2]int
	rest   []flatView
}

type flatView struct {
	p      *model.Param
	off, n int
}

// newFlatParams lays out the trainable tensors of chunks (a rank's models, in
// chunk order) end to end.
func newFlatParams(chunks []*model.Model, be ops.Backend, replicas int, shardIndex int, tiedDup bool) (*flatParams, error) {
	f := &flatParams{tiedDup: tiedDup}
	n := 0
	for _, m := range chunks {
		for _, p := range m.Params() {
			if p.Grad == nil {
				continue
			}
			f.views = append(f.views, flatView{p: p, off: n, n: p.Value.Len()})
			n += p.Value.Len()
		}
	}
	if n == 0 {
		return nil, errors.New("train: the model has no trainable tensors")
	}
	padded := (n + replicas - 1) / replicas * replicas
	f.value, f.grad = make([]float32, padded), make([]float32, padded)
	for i := range f.views {
		v := &f.views[i]
		if err := be.Download(f.value[v.off:v.off+v.n], v.p.Value); err != nil {
			return nil, fmt.Errorf("train: %s: %w", v.p.Name, err)
		}
		if v.p.Name == "model.embed_tokens.weight" {
			f.embed = v
		}
	}
	f.layers = map[int][2]int{}
	for _, v := range f.views {
		l, ok := layerOf(v.p.Name)
		if !ok {
			f.rest = append(f.rest, v)
			continue
		}
		r, seen := f.layers[l]
		if !seen {
			r = [2]int{v.off, v.off}
		}
		if r[1] != v.off {
			return nil, fmt.Errorf("train: the tensors of layer %d are not contiguous", l)
		}
		r[1] = v.off + v.n
		f.layers[l] = r
	}
	per := padded / replicas
	f.lo, f.hi = shardIndex*per, (shardIndex+1)*per
	for _, v := range f.views {
		a, b := max(v.off, f.lo), min(v.off+v.n, f.hi)
		if a >= b {
			continue
		}
		f.opt = append(f.opt, &optim.Param{Name: v.p.Name, Value: f.value[a:b], Grad: f.grad[a:b], NoDecay: len(v.p.Shape) == 1})
		f.optDup = append(f.optDup, tiedDup && v.p.Name == "model.embed_tokens.weight")
		f.optView = append(f.optView, v)
		f.optStart = append(f.optStart, int64(a-v.off))
	}
	return f, nil
}

// layerOf is the decoder layer a tensor belongs to, from its Hugging Face or peft name.
func layerOf(name string) (int, bool) {
	i := strings.Index(name, "model.layers.")
	if i < 0 {
		return 0, false
	}
	var l int
	if _, err := fmt.Sscanf(name[i+len("model.layers."):], "%d.", &l); err != nil {
		return 0, false
	}
	return l, true
}

// layerViews are the tensors of decoder layer l (none when it trains
// nothing): the unit of the gradient buckets reduced during the backward.
func (f *flatParams) layerViews(l int) []flatView {
	r, ok := f.layers[l]
	if !ok {
		return nil
	}
	var vs []flatView
	for _, v := range f.views {
		if v.off >= r[0] && v.off < r[1] {
			vs = append(vs, v)
		}
	}
	return vs
}

// downloadViews copies the gradients of views from the model into the flat buffer.
func (f *flatParams) downloadViews(be ops.Backend, views []flatView) error {
	for _, v := range views {
		if err := be.Download(f.grad[v.off:v.off+v.n], v.p.Grad); err != nil {
			return fmt.Errorf("%s: %w", v.p.Name, err)
		}
	}
	return nil
}

func (f *flatParams) values() int64 {
	var n int64
	for _, v := range f.views {
		n += int64(v.n)
	}
	return n
}

// downloadGrads copies the gradients not yet on the host: all of them, or with
// overlapped buckets only the tensors outside the decoder layers.
func (f *flatParams) downloadGrads(chunks []*model.Model, be ops.Backend, overlapped bool) error {
	for _, m := range chunks {
		m.FinishGrads()
	}
	if overlapped {
		return f.downloadViews(be, f.rest)
	}
	return f.downloadViews(be, f.views)
}

// uploadValues copies the updated values back to the model, and from there
// into its compute copies (bf16).
func (f *flatParams) uploadValues(chunks []*model.Model, be ops.Backend) error {
	for _, v := range f.views {
		if err := be.Upload(v.p.Value, f.value[v.off:v.off+v.n]); err != nil {
			return fmt.Errorf("%s: %w", v.p.Name, err)
		}
	}
	for _, m := range chunks {
		m.RefreshCompute()
	}
	return nil
}

// sumSquares is the squared norm of the owned gradients, leaving out tensors that
// another stage also counts.
func (f *flatParams) sumSquares() float64 {
	var s float64
	for i, p := range f.opt {
		if !f.optDup[i] {
			s += optim.SumSquares([]*optim.Param{p})
		}
	}
	return s
}

func (f *flatParams) embedIndex() int {
	for i, v := range f.views {
		if f.embed != nil && v.off == f.embed.off {
			return i
		}
	}
	return -1
}
