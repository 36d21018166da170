package kernels

import (
	"math"
	"slices"
	"testing"

	"train/model"
	"train/ops"
)

// TestAllocHostCopy: a page-locked host buffer takes values from a device
// buffer and gives them back bit for bit through Copy, in f32, bf16 and u8,
// for views at an offset too, and frees.
func TestAllocHostCopy(t *testing.T) {
	g := gpu(t)
	const n = 1<<20 + 3
	src := make([]float32, n)
	for i := range src {
		src[i] = float32(math.Sin(float64(i))) * 3
	}
	for _, dt := range []ops.DType{ops.F32, ops.BF16} {
		d, err := g.Alloc(dt, n)
		if err != nil {
			t.Fatal(err)
		}
		h, err := g.AllocHost(dt, n+5)
		if err != nil {
			t.Fatal(err)
		}
		back, err := g.Alloc(dt, n)
		if err != nil {
			t.Fatal(err)
		}
		if err := g.Upload(d, src); err != nil {
			t.Fatal(err)
		}
		g.Copy(h.Slice(5, n), d, n)
		g.Copy(back, h.Slice(5, n), n)
		want, got := make([]float32, n), make([]float32, n)
		if err := g.Download(want, d); err != nil {
			t.Fatal(err)
		}
		if err := g.Download(got, back); err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(got, want) {
			t.Errorf("%v: values differ after a round trip through host memory", dt)
		}
		for _, b := range []ops.Buf{d, h, back} {
			g.Free(b)
		}
		if err := g.Sync(); err != nil {
			t.Fatal(err)
		}
	}
}

// TestOffloadStepBitwise: a LoRA step of random:small on the GPU in bf16 with
// its layer inputs offloaded to host memory gives bitwise the loss and
// gradients of the same step with them on the device.
func TestOffloadStepBitwise(t *testing.T) {
	g := gpu(t)
	w, b := randomStep(t, "small", 2, 128)
	lora, err := model.NewLoRA(&w.Config, model.LoRAConfig{Rank: 4, Alpha: 8}, 3)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range lora.Layers[0] {
		for i := range p.B {
			p.B[i] = 0.01
		}
	}
	run := func(offload bool) (float64, map[string][]float32) {
		m, err := model.NewModel(g, w, model.Options{LoRA: lora, Checkpoint: true, Offload: offload, Compute: ops.BF16})
		if err != nil {
			t.Fatal(err)
		}
		defer m.Close()
		sum, n, err := m.Forward(b)
		if err != nil {
			t.Fatal(err)
		}
		if err := m.Backward(1 / float32(n)); err != nil {
			t.Fatal(err)
		}
		grads, err := m.Grads()
		if err != nil {
			t.Fatal(err)
		}
		return sum, grads
	}
	l0, g0 := run(false)
	l1, g1 := run(true)
	if l0 != l1 {
		t.Errorf("loss %v offloaded, %v on the device", l1, l0)
	}
	for name, v := range g0 {
		if !slices.Equal(g1[name], v) {
			t.Errorf("gradient of %s differs with offload", name)
		}
	}
}
