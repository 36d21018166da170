package model

// Named architectures with random weights (-model random:NAME): real shapes for
// benchmarks and planning, tiny ones for tests and the embedded default. Nothing is
// written to disk.
//
// The weights are a pure function of (seed, tensor name, element index): each
// element comes from a counter-based generator, not from a stream shared across
// tensors. So a pipeline stage that builds only layers [8,16) gets exactly the
// values a single process builds for them, and the work splits across goroutines
// without changing a bit.

import (
	"context"
	"fmt"
	"hash/fnv"
	"runtime"
	"sort"
	"strings"
	"sync"
	"train/ops"
)

// RandomPrefix marks a -model value that names a random architecture.
const RandomPrefix = "random:"

// randomInitStd is transformers' default initializer_range: Linear and Embedding
// weights are drawn from N(0, 0.02²); RMSNorm weights start at 1.
const randomInitStd = 0.02

// randomPresets returns a fresh table of the named architectures.
func randomPresets() map[string]Config {
	llama31Rope := Rope{Theta: 500000, Type: "llama3", Factor: 8, LowFreqFactor: 1, HighFreqFactor: 4, OriginalMaxPositionEmbeddings: 8192}
	llama32Rope := llama31Rope
	llama32Rope.Factor = 32
	base := func(hidden, inter, layers, heads, kv, headDim, vocab int, tied bool, rope Rope) Config {
		return Config{
			Architecture: "LlamaForCausalLM", ModelType: "llama",
			HiddenSize: hidden, IntermediateSize: inter, NumLayers: layers,
			NumHeads: heads, NumKVHeads: kv, HeadDim: headDim, VocabSize: vocab,
			MaxPositions: 131072, RMSNormEps: 1e-5, TieEmbeddings: tied, HiddenAct: "silu",
			BOSTokenID: 128000, EOSTokenIDs: []int{128001}, Rope: rope, TorchDType: "bfloat16",
		}
	}
	// tiny: a Llama 3 in miniature for tests: GQA, untied, and llama3 rope scaling
	// with original_max_position_embeddings 32, so short sequences already span the
	// scaled, smoothed and unscaled frequency bands.
	tiny := base(64, 176, 4, 4, 2, 16, 512, false,
		Rope{Theta: 10000, Type: "llama3", Factor: 8, LowFreqFactor: 1, HighFreqFactor: 4, OriginalMaxPositionEmbeddings: 32})
	tiny.MaxPositions, tiny.BOSTokenID, tiny.EOSTokenIDs, tiny.TorchDType = 256, 1, []int{2}, "float32"
	// small: quick on a CPU, yet with the Llama 3 vocabulary, so it runs on text
	// tokenized with the real Llama 3 tokenizer.
	small := base(512, 1408, 8, 8, 4, 64, 128256, true, llama31Rope)
	small.MaxPositions, small.TorchDType = 8192, "float32"
	return map[string]Config{
		"tiny":          tiny,
		"small":         small,
		"llama-3.2-1b":  base(2048, 8192, 16, 32, 8, 64, 128256, true, llama32Rope),
		"llama-3.2-3b":  base(3072, 8192, 28, 24, 8, 128, 128256, true, llama32Rope),
		"llama-3.1-8b":  base(4096, 14336, 32, 32, 8, 128, 128256, false, llama31Rope),
		"llama-3.1-70b": base(8192, 28672, 80, 64, 8, 128, 128256, false, llama31Rope),
	}
}

// RandomModelNames lists the names random:NAME accepts, sorted.
func RandomModelNames() []string {
	var names []string
	for n := range randomPresets() {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// IsRandomModel reports whether a -model value names a random architecture.
func IsRandomModel(model string) bool { return strings.HasPrefix(model, RandomPrefix) }

// RandomConfig returns the architecture called name ("tiny" or "random:tiny").
func RandomConfig(name string) (Config, error) {
	short := strings.TrimPrefix(name, RandomPrefix)
	c, ok := randomPresets()[short]
	if !ok {
		return Config{}, fmt.Errorf("unknown random model %q; valid: %s%s", name, RandomPrefix,
			strings.Join(RandomModelNames(), ", "+RandomPrefix))
	}
	return c, nil
}

// HostBytes is how many bytes the float32 host copies of a model part take:
// layers [lo, hi), the embedding if withEmbed, the final norm and output matrix if
// withHead (with tied embeddings, the embedding).
func (c *Config) HostBytes(lo, hi int, withEmbed, withHead bool) int64 {
	h := int64(c.HiddenSize)
	var n int64
	if withEmbed || (withHead && c.TieEmbeddings) {
		n += int64(c.VocabSize) * h
	}
	n += int64(hi-lo) * c.LayerParams()
	if withHead {
		n += h
		if !c.TieEmbeddings {
			n += int64(c.VocabSize) * h
		}
	}
	return 4 * n
}

// LayerParams is the number of parameters of one decoder layer: the seven
// projections and the two RMSNorm weights.
func (c *Config) LayerParams() int64 {
	n := 2 * int64(c.HiddenSize) // the two RMSNorm weights
	for _, s := range Linears {
		out, in := c.LinearShape(s)
		n += int64(out) * int64(in)
	}
	return n
}

// RandomWeights builds random weights for layers [lo, hi) and, as in
// ModelDir.LoadWeights, the embedding and the head: Linear and embedding weights
// N(0, 0.02²), norm weights 1. The values depend only on seed and each tensor's
// name. It refuses, before allocating, when the float32 host tensors would take
// more than maxBytes (0 means no limit): Llama 3.1 70B alone is 282 GB in float32.
func RandomWeights(cfg Config, seed uint64, lo, hi int, withEmbed, withHead bool, maxBytes int64) (*Weights, error) {
	return randomWeights(context.Background(), cfg, seed, lo, hi, withEmbed, withHead, maxBytes)
}

// randomWeights is RandomWeights, stopping with ctx's error once it is
// cancelled (Llama 3.1 8B takes about 20 s to draw).
func randomWeights(ctx context.Context, cfg Config, seed uint64, lo, hi int, withEmbed, withHead bool, maxBytes int64) (*Weights, error) {
	if lo < 0 || hi > cfg.NumLayers || lo > hi {
		return nil, fmt.Errorf("random weights: layer range [%d,%d) is outside the model's %d layers", lo, hi, cfg.NumLayers)
	}
	if need := cfg.HostBytes(lo, hi, withEmbed, withHead); maxBytes > 0 && need > maxBytes {
		return nil, fmt.Errorf("random weights: layers [%d,%d) take %s of float32 host memory, more than the %s allowed; hold fewer layers per process (pipeline stages)",
			lo, hi, formatByteSize(need), formatByteSize(maxBytes))
	}
	var jobs []randomJob
	normal := func(name string, n int) []float32 {
		t := make([]float32, n)
		jobs = append(jobs, randomJob{key: randomTensorKey(seed, name), data: t})
		return t
	}
	ones := func(n int) []float32 {
		t := make([]float32, n)
		for i := range t {
			t[i] = 1
		}
		return t
	}
	h := cfg.HiddenSize
	w := &Weights{Config: cfg, Layers: make([]*Layer, cfg.NumLayers)}
	if withEmbed || (withHead && cfg.TieEmbeddings) {
		w.Embed = normal("model.embed_tokens.weight", cfg.VocabSize*h)
	}
	for i := lo; i < hi; i++ {
		l := &Layer{AttnNorm: ones(h), MLPNorm: ones(h)}
		for _, s := range Linears {
			out, in := cfg.LinearShape(s)
			*l.Linear(s) = normal(LayerTensorName(i, s), out*in)
		}
		w.Layers[i] = l
	}
	if withHead {
		w.FinalNorm = ones(h)
		if !cfg.TieEmbeddings {
			w.LMHead = normal("lm_head.weight", cfg.VocabSize*h)
		}
	}
	if err := fillRandomJobs(ctx, jobs); err != nil {
		return nil, err
	}
	return w, nil
}

// randomSource draws a lazily built random model's tensors on the backend:
// the same values RandomWeights computes on the host (Backend.FillNormal).
type randomSource struct{ seed uint64 }

// deviceRandomWeights returns random weights that hold nothing on the host:
// NewModel draws each tensor of its stage where it lives, so a 70B model
// needs no 282 GB of host memory.
func deviceRandomWeights(cfg Config, name string, seed int64) *Weights {
	return &Weights{Config: cfg, Layers: make([]*Layer, cfg.NumLayers), random: &randomSource{uint64(seed)},
		base: &Base{Random: name, Seed: seed}}
}

// randomJob is one tensor to fill from the generator keyed by key.
type randomJob struct {
	key  uint64
	data []float32
}

// fillRandomJobs fills every tensor in pieces spread over the CPUs. Pieces start
// at even indices because elements are generated in Box-Muller pairs. Once ctx
// is cancelled no further piece starts, and it returns ctx's error.
func fillRandomJobs(ctx context.Context, jobs []randomJob) error {
	const piece = 1 << 16
	type span struct {
		job    int
		lo, hi int
	}
	work := make(chan span)
	var wg sync.WaitGroup
	for g := 0; g < runtime.GOMAXPROCS(0); g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for s := range work {
				ops.FillNormalHost(jobs[s.job].data[s.lo:s.hi], jobs[s.job].key, s.lo, randomInitStd)
			}
		}()
	}
	var err error
feed:
	for j, job := range jobs {
		for lo := 0; lo < len(job.data); lo += piece {
			select {
			case work <- span{j, lo, min(lo+piece, len(job.data))}:
			case <-ctx.Done():
				err = ctx.Err()
				break feed
			}
		}
	}
	close(work)
	wg.Wait()
	return err
}

// randomTensorKey derives a tensor's generator key from the seed and its name.
func randomTensorKey(seed uint64, name string) uint64 {
	h := fnv.New64a()
	h.Write([]byte(name))
	return ops.Splitmix64(seed ^ ops.Splitmix64(h.Sum64()))
}

// formatByteSize prints a byte count in binary units.
func formatByteSize(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit && exp < 5; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
