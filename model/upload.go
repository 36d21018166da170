package model

import (
	"fmt"
	"math"
	"strings"

	"train/ops"
	"train/quant"
)

// uploader puts each parameter's values on the backend as NewModel's last
// step: from the host (the caller's slices, or a lazily loaded layer, read
// when its first tensor is reached and dropped at the next), drawn by the
// backend for random weights, and for QLoRA quantized on the backend or
// uploaded as a bitsandbytes checkpoint stores them.
type uploader struct {
	m     *Model
	w     *Weights
	cur   int    // the decoder layer held in layer, or -1
	layer *Layer // for a lazily loaded stage
	// stage and stageAbs are the F32 buffers a weight is quantized from:
	// the largest 4-bit weight's values and its absmaxes (before double
	// quantization), allocated at the first use and freed once done.
	stage, stageAbs ops.Buf
}

func (u *uploader) upload(p *Param) error {
	m := u.m
	host := p.host
	var stored *quant.NF4
	if host == nil && p.layer >= 0 {
		if p.layer != u.cur {
			l, err := u.w.layer(p.layer)
			if err != nil {
				return fmt.Errorf("model: layer %d: %w", p.layer, err)
			}
			u.layer, u.cur = l, p.layer
		}
		if u.layer != nil {
			host, stored = layerTensor(u.layer, p.short)
		}
	}
	if host != nil {
		if err := checkHostLen(p, host); err != nil {
			return err
		}
	}
	if stored != nil && p.NF4 == nil { // a model that does not keep it in 4 bits
		var err error
		if host, err = dequantized(stored, p.Name); err != nil {
			return err
		}
	}
	switch {
	case stored != nil && p.NF4 != nil:
		return u.uploadStored(p, stored)
	case host == nil && u.w.random == nil:
		return fmt.Errorf("model: weights lack %s %v", p.Name, p.Shape)
	case p.NF4 != nil:
		return u.quantize(p, host)
	case host != nil:
		if err := m.be.Upload(p.Value, host); err != nil {
			return fmt.Errorf("model: upload %s: %w", p.Name, err)
		}
		return nil
	}
	return u.draw(p.Value, p)
}

// layerTensor is the host copy of a layer's tensor by short name: float32
// values, or a projection stored in 4 bits.
func layerTensor(l *Layer, short string) ([]float32, *quant.NF4) {
	switch short {
	case "input_layernorm":
		return l.AttnNorm, nil
	case "post_attention_layernorm":
		return l.MLPNorm, nil
	}
	if v := l.Linear(short); v != nil && *v != nil {
		return *v, nil
	}
	return nil, l.Quantized[short]
}

// draw fills a random model's tensor on the backend: RMSNorm weights 1, every
// other tensor from its generator (RandomWeights' values).
func (u *uploader) draw(dst ops.Buf, p *Param) error {
	n := p.size()
	if isNorm(p.Name) {
		ones := make([]float32, n)
		for i := range ones {
			ones[i] = 1
		}
		return u.m.be.Upload(dst, ones)
	}
	u.m.be.FillNormal(dst, n, randomTensorKey(u.w.random.seed, p.Name), randomInitStd)
	return nil
}

func isNorm(name string) bool {
	return strings.HasSuffix(name, "layernorm.weight") || name == "model.norm.weight"
}

// quantize codes a projection's values (host, or drawn when nil) into its
// 4-bit form on the backend; with double quantization the absmaxes come back
// to the host to be quantized there (quant.DoubleQuantize: its offset is a
// mean over the whole tensor), a few MB per weight.
func (u *uploader) quantize(p *Param, host []float32) error {
	be, q, n := u.m.be, p.NF4, p.size()
	if u.stage == nil {
		var err error
		maxN := u.m.deq.Len()
		if u.stage, err = be.Alloc(ops.F32, maxN); err != nil {
			return fmt.Errorf("model: quantizing %s: %w", p.Name, err)
		}
		if u.stageAbs, err = be.Alloc(ops.F32, (maxN+q.BlockSize-1)/q.BlockSize); err != nil {
			return fmt.Errorf("model: quantizing %s: %w", p.Name, err)
		}
	}
	x := u.stage.Slice(0, n)
	if host == nil {
		if err := u.draw(x, p); err != nil {
			return err
		}
	} else {
		for i, v := range host {
			if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) {
				return fmt.Errorf("model: %s holds %v at weight %d: NF4 needs finite weights", p.Name, v, i)
			}
		}
		if err := be.Upload(x, host); err != nil {
			return fmt.Errorf("model: upload %s: %w", p.Name, err)
		}
	}
	blocks := q.Blocks()
	if q.Absmax != nil {
		be.QuantizeNF4(q.Packed, q.Absmax, x, n, q.BlockSize)
		return nil
	}
	abs := u.stageAbs.Slice(0, blocks)
	be.QuantizeNF4(q.Packed, abs, x, n, q.BlockSize)
	a := make([]float32, blocks)
	if err := be.Download(a, abs); err != nil {
		return fmt.Errorf("model: quantizing %s: %w", p.Name, err)
	}
	return u.uploadNested(p, quant.DoubleQuantize(a))
}

// uploadStored uploads a weight read from a bitsandbytes 4-bit checkpoint as
// it is stored, once its layout is the one the model planned.
func (u *uploader) uploadStored(p *Param, s *quant.NF4) error {
	q := p.NF4
	switch {
	case s.Len() != q.N:
		return fmt.Errorf("model: %s holds %d weights, want %v", p.Name, s.Len(), p.Shape)
	case s.BlockSize != q.BlockSize || (s.Nested != nil) != (q.Absmax == nil):
		return fmt.Errorf("model: %s is stored in blocks of %d (double quantization %v), but the model was built for blocks of %d (double quantization %v): the checkpoint's weights must share one layout",
			p.Name, s.BlockSize, s.Nested != nil, q.BlockSize, q.Absmax == nil)
	case s.Nested != nil && s.Nested.BlockSize != q.NestedBlock:
		return fmt.Errorf("model: %s double-quantizes in blocks of %d absmaxes, want %d", p.Name, s.Nested.BlockSize, q.NestedBlock)
	}
	if err := u.m.be.UploadBytes(q.Packed, s.Packed); err != nil {
		return fmt.Errorf("model: upload %s: %w", p.Name, err)
	}
	if s.Nested == nil {
		if err := u.m.be.Upload(q.Absmax, s.Absmax); err != nil {
			return fmt.Errorf("model: upload %s: %w", p.Name, err)
		}
		return nil
	}
	return u.uploadNested(p, s.Nested)
}

// uploadNested uploads double-quantized absmaxes into p's NF4 weight.
func (u *uploader) uploadNested(p *Param, nq *quant.Nested) error {
	q, be := p.NF4, u.m.be
	q.Offset = nq.Offset
	for _, err := range []error{be.UploadBytes(q.Codes, nq.Codes), be.Upload(q.Absmax2, nq.Absmax), be.Upload(q.Map, nq.Map[:])} {
		if err != nil {
			return fmt.Errorf("model: upload %s: %w", p.Name, err)
		}
	}
	return nil
}

// free releases the quantization buffers.
func (u *uploader) free() {
	for _, b := range []ops.Buf{u.stage, u.stageAbs} {
		if b != nil {
			u.m.be.Free(b)
		}
	}
}
