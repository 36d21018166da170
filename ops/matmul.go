package ops

// Matmuls in the three layouts nn.Linear needs, BLAS-style out = alpha*op(a)·op(b)
// + beta*out (cuBLAS takes the same arguments). Forward: y = x·Wᵀ (NT).
// Backward: dx = dy·W (NN), dW += dyᵀ·x (TN). Each output row is one parallel
// index and every element sums over k in ascending order, so results do not
// depend on the number of goroutines.

func (c *CPU[T]) MatmulNT(out, a, b Buf, M, N, K int, alpha, beta float32) {
	o, av, bv := c.f(out, M*N, "MatmulNT", "out"), c.f(a, M*K, "MatmulNT", "a"), c.f(b, N*K, "MatmulNT", "b")
	c.same("MatmulNT", a, b)
	c.matmulOut("MatmulNT", out, a)
	if c.err != nil {
		return
	}
	matmulNT(o, av, bv, M, N, K, T(alpha), T(beta), c.workers)
	c.round(out, o)
}

func (c *CPU[T]) MatmulNN(out, a, b Buf, M, N, K int, alpha, beta float32) {
	o, av, bv := c.f(out, M*N, "MatmulNN", "out"), c.f(a, M*K, "MatmulNN", "a"), c.f(b, K*N, "MatmulNN", "b")
	c.same("MatmulNN", a, b)
	c.matmulOut("MatmulNN", out, a)
	if c.err != nil {
		return
	}
	matmulNN(o, av, bv, M, N, K, T(alpha), T(beta), c.workers)
	c.round(out, o)
}

func (c *CPU[T]) MatmulTN(out, a, b Buf, M, N, K int, alpha, beta float32) {
	o, av, bv := c.f(out, M*N, "MatmulTN", "out"), c.f(a, K*M, "MatmulTN", "a"), c.f(b, K*N, "MatmulTN", "b")
	c.same("MatmulTN", a, b)
	c.matmulOut("MatmulTN", out, a)
	if c.err != nil {
		return
	}
	matmulTN(o, av, bv, M, N, K, T(alpha), T(beta), c.workers)
	c.round(out, o)
}

// store writes alpha*s + beta*o, ignoring o when beta is 0.
func store[T Float](o *T, s, alpha, beta T) {
	if beta == 0 {
		*o = T(alpha * s)
	} else {
		*o = T(alpha*s) + T(beta**o)
	}
}

// matmulNT: out[M,N] = alpha * a[M,K]·b[N,K]ᵀ + beta*out. Both operands are read
// along contiguous rows; a 2x4 block of out shares each load (rows of a are
// paired, so the parallel index is a pair of rows).
func matmulNT[T Float](out, a, b []T, M, N, K int, alpha, beta T, workers int) {
	parallelFor((M+1)/2, workers, M*N*K, func(lo, hi int) {
		for i := 2 * lo; i < min(2*hi, M); i += 2 {
			if i+1 == M {
				matmulNTRow(out[i*N:(i+1)*N], a[i*K:(i+1)*K], b, N, K, alpha, beta)
				continue
			}
			a0, a1 := a[i*K:(i+1)*K], a[(i+1)*K:(i+2)*K]
			o0, o1 := out[i*N:(i+1)*N], out[(i+1)*N:(i+2)*N]
			j := 0
			for ; j+4 <= N; j += 4 {
				b0, b1 := b[j*K:(j+1)*K], b[(j+1)*K:(j+2)*K]
				b2, b3 := b[(j+2)*K:(j+3)*K], b[(j+3)*K:(j+4)*K]
				var s00, s01, s02, s03, s10, s11, s12, s13 T
				for k, x := range a0 {
					y := a1[k]
					c0, c1, c2, c3 := b0[k], b1[k], b2[k], b3[k]
					s00 += T(x * c0)
					s01 += T(x * c1)
					s02 += T(x * c2)
					s03 += T(x * c3)
					s10 += T(y * c0)
					s11 += T(y * c1)
					s12 += T(y * c2)
					s13 += T(y * c3)
				}
				store(&o0[j], s00, alpha, beta)
				store(&o0[j+1], s01, alpha, beta)
				store(&o0[j+2], s02, alpha, beta)
				store(&o0[j+3], s03, alpha, beta)
				store(&o1[j], s10, alpha, beta)
				store(&o1[j+1], s11, alpha, beta)
				store(&o1[j+2], s12, alpha, beta)
				store(&o1[j+3], s13, alpha, beta)
			}
			for ; j < N; j++ {
				b0 := b[j*K : (j+1)*K]
				var s0, s1 T
				for k, x := range a0 {
					s0 += T(x * b0[k])
					s1 += T(a1[k] * b0[k])
				}
				store(&o0[j], s0, alpha, beta)
				store(&o1[j], s1, alpha, beta)
			}
		}
	})
}

// matmulNTRow is one row of matmulNT (the odd last row), with the same
// summation order.
func matmulNTRow[T Float](or, ar, b []T, N, K int, alpha, beta T) {
	for j := 0; j < N; j++ {
		br := b[j*K : (j+1)*K]
		var s T
		for k, x := range ar {
			s += T(x * br[k])
		}
		store(&or[j], s, alpha, beta)
	}
}

// matmulNN: out[M,N] = alpha * a[M,K]·b[K,N] + beta*out, as a sum of scaled rows
// of b accumulated in a per-goroutine row buffer, four rows of b per pass (the
// additions stay in ascending k order, so the result is that of one at a time).
func matmulNN[T Float](out, a, b []T, M, N, K int, alpha, beta T, workers int) {
	parallelFor(M, workers, M*N*K, func(lo, hi int) {
		acc := make([]T, N)
		for i := lo; i < hi; i++ {
			clear(acc)
			ar := a[i*K : (i+1)*K]
			k := 0
			for ; k+4 <= K; k += 4 {
				x0, x1, x2, x3 := ar[k], ar[k+1], ar[k+2], ar[k+3]
				b0, b1 := b[k*N:(k+1)*N], b[(k+1)*N:(k+2)*N]
				b2, b3 := b[(k+2)*N:(k+3)*N], b[(k+3)*N:(k+4)*N]
				for j := range acc {
					acc[j] = acc[j] + T(x0*b0[j]) + T(x1*b1[j]) + T(x2*b2[j]) + T(x3*b3[j])
				}
			}
			for ; k < K; k++ {
				axpy(acc, b[k*N:(k+1)*N], ar[k])
			}
			or := out[i*N : (i+1)*N]
			for j := range or {
				store(&or[j], acc[j], alpha, beta)
			}
		}
	})
}

// matmulTN: out[M,N] = alpha * a[K,M]ᵀ·b[K,N] + beta*out. Row i of out sums the
// rows of b scaled by column i of a; four rows of out share each row of b.
func matmulTN[T Float](out, a, b []T, M, N, K int, alpha, beta T, workers int) {
	parallelFor((M+3)/4, workers, M*N*K, func(lo, hi int) {
		acc := make([]T, 4*N)
		for blk := lo; blk < hi; blk++ {
			i0 := blk * 4
			rows := min(4, M-i0)
			clear(acc)
			a0, a1, a2, a3 := acc[0:N], acc[N:2*N], acc[2*N:3*N], acc[3*N:4*N]
			for k := 0; k < K; k++ {
				br := b[k*N : (k+1)*N]
				ak := a[k*M+i0 : k*M+i0+rows]
				if rows == 4 {
					x0, x1, x2, x3 := ak[0], ak[1], ak[2], ak[3]
					for j, y := range br {
						a0[j] += T(x0 * y)
						a1[j] += T(x1 * y)
						a2[j] += T(x2 * y)
						a3[j] += T(x3 * y)
					}
					continue
				}
				for r, x := range ak {
					axpy(acc[r*N:(r+1)*N], br, x)
				}
			}
			for r := 0; r < rows; r++ {
				or := out[(i0+r)*N : (i0+r+1)*N]
				ar := acc[r*N : (r+1)*N]
				for j := range or {
					store(&or[j], ar[j], alpha, beta)
				}
			}
		}
	})
}

// axpy: y += a*x.
func axpy[T Float](y, x []T, a T) {
	x = x[:len(y)]
	for j, v := range x {
		y[j] += T(a * v)
	}
}
