package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"time"

	"train/config"
	"train/data"
	"train/model"
	"train/ops"
	"train/optim"
)

// maxBadSteps is how many steps in a row may have a non-finite loss or gradient
// (each skipped with a warning) before the run stops with an error.
const maxBadSteps = 5

// trainer is one process's training run on one rank: the model on its backend,
// host copies of the trainable tensors for the optimizer, and the data order.
type trainer struct {
	cfg    config.Config
	be     ops.Backend
	m      *model.Model
	params []*trainParam
	opt    optim.AdamW
	sched  optim.Schedule

	train, eval []data.TokenExample
	order       []int // shuffled indices into train; refilled each epoch
	cursor      int
	epoch       int
	rng         *rand.Rand
	packer      data.Packer

	out     io.Writer // human progress lines
	metrics *os.File  // metrics.jsonl
}

// trainParam pairs a model tensor on the backend with its host copy, which the
// optimizer updates and which is uploaded after each step.
type trainParam struct {
	dev  *model.Param
	host optim.Param
}

// trainRun runs a training job as cfg describes and prints a summary.
func trainRun(cfg config.Config, stdout, stderr io.Writer) error {
	start := time.Now()
	be, err := newBackend(cfg.Device)
	if err != nil {
		return err
	}
	w, err := loadModelWeights(cfg.Model, cfg.Seed)
	if err != nil {
		return err
	}
	task, trainSet, evalSet, err := loadTrainingData(cfg, w.Config)
	if err != nil {
		return err
	}
	opts := model.Options{Checkpoint: cfg.Train.ActivationCheckpointing}
	switch cfg.Train.Method {
	case "lora":
		l, err := model.NewLoRA(&w.Config, model.LoRAConfig{
			Rank: cfg.LoRA.Rank, Alpha: cfg.LoRA.Alpha, Dropout: cfg.LoRA.Dropout,
			RSLoRA: cfg.LoRA.RSLoRA, Targets: cfg.LoRA.Targets,
		}, uint64(cfg.Seed))
		if err != nil {
			return err
		}
		opts.LoRA = l
	case "qlora":
		return errors.New("train.method qlora keeps 4-bit NF4 base weights on a GPU, which this build's CPU backend cannot; use -method lora on the CPU")
	}
	m, err := model.NewModel(be, w, opts)
	if err != nil {
		return err
	}
	defer m.Close()

	t := &trainer{cfg: cfg, be: be, m: m, train: trainSet, eval: evalSet, out: stderr,
		rng:    rand.New(rand.NewPCG(uint64(cfg.Seed), 0x64617461)), // "data"
		packer: data.Packer{T: cfg.Data.SeqLen, Pack: cfg.Data.Pack, PadID: 0},
		opt:    optim.AdamW{Beta1: cfg.Train.Beta1, Beta2: cfg.Train.Beta2, Eps: cfg.Train.Eps, WeightDecay: cfg.Train.WeightDecay},
		sched: optim.Schedule{Peak: cfg.Train.LR, MinRatio: cfg.Train.MinLRRatio, Warmup: cfg.Train.WarmupSteps,
			Total: cfg.Train.Steps, Kind: cfg.Train.Schedule},
	}
	if err := t.hostParams(); err != nil {
		return err
	}
	if err := t.openRunDir(); err != nil {
		return err
	}
	defer t.metrics.Close()

	fmt.Fprintf(stderr, "train: %s on %s, %s, %d trainable tensors (%s values), %d training and %d eval examples, run dir %s\n",
		cfg.Model, be.Name(), cfg.Train.Method, len(t.params), humanInt(t.trainableValues()), len(trainSet), len(evalSet), cfg.RunDir)
	if task != nil {
		if err := t.showSamples(task, "before training", stdout); err != nil {
			return err
		}
	}
	first, last, tokens, err := t.loop()
	if err != nil {
		return err
	}
	evalLoss, evalTokens, err := t.evaluate()
	if err != nil {
		return err
	}
	if err := t.writeMetric(map[string]any{"step": cfg.Train.Steps, "eval_loss": evalLoss, "eval_tokens": evalTokens}); err != nil {
		return err
	}
	if task != nil {
		if err := t.showSamples(task, "after training", stdout); err != nil {
			return err
		}
	}
	saved, err := t.saveOutputs(w)
	if err != nil {
		return err
	}
	elapsed := time.Since(start)
	fmt.Fprintf(stdout, "done: %d steps, %s tokens in %s; train loss %.4f -> %.4f; eval loss %.4f over %d tokens\n",
		cfg.Train.Steps, humanInt(int64(tokens)), elapsed.Round(time.Second), first, last, evalLoss, evalTokens)
	fmt.Fprintf(stdout, "outputs: %s (metrics.jsonl, config.toml%s)\n", cfg.RunDir, saved)
	return nil
}

// newBackend returns the device cfg.Device names.
func newBackend(device string) (ops.Backend, error) {
	switch device {
	case "cpu", "auto":
		return ops.NewCPU(), nil
	case "cuda":
		return nil, errors.New("device cuda: this build has no GPU backend yet; use -device cpu (or auto)")
	}
	return nil, fmt.Errorf("device %q is not one of cpu, cuda, auto", device)
}

// loadTrainingData returns the training and evaluation examples: the embedded
// generated task when data.train is empty (task is then not nil, for samples),
// otherwise the JSONL files, with an evaluation split when data.eval is empty.
func loadTrainingData(cfg config.Config, mc model.Config) (task *data.ArithmeticTask, trainSet, evalSet []data.TokenExample, err error) {
	if cfg.Data.Train == "" {
		if mc.VocabSize < data.ByteVocab {
			return nil, nil, nil, fmt.Errorf("the generated task needs a vocabulary of at least %d ids (bytes and two specials); %s has %d: give -data FILE.jsonl", data.ByteVocab, cfg.Model, mc.VocabSize)
		}
		task = &data.ArithmeticTask{Ops: "+"}
		rng := rand.New(rand.NewPCG(uint64(cfg.Seed), 0x7461736b)) // "task"
		for i := 0; i < 4000; i++ {
			trainSet = append(trainSet, task.Example(task.Draw(rng)))
		}
		for i := 0; i < 200; i++ {
			evalSet = append(evalSet, task.Example(task.Draw(rng)))
		}
		return task, trainSet, evalSet, nil
	}
	all, err := data.ReadTokenFile(cfg.Data.Train, mc.VocabSize)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("data.train: %w", err)
	}
	if cfg.Data.Eval != "" {
		evalSet, err = data.ReadTokenFile(cfg.Data.Eval, mc.VocabSize)
		if err != nil {
			return nil, nil, nil, fmt.Errorf("data.eval: %w", err)
		}
		return nil, all, evalSet, nil
	}
	nEval := int(math.Round(float64(len(all)) * cfg.Data.EvalFraction))
	if nEval >= len(all) {
		nEval = len(all) - 1
	}
	return nil, all[nEval:], all[:nEval], nil
}

// hostParams makes the host copies of every trainable tensor.
func (t *trainer) hostParams() error {
	for _, p := range t.m.Params() {
		if p.Grad == nil {
			continue
		}
		n := p.Value.Len()
		tp := &trainParam{dev: p, host: optim.Param{Name: p.Name, Value: make([]float32, n), Grad: make([]float32, n),
			NoDecay: len(p.Shape) == 1}}
		if err := t.be.Download(tp.host.Value, p.Value); err != nil {
			return fmt.Errorf("train: %s: %w", p.Name, err)
		}
		t.params = append(t.params, tp)
	}
	if len(t.params) == 0 {
		return errors.New("train: the model has no trainable tensors")
	}
	return nil
}

func (t *trainer) trainableValues() int64 {
	var n int64
	for _, p := range t.params {
		n += int64(len(p.host.Value))
	}
	return n
}

// openRunDir creates the run directory with the effective config and metrics.jsonl.
func (t *trainer) openRunDir() error {
	if err := os.MkdirAll(t.cfg.RunDir, 0o755); err != nil {
		return fmt.Errorf("run dir: %w", err)
	}
	cfgText, err := t.cfg.Encode()
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(t.cfg.RunDir, "config.toml"), cfgText, 0o644); err != nil {
		return fmt.Errorf("run dir: %w", err)
	}
	f, err := os.Create(filepath.Join(t.cfg.RunDir, "metrics.jsonl"))
	if err != nil {
		return fmt.Errorf("run dir: %w", err)
	}
	t.metrics = f
	return nil
}

func (t *trainer) writeMetric(v map[string]any) error {
	line, err := json.Marshal(v)
	if err != nil {
		return err
	}
	if _, err := t.metrics.Write(append(line, '\n')); err != nil {
		return fmt.Errorf("metrics.jsonl: %w", err)
	}
	return nil
}

// nextRows lays out the next micro-batch from the shuffled training order.
func (t *trainer) nextRows() (*data.Rows, error) {
	if t.cursor >= len(t.order) {
		t.order = t.rng.Perm(len(t.train))
		t.cursor = 0
		t.epoch++
	}
	batch := make([]data.TokenExample, 0, 64)
	for i := t.cursor; i < len(t.order) && len(batch) < cap(batch); i++ {
		batch = append(batch, t.train[t.order[i]])
	}
	rows, used, err := t.packer.Fill(batch, t.cfg.Train.MicroBatch)
	if err != nil {
		return nil, err
	}
	t.cursor += used
	return rows, nil
}

func batchOf(r *data.Rows, seed uint64) *model.Batch {
	return &model.Batch{B: r.B, T: r.T, IDs: r.IDs, Labels: r.Labels, Positions: r.Positions, Segments: r.Segments, Seed: seed}
}

// loop runs every optimizer step and returns the first and last training loss and
// the number of tokens processed.
func (t *trainer) loop() (first, last float64, tokens int, err error) {
	cfg := t.cfg.Train
	t.m.SetTraining(true)
	bad := 0
	stepStart := time.Now()
	var windowTokens int
	for step := 0; step < cfg.Steps; step++ {
		rows := make([]*data.Rows, cfg.GradAccum)
		total := 0
		for i := range rows {
			if rows[i], err = t.nextRows(); err != nil {
				return 0, 0, 0, err
			}
			total += rows[i].ScoredLabels()
		}
		if total == 0 {
			return 0, 0, 0, fmt.Errorf("step %d: every label of the step is masked (-100): nothing to learn from; check the data's labels", step)
		}
		t.m.ZeroGrads()
		var lossSum float64
		for i, r := range rows {
			ls, _, err := t.m.Forward(batchOf(r, uint64(t.cfg.Seed)<<32^uint64(step*cfg.GradAccum+i)))
			if err != nil {
				return 0, 0, 0, fmt.Errorf("step %d: %w", step, err)
			}
			lossSum += ls
			if err := t.m.Backward(float32(1 / float64(total))); err != nil {
				return 0, 0, 0, fmt.Errorf("step %d: %w", step, err)
			}
			tokens += r.B * r.T
			windowTokens += r.B * r.T
		}
		loss := lossSum / float64(total)
		for _, p := range t.params {
			if err := t.be.Download(p.host.Grad, p.dev.Grad); err != nil {
				return 0, 0, 0, fmt.Errorf("step %d: %w", step, err)
			}
		}
		hp := t.hostList()
		norm := math.Sqrt(optim.SumSquares(hp))
		if !finite(loss) || !finite(norm) {
			bad++
			fmt.Fprintf(t.out, "warning: step %d: loss %v, gradient norm %v: step skipped (%d in a row)\n", step, loss, norm, bad)
			if bad >= maxBadSteps {
				return 0, 0, 0, fmt.Errorf("step %d: %d steps in a row had a non-finite loss or gradient; lower train.lr or check the data", step, bad)
			}
			continue
		}
		bad = 0
		optim.ScaleGrads(hp, optim.ClipScale(norm, cfg.MaxGradNorm))
		lr := t.sched.LR(step)
		if err := t.opt.Step(hp, lr); err != nil {
			return 0, 0, 0, err
		}
		for _, p := range t.params {
			if err := t.be.Upload(p.dev.Value, p.host.Value); err != nil {
				return 0, 0, 0, err
			}
		}
		if step == 0 {
			first = loss
		}
		last = loss
		if step%cfg.LogEvery == 0 || step == cfg.Steps-1 {
			el := time.Since(stepStart).Seconds()
			tps := float64(windowTokens) / el
			fmt.Fprintf(t.out, "step %5d/%d  loss %.4f  lr %.2e  grad_norm %.3f  tokens/s %.0f\n", step+1, cfg.Steps, loss, lr, norm, tps)
			stepStart, windowTokens = time.Now(), 0
			if err := t.writeMetric(map[string]any{"step": step + 1, "loss": loss, "lr": lr, "grad_norm": norm,
				"tokens": tokens, "tokens_per_s": tps, "epoch": t.epoch}); err != nil {
				return 0, 0, 0, err
			}
		}
		if cfg.EvalEvery > 0 && (step+1)%cfg.EvalEvery == 0 && step+1 < cfg.Steps {
			el, n, err := t.evaluate()
			if err != nil {
				return 0, 0, 0, err
			}
			t.m.SetTraining(true)
			fmt.Fprintf(t.out, "step %5d/%d  eval_loss %.4f over %d tokens\n", step+1, cfg.Steps, el, n)
			if err := t.writeMetric(map[string]any{"step": step + 1, "eval_loss": el, "eval_tokens": n}); err != nil {
				return 0, 0, 0, err
			}
		}
	}
	return first, last, tokens, nil
}

func (t *trainer) hostList() []*optim.Param {
	out := make([]*optim.Param, len(t.params))
	for i, p := range t.params {
		out[i] = &p.host
	}
	return out
}

// evaluate is the mean loss over every scored label of the evaluation set.
func (t *trainer) evaluate() (float64, int, error) {
	t.m.SetTraining(false)
	return evalExamples(t.m, t.eval, t.cfg.Data.SeqLen, t.cfg.Train.MicroBatch)
}

// evalExamples is the mean loss over every scored label of examples, each in a row
// of its own (no packing, so nothing depends on batch composition), and the count.
func evalExamples(m *model.Model, examples []data.TokenExample, maxT, B int) (float64, int, error) {
	var lossSum float64
	var count int
	for i := 0; i < len(examples); {
		T := 2
		end := min(i+B, len(examples))
		for _, ex := range examples[i:end] {
			T = max(T, len(ex.InputIDs))
		}
		if maxT > 0 {
			T = min(T, maxT)
		}
		p := data.Packer{T: T}
		r, used, err := p.Fill(examples[i:end], end-i)
		if err != nil {
			return 0, 0, err
		}
		ls, n, err := m.Forward(batchOf(r, 0))
		if err != nil {
			return 0, 0, fmt.Errorf("eval: %w", err)
		}
		lossSum += ls
		count += n
		i += used
	}
	if count == 0 {
		return 0, 0, errors.New("eval: every label is masked (-100): there is nothing to score")
	}
	return lossSum / float64(count), count, nil
}

// showSamples prints the model's greedy answers to a few fixed prompts.
func (t *trainer) showSamples(task *data.ArithmeticTask, when string, w io.Writer) error {
	t.m.SetTraining(false)
	problems := []data.Problem{{A: 7, B: 8, Op: '+'}, {A: 3, B: 4, Op: '+'}, {A: 9, B: 9, Op: '+'},
		{A: 6, B: 0, Op: '+'}, {A: 2, B: 9, Op: '+'}, {A: 5, B: 5, Op: '+'}}
	var line []string
	right := 0
	for _, p := range problems {
		prompt := append([]int{data.ByteBOS}, data.ByteIDs(task.Prompt(p))...)
		ids, err := greedy(t.m, prompt, 3, data.ByteEOS)
		if err != nil {
			return err
		}
		got := data.ByteText(ids)
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
// at eos. It reruns the whole sequence per token: fine for short samples.
func greedy(m *model.Model, prompt []int, n, eos int) ([]int, error) {
	ids := append([]int(nil), prompt...)
	var out []int
	V := m.Config().VocabSize
	for i := 0; i < n; i++ {
		b := &model.Batch{B: 1, T: len(ids), IDs: make([]int32, len(ids))}
		for j, id := range ids {
			b.IDs[j] = int32(id)
		}
		if _, _, err := m.Forward(b); err != nil {
			return nil, err
		}
		logits, err := m.Logits()
		if err != nil {
			return nil, err
		}
		row := logits[(len(ids)-1)*V : len(ids)*V]
		best := 0
		for v := range row {
			if row[v] > row[best] {
				best = v
			}
		}
		out = append(out, best)
		if best == eos {
			break
		}
		ids = append(ids, best)
	}
	return out, nil
}

// saveOutputs writes the trained adapter (LoRA) in peft's format and says where.
func (t *trainer) saveOutputs(w *model.Weights) (string, error) {
	if t.cfg.Train.Method != "lora" {
		return "", nil
	}
	ts, err := t.m.LoRATensors()
	if err != nil {
		return "", err
	}
	l, err := model.NewLoRA(&w.Config, model.LoRAConfig{Rank: t.cfg.LoRA.Rank, Alpha: t.cfg.LoRA.Alpha,
		Dropout: t.cfg.LoRA.Dropout, RSLoRA: t.cfg.LoRA.RSLoRA, Targets: t.cfg.LoRA.Targets}, 0)
	if err != nil {
		return "", err
	}
	if err := l.SetTensors(ts); err != nil {
		return "", err
	}
	dir := filepath.Join(t.cfg.RunDir, "adapter")
	if err := model.WritePEFTAdapter(dir, l, &w.Config, t.cfg.Model); err != nil {
		return "", err
	}
	return ", adapter/ in peft format", nil
}

func finite(v float64) bool { return !math.IsNaN(v) && !math.IsInf(v, 0) }

// humanInt writes n with a k/M/G suffix.
func humanInt(n int64) string {
	switch {
	case n >= 1e9:
		return fmt.Sprintf("%.2fG", float64(n)/1e9)
	case n >= 1e6:
		return fmt.Sprintf("%.2fM", float64(n)/1e6)
	case n >= 1e4:
		return fmt.Sprintf("%.1fk", float64(n)/1e3)
	}
	return fmt.Sprint(n)
}
