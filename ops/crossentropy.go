package ops

import (
	"fmt"
	"math"
)

// IgnoreIndex is the label that contributes no loss, as in PyTorch.
const IgnoreIndex = -100

// Cross-entropy over rows of logits[N,V] against targets[N] (already shifted by
// the caller: row t holds the label of token t+1). Sums and exponentials are
// accumulated in float64. Saves nothing new: backward recomputes the softmax.

func (c *CPU[T]) CrossEntropyForward(losses, logits, targets Buf, N, V int) {
	l, lg, tg := c.stat(losses, N, "CrossEntropyForward", "losses"), c.f(logits, N*V, "CrossEntropyForward", "logits"), c.i(targets, N, "CrossEntropyForward", "targets", false)
	if c.err != nil {
		return
	}
	if err := checkTargets(tg, V); err != nil {
		c.fail("CrossEntropyForward: %v", err)
		return
	}
	parallelFor(N, c.workers, N*V, func(lo, hi int) {
		for n := lo; n < hi; n++ {
			if tg[n] == IgnoreIndex {
				l[n] = 0
				continue
			}
			row := lg[n*V : (n+1)*V]
			l[n] = T(logSumExp(row) - float64(row[tg[n]]))
		}
	})
}

func (c *CPU[T]) CrossEntropyBackward(dlogits, logits, targets Buf, N, V int, scale float32) {
	d, lg, tg := c.f(dlogits, N*V, "CrossEntropyBackward", "dlogits"), c.f(logits, N*V, "CrossEntropyBackward", "logits"), c.i(targets, N, "CrossEntropyBackward", "targets", false)
	c.same("CrossEntropyBackward", dlogits, logits)
	if c.err != nil {
		return
	}
	if err := checkTargets(tg, V); err != nil {
		c.fail("CrossEntropyBackward: %v", err)
		return
	}
	defer c.round(dlogits, d)
	s := float64(scale)
	parallelFor(N, c.workers, N*V, func(lo, hi int) {
		for n := lo; n < hi; n++ {
			row, drow := lg[n*V:(n+1)*V], d[n*V:(n+1)*V]
			y := int(tg[n])
			if y == IgnoreIndex {
				clear(drow)
				continue
			}
			lse := logSumExp(row) // read the whole row before writing: drow may be row
			for j, v := range row {
				p := math.Exp(float64(v) - lse)
				if j == y {
					p -= 1
				}
				drow[j] = T(s * p)
			}
		}
	})
}

func logSumExp[T Float](row []T) float64 {
	m := math.Inf(-1)
	for _, v := range row {
		m = max(m, float64(v))
	}
	var sum float64
	for _, v := range row {
		sum += math.Exp(float64(v) - m)
	}
	return m + math.Log(sum)
}

func checkTargets(targets []int32, V int) error {
	for n, y := range targets {
		if y != IgnoreIndex && (y < 0 || int(y) >= V) {
			return fmt.Errorf("target %d at row %d outside vocabulary [0,%d) and not %d", y, n, V, IgnoreIndex)
		}
	}
	return nil
}
