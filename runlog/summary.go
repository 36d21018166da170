package runlog

import (
	"fmt"
	"math"
	"regexp"
	"sort"
	"strconv"
	"time"
)

// Options tune Summarize. The zero value takes the defaults.
type Options struct {
	// Straggler is the margin: a rank whose median own work per step (or
	// median step time) exceeds the median over ranks by this factor is named
	// a straggler. Default 1.2.
	Straggler float64
	// Windows is how many windows of steps the throughput is reported over.
	// Default 8.
	Windows int
	// Context is how many records before a rank's first error to show.
	// Default 5.
	Context int
	// StallAfter is how far a running rank's last record may lag behind the
	// newest record of the run (or Now) before it counts as having stopped
	// logging. Default: 10 median step times, at least a minute.
	StallAfter time.Duration
	// Now, when set, is the current time: a run whose every rank has been
	// silent for StallAfter is reported as stopped, not running, and a rank
	// without an end record in a run whose other ranks ended is lost once the
	// run has been silent that long. Zero takes the logs as complete (the run
	// is over).
	Now time.Time
	// Rank, when not -1, limits the per-rank parts of the summary to that rank
	// (stragglers are still judged against every rank). Zero means rank 0.
	Rank int
}

// DefaultOptions are the settings `train logs` starts from.
func DefaultOptions() Options { return Options{Straggler: 1.2, Windows: 8, Context: 5, Rank: -1} }

func (o Options) withDefaults() Options {
	if o.Straggler <= 0 {
		o.Straggler = 1.2
	}
	if o.Windows <= 0 {
		o.Windows = 8
	}
	if o.Context < 0 {
		o.Context = 0
	}
	return o
}

// Rank states.
const (
	Finished = "finished" // the latest session ended with a "finished" record
	Failed   = "failed"   // it logged an error
	Running  = "running"  // it is still logging
	Stopped  = "stopped"  // it went silent without an end record: killed?
	Missing  = "missing"  // a rank of the world with no log at all
	// Lost is a rank whose log ends without an end record while the job
	// failed around it: the other ranks' errors name it, or they all ended
	// and it never did. Killed, out of memory, or its node gone.
	Lost = "lost"
)

// RankSummary is one rank's line in the summary. Times are seconds.
type RankSummary struct {
	Rank     int       `json:"rank"`
	Host     string    `json:"host,omitempty"`
	Device   string    `json:"device,omitempty"`
	Stage    int       `json:"stage"`
	Replica  int       `json:"replica"`
	State    string    `json:"state"`
	Steps    int       `json:"steps"` // step records
	LastStep int       `json:"last_step"`
	Last     time.Time `json:"last_record"`
	// Step time percentiles, and the median of the rank's own work (step time
	// less communication and bubble).
	StepP50 float64 `json:"step_p50_s"`
	StepP90 float64 `json:"step_p90_s"`
	StepMax float64 `json:"step_max_s"`
	WorkP50 float64 `json:"work_p50_s"`
	// Mean per step (warm-up steps left out when there are others) of where the
	// time went; Other is what none of the three covers (data, host, sleeping).
	Compute float64 `json:"compute_mean_s"`
	Comm    float64 `json:"comm_mean_s"`
	Bubble  float64 `json:"bubble_mean_s"`
	Other   float64 `json:"other_mean_s"`
	RSSMax  float64 `json:"rss_max_bytes"`
	// GPUPeak is the most GPU memory in use (0 on the CPU); GPUUtil the mean
	// NVML utilisation over the steps that logged it, -1 when none did.
	GPUPeak float64 `json:"gpu_peak_bytes"`
	GPUUtil float64 `json:"gpu_util_mean_pct"`

	Warnings  int  `json:"warnings"`
	Malformed int  `json:"malformed_lines"`
	Truncated bool `json:"truncated"`
	Sessions  int  `json:"sessions"`
}

// Straggler is a rank slower than the others, and where its time goes.
type Straggler struct {
	Rank       int     `json:"rank"`
	Host       string  `json:"host,omitempty"`
	WorkP50    float64 `json:"work_p50_s"`
	MedianWork float64 `json:"median_work_s"` // over ranks
	StepP50    float64 `json:"step_p50_s"`
	MedianStep float64 `json:"median_step_s"`
	Ratio      float64 `json:"ratio"` // the larger of WorkP50/MedianWork and StepP50/MedianStep
	// Where names the part of the step the rank spends more time in than the
	// median rank does ("compute", "comm", "bubble" or "other"), and Excess
	// how many seconds more per step.
	Where  string  `json:"where"`
	Excess float64 `json:"excess_s"`
	// Compute, Comm, Bubble and Other are the rank's mean seconds per step.
	Compute float64 `json:"compute_mean_s"`
	Comm    float64 `json:"comm_mean_s"`
	Bubble  float64 `json:"bubble_mean_s"`
	Other   float64 `json:"other_mean_s"`
}

// Silence is a rank that stopped logging without an end record.
type Silence struct {
	Rank     int           `json:"rank"`
	Host     string        `json:"host,omitempty"`
	Last     time.Time     `json:"last_record"`
	LastStep int           `json:"last_step"`
	Behind   time.Duration `json:"behind_ns"` // behind the newest record of the run
}

// Window is the throughput over a range of steps.
type Window struct {
	FromStep   int       `json:"from_step"`
	ToStep     int       `json:"to_step"`
	Start      time.Time `json:"start"`
	Tokens     float64   `json:"tokens"`
	Seconds    float64   `json:"seconds"` // sum of the steps' times
	TokensPerS float64   `json:"tokens_per_s"`
}

// Malformed notes a rank log with lines that are not records.
type Malformed struct {
	Rank      int   `json:"rank"`
	Lines     int   `json:"lines"`
	First     []int `json:"first_lines"`
	Truncated bool  `json:"truncated_last_line"`
}

// Summary is what `train logs` reports about a run.
type Summary struct {
	Run      string    `json:"run"`
	World    int       `json:"world"` // from the start records; 0 when unknown
	Model    string    `json:"model,omitempty"`
	Method   string    `json:"method,omitempty"`
	Device   string    `json:"device,omitempty"`
	Status   string    `json:"status"` // the worst rank state: failed, stopped, missing, running, finished
	Done     bool      `json:"done"`   // every rank of the world finished or failed
	Margin   float64   `json:"straggler_margin"`
	LastStep int       `json:"last_step"`
	Newest   time.Time `json:"newest_record"`
	// Failures are each failed rank's first error, the earliest first: the
	// first rank to fail is most often the cause, the others its victims.
	Failures    []Failure     `json:"failures"`
	Silent      []Silence     `json:"silent"`
	Missing     []int         `json:"missing"`
	Stragglers  []Straggler   `json:"stragglers"`
	Ranks       []RankSummary `json:"ranks"`
	Throughput  []Window      `json:"throughput"`
	Checkpoints []Checkpoint  `json:"checkpoints"`
	Malformed   []Malformed   `json:"malformed"`
}

// percentile is the nearest-rank p-th percentile (0 < p <= 1) of sorted xs.
func percentile(sorted []float64, p float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	i := int(math.Ceil(p*float64(len(sorted)))) - 1
	return sorted[min(max(i, 0), len(sorted)-1)]
}

// median of xs (the mean of the middle two for an even count); xs is sorted in place.
func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	sort.Float64s(xs)
	n := len(xs)
	if n%2 == 1 {
		return xs[n/2]
	}
	return (xs[n/2-1] + xs[n/2]) / 2
}

// Summarize judges the logs of one run. It is a pure function of its input:
// the same logs and options give the same summary.
func Summarize(run string, logs []*RankLog, o Options) Summary {
	o = o.withDefaults()
	s := Summary{Run: run, Margin: o.Straggler, Failures: []Failure{}, Silent: []Silence{}, Missing: []int{},
		Stragglers: []Straggler{}, Ranks: []RankSummary{}, Throughput: []Window{}, Checkpoints: []Checkpoint{}, Malformed: []Malformed{}}
	byRank := map[int]*RankLog{}
	for _, l := range logs {
		byRank[l.Rank] = l
		if w, ok := l.startInt("world"); ok && w > s.World {
			s.World = w
		}
		if l.Start != nil && s.Model == "" {
			s.Model, s.Method, s.Device = l.startString("model"), l.startString("method"), l.startString("device")
			if p := l.startString("precision"); p != "" {
				s.Device += " (" + p + ")"
			}
		}
		if l.Last.After(s.Newest) {
			s.Newest = l.Last
		}
		s.LastStep = max(s.LastStep, l.LastStep())
	}
	for r := 0; r < s.World; r++ {
		if byRank[r] == nil {
			s.Missing = append(s.Missing, r)
		}
	}

	all := make([]RankSummary, 0, len(logs))
	for _, l := range logs {
		all = append(all, rankSummary(l))
	}
	var steps []float64
	for _, r := range all {
		if r.Steps > 0 {
			steps = append(steps, r.StepP50)
		}
	}
	medStep := median(steps)
	stall := o.StallAfter
	if stall <= 0 {
		stall = max(time.Minute, time.Duration(10*medStep*float64(time.Second)))
	}
	// Whom each failure blames: a failed rank whose error names another (the
	// collectives name the rank that was lost or failed first) failed because
	// of it. A rank with no end record that the others blame is lost. Blames
	// are taken the earliest first, and one that would close a circle is
	// dropped: a rank the others had already blamed (a stopped rank that,
	// continued, finds them gone and names one) is the cause, not theirs.
	var failed []*RankLog
	for _, r := range all {
		if l := byRank[r.Rank]; r.State == Failed && l.Failure != nil {
			failed = append(failed, l)
		}
	}
	sort.SliceStable(failed, func(i, j int) bool { return failed[i].Failure.Time.Before(failed[j].Failure.Time) })
	causes := map[int]int{}
	blamedBy := map[int][]int{}
	for _, l := range failed {
		c, ok := namedRank(l.Failure.Error)
		if !ok || c == l.Rank || leadsTo(causes, c, l.Rank) {
			continue
		}
		causes[l.Rank] = c
		blamedBy[c] = append(blamedBy[c], l.Rank)
	}
	// A running rank far behind the newest record has stopped logging.
	ended := false
	for i, r := range all {
		switch {
		case r.State == Running && len(blamedBy[r.Rank]) > 0:
			all[i].State = Lost
		case r.State == Running && s.Newest.Sub(r.Last) > stall:
			all[i].State = Stopped
		}
		ended = ended || all[i].State == Finished || all[i].State == Failed
	}
	// Once the run is over (the logs are complete, or silent for the stall
	// time), a rank that never wrote an end record, in a run where others
	// did, was lost; in a run where none did, every rank stopped.
	quiet := o.Now.IsZero() || o.Now.Sub(s.Newest) > stall
	for i, r := range all {
		switch {
		case (r.State == Running || r.State == Stopped) && ended && quiet:
			all[i].State = Lost
		case r.State == Running && !o.Now.IsZero() && o.Now.Sub(s.Newest) > stall:
			all[i].State = Stopped
		}
	}
	s.Done = s.World > 0 && len(s.Missing) == 0
	for _, r := range all {
		if r.State != Finished && r.State != Failed && r.State != Lost {
			s.Done = false
		}
	}
	s.Status = Finished
	rankOf := map[string]int{Finished: 0, Running: 1, Missing: 2, Stopped: 3, Failed: 4}
	if len(s.Missing) > 0 {
		s.Status = Missing
	}
	for _, r := range all {
		st := r.State
		if st == Lost {
			st = Failed // a rank lost is the run failed
		}
		if rankOf[st] > rankOf[s.Status] {
			s.Status = st
		}
	}
	s.Stragglers = stragglers(all, o.Straggler)

	keep := func(rank int) bool { return o.Rank < 0 || rank == o.Rank }
	for _, r := range all {
		if !keep(r.Rank) {
			continue
		}
		s.Ranks = append(s.Ranks, r)
		l := byRank[r.Rank]
		var f *Failure
		switch {
		case r.State == Failed && l.Failure != nil:
			f = new(Failure)
			*f = *l.Failure
			if c, ok := causes[r.Rank]; ok {
				f.CausedBy = &c
			}
		case r.State == Lost:
			f = &Failure{Rank: r.Rank, Host: r.Host, Time: r.Last, LastStep: r.LastStep, Lost: true,
				Error: lostReason(blamedBy[r.Rank]), Context: append([]Record(nil), l.recent...)}
		}
		if f != nil {
			if len(f.Context) > o.Context {
				f.Context = f.Context[len(f.Context)-o.Context:]
			}
			s.Failures = append(s.Failures, *f)
		}
		if r.State == Stopped || r.State == Lost {
			s.Silent = append(s.Silent, Silence{Rank: r.Rank, Host: r.Host, Last: r.Last, LastStep: r.LastStep, Behind: s.Newest.Sub(r.Last)})
		}
		if l.Malformed > 0 || l.Truncated {
			s.Malformed = append(s.Malformed, Malformed{Rank: r.Rank, Lines: l.Malformed, First: l.MalformedLines, Truncated: l.Truncated})
		}
	}
	// Causes first, then their consequences; each the earliest first.
	sort.SliceStable(s.Failures, func(i, j int) bool {
		a, b := s.Failures[i], s.Failures[j]
		if (a.CausedBy == nil) != (b.CausedBy == nil) {
			return a.CausedBy == nil
		}
		return a.Time.Before(b.Time)
	})
	if o.Rank >= 0 {
		var st []Straggler
		for _, x := range s.Stragglers {
			if keep(x.Rank) {
				st = append(st, x)
			}
		}
		s.Stragglers = append([]Straggler{}, st...)
		var ms []int
		for _, r := range s.Missing {
			if keep(r) {
				ms = append(ms, r)
			}
		}
		s.Missing = append([]int{}, ms...)
	}
	s.Throughput = throughput(logs, o.Windows)
	seen := map[Checkpoint]bool{}
	for _, l := range logs {
		for _, c := range l.Checkpoints {
			if !seen[c] {
				seen[c] = true
				s.Checkpoints = append(s.Checkpoints, c)
			}
		}
	}
	sort.SliceStable(s.Checkpoints, func(i, j int) bool { return s.Checkpoints[i].Time.Before(s.Checkpoints[j].Time) })
	return s
}

// rankNamed matches a rank named the way the collectives name the rank at
// fault in an error ("rank 3 (host gpu7, 10.0.0.7:4100): lost: ...") or a
// plainer "recv from rank 2: EOF": the rank, an optional parenthesis, a colon.
var rankNamed = regexp.MustCompile(`\brank (\d+)(?: \([^()]*\))?: `)

// namedRank is the first rank an error names as the one at fault.
func namedRank(err string) (int, bool) {
	m := rankNamed.FindStringSubmatch(err)
	if m == nil {
		return 0, false
	}
	r, convErr := strconv.Atoi(m[1])
	return r, convErr == nil
}

// leadsTo reports whether following causes from rank from reaches rank to
// (causes has no circle: a blame that would close one is never added).
func leadsTo(causes map[int]int, from, to int) bool {
	for range len(causes) + 1 {
		if from == to {
			return true
		}
		next, ok := causes[from]
		if !ok {
			return false
		}
		from = next
	}
	return false
}

// lostReason says what a lost rank's log shows, and who blamed it.
func lostReason(blamedBy []int) string {
	msg := "its log ends without a finished or failed record (killed, out of memory, or its node lost?)"
	switch len(blamedBy) {
	case 0:
	case 1:
		msg += fmt.Sprintf("; rank %d's error names it", blamedBy[0])
	default:
		sort.Ints(blamedBy)
		msg += "; the errors of ranks " + ints(blamedBy) + " name it"
	}
	return msg
}

func rankSummary(l *RankLog) RankSummary {
	r := RankSummary{Rank: l.Rank, Host: l.Host(), Device: l.startString("device"), Steps: len(l.Steps), LastStep: l.LastStep(),
		Last: l.Last, Malformed: l.Malformed, Truncated: l.Truncated, Sessions: l.Sessions}
	r.Stage, _ = l.startInt("stage")
	r.Replica, _ = l.startInt("replica")
	switch {
	case l.End == "failed" || l.Failure != nil:
		r.State = Failed
	case l.End == "finished":
		r.State = Finished
	default:
		r.State = Running
	}
	for _, e := range l.Events {
		if e.Level == "WARN" {
			r.Warnings++
		}
	}
	if len(l.Steps) == 0 {
		return r
	}
	var st, work []float64
	var n, util, utilN float64
	warm := 0
	for _, x := range l.Steps {
		if x.Warmup {
			warm++
		}
	}
	for _, x := range l.Steps {
		st = append(st, x.StepS)
		work = append(work, x.Work())
		r.RSSMax = math.Max(r.RSSMax, x.RSSBytes)
		r.GPUPeak = math.Max(r.GPUPeak, x.GPUPeakBytes)
		if x.Warmup && warm < len(l.Steps) {
			continue // start-up is not where a rank's time usually goes
		}
		if x.GPUUtil >= 0 {
			util += x.GPUUtil
			utilN++
		}
		n++
		r.Compute += x.ComputeS
		r.Comm += x.CommS
		r.Bubble += x.BubbleS
		r.Other += math.Max(0, x.StepS-x.ComputeS-x.CommS-x.BubbleS)
	}
	r.Compute, r.Comm, r.Bubble, r.Other = r.Compute/n, r.Comm/n, r.Bubble/n, r.Other/n
	r.GPUUtil = -1
	if utilN > 0 {
		r.GPUUtil = util / utilN
	}
	sort.Float64s(st)
	r.StepP50, r.StepP90, r.StepMax = percentile(st, 0.5), percentile(st, 0.9), st[len(st)-1]
	r.WorkP50 = median(work)
	return r
}

// noiseFloor is the smallest excess, as a fraction of the median step time,
// worth naming a straggler for: a rank 30% slower at something that takes 1%
// of the step makes nobody wait.
const noiseFloor = 0.05

// stragglers names the ranks whose median own work (or median step time)
// exceeds the median over ranks by the margin. Own work, not step time, is
// the main test: in synchronous training the fast ranks wait for the slow one
// inside their collectives, so every rank's step takes about as long, and only
// the time a rank spends not waiting shows which one holds the others up.
func stragglers(all []RankSummary, margin float64) []Straggler {
	var work, step, comp, comm, bub, oth []float64
	for _, r := range all {
		if r.Steps == 0 {
			continue
		}
		work, step = append(work, r.WorkP50), append(step, r.StepP50)
		comp, comm, bub, oth = append(comp, r.Compute), append(comm, r.Comm), append(bub, r.Bubble), append(oth, r.Other)
	}
	out := []Straggler{}
	if len(work) < 2 {
		return out
	}
	medWork, medStep := median(work), median(step)
	medPart := map[string]float64{"compute": median(comp), "comm": median(comm), "bubble": median(bub), "other": median(oth)}
	floor := noiseFloor * medStep
	for _, r := range all {
		if r.Steps == 0 {
			continue
		}
		ratio := 0.0
		if medWork > 0 && r.WorkP50 > margin*medWork && r.WorkP50-medWork > floor {
			ratio = r.WorkP50 / medWork
		}
		if medStep > 0 && r.StepP50 > margin*medStep && r.StepP50-medStep > floor {
			ratio = math.Max(ratio, r.StepP50/medStep)
		}
		if ratio == 0 {
			continue
		}
		x := Straggler{Rank: r.Rank, Host: r.Host, WorkP50: r.WorkP50, MedianWork: medWork, StepP50: r.StepP50, MedianStep: medStep,
			Ratio: ratio, Compute: r.Compute, Comm: r.Comm, Bubble: r.Bubble, Other: r.Other}
		x.Where, x.Excess = "other", math.Inf(-1)
		for _, p := range []struct {
			name string
			v    float64
		}{{"compute", r.Compute}, {"comm", r.Comm}, {"bubble", r.Bubble}, {"other", r.Other}} {
			if d := p.v - medPart[p.name]; d > x.Excess {
				x.Where, x.Excess = p.name, d
			}
		}
		out = append(out, x)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Ratio > out[j].Ratio })
	return out
}

// dedupSteps is a rank's steps with each step number once, the last logged
// (a resumed run logs the steps after its checkpoint again), by step.
func dedupSteps(steps []Step) []Step {
	last := map[int]int{}
	for i, x := range steps {
		last[x.Step] = i
	}
	out := make([]Step, 0, len(last))
	for i, x := range steps {
		if last[x.Step] == i {
			out = append(out, x)
		}
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].Step < out[j].Step })
	return out
}

// throughput splits the steps of the lowest rank that logged any (the step
// records carry the whole step's tokens on every rank) into n windows.
func throughput(logs []*RankLog, n int) []Window {
	out := []Window{}
	var steps []Step
	for _, l := range logs { // logs are by rank
		if len(l.Steps) > 0 {
			steps = dedupSteps(l.Steps)
			break
		}
	}
	if len(steps) == 0 {
		return out
	}
	n = min(n, len(steps))
	for w := 0; w < n; w++ {
		lo, hi := w*len(steps)/n, (w+1)*len(steps)/n
		win := Window{FromStep: steps[lo].Step, ToStep: steps[hi-1].Step,
			Start: steps[lo].Time.Add(-time.Duration(steps[lo].StepS * float64(time.Second)))}
		for _, x := range steps[lo:hi] {
			win.Tokens += x.Tokens
			win.Seconds += x.StepS
		}
		if win.Seconds > 0 {
			win.TokensPerS = win.Tokens / win.Seconds
		}
		out = append(out, win)
	}
	return out
}
