package trainer

import (
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"

	"train/model"
	"train/ops"
)

// initialLossScale is the loss scale fp16 training starts from (2^16, as
// torch.amp.GradScaler).
const initialLossScale = 65536

// lossScaler is dynamic loss scaling for F16 training, with
// torch.amp.GradScaler's rule: the loss gradient is multiplied by the scale S
// before the backward, so that small activation gradients do not underflow
// half precision; the norm and the update divide it out again. A step whose
// gradients hold an inf or a NaN on any rank (the all-reduced squared norm is
// then not finite on every rank alike) is skipped and S halves; after window
// clean steps in a row S doubles. Off (S = 1, nothing skipped by it) for the
// other compute types.
type lossScaler struct {
	on     bool
	scale  float64
	window int
	clean  int // clean steps since S last changed
}

func newLossScaler(compute ops.DType, window int) lossScaler {
	if compute != ops.F16 {
		return lossScaler{scale: 1}
	}
	return lossScaler{on: true, scale: initialLossScale, window: window}
}

// factor is the loss gradient's multiplier: S, or 1 when off.
func (s *lossScaler) factor() float64 { return s.scale }

// minLossScale is the floor of S: 2^-24, the smallest half-precision step.
// A gradient that overflows even there is not the scale's fault.
const minLossScale = 1.0 / (1 << 24)

// overflowed reports whether a step with this loss and gradient norm (of the
// scaled gradients) is the scaler's to skip: a finite loss with a non-finite
// gradient in fp16, while S can still halve. A non-finite loss is not an
// overflow of the scaled backward, and lower scales would not cure it: such
// steps count towards the trainer's non-finite rule like in other precisions.
func (s *lossScaler) overflowed(loss, scaledNorm float64) bool {
	return s.on && finite(loss) && !finite(scaledNorm) && s.scale > minLossScale
}

// skip halves S after an overflowed step.
func (s *lossScaler) skip() {
	s.scale = max(s.scale/2, minLossScale)
	s.clean = 0
}

// stepped counts a clean step; after window of them S doubles. It reports
// whether S changed.
func (s *lossScaler) stepped() bool {
	if !s.on {
		return false
	}
	s.clean++
	if s.clean < s.window {
		return false
	}
	s.scale *= 2
	s.clean = 0
	return true
}

// restore takes a checkpoint's scaler state; a checkpoint without one (an
// earlier version, or a run in another precision) starts from the initial
// scale.
func (s *lossScaler) restore(scale float64, clean int) {
	if !s.on || !(scale > 0) || !finite(scale) {
		return
	}
	s.scale, s.clean = scale, clean
}

// gradOverflowEnv names a test hook: "STEP[:RANK]" makes this rank (every rank
// without RANK) report a non-finite gradient at that 1-based step, as an fp16
// overflow would.
const gradOverflowEnv = "TRAIN_DEBUG_GRAD_OVERFLOW"

// debugGradOverflow is the step at which rank injects an overflow (0: none).
func debugGradOverflow(rank int) (int, error) {
	v := os.Getenv(gradOverflowEnv)
	if v == "" {
		return 0, nil
	}
	stepText, rankText, hasRank := strings.Cut(v, ":")
	step, err := strconv.Atoi(stepText)
	if err != nil || step < 1 {
		return 0, fmt.Errorf("%s=%q: want STEP or STEP:RANK with STEP >= 1", gradOverflowEnv, v)
	}
	if hasRank {
		r, err := strconv.Atoi(rankText)
		if err != nil {
			return 0, fmt.Errorf("%s=%q: want STEP or STEP:RANK", gradOverflowEnv, v)
		}
		if r != rank {
			return 0, nil
		}
	}
	return step, nil
}

// noteKernels says what the precision and the GPU choose that a user would
// otherwise not see: fp16's loss scaling, and the GEMM attention where flash
// attention cannot run (an older GPU, a head dim it does not take).
func noteKernels(be ops.Backend, compute ops.DType, mc *model.Config, window int, w io.Writer) {
	if compute == ops.F16 {
		fmt.Fprintf(w, "train: fp16: dynamic loss scaling from %d, halved on an overflow (the step is skipped), doubled after %d clean steps (train.loss_scale_window)\n",
			initialLossScale, window)
	}
	g, ok := be.(interface {
		AttentionKernel(dt ops.DType, H, KVH, D int) (string, string)
	})
	if !ok || compute == ops.F32 {
		return
	}
	_, why := g.AttentionKernel(compute, mc.NumHeads, mc.NumKVHeads, mc.HeadDim)
	fmt.Fprintf(w, "train: attention: %s\n", why)
}

// scalerState is the loss scale a checkpoint records: 0 (absent) when off.
func (t *trainer) scalerState() float64 {
	if !t.scaler.on {
		return 0
	}
	return t.scaler.scale
}
