package ops

import "fmt"

// Embedding: out[N,C] = table[V,C] rows picked by ids[N]. Saves nothing (the
// backward needs only the ids).

func (c *CPU[T]) EmbeddingForward(out, ids, table Buf, N, C, V int) {
	o, id, tb := c.f(out, N*C, "EmbeddingForward", "out"), c.i(ids, N, "EmbeddingForward", "ids", false), c.f(table, V*C, "EmbeddingForward", "table")
	c.same("EmbeddingForward", out, table)
	if c.err != nil {
		return
	}
	c.check("EmbeddingForward", embeddingForward(o, id, tb, N, C, V))
	c.round(out, o)
}

func (c *CPU[T]) EmbeddingBackward(dtable, dout, ids Buf, N, C, V int) {
	dt, do, id := c.stat(dtable, V*C, "EmbeddingBackward", "dtable"), c.f(dout, N*C, "EmbeddingBackward", "dout"), c.i(ids, N, "EmbeddingBackward", "ids", false)
	if c.err != nil {
		return
	}
	c.check("EmbeddingBackward", embeddingBackward(dt, do, id, N, C, V))
}

func embeddingForward[T Float](out []T, ids []int32, table []T, N, C, V int) error {
	for n := 0; n < N; n++ {
		id := int(ids[n])
		if id < 0 || id >= V {
			return fmt.Errorf("token id %d at row %d outside vocabulary [0,%d)", id, n, V)
		}
		copy(out[n*C:(n+1)*C], table[id*C:(id+1)*C])
	}
	return nil
}

// embeddingBackward: dtable[ids[n]] += dout[n], rows in order (deterministic
// when a token repeats).
func embeddingBackward[T Float](dtable, dout []T, ids []int32, N, C, V int) error {
	for n := 0; n < N; n++ {
		id := int(ids[n])
		if id < 0 || id >= V {
			return fmt.Errorf("token id %d at row %d outside vocabulary [0,%d)", id, n, V)
		}
		d, g := dtable[id*C:(id+1)*C], dout[n*C:(n+1)*C]
		for i := range d {
			d[i] += g[i]
		}
	}
	return nil
}
