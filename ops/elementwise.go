package ops

import "math"

// Zero sets the first n elements of b to zero.
func (c *CPU[T]) Zero(b Buf, n int) {
	if cb, ok := b.(*cpuBuf[T]); ok && cb.dt == I32 {
		if ints := c.i(b, n, "Zero", "b", false); ints != nil {
			clear(ints)
		}
		return
	}
	if cb, ok := b.(*cpuBuf[T]); ok && cb.dt == U8 {
		if u := c.bytes(b, n, "Zero", "b"); u != nil {
			clear(u)
		}
		return
	}
	if x := c.f(b, n, "Zero", "b"); x != nil {
		clear(x)
	}
}

// Copy copies the first n elements of src into dst.
func (c *CPU[T]) Copy(dst, src Buf, n int) {
	if cb, ok := src.(*cpuBuf[T]); ok && cb.dt == I32 {
		d, s := c.i(dst, n, "Copy", "dst", false), c.i(src, n, "Copy", "src", false)
		if c.err == nil {
			copy(d, s)
		}
		return
	}
	if cb, ok := src.(*cpuBuf[T]); ok && cb.dt == U8 {
		d, s := c.bytes(dst, n, "Copy", "dst"), c.bytes(src, n, "Copy", "src")
		if c.err == nil {
			copy(d, s)
		}
		return
	}
	d, s := c.f(dst, n, "Copy", "dst"), c.f(src, n, "Copy", "src")
	c.same("Copy", dst, src)
	if c.err == nil {
		copy(d, s)
	}
}

// Add: out = a + b. Nothing to save; the backward of a sum passes the gradient
// to both operands unchanged.
func (c *CPU[T]) Add(out, a, b Buf, n int) {
	o, x, y := c.f(out, n, "Add", "out"), c.f(a, n, "Add", "a"), c.f(b, n, "Add", "b")
	c.same("Add", out, a, b)
	if c.err != nil {
		return
	}
	for i := range o {
		o[i] = x[i] + y[i]
	}
	c.round(out, o)
}

// Scale: x *= s.
func (c *CPU[T]) Scale(x Buf, s float32, n int) {
	v := c.f(x, n, "Scale", "x")
	if c.err != nil {
		return
	}
	st := T(s)
	for i := range v {
		v[i] *= st
	}
	c.round(x, v)
}

// Dropout: out[i] = x[i] * 1/(1-p) where dropKeep(seed, i, p), else 0. Its
// backward is itself with the same seed.
func (c *CPU[T]) Dropout(out, x Buf, n int, p float32, seed uint64) {
	o, v := c.f(out, n, "Dropout", "out"), c.f(x, n, "Dropout", "x")
	c.same("Dropout", out, x)
	if c.err != nil {
		return
	}
	defer c.round(out, o)
	if !(p >= 0 && p < 1) {
		c.fail("Dropout: p = %v, want 0 <= p < 1", p)
		return
	}
	dropout(o, v, float64(p), seed)
}

func dropout[T Float](out, x []T, p float64, seed uint64) {
	if p == 0 {
		copy(out, x)
		return
	}
	scale := T(1 / (1 - p))
	for i := range out {
		if DropoutKeep(seed, uint64(i), p) {
			out[i] = x[i] * scale
		} else {
			out[i] = 0
		}
	}
}

// DropoutKeep reports whether element i survives dropout with probability p of
// dropping, for the given seed. It is a counter-based generator (splitmix64 of
// seed and index, 24 bits compared with p) so a GPU kernel can reproduce it
// exactly and a backward or a recomputation needs no stored mask.
func DropoutKeep(seed, i uint64, p float64) bool {
	z := seed + (i+1)*0x9e3779b97f4a7c15
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9
	z = (z ^ (z >> 27)) * 0x94d049bb133111eb
	z ^= z >> 31
	u := float64(z>>40) / (1 << 24) // uniform in [0,1) on a 2^-24 grid
	return u >= p
}

// sigmoid and silu in the element type, computed through float64.
func silu[T Float](g T) T { return T(float64(g) / (1 + math.Exp(-float64(g)))) }
