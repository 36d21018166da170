package trainer

import "testing"

// TestUtilSamplerMeans: a step's utilisation is the mean of the readings since
// the previous step, and a step without readings logs none.
func TestUtilSamplerMeans(t *testing.T) {
	s := &utilSampler{}
	if _, _, ok := s.take(); ok {
		t.Error("a reading with no samples")
	}
	s.add(90, 10)
	s.add(70, 30)
	if gpu, mem, ok := s.take(); !ok || gpu != 80 || mem != 20 {
		t.Errorf("take = %v, %v, %v; want 80, 20, true", gpu, mem, ok)
	}
	if _, _, ok := s.take(); ok {
		t.Error("take did not start over")
	}
}
