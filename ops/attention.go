package ops

import "math"

// Causal grouped-query attention, flash-attention style: the forward saves only
// the log-sum-exp of each softmax row, lse[B,H,T], and the backward recomputes
// the probabilities from q, k and lse. This keeps saved memory at O(T) per head
// instead of O(T^2), the layout a GPU kernel uses too.
//
// Layouts: q, out [B*T, H*D]; k, v [B*T, KVH*D] (token-major, as the
// projections produce them); seg [B*T] optional. Query head h reads key/value
// head h/(H/KVH), as transformers' repeat_kv. Token t of a row sees tokens
// s <= t of the same row and, with seg, the same segment.

func (c *CPU[T]) AttentionForward(out, lse, q, k, v, seg Buf, B, T_, H, KVH, D int) {
	const op = "AttentionForward"
	if !c.attnDims(op, H, KVH) {
		return
	}
	N := B * T_
	o, l := c.f(out, N*H*D, op, "out"), c.stat(lse, B*H*T_, op, "lse")
	qv, kv, vv := c.f(q, N*H*D, op, "q"), c.f(k, N*KVH*D, op, "k"), c.f(v, N*KVH*D, op, "v")
	sg := c.i(seg, N, op, "seg", true)
	c.same(op, out, q, k, v)
	if c.err != nil {
		return
	}
	attentionForward(o, l, qv, kv, vv, sg, B, T_, H, KVH, D, c.workers)
	c.round(out, o)
}

// AttentionBackward overwrites dq, dk and dv; out is checked but not read
// (delta is recomputed in float64 from the probabilities).
func (c *CPU[T]) AttentionBackward(dq, dk, dv, dout, q, k, v, out, lse, seg Buf, B, T_, H, KVH, D int) {
	const op = "AttentionBackward"
	if !c.attnDims(op, H, KVH) {
		return
	}
	N := B * T_
	dqv, dkv, dvv := c.f(dq, N*H*D, op, "dq"), c.f(dk, N*KVH*D, op, "dk"), c.f(dv, N*KVH*D, op, "dv")
	do, l := c.f(dout, N*H*D, op, "dout"), c.stat(lse, B*H*T_, op, "lse")
	qv, kv, vv := c.f(q, N*H*D, op, "q"), c.f(k, N*KVH*D, op, "k"), c.f(v, N*KVH*D, op, "v")
	c.f(out, N*H*D, op, "out")
	sg := c.i(seg, N, op, "seg", true)
	c.same(op, dq, dk, dv, dout, q, k, v, out)
	if c.err != nil {
		return
	}
	clear(dqv)
	clear(dkv)
	clear(dvv)
	attentionBackward(dqv, dkv, dvv, do, qv, kv, vv, l, sg, B, T_, H, KVH, D, c.workers)
	c.round(dq, dqv)
	c.round(dk, dkv)
	c.round(dv, dvv)
}

func (c *CPU[T]) attnDims(op string, H, KVH int) bool {
	if H <= 0 || KVH <= 0 || H%KVH != 0 {
		c.fail("%s: %d heads not a multiple of %d key/value heads", op, H, KVH)
		return false
	}
	return true
}

// visible reports whether token s may be attended from token t of one row.
func visible(seg []int32, row, s, t int) bool {
	return s <= t && (seg == nil || seg[row+s] == seg[row+t])
}

// attentionForward: for each (b,h,t), scores_s = q_t·k_s/sqrt(D) over visible s,
// p = softmax(scores), out_t = sum_s p_s v_s, lse = log sum_s exp(scores_s).
// Parallel over (b,h); each writes only its own out and lse entries.
func attentionForward[T Float](out, lse, q, k, v []T, seg []int32, B, T_, H, KVH, D, workers int) {
	scale := 1 / math.Sqrt(float64(D))
	rep := H / KVH
	QW, KW := H*D, KVH*D
	parallelFor(B*H, workers, B*H*T_*T_*D, func(lo, hi int) {
		scores := make([]float64, T_)
		acc := make([]float64, D)
		for bh := lo; bh < hi; bh++ {
			b, h := bh/H, bh%H
			kh := h / rep
			row := b * T_
			for t := 0; t < T_; t++ {
				qt := q[(row+t)*QW+h*D : (row+t)*QW+h*D+D]
				m := math.Inf(-1)
				for s := 0; s <= t; s++ {
					if !visible(seg, row, s, t) {
						continue
					}
					ks := k[(row+s)*KW+kh*D : (row+s)*KW+kh*D+D]
					var dot T
					for i, x := range qt {
						dot += T(x * ks[i])
					}
					sc := float64(dot) * scale
					scores[s] = sc
					m = max(m, sc)
				}
				var sum float64
				clear(acc)
				for s := 0; s <= t; s++ {
					if !visible(seg, row, s, t) {
						continue
					}
					p := math.Exp(scores[s] - m)
					sum += p
					vs := v[(row+s)*KW+kh*D : (row+s)*KW+kh*D+D]
					for i, x := range vs {
						acc[i] += p * float64(x)
					}
				}
				ot := out[(row+t)*QW+h*D : (row+t)*QW+h*D+D]
				for i := range ot {
					ot[i] = T(acc[i] / sum)
				}
				lse[(b*H+h)*T_+t] = T(m + math.Log(sum))
			}
		}
	})
}

// attentionBackward, with p_s = exp(score_s - lse) recomputed:
//
//	dv_s += p_s dout_t
//	dp_s  = dout_t·v_s,  dscore_s = p_s (dp_s - sum_r p_r dp_r)
//	dq_t += scale sum_s dscore_s k_s,  dk_s += scale dscore_s q_t
//
// Parallel over (b, kv head): one index owns dk, dv of its kv head and dq of
// the query heads that share it, so no two goroutines write the same element
// and the summation order is fixed.
func attentionBackward[T Float](dq, dk, dv, dout, q, k, v, lse []T, seg []int32, B, T_, H, KVH, D, workers int) {
	scale := 1 / math.Sqrt(float64(D))
	rep := H / KVH
	QW, KW := H*D, KVH*D
	parallelFor(B*KVH, workers, 2*B*H*T_*T_*D, func(lo, hi int) {
		p := make([]float64, T_)
		dp := make([]float64, T_)
		dqt := make([]float64, D)
		for bk := lo; bk < hi; bk++ {
			b, kh := bk/KVH, bk%KVH
			row := b * T_
			for h := kh * rep; h < (kh+1)*rep; h++ {
				for t := 0; t < T_; t++ {
					qo := (row+t)*QW + h*D
					qt, dot_ := q[qo:qo+D], dout[qo:qo+D]
					l := float64(lse[(b*H+h)*T_+t])
					var sum float64
					for s := 0; s <= t; s++ {
						if !visible(seg, row, s, t) {
							continue
						}
						ko := (row+s)*KW + kh*D
						ks, vs := k[ko:ko+D], v[ko:ko+D]
						var sc, g T
						for i, x := range qt {
							sc += T(x * ks[i])
						}
						for i, x := range dot_ {
							g += T(x * vs[i])
						}
						p[s] = math.Exp(float64(sc)*scale - l)
						dp[s] = float64(g)
						sum += p[s] * dp[s]
					}
					clear(dqt)
					for s := 0; s <= t; s++ {
						if !visible(seg, row, s, t) {
							continue
						}
						ko := (row+s)*KW + kh*D
						ks, dks, dvs := k[ko:ko+D], dk[ko:ko+D], dv[ko:ko+D]
						ds := p[s] * (dp[s] - sum) * scale
						for i := range dqt {
							dqt[i] += ds * float64(ks[i])
							dks[i] += T(ds * float64(qt[i]))
							dvs[i] += T(p[s] * float64(dot_[i]))
						}
					}
					dqo := dq[qo : qo+D]
					for i := range dqo {
						dqo[i] += T(dqt[i])
					}
				}
			}
		}
	})
}
