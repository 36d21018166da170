package trainer

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"train/collective"
	"train/format/peft"
	"train/format/safetensors"
	"train/model"
)

// openRunDir creates the run directory; rank 0 writes the effective config, the
// plan and metrics.jsonl there.
func (t *trainer) openRunDir() error {
	if err := os.MkdirAll(t.cfg.RunDir, 0o755); err != nil {
		return fmt.Errorf("run dir: %w", err)
	}
	if !t.dist.IsRoot() {
		return nil
	}
	if err := os.WriteFile(filepath.Join(t.cfg.RunDir, "plan.txt"), []byte(t.dist.plan.String()), 0o644); err != nil {
		return fmt.Errorf("run dir: %w", err)
	}
	cfgText, err := t.cfg.Encode()
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(t.cfg.RunDir, "config.toml"), cfgText, 0o644); err != nil {
		return fmt.Errorf("run dir: %w", err)
	}
	// A resumed run goes on with the same metrics file.
	flags := os.O_CREATE | os.O_WRONLY | os.O_TRUNC
	if t.startStep > 0 {
		flags = os.O_CREATE | os.O_WRONLY | os.O_APPEND
	}
	f, err := os.OpenFile(filepath.Join(t.cfg.RunDir, "metrics.jsonl"), flags, 0o644)
	if err != nil {
		return fmt.Errorf("run dir: %w", err)
	}
	t.metrics = f
	return nil
}

func (t *trainer) writeMetric(v map[string]any) error {
	if t.metrics == nil {
		return nil // not rank 0
	}
	line, err := json.Marshal(v)
	if err != nil {
		return err
	}
	if _, err := t.metrics.Write(append(line, '\n')); err != nil {
		return fmt.Errorf("metrics.jsonl: %w", err)
	}
	return nil
}

// saveOutputs writes what was trained: the adapter in peft's format (LoRA), or the
// whole model as a Hugging Face directory (full fine-tuning), with the tokenizer.
func (t *trainer) saveOutputs(w *model.Weights) (string, error) {
	if err := t.opt.syncHost(); err != nil {
		return "", err
	}
	ts, err := t.gatherTensors()
	if err != nil || !t.dist.IsRoot() {
		return "", err
	}
	if t.cfg.Train.Method == "full" {
		return t.saveModel(w, ts)
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
	if err := peft.Write(dir, l, &w.Config, t.cfg.Model); err != nil {
		return "", err
	}
	return ", adapter/ in peft format", nil
}

// saveModel writes RUN/model: config.json, model.safetensors (F32) with the trained
// weights, and the tokenizer files when the model had them.
func (t *trainer) saveModel(w *model.Weights, ts map[string][]float32) (string, error) {
	dir := filepath.Join(t.cfg.RunDir, "model")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("save model: %w", err)
	}
	cfgJSON, err := model.MarshalConfig(w.Config)
	if err != nil {
		return "", err
	}
	if err := os.WriteFile(filepath.Join(dir, "config.json"), cfgJSON, 0o644); err != nil {
		return "", fmt.Errorf("save model: %w", err)
	}
	var st safetensors.Writer
	st.SetMetadata("format", "pt")
	for _, spec := range w.Config.ExpectedTensors() {
		v, ok := ts[spec.Name]
		if !ok {
			return "", fmt.Errorf("save model: no rank sent %s", spec.Name)
		}
		if err := st.AddFloat32(spec.Name, safetensors.F32, spec.Shape, v); err != nil {
			return "", fmt.Errorf("save model: %w", err)
		}
	}
	if err := st.WriteFile(filepath.Join(dir, "model.safetensors")); err != nil {
		return "", fmt.Errorf("save model: %w", err)
	}
	if !model.IsRandomModel(t.cfg.Model) {
		for _, name := range []string{"tokenizer.json", "tokenizer_config.json"} {
			if src, err := os.ReadFile(filepath.Join(t.cfg.Model, name)); err == nil {
				if err := os.WriteFile(filepath.Join(dir, name), src, 0o644); err != nil {
					return "", fmt.Errorf("save model: %w", err)
				}
			}
		}
	}
	return ", model/ in Hugging Face format", nil
}

// gatherTensors collects the trainable tensors of every stage of replica 0 on rank
// 0, by name. Each stage sends its tensors as one safetensors blob: a format both
// ends already check. Other replicas hold the same values and send nothing.
func (t *trainer) gatherTensors() (map[string][]float32, error) {
	d := t.dist
	own := map[string][]float32{}
	for _, v := range t.flat.views {
		own[v.p.Name] = t.flat.value[v.off : v.off+v.n]
	}
	if d.world == nil || d.me.Replica != 0 {
		return own, nil
	}
	if !d.IsRoot() {
		var w safetensors.Writer
		for _, v := range t.flat.views {
			if err := w.AddFloat32(v.p.Name, safetensors.F32, v.p.Shape, own[v.p.Name]); err != nil {
				return nil, err
			}
		}
		var blob bytes.Buffer
		if _, err := w.WriteTo(&blob); err != nil {
			return nil, err
		}
		if err := d.world.Send(collective.I64{int64(blob.Len())}, 0); err != nil {
			return nil, err
		}
		return nil, d.world.Send(collective.Bytes(blob.Bytes()), 0)
	}
	for s := 1; s < d.plan.Stages; s++ {
		n := collective.I64{0}
		if err := d.world.Recv(n, s); err != nil {
			return nil, err
		}
		if n[0] < 0 || n[0] > 1<<40 {
			return nil, fmt.Errorf("rank %d announced %d bytes of tensors", s, n[0])
		}
		blob := make([]byte, n[0])
		if err := d.world.Recv(collective.Bytes(blob), s); err != nil {
			return nil, err
		}
		st, err := safetensors.Parse(fmt.Sprintf("rank %d's tensors", s), bytes.NewReader(blob), int64(len(blob)))
		if err != nil {
			return nil, err
		}
		for _, ti := range st.Tensors() {
			if _, ok := own[ti.Name]; ok {
				continue // the tied embedding, held by the first stage too
			}
			v, _, err := st.ReadFloat32(ti.Name)
			if err != nil {
				return nil, err
			}
			own[ti.Name] = v
		}
	}
	return own, nil
}
