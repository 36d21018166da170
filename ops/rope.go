package ops

import "fmt"

// Rotary position embedding with Hugging Face's rotate_half pairing: element i
// of a head pairs with element i+D/2 (not 2i with 2i+1 as in Meta's original
// checkpoints). x[N, H*D], tables cos/sin[P, D/2] indexed by pos[N]. The tables
// are built on the host once (see model's rope code) so every backend uses the
// same float32 values transformers uses.

func (c *CPU[T]) RopeForward(out, x, cos, sin, pos Buf, N, H, D, P int) {
	c.rope(out, x, cos, sin, pos, N, H, D, P, false, "RopeForward")
}

func (c *CPU[T]) RopeBackward(dx, dout, cos, sin, pos Buf, N, H, D, P int) {
	c.rope(dx, dout, cos, sin, pos, N, H, D, P, true, "RopeBackward")
}

func (c *CPU[T]) rope(out, x, cos, sin, pos Buf, N, H, D, P int, inverse bool, op string) {
	if D%2 != 0 {
		c.fail("%s: head dim %d is odd", op, D)
		return
	}
	o, xv := c.f(out, N*H*D, op, "out"), c.f(x, N*H*D, op, "x")
	cv, sv, pv := c.stat(cos, P*D/2, op, "cos"), c.stat(sin, P*D/2, op, "sin"), c.i(pos, N, op, "pos", false)
	c.same(op, out, x)
	if c.err != nil {
		return
	}
	c.check(op, rope(o, xv, cv, sv, pv, N, H, D, P, inverse))
	c.round(out, o)
}

// rope rotates every head of every row: forward
//
//	out[i]     = x[i]*cos[i]     - x[i+D/2]*sin[i]
//	out[i+D/2] = x[i+D/2]*cos[i] + x[i]*sin[i]
//
// (q*cos + rotate_half(q)*sin, rounded as transformers does), and the inverse
// rotation, its backward, when inverse is set. out may be x.
func rope[T Float](out, x, cos, sin []T, pos []int32, N, H, D, P int, inverse bool) error {
	half := D / 2
	for n := 0; n < N; n++ {
		p := int(pos[n])
		if p < 0 || p >= P {
			return fmt.Errorf("position %d at row %d outside the rope table [0,%d)", p, n, P)
		}
		cr, sr := cos[p*half:(p+1)*half], sin[p*half:(p+1)*half]
		for h := 0; h < H; h++ {
			base := (n*H + h) * D
			xr, or := x[base:base+D], out[base:base+D]
			for i := 0; i < half; i++ {
				x1, x2 := xr[i], xr[i+half]
				cs, sn := cr[i], sr[i]
				if inverse {
					or[i] = T(x1*cs) + T(x2*sn)
					or[i+half] = T(x2*cs) - T(x1*sn)
				} else {
					or[i] = T(x1*cs) - T(x2*sn)
					or[i+half] = T(x2*cs) + T(x1*sn)
				}
			}
		}
	}
	return nil
}
