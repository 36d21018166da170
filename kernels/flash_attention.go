package kernels

import (
	"fmt"
	"math"

	"train/ops"
)

// Training attention as FlashAttention-2 (flash_attention.cu): the scores stay
// on chip, the forward saves lse, the backward recomputes P from it. It takes
// bf16 or f16 data with head dim 64 or 128 (16-byte aligned buffers, at most
// 65535 heads) on a GPU of compute capability 8.0 or later (mma.sync m16n8k16
// and cp.async); AttentionForward and AttentionBackward use it for those and
// the GEMM attention (attention.go) for everything else, silently: the choice
// is a function of the GPU, the data type, D and the buffers' alignment
// (Backend.AttentionKernel names it, and the trainer logs it), so a model
// takes one path for every layer and every step.
//
// (bf16 kernel names below; the f16 ones are flash_fwd_f16_dD and so on)
//
//	forward:  flash_fwd_dD                              -> out, lse
//	backward: flash_delta_dD  delta = rowsum(dout∘out), out recomputed from lse
//	          flash_bwd_dq_dD   dq += ...   (query-tile major)
//	          flash_bwd_dkdv_dD dk, dv += ... (key-tile major, all heads of the group)
//
// The backward's workspace is delta, B×H×T floats, in the Backend's attention
// workspace (attnWS). Deterministic: every output element is summed by one
// thread in a fixed order; no atomics.

const (
	flashThreads = 128 // every flash kernel: 4 warps
	flashFwdRows = 128 // query rows per block of flash_fwd and flash_delta
	flashBwdRows = 64  // query rows per flash_bwd_dq block, keys per flash_bwd_dkdv block
	maxGridYZ    = 65535
	minFlashCC   = 80 // compute capability the flash kernels need (sm_80)
)

// flashSmem is the dynamic shared memory of a flash kernel at head dim D, in
// bytes, as laid out at the top of each kernel in flash_attention.cu: forward
// Q[128], K[64], V[64] tiles and 64 key segments; dq Q, dout[64], K, V[2][64]
// and 2×64 segments; dk/dv K, V[64], Q, dout[2][64] and 2×64 each of lse,
// delta, segments. D 128: 64.3, 96.5 and 97.5 KiB.
func flashSmem(kernel string, D int) int {
	switch kernel {
	case "flash_fwd", "flash_delta":
		return (flashFwdRows+2*64)*D*2 + 64*4
	case "flash_bwd_dq":
		return 6*flashBwdRows*D*2 + 2*flashBwdRows*4
	default: // flash_bwd_dkdv
		return 6*flashBwdRows*D*2 + 3*2*flashBwdRows*4
	}
}

// flashTakes reports whether the flash kernels take a call on a GPU of
// compute capability cc with data type dt, head dim D, H query heads and these
// device pointers (16-byte aligned, for cp.async).
func flashTakes(cc int, dt ops.DType, D, H int, ptrs ...uint64) bool {
	if cc < minFlashCC || !dt.IsHalf() || (D != 64 && D != 128) || H > maxGridYZ {
		return false
	}
	for _, p := range ptrs {
		if p%16 != 0 {
			return false
		}
	}
	return true
}

// AttentionKernel names the training attention AttentionForward and
// AttentionBackward run for data of type dt and head dim D on a GPU of
// compute capability 8.0 or later: "flash" or "gemm" (a buffer that is not
// 16-byte aligned also takes "gemm"). Memory plans use it.
func AttentionKernel(dt ops.DType, D int) string {
	if flashTakes(minFlashCC, dt, D, 1) {
		return "flash"
	}
	return "gemm"
}

// AttentionKernel names the training attention this GPU runs for data of
// type dt with H query and KVH key/value heads of dim D: "cudnn" (cuDNN's
// fused attention for unpacked rows, the flash kernels for packed ones),
// "flash" or "gemm", and a line that says which and why for the run's log.
// Choosing cuDNN plans a small graph of these heads.
func (b *Backend) AttentionKernel(dt ops.DType, H, KVH, D int) (kernel, why string) {
	switch {
	case flashTakes(b.dev.cc, dt, D, H) && b.attnPick == "flash":
		return "flash", fmt.Sprintf("the flash kernels (%s=flash)", AttentionEnv)
	case flashTakes(b.dev.cc, dt, D, H):
		if no := b.dnnCheck(dt, H, KVH, D); no != "" {
			return "flash", "the flash kernels; cuDNN's fused attention does not apply: " + no
		}
		v, path, _ := cudnnVersion()
		return "cudnn", fmt.Sprintf("cuDNN %s's fused attention (%s) for rows of one example; rows packed with several "+
			"take the flash kernels", cudnnVersionString(v), path)
	case b.dev.cc < minFlashCC:
		return "gemm", fmt.Sprintf("the GEMM attention (flash attention needs compute capability 8.0 or later, this GPU has %d.%d), "+
			"slower and with more memory at long sequences", b.dev.cc/10, b.dev.cc%10)
	case !dt.IsHalf():
		return "gemm", fmt.Sprintf("the GEMM attention (flash attention takes bf16 or f16 data, not %v)", dt)
	}
	return "gemm", fmt.Sprintf("the GEMM attention (flash attention takes head dims 64 and 128, not %d), slower and with more "+
		"memory at long sequences", D)
}

// bufPtr is x's device pointer, 0 for nil or a foreign buffer (the op's
// checks report those).
func bufPtr(x ops.Buf) uint64 {
	if p, ok := x.(*buf); ok {
		return p.ptr
	}
	return 0
}

// AttentionForward: see ops.Backend. Where flash attention applies
// (flashTakes), cuDNN's fused attention for calls without segments (unless
// TRAIN_ATTENTION=flash, or cuDNN cannot take it), else the flash kernels;
// the GEMM attention otherwise.
func (b *Backend) AttentionForward(out, lse, q, k, v, seg ops.Buf, B, T, H, KVH, D int) {
	dt := dtypeOf(q, ops.F32)
	if flashTakes(b.dev.cc, dt, D, H, bufPtr(out), bufPtr(q), bufPtr(k), bufPtr(v)) {
		if seg == nil && b.attnPick != "flash" {
			p, ok := b.attnForwardArgs(out, lse, q, k, v, seg, B, T, H, KVH, D)
			if !ok || b.dnnAttention("AttentionForward", p, false, dt, B, T, H, KVH, D) {
				return
			}
		}
		b.AttentionForwardFlash(out, lse, q, k, v, seg, B, T, H, KVH, D)
		return
	}
	b.AttentionForwardGEMM(out, lse, q, k, v, seg, B, T, H, KVH, D)
}

// AttentionBackward: dq, dk, dv = the gradients (ops.Backend), chosen as
// AttentionForward chooses; each recomputes from lse whatever forward saved
// it (all save the same lse).
func (b *Backend) AttentionBackward(dq, dk, dv, dout, q, k, v, out, lse, seg ops.Buf, B, T, H, KVH, D int) {
	dt := dtypeOf(q, ops.F32)
	if flashTakes(b.dev.cc, dt, D, H, bufPtr(dq), bufPtr(dk), bufPtr(dv), bufPtr(dout), bufPtr(q), bufPtr(k), bufPtr(v), bufPtr(out)) {
		if seg == nil && b.attnPick != "flash" {
			p, ok := b.attnBackwardArgs(dq, dk, dv, dout, q, k, v, out, lse, seg, B, T, H, KVH, D)
			if !ok || b.dnnAttention("AttentionBackward", p, true, dt, B, T, H, KVH, D) {
				return
			}
		}
		b.AttentionBackwardFlash(dq, dk, dv, dout, q, k, v, out, lse, seg, B, T, H, KVH, D)
		return
	}
	b.AttentionBackwardGEMM(dq, dk, dv, dout, q, k, v, out, lse, seg, B, T, H, KVH, D)
}

// flash is one flash-attention call: shape, scales and the pointers' batch
// strides in bytes, for launches over at most maxGridYZ batch rows each.
type flash struct {
	B, T, H, KVH, D int
	dt              ops.DType // BF16 or F16: the kernels' name
	scale, sl2      float32   // 1/sqrt(D), and times log2(e) (the kernels' base-2 softmax)
	q, kv, stat     uint64    // bytes per batch row: q/out/dout/dq, k/v/dk/dv, lse/delta
	seg             uint64    // 0: no segments
}

func newFlash(dt ops.DType, seg uint64, B, T, H, KVH, D int) *flash {
	scale := 1 / math.Sqrt(float64(D))
	return &flash{B: B, T: T, H: H, KVH: KVH, D: D, dt: dt, scale: float32(scale), sl2: float32(scale * math.Log2E),
		q: uint64(2 * T * H * D), kv: uint64(2 * T * KVH * D), stat: uint64(4 * H * T), seg: seg}
}

// kernel launches kernel name (suffixes _f16 for F16 data and _dD added) with one block of
// flashThreads per (row tile, head, batch row): rows is the tile height, heads
// the grid's y. args builds the arguments of batch rows [b0, b0+nb): the
// pointers moved by b0 rows (see at).
func (f *flash) kernel(d *device, name string, rows, heads int, args func(b0 int) []uint64) error {
	kernel := name
	if f.dt == ops.F16 {
		kernel += "_f16"
	}
	kernel += fmt.Sprintf("_d%d", f.D)
	smem := flashSmem(name, f.D)
	for b0 := 0; b0 < f.B; b0 += maxGridYZ {
		nb := min(f.B-b0, maxGridYZ)
		grid := [3]int{(f.T + rows - 1) / rows, heads, nb}
		if err := d.launchSmem(kernel, grid, [3]int{flashThreads, 1, 1}, smem, args(b0)); err != nil {
			return err
		}
	}
	return nil
}

// at is pointer p moved by b0 batch rows of stride bytes each (0 stays 0).
func at(p uint64, b0 int, stride uint64) uint64 {
	if p == 0 {
		return 0
	}
	return p + uint64(b0)*stride
}

// forward: out, lse from q, k, v.
func (f *flash) forward(d *device, out, lse, q, k, v uint64) error {
	rep := f.H / f.KVH
	return f.kernel(d, "flash_fwd", flashFwdRows, f.H, func(b0 int) []uint64 {
		return []uint64{at(out, b0, f.q), at(lse, b0, f.stat), at(q, b0, f.q), at(k, b0, f.kv), at(v, b0, f.kv),
			at(f.seg, b0, uint64(4*f.T)), aI(f.T), aI(f.H), aI(rep), aF(f.sl2)}
	})
}

// backward: delta into the workspace ws, then dq, then dk and dv.
func (f *flash) backward(d *device, ws, dq, dk, dv, dout, q, k, v, lse uint64) error {
	rep := f.H / f.KVH
	seg := func(b0 int) uint64 { return at(f.seg, b0, uint64(4*f.T)) }
	err := f.kernel(d, "flash_delta", flashFwdRows, f.H, func(b0 int) []uint64 {
		return []uint64{at(ws, b0, f.stat), at(lse, b0, f.stat), at(q, b0, f.q), at(k, b0, f.kv), at(v, b0, f.kv),
			at(dout, b0, f.q), seg(b0), aI(f.T), aI(f.H), aI(rep), aF(f.sl2)}
	})
	if err != nil {
		return err
	}
	err = f.kernel(d, "flash_bwd_dq", flashBwdRows, f.H, func(b0 int) []uint64 {
		return []uint64{at(dq, b0, f.q), at(q, b0, f.q), at(k, b0, f.kv), at(v, b0, f.kv), at(dout, b0, f.q),
			at(lse, b0, f.stat), at(ws, b0, f.stat), seg(b0), aI(f.T), aI(f.H), aI(rep), aF(f.scale), aF(f.sl2)}
	})
	if err != nil {
		return err
	}
	return f.kernel(d, "flash_bwd_dkdv", flashBwdRows, f.KVH, func(b0 int) []uint64 {
		return []uint64{at(dk, b0, f.kv), at(dv, b0, f.kv), at(q, b0, f.q), at(k, b0, f.kv), at(v, b0, f.kv),
			at(dout, b0, f.q), at(lse, b0, f.stat), at(ws, b0, f.stat), seg(b0), aI(f.T), aI(f.H), aI(rep),
			aF(f.scale), aF(f.sl2)}
	})
}

// flashCheck records an error when the flash kernels cannot take the call.
func (b *Backend) flashCheck(op string, dt ops.DType, D, H int, ptrs ...uint64) bool {
	if b.err == nil && !flashTakes(b.dev.cc, dt, D, H, ptrs...) {
		b.fail("%s: flash attention takes bf16 or f16 data, head dim 64 or 128, at most %d heads and 16-byte aligned "+
			"buffers on a GPU of compute capability 8.0 or later (have %v, head dim %d, %d heads, compute capability %d.%d)",
			op, maxGridYZ, dt, D, H, b.dev.cc/10, b.dev.cc%10)
	}
	return b.err == nil
}

// AttentionForwardFlash is AttentionForward by the flash kernels; an error
// where they cannot take the call (flashTakes).
func (b *Backend) AttentionForwardFlash(out, lse, q, k, v, seg ops.Buf, B, T, H, KVH, D int) {
	const op = "AttentionForward"
	p, ok := b.attnForwardArgs(out, lse, q, k, v, seg, B, T, H, KVH, D)
	if !ok || !b.flashCheck(op, q.DType(), D, H, p.out, p.q, p.k, p.v) {
		return
	}
	f := newFlash(q.DType(), p.seg, B, T, H, KVH, D)
	b.run(op, func(d *device) error { return f.forward(d, p.out, p.lse, p.q, p.k, p.v) })
}

// AttentionBackwardFlash is AttentionBackward by the flash kernels; an error
// where they cannot take the call (flashTakes).
func (b *Backend) AttentionBackwardFlash(dq, dk, dv, dout, q, k, v, out, lse, seg ops.Buf, B, T, H, KVH, D int) {
	const op = "AttentionBackward"
	p, ok := b.attnBackwardArgs(dq, dk, dv, dout, q, k, v, out, lse, seg, B, T, H, KVH, D)
	if !ok || !b.flashCheck(op, q.DType(), D, H, p.dq, p.dk, p.dv, p.dout, p.q, p.k, p.v) {
		return
	}
	ws := b.grow(op, &b.attnWS, &b.attnWSB, flashWorkspaceBytes(B, T, H))
	if b.err != nil {
		return
	}
	f := newFlash(q.DType(), p.seg, B, T, H, KVH, D)
	b.zeroGrads(dq, dk, dv, B, T, H, KVH, D)
	b.run(op, func(d *device) error { return f.backward(d, ws, p.dq, p.dk, p.dv, p.dout, p.q, p.k, p.v, p.lse) })
}

// flashWorkspaceBytes is the flash backward's workspace: delta, B×H×T floats.
func flashWorkspaceBytes(B, T, H int) int64 { return alignBytes(4 * int64(B) * int64(H) * int64(T)) }

// cudnnWorkspaceBytes is cuDNN's attention backward workspace: the graph's
// own buffers (cudnnGraphBuffers) and the plan's (cudnnPlanBytes).
func cudnnWorkspaceBytes(B, T, H, KVH, D int) int64 {
	sum, acc := cudnnGraphBuffers(B, T, H, D)
	return sum + acc + cudnnPlanBytes(B, T, H, KVH, D)
}

// cudnnGraphBuffers are the sizes of the non-virtual buffers cuDNN's backward
// graph reads and writes beside the caller's: softmax_sum (B×H×T floats) and
// the dQ accumulator (B×H×T×D floats), each aligned.
func cudnnGraphBuffers(B, T, H, D int) (sum, acc int64) {
	n := int64(B) * int64(H) * int64(T)
	return alignBytes(4 * n), alignBytes(4 * n * int64(D))
}

// cudnnPlanBytes bounds the workspace cuDNN 9.14's attention backward plan
// asks for itself: with grouped-query heads a float32 [B, H, T, D] (dK and dV
// summed over a group), else almost nothing; 1 MiB of slack on top
// (TestCudnnPlanWorkspace checks it).
func cudnnPlanBytes(B, T, H, KVH, D int) int64 {
	if H == KVH {
		return 1 << 20
	}
	return 4*int64(B)*int64(H)*int64(T)*int64(D) + 1<<20
}

// cudnnVersionString spells cuDNN's version number: 91400 is 9.14.0.
func cudnnVersionString(v int) string {
	return fmt.Sprintf("%d.%d.%d", v/10000, v/100%100, v%100)
}
