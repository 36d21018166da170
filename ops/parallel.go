package ops

import "sync"

// minWork is the number of multiply-adds below which an op runs on the calling
// goroutine: starting goroutines costs more than tiny ops gain.
const minWork = 1 << 15

// parallelFor calls fn over [0,n) split into at most workers contiguous ranges,
// each on its own goroutine, and returns when all are done. work is the total
// cost (multiply-adds) of the loop, used to stay serial for small loops. Kernels
// give each index its own outputs and fix the summation order inside an index,
// so the result does not depend on the split.
func parallelFor(n, workers, work int, fn func(lo, hi int)) {
	if workers > n {
		workers = n
	}
	if workers <= 1 || work < minWork {
		if n > 0 {
			fn(0, n)
		}
		return
	}
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		lo, hi := n*w/workers, n*(w+1)/workers
		if lo == hi {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			fn(lo, hi)
		}()
	}
	wg.Wait()
}
