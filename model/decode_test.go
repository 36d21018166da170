package model

import (
	"encoding/json"
	"math"
	"math/rand/v2"
	"os"
	"strings"
	"testing"

	"train/ops"
)

// decodeTiny returns random:tiny with random weights, and with an adapter whose
// B matrices are not zero (a fresh adapter would leave the model unchanged).
func decodeTiny(t *testing.T, withLoRA bool) *Model {
	t.Helper()
	cfg, err := RandomConfig("random:tiny")
	if err != nil {
		t.Fatal(err)
	}
	w, err := RandomWeights(cfg, 5, 0, cfg.NumLayers, true, true, 0)
	if err != nil {
		t.Fatal(err)
	}
	var opt Options
	if withLoRA {
		lc := LoRAConfig{Rank: 4, Alpha: 8, Dropout: 0.1, Targets: []string{"q_proj", "k_proj", "v_proj", "o_proj", "down_proj"}}
		if opt.LoRA, err = NewLoRA(&cfg, lc, 3); err != nil {
			t.Fatal(err)
		}
		rng := rand.New(rand.NewPCG(8, 9))
		for _, layer := range opt.LoRA.Layers {
			for _, p := range layer {
				for i := range p.B {
					p.B[i] = float32(0.05 * (2*rng.Float64() - 1))
				}
			}
		}
	}
	m, err := NewModel(ops.NewCPU(), w, opt)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Close)
	return m
}

// decodeRelErr is the relative L2 distance of a row of logits from the reference.
func decodeRelErr(got, want []float32) float64 {
	var d, n float64
	for i := range want {
		d += float64(got[i]-want[i]) * float64(got[i]-want[i])
		n += float64(want[i]) * float64(want[i])
	}
	return math.Sqrt(d / n)
}

// TestDecodeMatchesForward: the KV-cache path gives Forward's logits at every
// position, whether the sequence goes in one token at a time, as one prompt, or
// as a prompt split into chunks smaller than itself; with and without LoRA.
func TestDecodeMatchesForward(t *testing.T) {
	for _, withLoRA := range []bool{false, true} {
		name := "base"
		if withLoRA {
			name = "lora"
		}
		t.Run(name, func(t *testing.T) {
			m := decodeTiny(t, withLoRA)
			V, T := m.Config().VocabSize, 24
			rng := rand.New(rand.NewPCG(1, 1))
			ids := make([]int, T)
			b := &Batch{B: 1, T: T, IDs: make([]int32, T)}
			for i := range ids {
				ids[i] = rng.IntN(V)
				b.IDs[i] = int32(ids[i])
			}
			if _, _, err := m.Forward(b); err != nil {
				t.Fatal(err)
			}
			want, err := m.Logits()
			if err != nil {
				t.Fatal(err)
			}
			check := func(how string, pos int, got []float32) {
				t.Helper()
				if e := decodeRelErr(got, want[pos*V:(pos+1)*V]); !(e <= 1e-5) {
					t.Fatalf("%s: logits at position %d differ from Forward's by %.3g (relative L2)", how, pos, e)
				}
			}
			d, err := NewDecoder(m, T+5)
			if err != nil {
				t.Fatal(err)
			}
			defer d.Close()
			for pos, id := range ids {
				got, err := d.Append([]int{id})
				if err != nil {
					t.Fatal(err)
				}
				check("token by token", pos, got)
			}
			for _, chunk := range []int{decodeChunk, 4} {
				d.Reset()
				d.chunk = chunk
				const prompt = 10
				got, err := d.Append(ids[:prompt])
				if err != nil {
					t.Fatal(err)
				}
				check("prompt", prompt-1, got)
				for pos := prompt; pos < T; pos++ {
					got, err := d.Append(ids[pos : pos+1])
					if err != nil {
						t.Fatal(err)
					}
					check("after the prompt", pos, got)
				}
				if d.Len() != T {
					t.Fatalf("Len %d after %d tokens", d.Len(), T)
				}
			}
			// The decoder used none of Forward's buffers.
			again, err := m.Logits()
			if err != nil {
				t.Fatal(err)
			}
			if e := decodeRelErr(again, want); e != 0 {
				t.Fatalf("decoding changed Forward's logits (%.3g)", e)
			}
		})
	}
}

// TestDecodeStories260KGreedy: greedy decoding of the real model from BOS with
// the cache reproduces transformers' greedy continuation exactly.
func TestDecodeStories260KGreedy(t *testing.T) {
	dir := "../../shared/models/stories260K"
	if _, err := os.Stat(dir); err != nil {
		t.Skipf("the real model is not here (%v): run from a checkout beside ../shared", err)
	}
	w, err := LoadModel(dir)
	if err != nil {
		t.Fatal(err)
	}
	m, err := NewModel(ops.NewCPU(), w, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	raw, err := os.ReadFile("testdata/parity/stories260k.json")
	if err != nil {
		t.Fatal(err)
	}
	var ref struct {
		GreedyFromBOS []int `json:"greedy_from_bos"`
	}
	if err := json.Unmarshal(raw, &ref); err != nil {
		t.Fatal(err)
	}
	want := ref.GreedyFromBOS
	if len(want) < 2 || want[0] != w.Config.BOSTokenID {
		t.Fatalf("fixture greedy_from_bos %v does not start with BOS %d", want, w.Config.BOSTokenID)
	}
	d, err := NewDecoder(m, len(want))
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	s, err := NewSampler(SamplerOptions{})
	if err != nil {
		t.Fatal(err)
	}
	got := []int{want[0]}
	for len(got) < len(want) {
		logits, err := d.Append(got[len(got)-1:])
		if err != nil {
			t.Fatal(err)
		}
		next, err := s.Sample(logits)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, next)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("greedy token %d is %d, transformers chose %d\ngot  %v\nwant %v", i, got[i], want[i], got, want)
		}
	}
}

// TestDecodeErrors: misuse is an error naming the problem, and a failed Append
// leaves the cache usable.
func TestDecodeErrors(t *testing.T) {
	m := decodeTiny(t, false)
	cfg := m.Config()
	if _, err := NewDecoder(m, cfg.MaxPositions+1); err == nil || !strings.Contains(err.Error(), "max_position_embeddings") {
		t.Errorf("decoder longer than the model's positions: %v", err)
	}
	if _, err := NewDecoder(m, 0); err == nil {
		t.Error("decoder of length 0: no error")
	}
	d, err := NewDecoder(m, 4)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if _, err := d.Append(nil); err == nil {
		t.Error("empty append: no error")
	}
	if _, err := d.Append([]int{1, cfg.VocabSize}); err == nil || !strings.Contains(err.Error(), "vocabulary") {
		t.Errorf("token outside the vocabulary: %v", err)
	}
	if _, err := d.Append([]int{1, 2, 3}); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Append([]int{4, 5}); err == nil || !strings.Contains(err.Error(), "exceed") {
		t.Errorf("append past the length: %v", err)
	}
	if _, err := d.Append([]int{4}); err != nil || d.Len() != 4 {
		t.Errorf("append to the last position after a refused one: len %d, %v", d.Len(), err)
	}

	w, err := RandomWeights(cfg, 5, 0, cfg.NumLayers, true, true, 0)
	if err != nil {
		t.Fatal(err)
	}
	stage, err := NewModel(ops.NewCPU(), w, Options{Hi: 2})
	if err != nil {
		t.Fatal(err)
	}
	defer stage.Close()
	if _, err := NewDecoder(stage, 8); err == nil || !strings.Contains(err.Error(), "every layer") {
		t.Errorf("decoder on a pipeline stage: %v", err)
	}
}
