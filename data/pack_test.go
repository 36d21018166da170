package data

import "testing"

func ex(ids ...int) TokenExample {
	return TokenExample{InputIDs: ids, Labels: append([]int(nil), ids...)}
}

func TestPackerPacks(t *testing.T) {
	p := &Packer{T: 6, Pack: true, PadID: 0}
	r, used, err := p.Fill([]TokenExample{ex(1, 2, 3), ex(4, 5), ex(6, 7, 8, 9)}, 2)
	if err != nil {
		t.Fatal(err)
	}
	if used != 3 {
		t.Fatalf("used %d, want 3", used)
	}
	wantIDs := []int32{1, 2, 3, 4, 5, 0, 6, 7, 8, 9, 0, 0}
	wantPos := []int32{0, 1, 2, 0, 1, 0, 0, 1, 2, 3, 0, 0}
	wantSeg := []int32{0, 0, 0, 1, 1, -1, 0, 0, 0, 0, -1, -1}
	for i := range wantIDs {
		if r.IDs[i] != wantIDs[i] || r.Positions[i] != wantPos[i] || r.Segments[i] != wantSeg[i] {
			t.Fatalf("at %d: id %d pos %d seg %d; want %d %d %d", i, r.IDs[i], r.Positions[i], r.Segments[i], wantIDs[i], wantPos[i], wantSeg[i])
		}
	}
	// Scored: row 0: 2,3 (seg 0), 5 (seg 1); row 1: 7,8,9.
	if got := r.ScoredLabels(); got != 6 {
		t.Fatalf("scored %d, want 6", got)
	}
}

func TestPackerPadsAndTruncates(t *testing.T) {
	p := &Packer{T: 3, Pack: false, PadID: 9}
	r, used, err := p.Fill([]TokenExample{ex(1), ex(2, 3, 4, 5)}, 3)
	if err != nil {
		t.Fatal(err)
	}
	if used != 2 || p.Truncated != 1 {
		t.Fatalf("used %d truncated %d", used, p.Truncated)
	}
	if r.IDs[0] != 1 || r.IDs[1] != 9 || r.Labels[1] != IgnoreIndex || r.IDs[5] != 4 || r.Segments[6] != -1 {
		t.Fatalf("rows %+v", r)
	}
	if got := r.ScoredLabels(); got != 2 {
		t.Fatalf("scored %d, want 2", got)
	}
}

// TestPackerCountsCutLabels: cutting an example to T counts the scored labels
// it loses (not the -100 ones), so that a step with nothing left to score can
// name truncation as the cause.
func TestPackerCountsCutLabels(t *testing.T) {
	p := &Packer{T: 3}
	long := TokenExample{InputIDs: []int{1, 2, 3, 4, 5, 6}, Labels: []int{IgnoreIndex, IgnoreIndex, IgnoreIndex, IgnoreIndex, 5, 6}}
	r, _, err := p.Fill([]TokenExample{long, ex(7, 8)}, 2)
	if err != nil {
		t.Fatal(err)
	}
	if p.Truncated != 1 || p.CutLabels != 2 {
		t.Errorf("truncated %d, cut labels %d; want 1 and 2", p.Truncated, p.CutLabels)
	}
	if got := r.ScoredLabels(); got != 1 {
		t.Errorf("scored %d, want 1 (the short example's)", got)
	}
}
