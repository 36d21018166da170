package data

import "fmt"

// Rows is a micro-batch laid out for the model: B rows of T tokens, row-major,
// with per-token positions and segment ids so that packed examples restart their
// positions at 0 and attend only within themselves. Padding has label -100 and its
// own segment id (-1), so it is never attended to from a real token nor scored.
//
// Rows laid out without reading (Packer.FillFrom for another replica's
// micro-batch) hold no tokens, only B, T and the count of scored labels.
type Rows struct {
	B, T      int
	IDs       []int32
	Labels    []int32
	Positions []int32
	Segments  []int32
	scored    int // ScoredLabels of rows laid out without their tokens
}

// ScoredLabels counts the labels the model will score in r: position t predicts
// Labels[t+1] when t+1 is in the same row and segment and the label is not -100.
// The trainer divides the loss by the total of this over a whole step.
func (r *Rows) ScoredLabels() int {
	if r.Labels == nil {
		return r.scored
	}
	n := 0
	for b := 0; b < r.B; b++ {
		for t := 1; t < r.T; t++ {
			i := b*r.T + t
			if r.Labels[i] != IgnoreIndex && r.Segments[i] == r.Segments[i-1] {
				n++
			}
		}
	}
	return n
}

// Packer fills rows of T tokens from examples in order. With pack, several short
// examples share a row (each its own segment); without, each example gets a row of
// its own, padded. An example longer than T is truncated to T and counted, and so
// are the scored labels it loses: when a step has nothing left to score, they
// tell whether truncation is why (a completion after a long prompt).
type Packer struct {
	T         int
	Pack      bool
	PadID     int
	Truncated int // examples cut to fit T so far
	CutLabels int // labels other than -100 that those cuts dropped
}

// Fill lays out up to B rows from examples, starting at examples[0], and returns the
// rows and how many examples it consumed (at least one when B > 0 and there are any).
func (p *Packer) Fill(examples []TokenExample, B int) (*Rows, int, error) {
	order := make([]int, len(examples))
	for i := range order {
		order[i] = i
	}
	return p.FillFrom(Slice(examples), order, B, true)
}

// FillFrom is Fill over the examples of src in order. Without read it lays
// the rows out from src's Stats alone and returns rows without tokens that
// only count their scored labels (it reads an example only when it is cut
// to T, to count what the cut drops): every rank lays out every micro-batch
// of a step, to know the step's scored labels, but reads only its own.
func (p *Packer) FillFrom(src Examples, order []int, B int, read bool) (*Rows, int, error) {
	if p.T < 2 || B < 1 {
		return nil, 0, fmt.Errorf("data: cannot lay out %d rows of %d tokens", B, p.T)
	}
	r := &Rows{B: B, T: p.T}
	if read {
		r.IDs, r.Labels = make([]int32, B*p.T), make([]int32, B*p.T)
		r.Positions, r.Segments = make([]int32, B*p.T), make([]int32, B*p.T)
		for i := range r.IDs {
			r.IDs[i], r.Labels[i], r.Segments[i] = int32(p.PadID), IgnoreIndex, -1
		}
	}
	used := 0
	for b := 0; b < B && used < len(order); b++ {
		col, seg := 0, int32(0)
		for used < len(order) {
			full, scored := src.Stats(order[used])
			n := min(full, p.T)
			if col > 0 && (!p.Pack || col+n > p.T) {
				break
			}
			var ex TokenExample
			if read || full > p.T {
				var err error
				if ex, err = src.Example(order[used]); err != nil {
					return nil, 0, err
				}
			}
			if full > p.T {
				p.Truncated++
				for _, l := range ex.Labels[p.T:] {
					if l != IgnoreIndex {
						p.CutLabels++
					}
				}
				scored = scoredAfterFirst(ex.Labels[:p.T])
			}
			r.scored += scored
			for j := 0; read && j < n; j++ {
				i := b*p.T + col + j
				r.IDs[i] = int32(ex.InputIDs[j])
				r.Labels[i] = int32(ex.Labels[j])
				r.Positions[i] = int32(j)
				r.Segments[i] = seg
			}
			col += n
			seg++
			used++
			if !p.Pack {
				break
			}
		}
	}
	return r, used, nil
}
