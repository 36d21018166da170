package ops

import "math"

// SwiGLU, the Llama MLP's gate: out = silu(gate) * up elementwise, silu(g) =
// g * sigmoid(g). Saves nothing new: backward reads gate and up.

func (c *CPU[T]) SwiGLUForward(out, gate, up Buf, n int) {
	o, g, u := c.f(out, n, "SwiGLUForward", "out"), c.f(gate, n, "SwiGLUForward", "gate"), c.f(up, n, "SwiGLUForward", "up")
	c.same("SwiGLUForward", out, gate, up)
	if c.err != nil {
		return
	}
	for i := range o {
		o[i] = silu(g[i]) * u[i]
	}
	c.round(out, o)
}

// SwiGLUBackward: dgate += dout*up*silu'(gate), dup += dout*silu(gate), with
// silu'(g) = s*(1 + g*(1-s)), s = sigmoid(g).
func (c *CPU[T]) SwiGLUBackward(dgate, dup, dout, gate, up Buf, n int) {
	dg, du := c.f(dgate, n, "SwiGLUBackward", "dgate"), c.f(dup, n, "SwiGLUBackward", "dup")
	do, g, u := c.f(dout, n, "SwiGLUBackward", "dout"), c.f(gate, n, "SwiGLUBackward", "gate"), c.f(up, n, "SwiGLUBackward", "up")
	c.same("SwiGLUBackward", dgate, dup, dout, gate, up)
	if c.err != nil {
		return
	}
	defer c.round(dup, du)
	defer c.round(dgate, dg)
	for i := range do {
		gv := float64(g[i])
		s := 1 / (1 + math.Exp(-gv))
		dg[i] += T(float64(do[i]) * float64(u[i]) * s * (1 + gv*(1-s)))
		du[i] += do[i] * silu(g[i])
	}
}
