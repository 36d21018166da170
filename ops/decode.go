package ops

import "math"

// Attention over a key/value cache, for generation. The cache holds the keys
// (after RoPE) and values of every token seen so far, so each new token costs
// one query against the cache instead of a rerun of the whole sequence. The
// arithmetic is attentionForward's, in the same order, so decoding a sequence
// token by token gives the full forward's outputs (bitwise on the CPU when the
// cached k and v are the same).

func (c *CPU[T]) AttentionDecode(out, q, kCache, vCache Buf, B, Tq, Tk, S, H, KVH, D int) {
	const op = "AttentionDecode"
	if !c.attnDims(op, H, KVH) {
		return
	}
	if B <= 0 || D <= 0 || Tq < 1 || Tq > Tk || Tk > S {
		c.fail("%s: need B, D > 0 and 1 <= Tq <= Tk <= S (have B %d, D %d, Tq %d, Tk %d, S %d)", op, B, D, Tq, Tk, S)
		return
	}
	o, qv := c.f(out, B*Tq*H*D, op, "out"), c.f(q, B*Tq*H*D, op, "q")
	kv, vv := c.f(kCache, B*S*KVH*D, op, "kCache"), c.f(vCache, B*S*KVH*D, op, "vCache")
	c.same(op, out, q, kCache, vCache)
	if c.err != nil {
		return
	}
	attentionDecode(o, qv, kv, vv, B, Tq, Tk, S, H, KVH, D, c.workers)
	c.round(out, o)
}

// attentionDecode: for each (b, h, i) with t = Tk-Tq+i, scores_s = q_i·k_s/sqrt(D)
// over s <= t, out_i = softmax(scores)·v. Parallel over (b, h).
func attentionDecode[T Float](out, q, kc, vc []T, B, Tq, Tk, S, H, KVH, D, workers int) {
	scale := 1 / math.Sqrt(float64(D))
	rep := H / KVH
	QW, KW := H*D, KVH*D
	parallelFor(B*H, workers, B*H*Tq*Tk*D, func(lo, hi int) {
		scores := make([]float64, Tk)
		acc := make([]float64, D)
		for bh := lo; bh < hi; bh++ {
			b, h := bh/H, bh%H
			kh := h / rep
			for i := 0; i < Tq; i++ {
				t := Tk - Tq + i
				qo := (b*Tq+i)*QW + h*D
				qt := q[qo : qo+D]
				m := math.Inf(-1)
				for s := 0; s <= t; s++ {
					ko := (b*S+s)*KW + kh*D
					ks := kc[ko : ko+D]
					var dot T
					for j, x := range qt {
						dot += T(x * ks[j])
					}
					sc := float64(dot) * scale
					scores[s] = sc
					m = max(m, sc)
				}
				var sum float64
				clear(acc)
				for s := 0; s <= t; s++ {
					p := math.Exp(scores[s] - m)
					sum += p
					vo := (b*S+s)*KW + kh*D
					for j, x := range vc[vo : vo+D] {
						acc[j] += p * float64(x)
					}
				}
				ot := out[qo : qo+D]
				for j := range ot {
					ot[j] = T(acc[j] / sum)
				}
			}
		}
	})
}
