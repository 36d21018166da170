//go:build cgo

package kernels

import (
	"testing"

	"train/ops"
)

// TestCudnnPlanWorkspace plans cuDNN's attention graphs at the 8B and 70B
// shapes and long T, and checks that each plan's own workspace stays within
// cudnnPlanBytes, which memory plans count (AttentionWorkspaceBytes).
func TestCudnnPlanWorkspace(t *testing.T) {
	be := gpu(t)
	if _, _, err := cudnnVersion(); err != nil {
		t.Skipf("no cuDNN: %v", err)
	}
	for _, k := range []dnnKey{
		{dt: ops.BF16, B: 1, T: 32768, H: 32, KVH: 8, D: 128},
		{backward: true, dt: ops.BF16, B: 1, T: 32768, H: 32, KVH: 8, D: 128},
		{backward: true, dt: ops.BF16, B: 1, T: 131072, H: 32, KVH: 8, D: 128},
		{backward: true, dt: ops.BF16, B: 2, T: 8192, H: 64, KVH: 8, D: 128},
		{backward: true, dt: ops.F16, B: 4, T: 2048, H: 32, KVH: 32, D: 64},
	} {
		var ws int64
		var why error
		if err := be.call(func(d *device) error { _, ws, why = d.dnnGraph(k); return nil }); err != nil {
			t.Fatal(err)
		}
		if why != nil {
			t.Errorf("%+v: no plan: %v", k, why)
			continue
		}
		t.Logf("%+v: plan workspace %d bytes", k, ws)
		if bound := cudnnPlanBytes(k.B, k.T, k.H, k.KVH, k.D); ws > bound {
			t.Errorf("%+v: plan workspace %d bytes, more than cudnnPlanBytes' %d that memory plans count", k, ws, bound)
		}
	}
}
