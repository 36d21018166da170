// Package testcheck holds what the tests of several packages share: an error
// that must say something, tensors that must come back from a file as they
// went in, and a port for the ranks a test starts.
package testcheck

import (
	"math"
	"strings"
	"testing"
)

// ErrorContains fails t unless err is non-nil and contains want.
func ErrorContains(t testing.TB, err error, want string) {
	t.Helper()
	if err == nil {
		t.Fatalf("no error; want one containing %q", want)
	}
	if !strings.Contains(err.Error(), want) {
		t.Fatalf("error %q\ndoes not contain %q", err, want)
	}
}

// EqualTensors fails t unless got holds the tensors of want, by name, each
// element within tol of want's, relative to the element's magnitude when that
// is above 1 (tol 0: exactly equal).
func EqualTensors(t testing.TB, what string, got, want map[string][]float32, tol float64) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: %d tensors, want %d", what, len(got), len(want))
	}
	for name, w := range want {
		g, ok := got[name]
		if !ok || len(g) != len(w) {
			t.Fatalf("%s: tensor %s missing or of length %d, want %d", what, name, len(g), len(w))
		}
		for i := range w {
			if d := float64(g[i]) - float64(w[i]); d > tol*max(1, math.Abs(float64(w[i]))) || -d > tol*max(1, math.Abs(float64(w[i]))) {
				t.Fatalf("%s: %s[%d] = %v, want %v", what, name, i, g[i], w[i])
			}
		}
	}
}
