// Package ops is the seam between the model and a device: the Backend interface
// that every device implements (this package's CPU reference, a CUDA backend
// later), and the CPU kernels themselves.
//
// The model of the package, after llm.c:
//
//   - Memory is planned up front. A caller allocates a few large buffers with
//     Backend.Alloc and carves views out of them with Buf.Slice (see Carve); no
//     op allocates per step. A Buf is opaque: on the CPU it wraps a Go slice, on a
//     GPU it will be a device pointer and a length. Host data moves only through
//     Upload and Download.
//   - Ops are launched, not called: every op method returns nothing and may run
//     asynchronously on the device's stream, in launch order. Download and Sync
//     wait for the work before them. An op given bad arguments (a buffer that is
//     too short, a token id out of range) records the first such error in the
//     backend, skips its work, and that error is returned by the next Sync or
//     Download, the way CUDA reports a failed launch. Callers validate user input
//     on the host first; the recorded error is a safety net, never a panic.
//   - Every op has explicit dimensions. Row-major throughout: an activation of
//     B sequences of T tokens and width C is a [B*T, C] matrix; a weight is
//     [out, in] as Hugging Face stores nn.Linear weights.
//   - Forward and backward of an op sit side by side. A backward op ADDS (+=)
//     into the gradients it produces, both of inputs and of parameters, so that
//     contributions from several paths and micro-batches accumulate; callers zero
//     a gradient buffer before its first contribution. The matmuls say so with
//     their beta argument instead, and the few in-place ops say so in their doc.
//   - Ops are deterministic: the same inputs give bitwise the same outputs,
//     whatever the number of threads, so recomputing a layer (activation
//     checkpointing) reproduces its activations exactly.
//
// The CPU kernels are written once over float32 and float64 (Go generics). The
// model runs the float32 backend (NewCPU); the float64 one (NewCPU64) exists so
// that finite-difference gradient checks of ops and of the whole model can use
// tight tolerances. Host data crosses the interface as float32 either way.
// Package opstest holds any Backend to the float64 reference, op by op
// (opstest.Check); a new device backend passes it before the model runs on it.
package ops
