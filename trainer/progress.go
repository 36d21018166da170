package trainer

import (
	"fmt"
	"io"
	"os"
	"time"

	"github.com/schollz/progressbar/v3"
	"golang.org/x/term"
)

// progress reports training steps to a person: a live bar with loss, learning rate,
// tokens/s and ETA when stderr is a terminal, and plain periodic lines otherwise
// (Slurm logs, pipes), which read well in a file.
type progress struct {
	out   io.Writer
	every int
	total int
	bar   *progressbar.ProgressBar // nil when not a terminal
}

func newProgress(out io.Writer, total, every int) *progress {
	p := &progress{out: out, every: every, total: total}
	if isTerminal(out) {
		p.bar = progressbar.NewOptions(total,
			progressbar.OptionSetWriter(out),
			progressbar.OptionSetDescription("training"),
			progressbar.OptionShowCount(),
			progressbar.OptionSetPredictTime(true),
			progressbar.OptionSetWidth(24),
			progressbar.OptionThrottle(100*time.Millisecond),
			progressbar.OptionClearOnFinish(),
		)
	}
	return p
}

// step reports a finished optimizer step (1-based).
func (p *progress) step(step int, loss, lr, tokensPerS float64) {
	if p.bar != nil {
		p.bar.Describe(fmt.Sprintf("loss %.4f  lr %.2e  %.0f tok/s", loss, lr, tokensPerS))
		_ = p.bar.Set(step)
		return
	}
	if step == 1 || step%p.every == 0 || step == p.total {
		fmt.Fprintf(p.out, "step %5d/%d  loss %.4f  lr %.2e  tokens/s %.0f\n", step, p.total, loss, lr, tokensPerS)
	}
}

// note prints a line that must be seen (warnings, evaluations) without garbling the bar.
func (p *progress) note(format string, a ...any) {
	if p.bar != nil {
		_ = p.bar.Clear()
	}
	fmt.Fprintf(p.out, format+"\n", a...)
}

// finish removes the bar.
func (p *progress) finish() {
	if p.bar != nil {
		_ = p.bar.Finish()
	}
}

// isTerminal reports whether out is a terminal, where a progress bar is
// drawn instead of plain periodic lines.
func isTerminal(out io.Writer) bool {
	f, ok := out.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}
