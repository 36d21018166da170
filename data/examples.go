package data

// Examples is a dataset's examples by index, read when asked for, so that a
// dataset need not fit in memory: an in-memory Slice, a token Cache on disk,
// or a Subset of either.
type Examples interface {
	Len() int
	// Example reads example i.
	Example(i int) (TokenExample, error)
	// Stats is example i's length in tokens and how many of its labels a
	// packed row scores when the example is not cut: those other than -100
	// after its first token. A Cache reads them from its index, not its tokens.
	Stats(i int) (n, scored int)
}

// Slice is examples held in memory.
type Slice []TokenExample

func (s Slice) Len() int                            { return len(s) }
func (s Slice) Example(i int) (TokenExample, error) { return s[i], nil }
func (s Slice) Stats(i int) (n, scored int)         { return len(s[i].InputIDs), scoredAfterFirst(s[i].Labels) }

// scoredAfterFirst counts the labels other than -100 after the first: a
// row's first token of a segment has no earlier token to predict it.
func scoredAfterFirst(labels []int) int {
	n := 0
	for i := 1; i < len(labels); i++ {
		if labels[i] != IgnoreIndex {
			n++
		}
	}
	return n
}

// Subset is the examples of Of at the indices Idx, in that order (an
// evaluation split, a rank's share).
type Subset struct {
	Of  Examples
	Idx []int
}

func (s Subset) Len() int                            { return len(s.Idx) }
func (s Subset) Example(i int) (TokenExample, error) { return s.Of.Example(s.Idx[i]) }
func (s Subset) Stats(i int) (n, scored int)         { return s.Of.Stats(s.Idx[i]) }
