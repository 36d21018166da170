package ops

import "fmt"

// DType is the element type of a buffer.
type DType int

const (
	// F32 is the backend's floating-point type: float32 on devices and in the
	// model's CPU backend, float64 in the reference backend used by tests.
	F32 DType = iota
	// I32 holds int32 values: token ids, labels, positions, segment ids.
	I32
	// BF16 is bfloat16 storage for weights, activations and their gradients in
	// mixed precision. A device keeps 2 bytes per element and computes in
	// float32, rounding on every store; the CPU backend keeps its float type
	// rounded to bfloat16 after every write, so it is the devices' twin.
	BF16
	// U8 holds bytes: the packed 4-bit codes and 8-bit scale codes of NF4
	// weights.
	U8
	// F16 is IEEE half-precision storage for mixed precision on GPUs without
	// bfloat16 (before compute capability 8.0): as BF16 (float32 compute,
	// rounding on every store), with a narrower range (65504 at most) and three
	// more bits of precision; training in it scales the loss (see trainer).
	F16
)

// IsFloat reports whether d holds floating-point data: F32, BF16 or F16.
func (d DType) IsFloat() bool { return d == F32 || d == BF16 || d == F16 }

// IsHalf reports whether d is a 2-byte float type: BF16 or F16.
func (d DType) IsHalf() bool { return d == BF16 || d == F16 }

// Size is the bytes of one element.
func (d DType) Size() int {
	switch d {
	case BF16, F16:
		return 2
	case U8:
		return 1
	}
	return 4
}

// Bytes is the memory b takes: its length times its element size; 0 for nil.
func Bytes(b Buf) int64 {
	if b == nil {
		return 0
	}
	return int64(b.Len()) * int64(b.DType().Size())
}

func (d DType) String() string {
	switch d {
	case F32:
		return "f32"
	case I32:
		return "i32"
	case BF16:
		return "bf16"
	case F16:
		return "f16"
	case U8:
		return "u8"
	}
	return fmt.Sprintf("DType(%d)", int(d))
}

// Buf is an opaque device buffer, or a view of one. Views share memory with the
// buffer they come from; freeing is done on the allocation, not on views.
type Buf interface {
	// Len is the number of elements.
	Len() int
	// DType is the element type.
	DType() DType
	// Slice returns the view of n elements starting at element off. It panics
	// when the range is outside the buffer, like a Go slice expression: ranges
	// come from the caller's memory plan, never from user input.
	Slice(off, n int) Buf
}

// Backend is a device: memory, transfers, and the ops the Llama forward and
// backward passes need. Ops may run asynchronously in launch order; see the
// package documentation for the conventions (shapes, += in backward, errors).
//
// Dimension names: N rows (tokens, B*T), C model width, V vocabulary, H query
// heads, KVH key/value heads, D head dimension, P rows of a rope table.
//
// Float types (mixed precision): an op's data buffers (activations, weights
// and the gradients of activations) share one float type, F32, BF16 or F16, the
// compute type. These are always F32, whatever the compute type: statistics
// (rstd, lse, losses), rope tables, the parameter gradients dtable and dw, and
// the optimizer's buffers. A matmul's out may be F32 or the compute type of a
// and b (a parameter gradient accumulates in F32 from 2-byte inputs). Backends
// compute in at least float32 and round once when storing; Copy and Zero take
// any type, Cast converts.
type Backend interface {
	// Name says what the device is, for logs ("cpu-f32").
	Name() string

	// Alloc returns a zeroed buffer of n elements of type dt.
	Alloc(dt DType, n int) (Buf, error)
	// AllocHost returns a buffer of n elements of type dt in the host's
	// memory (page-locked on a GPU), for data that does not fit on the
	// device: Copy moves it to and from device buffers, in launch order, and
	// no other op takes it. On the CPU it is Alloc.
	AllocHost(dt DType, n int) (Buf, error)
	// Free releases a buffer returned by Alloc or AllocHost. Views of it
	// become invalid.
	Free(b Buf)
	// Upload copies host values into an F32 buffer, or a BF16 or F16 one
	// rounding to nearest even (len(src) <= dst.Len()).
	Upload(dst Buf, src []float32) error
	// UploadInt copies host values into an I32 buffer (len(src) <= dst.Len()).
	UploadInt(dst Buf, src []int32) error
	// UploadBytes copies host bytes into a U8 buffer (len(src) <= dst.Len()).
	UploadBytes(dst Buf, src []byte) error
	// DownloadBytes waits for pending work and copies the first len(dst)
	// bytes of a U8 buffer to the host, returning the first recorded op error.
	DownloadBytes(dst []byte, src Buf) error
	// Download waits for pending work and copies the first len(dst) values of
	// an F32, BF16 or F16 buffer to the host. It returns the first recorded op error.
	Download(dst []float32, src Buf) error
	// Download64 is Download widened to float64; a float64 backend returns its
	// values unrounded (tests use it for losses).
	Download64(dst []float64, src Buf) error
	// Sync waits for pending work and returns the first recorded op error.
	Sync() error

	// Zero sets the first n elements of b to zero.
	Zero(b Buf, n int)
	// Copy copies the first n elements of src into dst, of the same type.
	Copy(dst, src Buf, n int)
	// Cast converts the first n elements of src into dst between F32 and BF16 or F16
	// (rounding to nearest even); the same type copies.
	Cast(dst, src Buf, n int)

	// EmbeddingForward: out[N,C] = table[ids[n], :]. Nothing is saved.
	EmbeddingForward(out, ids, table Buf, N, C, V int)
	// EmbeddingBackward: dtable[ids[n], :] += dout[n, :].
	EmbeddingBackward(dtable, dout, ids Buf, N, C, V int)

	// RMSNormForward: out[N,C] = w * (x * rstd), rstd[N] = 1/sqrt(mean(x^2)+eps),
	// in the backend's float type. Saves rstd for backward (with x and w).
	RMSNormForward(out, rstd, x, w Buf, N, C int, eps float32)
	// RMSNormBackward: dx[N,C] += d/dx, dw[C] += d/dw (dw may be nil: frozen).
	RMSNormBackward(dx, dw, dout, x, w, rstd Buf, N, C int)

	// MatmulNT: out[M,N] = alpha * a[M,K] · b[N,K]ᵀ + beta * out. The forward of
	// nn.Linear: y[tokens,out] = x[tokens,in] · W[out,in]ᵀ. With beta == 0 the
	// old contents of out are ignored (even NaN).
	MatmulNT(out, a, b Buf, M, N, K int, alpha, beta float32)
	// MatmulNN: out[M,N] = alpha * a[M,K] · b[K,N] + beta * out. The input
	// gradient of nn.Linear: dx[tokens,in] = dy[tokens,out] · W[out,in].
	MatmulNN(out, a, b Buf, M, N, K int, alpha, beta float32)
	// MatmulTN: out[M,N] = alpha * a[K,M]ᵀ · b[K,N] + beta * out. The weight
	// gradient of nn.Linear: dW[out,in] += dy[tokens,out]ᵀ · x[tokens,in].
	MatmulTN(out, a, b Buf, M, N, K int, alpha, beta float32)

	// RopeForward rotates each head of x[N, H*D] by the angles of its token's
	// position: out[n,h,i] = x_i*cos - x_{i+D/2}*sin, out[n,h,i+D/2] =
	// x_{i+D/2}*cos + x_i*sin (rotate_half pairing), cos/sin = table[pos[n], i],
	// tables [P, D/2]. out may be x (in place). Nothing is saved: the backward
	// needs only the positions.
	RopeForward(out, x, cos, sin, pos Buf, N, H, D, P int)
	// RopeBackward: dx = rotation by the negative angles of dout. Unlike other
	// backward ops it overwrites dx, and dx may be dout (in place).
	RopeBackward(dx, dout, cos, sin, pos Buf, N, H, D, P int)

	// AttentionForward is causal grouped-query attention with softmax scale
	// 1/sqrt(D): q[B*T, H*D], k,v[B*T, KVH*D], out[B*T, H*D]; query head h reads
	// key/value head h/(H/KVH). Token t attends to tokens s <= t of its row, and
	// when seg is not nil only to those with seg[s] == seg[t] (packed examples).
	// Saves lse[B, H, T], the log-sum-exp of each softmax row, so backward can
	// recompute the probabilities instead of storing [B, H, T, T].
	AttentionForward(out, lse, q, k, v, seg Buf, B, T, H, KVH, D int)
	// AttentionBackward: dq, dk, dv = the gradients (overwritten), from dout
	// and the forward's q, k, v, its output out and lse.
	AttentionBackward(dq, dk, dv, dout, q, k, v, out, lse, seg Buf, B, T, H, KVH, D int)
	// AttentionDecode is AttentionForward over a key/value cache, for generation
	// (forward only, nothing saved): q, out [B*Tq, H*D]; kCache, vCache
	// [B*S, KVH*D], row b's entries at [b*S, b*S+Tk) valid, the rest unread.
	// Query i of row b sits at position Tk-Tq+i and attends to cache entries
	// s <= Tk-Tq+i of its row. Needs 1 <= Tq <= Tk <= S. With the cache holding
	// the same k, v it gives AttentionForward's rows Tk-Tq..Tk-1, so a prompt
	// (Tq = Tk) and then one token at a time (Tq = 1) reproduce the full pass.
	AttentionDecode(out, q, kCache, vCache Buf, B, Tq, Tk, S, H, KVH, D int)

	// SwiGLUForward: out[n] = silu(gate[n]) * up[n] over n elements. Nothing
	// new is saved (backward reads gate and up).
	SwiGLUForward(out, gate, up Buf, n int)
	// SwiGLUBackward: dgate, dup += gradients.
	SwiGLUBackward(dgate, dup, dout, gate, up Buf, n int)

	// CrossEntropyForward: losses[n] = logsumexp(logits[n,:]) - logits[n,
	// targets[n]], or 0 where targets[n] == -100 (ignored). Saves nothing new:
	// backward recomputes the softmax from logits.
	CrossEntropyForward(losses, logits, targets Buf, N, V int)
	// CrossEntropyBackward: dlogits[n,:] = scale * (softmax(logits[n,:]) -
	// onehot(targets[n])), zero on ignored rows. scale is d(objective)/d(sum of
	// losses), e.g. 1/(valid tokens in the whole step). It overwrites dlogits,
	// which may be logits itself (in place, as llm.c does).
	CrossEntropyBackward(dlogits, logits, targets Buf, N, V int, scale float32)

	// Add: out = a + b over n elements; out may be a or b (residual connection).
	Add(out, a, b Buf, n int)
	// Scale: x *= s over n elements.
	Scale(x Buf, s float32, n int)
	// Dropout: out[i] = x[i] / (1-p) where keep(seed, i), else 0. The mask is a
	// pure function of (seed, i) (counter-based), so applying Dropout with the
	// same seed to a gradient is its backward, and a recomputation reproduces
	// it. out may be x. p == 0 copies.
	Dropout(out, x Buf, n int, p float32, seed uint64)

	// DequantNF4 writes the N weights of w into out (F32 or the compute
	// type): out[i] = NF4Code[code of i] x the absmax of its block, one
	// float32 product rounded once; with double quantization the absmax is
	// rebuilt on the fly (NF4Scale). QLoRA calls it before each use of a
	// frozen 4-bit weight, into one workspace shared by every layer.
	DequantNF4(out Buf, w NF4)
	// QuantizeNF4 codes the n F32 values of x in blocks of blockSize (even)
	// into packed (U8, (n+1)/2 bytes, element 2j in the high nibble) and
	// absmax (F32, one per block), exactly as QuantizeNF4Block does.
	QuantizeNF4(packed, absmax, x Buf, n, blockSize int)
	// FillNormal writes the first n values of the normal generator keyed by
	// key (FillNormalHost from element 0) into out, F32, BF16 or F16 (rounded from
	// the float32 value): random weights drawn where they are used, with no
	// host copy. A device's float64 log and sincos may differ from Go's in the
	// last bit, so a rare value may differ from the host's by one float32 ulp.
	FillNormal(out Buf, n int, key uint64, std float64)

	// SumSquares: out[0] += sum of x[i]^2 over n elements of an F32, BF16 or F16 x,
	// accumulated in float64 in a fixed order, out F32 (a gradient's share of
	// the global norm).
	SumSquares(out, x Buf, n int)
	// AdamW updates n elements of the F32 value, m and v from the F32 grad as
	// optim.AdamW does (see AdamWStep), then writes the updated value rounded to
	// work's type into work when work is not nil (a BF16 or F16 compute copy).
	AdamW(value, grad, m, v, work Buf, n int, s AdamWStep)
}

// AdamWStep is one AdamW update's constants, computed once on the host in
// float64 so every backend applies the same numbers:
//
//	m = B1*m + (1-B1)*g;  v = B2*v + (1-B2)*g*g
//	value = value*Decay - StepSize*m / (sqrt(v)/SqrtBC2 + Eps)
//
// with StepSize = lr/(1-beta1^t), SqrtBC2 = sqrt(1-beta2^t), Decay = 1-lr*wd
// (1 for tensors without decay). GradScale multiplies g first (clipping).
type AdamWStep struct {
	B1, B2, Decay, GradScale float32
	StepSize, SqrtBC2, Eps   float64
}

// Carve splits b into consecutive views of the given sizes, the llm.c way of
// laying out all activations (or all parameters) in one allocation. The sum of
// sizes must not exceed b.Len().
func Carve(b Buf, sizes ...int) []Buf {
	views := make([]Buf, len(sizes))
	off := 0
	for i, n := range sizes {
		views[i] = b.Slice(off, n)
		off += n
	}
	return views
}

// Plan lays out many buffers in one allocation: Add records a size and where to
// put the view, Alloc allocates the total once and fills every view. The zero
// value is an empty plan.
type Plan struct {
	sizes []int
	dsts  []*Buf
	total int
}

// Add reserves n elements for *dst, set by Alloc. n may be zero.
func (p *Plan) Add(dst *Buf, n int) {
	p.sizes = append(p.sizes, n)
	p.dsts = append(p.dsts, dst)
	p.total += n
}

// Len is the total number of elements reserved so far.
func (p *Plan) Len() int { return p.total }

// Alloc allocates one buffer of type dt holding every reserved view, points each
// recorded destination at its view, and returns the whole buffer (to Free).
func (p *Plan) Alloc(be Backend, dt DType) (Buf, error) {
	all, err := be.Alloc(dt, p.total)
	if err != nil {
		return nil, err
	}
	for i, v := range Carve(all, p.sizes...) {
		*p.dsts[i] = v
	}
	return all, nil
}

// AsyncCopier is a Backend that copies on a second stream (the CUDA
// backend): activation offload overlaps its copies with compute through it.
// CopyAsync starts copying n elements from src to dst once the ops queued so
// far are done and returns at once with a ticket (0: nothing to wait for);
// ops queued later may run during the copy, so neither buffer may be
// written, nor dst read, before WaitCopy(ticket), after which queued ops wait
// for the copy. Every ticket must be waited for once.
type AsyncCopier interface {
	CopyAsync(dst, src Buf, n int) uint64
	WaitCopy(ticket uint64)
}
