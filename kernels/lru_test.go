package kernels

import (
	"slices"
	"testing"
)

// TestLRU: the bounded map keeps max entries, evicting the least recently
// used one (a Get counts as a use) and handing it back to be freed.
func TestLRU(t *testing.T) {
	c := newLRU[int, string](2)
	if _, ok := c.Put(1, "a"); ok {
		t.Fatal("evicted with room left")
	}
	c.Put(2, "b")
	if v, ok := c.Get(1); !ok || v != "a" {
		t.Fatalf("Get(1) = %q, %v", v, ok)
	}
	if ev, ok := c.Put(3, "c"); !ok || ev != "b" { // 2 is the least recently used
		t.Fatalf("Put(3) evicted %q, %v; want b", ev, ok)
	}
	if _, ok := c.Get(2); ok {
		t.Error("2 still there after its eviction")
	}
	if _, ok := c.Put(3, "c2"); ok {
		t.Error("replacing an entry evicted another")
	}
	got := c.All()
	slices.Sort(got)
	if !slices.Equal(got, []string{"a", "c2"}) {
		t.Errorf("All = %v, want [a c2]", got)
	}
}
