package kernels

// lru is a bounded map whose Put evicts the least recently used entry (Get
// and Put use one) once it holds max: cuDNN's planned graphs, one per shape,
// which an evaluation over batches of many lengths would otherwise pile up.
type lru[K comparable, V any] struct {
	max   int
	items map[K]V
	used  map[K]uint64
	tick  uint64
}

func newLRU[K comparable, V any](max int) *lru[K, V] {
	return &lru[K, V]{max: max, items: map[K]V{}, used: map[K]uint64{}}
}

// Get returns the entry of k and marks it used.
func (c *lru[K, V]) Get(k K) (V, bool) {
	v, ok := c.items[k]
	if ok {
		c.tick++
		c.used[k] = c.tick
	}
	return v, ok
}

// Put adds v under k and returns the entry it evicted to stay within max, if
// any (the caller frees it).
func (c *lru[K, V]) Put(k K, v V) (evicted V, ok bool) {
	if _, there := c.items[k]; !there && len(c.items) >= c.max {
		var oldest K
		first := true
		for key, t := range c.used {
			if first || t < c.used[oldest] {
				oldest, first = key, false
			}
		}
		evicted, ok = c.items[oldest], true
		delete(c.items, oldest)
		delete(c.used, oldest)
	}
	c.items[k] = v
	c.tick++
	c.used[k] = c.tick
	return evicted, ok
}

// All returns every entry (to free them all).
func (c *lru[K, V]) All() []V {
	out := make([]V, 0, len(c.items))
	for _, v := range c.items {
		out = append(out, v)
	}
	return out
}
