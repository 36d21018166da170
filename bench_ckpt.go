package main

import (
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"text/tabwriter"
	"time"

	"train/ckpt"
	"train/format/safetensors"
	"train/model"
)

// benchTensor is one tensor of a benchmark set, held as f32 or as bf16.
type benchTensor struct {
	name  string
	shape []int
	f32   []float32
	bf16  []uint16
}

func (t benchTensor) bytes() int64 { return int64(4*len(t.f32) + 2*len(t.bf16)) }

// benchCkpt measures checkpoint save and load throughput and compressed size:
// raw (no compression) and plain zstd are the peers of zstd with byte grouping.
func benchCkpt(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("bench ckpt", `train bench ckpt [flags]

Save and load one rank's checkpoint (ckpt.NewShardWriter ... Commit, then
ckpt.Open and reading every tensor back) and report throughput in GB/s of
tensor bytes and the stored size, for: raw (no compression), plain zstd, and
zstd with byte grouping (the default), on real weights (-model safetensors, as
fp32 and converted to bf16) and on a random-init model (-random). Saves include
every fsync; loads read what was just written (page cache) and verify every
checksum.`, stderr)
	st := fs.String("model", "../shared/models/stories260K/model.safetensors", "safetensors file of real (trained) weights; empty to skip")
	random := fs.String("random", "random:small", "random-init architecture (random:NAME); empty to skip")
	layers := fs.Int("layers", 0, "decoder layers of -random to include, with the embedding (0 = all)")
	dir := fs.String("dir", "", "directory for the checkpoints (default: a new temporary one, removed after)")
	level := fs.Int("level", ckpt.DefaultLevel, "zstd level")
	workers := fs.Int("workers", 0, "compression workers (0 = GOMAXPROCS)")
	budget := fs.Duration("time", time.Second, "measuring time per case (at least 2 runs; the best counts)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	base := *dir
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
		tensors []benchTensor
	}
	var sets []set
	if *st != "" {
		ts, err := benchSafetensors(*st)
		if err != nil {
			return err
		}
		sets = append(sets, set{"stories260K fp32", ts}, set{"stories260K bf16", toBF16(ts)})
	}
	if *random != "" {
		cfg, err := model.RandomConfig(*random)
		if err != nil {
			return usagef("-random: %v", err)
		}
		n := cfg.NumLayers
		if *layers > 0 && *layers < n {
			n = *layers
		}
		w, err := model.RandomWeights(cfg, 1, 0, n, true, false, 0)
		if err != nil {
			return err
		}
		ts := []benchTensor{{name: "model.embed_tokens.weight", shape: []int{cfg.VocabSize, cfg.HiddenSize}, f32: w.Embed}}
		for i := 0; i < n; i++ {
			for _, s := range model.Linears {
				out, in := cfg.LinearShape(s)
				ts = append(ts, benchTensor{name: model.LayerTensorName(i, s), shape: []int{out, in}, f32: *w.Layers[i].Linear(s)})
			}
		}
		label := fmt.Sprintf("%s (%d layers + embedding)", *random, n)
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
		*level, *workers, runtime.GOMAXPROCS(0))
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
			opts := m.opts
			opts.Level, opts.Workers = *level, *workers
			run := filepath.Join(base, "run")
			var saves, loads []time.Duration
			var stored int64
			deadline := time.Now().Add(*budget)
			for len(saves) < 2 || time.Now().Before(deadline) {
				step++
				t0 := time.Now()
				sdir, err := benchSave(run, step, s.tensors, opts)
				if err != nil {
					return err
				}
				t1 := time.Now()
				if err := benchLoad(sdir, s.tensors); err != nil {
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
				gbps(total, best(saves)), gbps(total, best(loads)))
		}
		tw.Flush()
	}
	return nil
}

func best(ds []time.Duration) time.Duration {
	sort.Slice(ds, func(i, j int) bool { return ds[i] < ds[j] })
	return ds[0]
}

func gbps(n int64, d time.Duration) float64 { return float64(n) / d.Seconds() / 1e9 }

func benchSafetensors(path string) ([]benchTensor, error) {
	f, err := safetensors.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	infos := f.Tensors()
	sort.Slice(infos, func(i, j int) bool { return infos[i].Name < infos[j].Name })
	var ts []benchTensor
	for _, ti := range infos {
		data, shape, err := f.ReadFloat32(ti.Name)
		if err != nil {
			return nil, err
		}
		ts = append(ts, benchTensor{name: ti.Name, shape: shape, f32: data})
	}
	return ts, nil
}

// toBF16 rounds every tensor to bfloat16 (nearest, ties to even).
func toBF16(ts []benchTensor) []benchTensor {
	out := make([]benchTensor, len(ts))
	for i, t := range ts {
		b := make([]uint16, len(t.f32))
		for j, v := range t.f32 {
			u := math.Float32bits(v)
			if u&0x7fffffff > 0x7f800000 {
				b[j] = uint16(u>>16) | 0x40
				continue
			}
			b[j] = uint16((u + 0x7fff + (u>>16)&1) >> 16)
		}
		out[i] = benchTensor{name: t.name, shape: t.shape, bf16: b}
	}
	return out
}

func benchSave(run string, step int64, ts []benchTensor, opts ckpt.Options) (string, error) {
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

func benchLoad(dir string, ts []benchTensor) error {
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
