package model

import "testing"

func TestOneSegmentPerRow(t *testing.T) {
	for _, c := range []struct {
		seg  []int32
		B, T int
		want bool
	}{
		{[]int32{0, 0, 0, 0}, 1, 4, true},
		{[]int32{0, 0, -1, -1, 3, 3, 3, 3}, 2, 4, true},
		{[]int32{-1, -1, -1, -1}, 1, 4, true},
		{[]int32{0, 0, 1, 1}, 1, 4, false},             // two packed examples
		{[]int32{0, 0, -1, 1}, 1, 4, false},            // an example after padding
		{[]int32{-1, 0, 0, 0}, 1, 4, false},            // padding first
		{[]int32{0, 0, 0, 0, 1, 1, 2, 2}, 2, 4, false}, // the second row packs two
	} {
		if got := oneSegmentPerRow(c.seg, c.B, c.T); got != c.want {
			t.Errorf("oneSegmentPerRow(%v, B %d, T %d) = %v, want %v", c.seg, c.B, c.T, got, c.want)
		}
	}
}
