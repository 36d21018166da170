package ops

import "math"

// Cast converts n elements between F32 and BF16 or F16: on the CPU all hold
// the backend's float type, so it copies, rounding when dst is 2 bytes wide.
func (c *CPU[T]) Cast(dst, src Buf, n int) {
	d, s := c.f(dst, n, "Cast", "dst"), c.f(src, n, "Cast", "src")
	if c.err != nil {
		return
	}
	copy(d, s)
	c.round(dst, d)
}

// SumSquares: out[0] += sum of x^2, accumulated in float64.
func (c *CPU[T]) SumSquares(out, x Buf, n int) {
	o, v := c.stat(out, 1, "SumSquares", "out"), c.f(x, n, "SumSquares", "x")
	if c.err != nil {
		return
	}
	var s float64
	for _, g := range v {
		s += float64(g) * float64(g)
	}
	o[0] += T(s)
}

// AdamW is optim.AdamW's update of one tensor, with the step's constants.
func (c *CPU[T]) AdamW(value, grad, m, v, work Buf, n int, s AdamWStep) {
	const op = "AdamW"
	pv, g, mv, vv := c.stat(value, n, op, "value"), c.stat(grad, n, op, "grad"), c.stat(m, n, op, "m"), c.stat(v, n, op, "v")
	var wv []T
	if work != nil {
		wv = c.f(work, n, op, "work")
	}
	if c.err != nil {
		return
	}
	b1, b2 := T(s.B1), T(s.B2)
	for i := range pv {
		gi := g[i] * T(s.GradScale)
		mi := b1*mv[i] + (1-b1)*gi
		vi := b2*vv[i] + (1-b2)*gi*gi
		mv[i], vv[i] = mi, vi
		denom := math.Sqrt(float64(vi))/s.SqrtBC2 + s.Eps
		pv[i] = pv[i]*T(s.Decay) - T(s.StepSize*float64(mi)/denom)
	}
	if wv != nil {
		copy(wv, pv)
		c.round(work, wv)
	}
}
