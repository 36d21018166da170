package bench

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"text/tabwriter"
	"time"

	"train/ckpt"
	"train/format/safetensors"
	"train/model"
	"train/ops"
)

// CkptOptions says what Ckpt saves and loads. The command line has checked
// that Random, when given, names a random model.
type CkptOptions struct {
	Safetensors string        // safetensors file of real (trained) weights; empty to skip
	Random      string        // random-init architecture (random:NAME); empty to skip
	Layers      int           // decoder layers of Random to include, with the embedding (0 = all)
	Dir         string        // directory for the checkpoints; empty: a new temporary one, removed after
	Level       int           // zstd level
	Workers     int           // compression workers (0 = GOMAXPROCS)
	Time        time.Duration // measuring time per case (at least 2 runs; the best counts)
}

// ckptTensor is one tensor of a benchmark set, held as f32 or as bf16.
type ckptTensor struct {
	name  string
	shape []int
	f32   []float32
	bf16  []uint16
}

func (t ckptTensor) bytes() int64 { return int64(4*len(t.f32) + 2*len(t.bf16)) }

// Ckpt is `train bench ckpt`: it measures checkpoint save and load throughput
// and the compressed size, on real weights and on a random-init model, each as
// fp32 and as bf16. Raw (no compression) and plain zstd are the peers of zstd
// with byte grouping.
func Ckpt(opts CkptOptions, stdout io.Writer) error {
	base := opts.Dir
	if base == "" {
		d, err := os.MkdirTemp("", "bench-ckpt-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(d)
		base = d
	}

	type set struct {
		name    string
		tensors []ckptTensor
	}
	var sets []set
	if opts.Safetensors != "" {
		ts, err := readSafetensors(opts.Safetensors)
		if err != nil {
			return err
		}
		sets = append(sets, set{"stories260K fp32", ts}, set{"stories260K bf16", toBF16(ts)})
	}
	if opts.Random != "" {
		cfg, err := model.RandomConfig(opts.Random)
		if err != nil {
			return fmt.Errorf("bench ckpt: %w", err)
		}
		n := cfg.NumLayers
		if opts.Layers > 0 && opts.Layers < n {
			n = opts.Layers
		}
		w, err := model.RandomWeights(cfg, 1, 0, n, true, false, 0)
		if err != nil {
			return err
		}
		ts := []ckptTensor{{name: "model.embed_tokens.weight", shape: []int{cfg.VocabSize, cfg.HiddenSize}, f32: w.Embed}}
		for i := 0; i < n; i++ {
			for _, s := range model.Linears {
				out, in := cfg.LinearShape(s)
				ts = append(ts, ckptTensor{name: model.LayerTensorName(i, s), shape: []int{out, in}, f32: *w.Layers[i].Linear(s)})
			}
		}
		label := fmt.Sprintf("%s (%d layers + embedding)", opts.Random, n)
		sets = append(sets, set{label + " fp32", ts}, set{label + " bf16", toBF16(ts)})
	}

	modes := []struct {
		name string
		opts ckpt.Options
	}{
		{"raw", ckpt.Options{}},
		{"zstd", ckpt.Options{Compress: true, NoByteGroup: true}},
		{"zstd+bytegroup", ckpt.Options{Compress: true}},
	}
	fmt.Fprintf(stdout, "zstd level %d, workers %d (GOMAXPROCS %d); GB/s = tensor bytes / time (1 GB = 1e9 B)\n",
		opts.Level, opts.Workers, runtime.GOMAXPROCS(0))
	step := int64(0)
	for _, s := range sets {
		var total int64
		for _, t := range s.tensors {
			total += t.bytes()
		}
		fmt.Fprintf(stdout, "\n%s: %d tensors, %s\n", s.name, len(s.tensors), model.HumanBytes(total))
		tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
		fmt.Fprintln(tw, "mode\tstored\tof raw\tsave GB/s\tload GB/s\t")
		for _, m := range modes {
			copts := m.opts
			copts.Level, copts.Workers = opts.Level, opts.Workers
			run := filepath.Join(base, "run")
			var saves, loads []time.Duration
			var stored int64
			deadline := time.Now().Add(opts.Time)
			for len(saves) < 2 || time.Now().Before(deadline) {
				step++
				t0 := time.Now()
				sdir, err := saveCkpt(run, step, s.tensors, copts)
				if err != nil {
					return err
				}
				t1 := time.Now()
				if err := loadCkpt(sdir, s.tensors); err != nil {
					return err
				}
				saves, loads = append(saves, t1.Sub(t0)), append(loads, time.Since(t1))
				stored = 0
				infos, _ := ckpt.List(run)
				for _, in := range infos {
					if in.Step == step {
						stored = in.Size
					}
				}
			}
			os.RemoveAll(run)
			fmt.Fprintf(tw, "%s\t%s\t%.3f\t%.2f\t%.2f\t\n", m.name, model.HumanBytes(stored), float64(stored)/float64(total),
				gbps(total, fastest(saves)), gbps(total, fastest(loads)))
		}
		tw.Flush()
	}
	return nil
}

func fastest(ds []time.Duration) time.Duration {
	sort.Slice(ds, func(i, j int) bool { return ds[i] < ds[j] })
	return ds[0]
}

func gbps(n int64, d time.Duration) float64 { return float64(n) / d.Seconds() / 1e9 }

func readSafetensors(path string) ([]ckptTensor, error) {
	f, err := safetensors.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	infos := f.Tensors()
	sort.Slice(infos, func(i, j int) bool { return infos[i].Name < infos[j].Name })
	var ts []ckptTensor
	for _, ti := range infos {
		data, shape, err := f.ReadFloat32(ti.Name)
		if err != nil {
			return nil, err
		}
		ts = append(ts, ckptTensor{name: ti.Name, shape: shape, f32: data})
	}
	return ts, nil
}

// toBF16 rounds every tensor to bfloat16 (nearest, ties to even).
func toBF16(ts []ckptTensor) []ckptTensor {
	out := make([]ckptTensor, len(ts))
	for i, t := range ts {
		b := make([]uint16, len(t.f32))
		for j, v := range t.f32 {
			b[j] = ops.ToBF16(v)
		}
		out[i] = ckptTensor{name: t.name, shape: t.shape, bf16: b}
	}
	return out
}

// saveCkpt writes ts as the one shard of a checkpoint of run at step and
// commits it, returning the checkpoint's directory.
func saveCkpt(run string, step int64, ts []ckptTensor, opts ckpt.Options) (string, error) {
	dir, err := ckpt.PrepareDir(run, step)
	if err != nil {
		return "", err
	}
	w, err := ckpt.NewShardWriter(dir, 0, opts)
	if err != nil {
		return "", err
	}
	for _, t := range ts {
		if t.bf16 != nil {
			err = w.AddBF16(t.name, t.shape, 0, t.bf16)
		} else {
			err = w.AddF32(t.name, t.shape, 0, t.f32)
		}
		if err != nil {
			w.Close()
			return "", err
		}
	}
	if _, err := w.Close(); err != nil {
		return "", err
	}
	return ckpt.Commit(run, step, ckpt.Manifest{WorldSize: 1, ModelSource: "bench"}, ckpt.Retention{KeepLast: 1})
}

// loadCkpt reads every tensor of ts back from the checkpoint in dir (the
// reader verifies the checksums) and checks its last element.
func loadCkpt(dir string, ts []ckptTensor) error {
	r, err := ckpt.Open(dir)
	if err != nil {
		return err
	}
	defer r.Close()
	for _, t := range ts {
		if t.bf16 != nil {
			dst := make([]uint16, len(t.bf16))
			if err := r.ReadBF16(t.name, 0, int64(len(dst)), dst); err != nil {
				return err
			}
			if len(dst) > 0 && dst[len(dst)-1] != t.bf16[len(dst)-1] {
				return fmt.Errorf("%s: %s read back wrong", dir, t.name)
			}
		} else {
			dst := make([]float32, len(t.f32))
			if err := r.ReadF32(t.name, 0, int64(len(dst)), dst); err != nil {
				return err
			}
			if len(dst) > 0 && dst[len(dst)-1] != t.f32[len(dst)-1] {
				return fmt.Errorf("%s: %s read back wrong", dir, t.name)
			}
		}
	}
	return nil
}
