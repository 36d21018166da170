package ops

import "math"

// RMSNorm over rows of x[N,C]: out = w * (x * rstd), rstd = 1/sqrt(mean(x^2)+eps).
// As transformers' LlamaRMSNorm: the normalisation is rounded to the compute
// type before the weight multiplies it. The mean of squares is accumulated in
// float64. Saves rstd[N].

func (c *CPU[T]) RMSNormForward(out, rstd, x, w Buf, N, C int, eps float32) {
	o, r, xv, wv := c.f(out, N*C, "RMSNormForward", "out"), c.stat(rstd, N, "RMSNormForward", "rstd"), c.f(x, N*C, "RMSNormForward", "x"), c.f(w, C, "RMSNormForward", "w")
	c.same("RMSNormForward", out, x, w)
	if c.err != nil {
		return
	}
	rmsnormForward(o, r, xv, wv, N, C, float64(eps))
	c.round(out, o)
}

func (c *CPU[T]) RMSNormBackward(dx, dw, dout, x, w, rstd Buf, N, C int) {
	dxv, dwv := c.f(dx, N*C, "RMSNormBackward", "dx"), c.statOpt(dw, C, "RMSNormBackward", "dw")
	do, xv, wv, r := c.f(dout, N*C, "RMSNormBackward", "dout"), c.f(x, N*C, "RMSNormBackward", "x"), c.f(w, C, "RMSNormBackward", "w"), c.stat(rstd, N, "RMSNormBackward", "rstd")
	c.same("RMSNormBackward", dx, dout, x, w)
	if c.err != nil {
		return
	}
	rmsnormBackward(dxv, dwv, do, xv, wv, r, N, C)
	c.round(dx, dxv)
}

func rmsnormForward[T Float](out, rstd, x, w []T, N, C int, eps float64) {
	for n := 0; n < N; n++ {
		xr, or := x[n*C:(n+1)*C], out[n*C:(n+1)*C]
		var ss float64
		for _, v := range xr {
			ss += float64(v) * float64(v)
		}
		r := T(1 / math.Sqrt(ss/float64(C)+eps))
		rstd[n] = r
		for i, v := range xr {
			or[i] = w[i] * T(v*r)
		}
	}
}

// rmsnormBackward. With g = dout*w and y = x*rstd:
// dx = rstd * (g - y * mean(g*y)), dw += dout * y.
func rmsnormBackward[T Float](dx, dw, dout, x, w, rstd []T, N, C int) {
	for n := 0; n < N; n++ {
		xr, gr, dxr := x[n*C:(n+1)*C], dout[n*C:(n+1)*C], dx[n*C:(n+1)*C]
		r := float64(rstd[n])
		var dot float64 // sum of g*x
		for i, v := range xr {
			dot += float64(gr[i]) * float64(w[i]) * float64(v)
		}
		k := dot * r * r / float64(C)
		for i, v := range xr {
			dxr[i] += T(r * (float64(gr[i])*float64(w[i]) - float64(v)*k))
		}
		if dw != nil {
			for i, v := range xr {
				dw[i] += gr[i] * T(v*rstd[n])
			}
		}
	}
}
