package runlog

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"sort"
)

// Point is one step of a curve `train logs -plot` draws. A step without the
// value is absent from that curve (eval loss comes every few steps).
type Point struct {
	Step  int     `json:"step"`
	Value float64 `json:"value"`
}

// Series are the curves of a run against step: training loss, eval loss,
// learning rate and throughput.
type Series struct {
	Loss, EvalLoss, LR, TokensPerS []Point
}

// Len is the number of points over every curve.
func (s Series) Len() int { return len(s.Loss) + len(s.EvalLoss) + len(s.LR) + len(s.TokensPerS) }

// ReadMetrics reads rank 0's RUN/metrics.jsonl: step lines (loss, lr,
// tokens_per_s) and eval lines (eval_loss). A resumed run appends the steps
// after its checkpoint again; the last line of a step wins. Malformed lines
// (a line cut short by a kill among them) are counted and skipped.
func ReadMetrics(r io.Reader) (Series, int, error) {
	type acc struct{ loss, eval, lr, tps map[int]float64 }
	a := acc{map[int]float64{}, map[int]float64{}, map[int]float64{}, map[int]float64{}}
	bad := 0
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), 16<<20)
	for sc.Scan() {
		var m map[string]any
		if len(sc.Bytes()) == 0 {
			continue
		}
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			bad++
			continue
		}
		st, ok := m["step"].(float64)
		if !ok {
			bad++
			continue
		}
		step := int(st)
		for key, dst := range map[string]map[int]float64{"loss": a.loss, "eval_loss": a.eval, "lr": a.lr, "tokens_per_s": a.tps} {
			if v, ok := m[key].(float64); ok {
				dst[step] = v
			}
		}
	}
	if err := sc.Err(); err != nil {
		return Series{}, bad, fmt.Errorf("metrics: %w", err)
	}
	return Series{Loss: points(a.loss), EvalLoss: points(a.eval), LR: points(a.lr), TokensPerS: points(a.tps)}, bad, nil
}

func points(m map[int]float64) []Point {
	out := make([]Point, 0, len(m))
	for s, v := range m {
		out = append(out, Point{s, v})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Step < out[j].Step })
	return out
}

// SeriesFromRanks makes the curves from rank logs, for a run without
// metrics.jsonl (rank 0's disk lost, say): loss and learning rate as any rank
// logged them, throughput as the step's tokens over its time. There is no
// eval loss in rank logs.
func SeriesFromRanks(logs []*RankLog) Series {
	var s Series
	for _, l := range logs {
		if len(l.Steps) == 0 {
			continue
		}
		for _, x := range dedupSteps(l.Steps) {
			s.Loss = append(s.Loss, Point{x.Step, x.Loss})
			s.LR = append(s.LR, Point{x.Step, x.LR})
			if x.StepS > 0 {
				s.TokensPerS = append(s.TokensPerS, Point{x.Step, x.Tokens / x.StepS})
			}
		}
		break
	}
	return s
}
