package trainer

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"train/ckpt"
	"train/config"
	"train/format"
	"train/model"
)

// Checkpoint entries. A tensor is stored under its logical (Hugging Face or peft)
// name with its full shape, each rank writing the element ranges it owns, so a run
// on another world size, pipeline split or ZeRO setting reads back exactly the
// ranges it needs:
//
//	param/NAME     the values (written by replica 0; every replica holds the same)
//	adam.m/NAME    AdamW's first moments  (replica 0, or every replica's ZeRO-1 shard)
//	adam.v/NAME    AdamW's second moments
//	trainer/state  JSON: step, AdamW's step count, the data order and position,
//	               the data generator's state (rank 0; every rank draws alike)
//	base/rank-NNNNN  JSON: the identity of the base tensors rank NNNNN loaded
//	               (model.Base; replica 0's ranks), which a resumed run's stages
//	               compare with what they load
const (
	ckptParam = "param/"
	ckptM     = "adam.m/"
	ckptV     = "adam.v/"
	ckptState = "trainer/state"
	ckptBase  = "base/"
)

// trainerState is the small state beside the tensors that a bitwise-identical
// continuation needs.
type trainerState struct {
	Step      int    `json:"step"`       // optimizer steps completed
	AdamSteps int    `json:"adam_steps"` // AdamW's bias-correction count (skipped steps do not count)
	Order     []int  `json:"order"`      // the epoch's shuffled example order
	Cursor    int    `json:"cursor"`     // next position in Order
	Epoch     int    `json:"epoch"`
	RNG       []byte `json:"rng"` // the data generator (PCG), binary-marshalled
	// Tokens is the tokens trained on up to Step (the metrics' running count);
	// TotalSteps the run's train.steps, whose schedule the learning rate followed.
	// Both are absent from checkpoints of earlier versions.
	Tokens     int `json:"tokens,omitempty"`
	TotalSteps int `json:"total_steps,omitempty"`
	// LossScale and LossScaleClean are fp16's loss scaler: S and the clean
	// steps since it last changed (absent in other precisions).
	LossScale      float64 `json:"loss_scale,omitempty"`
	LossScaleClean int     `json:"loss_scale_clean,omitempty"`
	Examples       int     `json:"examples"`
}

// saveCheckpoint writes this rank's part of the state after step (1-based) and,
// once every rank has written, commits it on rank 0: the step's checkpoint is
// complete, or absent, never torn. Every rank calls it.
func (t *trainer) saveCheckpoint(step int) error {
	started := time.Now()
	d := t.dist
	dir, err := ckpt.PrepareDir(t.cfg.RunDir, int64(step))
	if err != nil {
		err = fmt.Errorf("checkpoint of step %d: %w", step, err)
	}
	// Every rank must see the directory before writing into it (shared file
	// systems), and every rank must learn if one could not make it.
	if err := d.agree(err, "checkpoint of step %d: a rank could not create its directory", step); err != nil {
		return err
	}
	werr := t.opt.syncHost()
	if werr == nil {
		werr = t.writeShard(dir, step)
	}
	if werr != nil {
		werr = fmt.Errorf("checkpoint of step %d: %w", step, werr)
	}
	// Instead of a plain barrier, every rank says whether its shard is written,
	// so that one full disk fails the checkpoint on every rank alike (and nobody
	// waits for a rank that gave up).
	if err := d.agree(werr, "checkpoint of step %d: a rank could not write its shard", step); err != nil {
		return err
	}
	var cerr error
	if d.IsRoot() {
		cerr = t.commit(step, started)
	}
	// Nobody goes on (or exits) before the checkpoint is committed.
	return d.agree(cerr, "checkpoint of step %d: rank 0 could not commit it", step)
}

// writeShard writes this rank's entries into the step's temporary directory.
func (t *trainer) writeShard(dir string, step int) error {
	d, f, c := t.dist, t.flat, t.cfg.Ckpt
	w, err := ckpt.NewShardWriter(dir, d.rank(), ckpt.Options{Compress: c.Compress, Level: c.Level})
	if err != nil {
		return err
	}
	werr := func() error {
		for i, v := range f.views {
			if d.me.Replica != 0 || (f.tiedDup && i == f.embedIndex()) {
				continue
			}
			if err := w.AddF32(ckptParam+v.p.Name, v.p.Shape, 0, f.value[v.off:v.off+v.n]); err != nil {
				return err
			}
		}
		if d.zero1 || d.me.Replica == 0 {
			for i, p := range f.opt {
				if f.optDup[i] || p.M == nil {
					continue
				}
				shape := f.optView[i].p.Shape
				if err := w.AddF32(ckptM+p.Name, shape, f.optStart[i], p.M); err != nil {
					return err
				}
				if err := w.AddF32(ckptV+p.Name, shape, f.optStart[i], p.V); err != nil {
					return err
				}
			}
		}
		if d.me.Replica == 0 {
			base, err := json.Marshal(t.base)
			if err != nil {
				return err
			}
			if err := w.AddBytes(fmt.Sprintf("%srank-%05d", ckptBase, d.rank()), base); err != nil {
				return err
			}
		}
		if d.IsRoot() {
			st, err := t.state(step)
			if err != nil {
				return err
			}
			return w.AddBytes(ckptState, st)
		}
		return nil
	}()
	if _, err := w.Close(); werr == nil {
		werr = err
	}
	return werr
}

// commit is rank 0's half: the manifest, the rename, DONE, latest, retention.
func (t *trainer) commit(step int, started time.Time) error {
	d, c := t.dist, t.cfg.Ckpt
	cfgText, err := t.cfg.Encode()
	if err != nil {
		return err
	}
	plan, err := d.plan.JSON()
	if err != nil {
		return err
	}
	m := ckpt.Manifest{WorldSize: d.plan.World, Config: string(cfgText), Plan: string(plan),
		ModelSource: t.cfg.Model, TokenizerSource: t.cfg.Tokenizer}
	final, err := ckpt.Commit(t.cfg.RunDir, int64(step), m, ckpt.Retention{KeepLast: c.KeepLast, KeepEvery: c.KeepEvery})
	if err != nil {
		return err
	}
	t.log.Info("checkpoint", "step", step, "dir", final, "seconds", time.Since(started).Seconds())
	return nil
}

func (t *trainer) state(step int) ([]byte, error) {
	rng, err := t.pcg.MarshalBinary()
	if err != nil {
		return nil, err
	}
	return json.Marshal(trainerState{Step: step, AdamSteps: t.adam.Steps(), Order: t.order, Cursor: t.cursor,
		Tokens: t.tokens, TotalSteps: t.cfg.Train.Steps, LossScale: t.scalerState(), LossScaleClean: t.scaler.clean,
		Epoch: t.epoch, RNG: rng, Examples: t.train.Len()})
}

// restore loads a checkpoint into this rank's model, optimizer and data order
// and returns the step it was taken after. The checkpoint may come from any
// layout: each rank reads the element ranges its own layout needs.
func (t *trainer) restore(dir string) (int, error) {
	r, err := ckpt.Open(dir)
	if err != nil {
		return 0, fmt.Errorf("resume: %w", err)
	}
	defer r.Close()
	if err := t.checkBase(r); err != nil {
		return 0, err
	}
	f := t.flat
	read := func(name string, shape []int, start int64, dst []float32) error {
		info, ok := r.Lookup(name)
		if !ok {
			return fmt.Errorf("resume: %s holds no %s: was it written by a %s run of this model? (this run trains %s)",
				dir, name, "different-method", t.cfg.Train.Method)
		}
		if !slices.Equal(info.Shape, shape) {
			return fmt.Errorf("resume: %s: %s has shape %v in the checkpoint, %v in this model", dir, name, info.Shape, shape)
		}
		return r.ReadF32(name, start, int64(len(dst)), dst)
	}
	for _, v := range f.views {
		if err := read(ckptParam+v.p.Name, v.p.Shape, 0, f.value[v.off:v.off+v.n]); err != nil {
			return 0, err
		}
	}
	raw, err := r.ReadBytes(ckptState)
	if err != nil {
		return 0, fmt.Errorf("resume: %s: %w", dir, err)
	}
	var st trainerState
	if err := json.Unmarshal(raw, &st); err != nil {
		return 0, fmt.Errorf("resume: %s: trainer state: %w", dir, err)
	}
	if st.Examples != t.train.Len() {
		return 0, fmt.Errorf("resume: the checkpoint was trained on %d examples and this run has %d: resume with the same data", st.Examples, t.train.Len())
	}
	if st.AdamSteps > 0 {
		for i, p := range f.opt {
			p.M, p.V = make([]float32, len(p.Value)), make([]float32, len(p.Value))
			shape := f.optView[i].p.Shape
			if err := read(ckptM+p.Name, shape, f.optStart[i], p.M); err != nil {
				return 0, err
			}
			if err := read(ckptV+p.Name, shape, f.optStart[i], p.V); err != nil {
				return 0, err
			}
		}
	}
	t.adam.SetSteps(st.AdamSteps)
	if err := t.pcg.UnmarshalBinary(st.RNG); err != nil {
		return 0, fmt.Errorf("resume: %s: data generator: %w", dir, err)
	}
	t.order, t.cursor, t.epoch = st.Order, st.Cursor, st.Epoch
	t.tokens, t.resumedTotal = st.Tokens, st.TotalSteps
	t.scaler.restore(st.LossScale, st.LossScaleClean)
	if err := f.uploadValues(t.chunks, t.be); err != nil {
		return 0, err
	}
	return st.Step, nil
}

// checkBase refuses to resume on another base model than the checkpoint was
// trained on (unless ckpt.resume_any_base): this rank's tensors as it loaded
// them against the identity every stage of the checkpoint recorded, so that
// a model of the same shape with other weights is caught, naming the first
// tensor that differs. A checkpoint from before the identity was recorded
// resumes with a warning.
func (t *trainer) checkBase(r *ckpt.Reader) error {
	var saved model.Base
	found := false
	for _, name := range r.Names() {
		if !strings.HasPrefix(name, ckptBase) {
			continue
		}
		raw, err := r.ReadBytes(name)
		if err != nil {
			return fmt.Errorf("resume: %w", err)
		}
		var b model.Base
		if err := json.Unmarshal(raw, &b); err != nil {
			return fmt.Errorf("resume: %s: %s: %w", r.Dir(), name, err)
		}
		saved.Random, saved.Seed = b.Random, b.Seed
		saved.Tensors = append(saved.Tensors, b.Tensors...)
		found = true
	}
	note := func(msg, event string, attrs ...any) {
		n := placeNote{warn: true, msg: msg, event: event, attrs: append([]any{"checkpoint", r.Dir()}, attrs...)}
		n.print(t.out)
		t.pending = append(t.pending, n)
	}
	if !found {
		note(fmt.Sprintf("%s records no identity of its base model (an older build wrote it): the base model could not be checked against %s", r.Dir(), t.cfg.Model),
			"base model not checked")
		return nil
	}
	diff := t.base.Mismatch(&saved)
	switch {
	case diff == "":
		return nil
	case t.cfg.Ckpt.ResumeAnyBase:
		note(fmt.Sprintf("resuming %s on another base model (ckpt.resume_any_base): %s", r.Dir(), diff), "resumed on another base model", "difference", diff)
		return nil
	}
	was := "-model " + r.Manifest().ModelSource
	if saved.Random != "" {
		was = fmt.Sprintf("-model %s -seed %d", saved.Random, saved.Seed)
	}
	return fmt.Errorf("resume: %s was trained on another base model: %s; resume with %s, the base it was trained on, or give -resume-any-base to continue on this one",
		r.Dir(), diff, was)
}

// LoadCheckpointModel returns the model a checkpoint of a run holds: the base
// model it names (or modelPath when given) with, for a full fine-tune, every
// trained tensor replaced by the checkpoint's, or for LoRA the adapter. For
// QLoRA the base is its NF4 round trip, the weights the adapter was trained
// on, so a merged export is the dequantized base plus the adapter.
func LoadCheckpointModel(dir, modelPath string) (*model.Weights, *model.LoRA, string, error) {
	if info, err := ckpt.Latest(dir); err == nil {
		dir = info.Dir // a run directory: its newest complete checkpoint
	}
	r, err := ckpt.Open(dir)
	if err != nil {
		return nil, nil, "", err
	}
	defer r.Close()
	man := r.Manifest()
	cfg, err := config.Decode(filepath.Join(dir, ckpt.ManifestName)+" (config)", []byte(man.Config))
	if err != nil {
		return nil, nil, "", err
	}
	if modelPath == "" {
		modelPath = man.ModelSource
	}
	var w *model.Weights
	if model.IsRandomModel(modelPath) {
		w, err = model.LoadSource(modelPath, cfg.Seed)
	} else {
		w, err = format.LoadModel(modelPath)
	}
	if err != nil {
		return nil, nil, "", fmt.Errorf("base model %s (named by the checkpoint): %w", modelPath, err)
	}
	// A QLoRA run computed with the NF4 round trip of its base: that is what
	// its adapter belongs to. Any other run's base is dequantized if stored in 4 bits.
	qcfg := cfg
	qcfg.Model = modelPath
	nf4, err := NF4Options(qcfg)
	if err == nil && nf4 != nil {
		err = w.RoundTripNF4(*nf4)
	} else if err == nil {
		err = w.Dequantize()
	}
	if err != nil {
		return nil, nil, "", fmt.Errorf("base model %s (named by the checkpoint): %w", modelPath, err)
	}
	read := func(name string, dst []float32) error {
		if _, ok := r.Lookup(ckptParam + name); !ok {
			return fmt.Errorf("%s holds no %s", dir, name)
		}
		return r.ReadF32(ckptParam+name, 0, int64(len(dst)), dst)
	}
	if cfg.Train.Method != "full" {
		l, err := model.NewLoRA(&w.Config, model.LoRAConfig{Rank: cfg.LoRA.Rank, Alpha: cfg.LoRA.Alpha,
			Dropout: cfg.LoRA.Dropout, RSLoRA: cfg.LoRA.RSLoRA, Targets: cfg.LoRA.Targets}, 0)
		if err != nil {
			return nil, nil, "", err
		}
		for name, dst := range l.Tensors() {
			if err := read(name, dst); err != nil {
				return nil, nil, "", err
			}
		}
		return w, l, modelPath, nil
	}
	for name, dst := range w.NamedTensors() {
		if err := read(name, dst); err != nil {
			return nil, nil, "", err
		}
	}
	return w, nil, modelPath, nil
}
