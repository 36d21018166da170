package trainer

import (
	"errors"
	"fmt"
	"io"
	"strings"
	"train/data"
	"train/model"
)

// hasEval reports whether there is an evaluation set (-eval-fraction 0
// without -eval-data leaves none: the run then trains and saves without
// evaluating).
func (t *trainer) hasEval() bool { return t.eval != nil && t.eval.Len() > 0 }

// evaluate is the mean loss over every scored label of the evaluation set.
func (t *trainer) evaluate() (float64, int, error) {
	t.setTraining(false)
	for _, m := range t.chunks {
		if err := m.UseSlot(0); err != nil {
			return 0, 0, err
		}
	}
	return t.evalPipeline(t.eval)
}

// setTraining turns dropout on or off in every chunk.
func (t *trainer) setTraining(on bool) {
	for _, m := range t.chunks {
		m.SetTraining(on)
	}
}

// EvalExamples is the mean loss over every scored label of examples, each in a row
// of its own (no packing, so nothing depends on batch composition), and the count.
func EvalExamples(m *model.Model, examples []data.TokenExample, maxT, B int) (float64, int, error) {
	var lossSum float64
	var count int
	cut, err := evalRows(data.Slice(examples), maxT, B, func(r *data.Rows) error {
		ls, n, err := m.Forward(batchOf(r, 0))
		if err != nil {
			return fmt.Errorf("eval: %w", err)
		}
		lossSum, count = lossSum+ls, count+n
		return nil
	})
	if err != nil {
		return 0, 0, err
	}
	return meanLoss(lossSum, count, cut, maxT)
}

// evalRows lays examples out for evaluation, each in a row of its own (so nothing
// depends on how they are batched), B rows at a time, as long as the batch's
// longest example (at most maxT when maxT > 0), and calls each on every batch.
// It returns how many scored labels the cut to maxT dropped.
func evalRows(examples data.Examples, maxT, B int, each func(*data.Rows) error) (cut int, err error) {
	for i := 0; i < examples.Len(); {
		end := min(i+B, examples.Len())
		T := 2
		batch := make([]data.TokenExample, 0, end-i)
		for k := i; k < end; k++ {
			ex, err := examples.Example(k)
			if err != nil {
				return cut, err
			}
			batch = append(batch, ex)
			T = max(T, len(ex.InputIDs))
		}
		if maxT > 0 {
			T = min(T, maxT)
		}
		p := data.Packer{T: T}
		r, used, err := p.Fill(batch, end-i)
		if err != nil {
			return cut, err
		}
		cut += p.CutLabels
		i += used
		if err := each(r); err != nil {
			return cut, err
		}
	}
	return cut, nil
}

// meanLoss is the mean of a loss summed over count scored labels; cut more
// were dropped by cutting examples to maxT tokens. A mean that is not finite
// is an error: it means broken weights, and JSON cannot hold it.
func meanLoss(sum float64, count, cut, maxT int) (float64, int, error) {
	switch {
	case count == 0 && cut > 0:
		return 0, 0, fmt.Errorf("eval: every scored label lies past data.seq_len %d and was cut off (%d labels): raise -seq or shorten the examples", maxT, cut)
	case count == 0:
		return 0, 0, errors.New("eval: every label is masked (-100): there is nothing to score")
	}
	loss := sum / float64(count)
	if !finite(loss) {
		return 0, 0, fmt.Errorf("eval: the loss over %d tokens is %v, not a number: the model's (or the adapter's) weights hold NaN or Inf values, or the forward pass overflowed", count, loss)
	}
	return loss, count, nil
}

// showSamples prints the model's greedy answers to a few fixed prompts.
func (t *trainer) showSamples(task *data.ArithmeticTask, when string, w io.Writer) error {
	t.setTraining(false)
	problems := []data.Problem{{A: 7, B: 8, Op: '+'}, {A: 3, B: 4, Op: '+'}, {A: 9, B: 9, Op: '+'},
		{A: 6, B: 0, Op: '+'}, {A: 2, B: 9, Op: '+'}, {A: 5, B: 5, Op: '+'}}
	var line []string
	right := 0
	for _, p := range problems {
		prompt := append([]int{data.ByteBOS}, data.ByteIDs(task.Prompt(p))...)
		ids, err := greedy(t.chunks[0], prompt, 3, data.ByteEOS)
		got := data.ByteText(ids)
		if err != nil {
			got = "(" + err.Error() + ")" // a sample is a view, not a reason to stop
		}
		mark := "✗"
		if got == task.Answer(p) {
			mark, right = "✓", right+1
		}
		line = append(line, fmt.Sprintf("%s%q %s", task.Prompt(p), got, mark))
	}
	fmt.Fprintf(w, "%-15s %s   (%d of %d right)\n", when+":", strings.Join(line, "  "), right, len(problems))
	return nil
}

// greedy extends prompt by up to n tokens, each the most likely next one, stopping
// at eos, with the model's KV-cache decoder.
func greedy(m *model.Model, prompt []int, n, eos int) ([]int, error) {
	d, err := model.NewDecoder(m, len(prompt)+n)
	if err != nil {
		return nil, err
	}
	defer d.Close()
	logits, err := d.Append(prompt)
	if err != nil {
		return nil, err
	}
	var out []int
	for i := 0; i < n; i++ {
		best, err := model.Argmax(logits)
		if err != nil {
			return nil, err
		}
		out = append(out, best)
		if best == eos || i == n-1 {
			break
		}
		if logits, err = d.Append([]int{best}); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// evalPipeline is the mean loss over examples, each in a row of its own, run
// through the pipeline: replica d takes examples d, d+D, ...; the last stages'
// sums are added over the world.
func (t *trainer) evalPipeline(examples data.Examples) (float64, int, error) {
	d := t.dist
	mine := data.Subset{Of: examples}
	for i := d.me.Replica; i < examples.Len(); i += d.plan.Replicas {
		mine.Idx = append(mine.Idx, i)
	}
	C := t.chunks[0].Config().HiddenSize
	wire := newStageWire(d, t.chunks[0])
	var lossSum float64
	var count int
	// Each row batch goes through the rank's chunks in order; between two
	// virtual stages it travels to the next rank of the ring (from the last
	// stage back to the first for the next chunk).
	prev, next := d.ringPeers()
	cut, err := evalRows(mine, t.cfg.Data.SeqLen, t.cfg.Train.MicroBatch, func(r *data.Rows) error {
		for c, m := range t.chunks {
			ch := t.ranges[c]
			if !ch.Embed {
				in := make([]float32, r.B*r.T*C)
				if err := wire.recv(in, prev); err != nil {
					return fmt.Errorf("eval: %w", err)
				}
				if err := m.Plan(r.B, r.T); err != nil {
					return err
				}
				if err := t.be.Upload(m.StageInput(), in); err != nil {
					return err
				}
			}
			ls, n, err := m.Forward(batchOf(r, 0))
			if err != nil {
				return fmt.Errorf("eval: %w", err)
			}
			if ch.Head {
				lossSum, count = lossSum+ls, count+n
				continue
			}
			out := make([]float32, r.B*r.T*C)
			if err := t.be.Download(out, m.StageOutput()); err != nil {
				return err
			}
			if err := wire.send(out, next); err != nil {
				return fmt.Errorf("eval: %w", err)
			}
		}
		return nil
	})
	if err != nil {
		return 0, 0, err
	}
	if !d.last() {
		cut = 0 // the last stages count what they score
	}
	sums := []float64{lossSum, float64(count), float64(cut)}
	if err := d.AllReduce(sums); err != nil {
		return 0, 0, fmt.Errorf("eval: %w", err)
	}
	return meanLoss(sums[0], int(sums[1]), int(sums[2]), t.cfg.Data.SeqLen)
}
