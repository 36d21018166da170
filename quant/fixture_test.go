package quant

// The tests in this file compare, bit for bit, with the output of
// scripts/make-nf4-fixtures.py (bitsandbytes' NF4 reimplemented in PyTorch, run
// on the GPU test machine), committed in testdata/nf4/. They skip, saying how to
// make the fixtures, when that folder is absent.

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"train/format/safetensors"
	"train/ops"
)

const fixtureDir = "testdata/nf4"

// needFixture skips t when the fixture file is absent.
func needFixture(t *testing.T, name string) string {
	t.Helper()
	path := filepath.Join(fixtureDir, name)
	if _, err := os.Stat(path); errors.Is(err, fs.ErrNotExist) {
		t.Skipf("%s is absent: on the GPU test machine run `python3 scripts/make-nf4-fixtures.py /tmp/nf4-fixtures` "+
			"and copy /tmp/nf4-fixtures/* to quant/testdata/nf4/", path)
	}
	return path
}

func openCases(t *testing.T) *safetensors.File {
	f, err := safetensors.Open(needFixture(t, "cases.safetensors"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

func fixF32(t *testing.T, f *safetensors.File, name string) []float32 {
	t.Helper()
	v, _, err := f.ReadFloat32(name)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func fixRaw(t *testing.T, f *safetensors.File, name string) []byte {
	t.Helper()
	v, err := f.ReadRaw(name)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func u16Bytes(v []uint16) []byte {
	b := make([]byte, 0, 2*len(v))
	for _, x := range v {
		b = binary.LittleEndian.AppendUint16(b, x)
	}
	return b
}

func digest(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// sameBytes fails t at the first byte where got and want differ.
func sameBytes(t *testing.T, what string, got, want []byte) {
	t.Helper()
	if len(got) != len(want) {
		t.Errorf("%s: %d bytes, the reference %d", what, len(got), len(want))
		return
	}
	for i := range got {
		if got[i] != want[i] {
			t.Errorf("%s: byte %d is %#02x, the reference %#02x", what, i, got[i], want[i])
			return
		}
	}
}

// sameF32 fails t at the first element whose bits differ.
func sameF32(t *testing.T, what string, got, want []float32) {
	t.Helper()
	if len(got) != len(want) {
		t.Errorf("%s: %d values, the reference %d", what, len(got), len(want))
		return
	}
	for i := range got {
		if math.Float32bits(got[i]) != math.Float32bits(want[i]) {
			t.Errorf("%s[%d] = %v (%#08x), the reference %v (%#08x)", what, i, got[i], math.Float32bits(got[i]), want[i], math.Float32bits(want[i]))
			return
		}
	}
}

// caseOutputs is everything the script records for one input, computed here.
func caseOutputs(t *testing.T, name string, w []float32) map[string][]byte {
	t.Helper()
	plain, dq := quantizeBoth(t, name, w)
	f32, bf, dqbf := dequantizeAll(t, plain, dq)
	return map[string][]byte{
		"packed":          plain.Packed,
		"absmax":          f32LE(plain.Absmax),
		"dq_codes":        dq.Nested.Codes,
		"dq_absmax":       f32LE(dq.Nested.Absmax),
		"dq_offset":       f32LE([]float32{dq.Nested.Offset}),
		"dq_scales":       f32LE(dq.Scales()),
		"dequant_f32":     f32LE(f32),
		"dequant_bf16":    u16Bytes(bf),
		"dq_dequant_bf16": u16Bytes(dqbf),
	}
}

func TestFixtureCodeBookAndMap(t *testing.T) {
	f := openCases(t)
	sameF32(t, "NF4 code book", NF4Code[:], fixF32(t, f, "nf4_code"))
	sameF32(t, "NF4 thresholds", nf4Thresholds[:], fixF32(t, f, "nf4_thresholds"))
	m := DynamicMap()
	sameF32(t, "dynamic map", m[:], fixF32(t, f, "dynamic_map"))
}

// TestFixtureCases: the small cases, stored in full (odd sizes, zero and
// negative blocks, values on and beside every threshold).
func TestFixtureCases(t *testing.T) {
	f := openCases(t)
	var names []string
	for _, ti := range f.Tensors() {
		if c, ok := strings.CutSuffix(ti.Name, ".input"); ok && c != "b8" {
			names = append(names, c)
		}
	}
	sort.Strings(names)
	if len(names) < 9 {
		t.Fatalf("only %d cases in the fixture: %v", len(names), names)
	}
	for _, c := range names {
		t.Run(c, func(t *testing.T) {
			got := caseOutputs(t, c, fixF32(t, f, c+".input"))
			keys := make([]string, 0, len(got))
			for k := range got {
				keys = append(keys, k)
			}
			sort.Strings(keys)
			for _, k := range keys {
				sameBytes(t, c+"."+k, got[k], fixRaw(t, f, c+"."+k))
			}
		})
	}
	// The 8-bit blockwise quantizer on values on and beside every midpoint of the map.
	m := DynamicMap()
	codes, absmax := quantizeBlockwise8(fixF32(t, f, "b8.input"), NestedBlockSize, &m)
	sameBytes(t, "b8.codes", codes, fixRaw(t, f, "b8.codes"))
	sameF32(t, "b8.absmax", absmax, fixF32(t, f, "b8.absmax"))
}

// genWeights is the script's gen_weights: a counter-based splitmix64, four
// 16-bit fields summed (roughly normal), every 997th weight 8x, scaled by 2^-22,
// all exact in float32, then rounded to bf16.
func genWeights(seed uint64, n int, bf16 bool) []float32 {
	w := make([]float32, n)
	for i := range w {
		z := seed + uint64(i+1)*0x9E3779B97F4A7C15
		z = (z ^ z>>30) * 0xBF58476D1CE4E5B9
		z = (z ^ z>>27) * 0x94D049BB133111EB
		z ^= z >> 31
		s := int64(-131070)
		for k := range 4 {
			s += int64(z >> (16 * k) & 0xFFFF)
		}
		if i%997 == 0 {
			s *= 8
		}
		v := float32(s) * (1.0 / (1 << 22))
		if bf16 {
			v = ops.RoundBF16(v)
		}
		w[i] = v
	}
	return w
}

type fixtureExpected struct {
	Torch     string                       `json:"torch"`
	Generated map[string]map[string]any    `json:"generated"`
	Ckpts     map[string]fixtureCheckpoint `json:"-"`
	raw       map[string]json.RawMessage
}

type fixtureCheckpoint struct {
	EmbedSeed uint64   `json:"embed_seed"`
	NormSeeds []uint64 `json:"norm_seeds"`
	Weights   map[string]struct {
		Seed        uint64 `json:"seed"`
		Shape       []int  `json:"shape"`
		DequantF32  string `json:"dequant_f32"`
		DequantBF16 string `json:"dequant_bf16"`
	} `json:"weights"`
}

func readExpected(t *testing.T) fixtureExpected {
	data, err := os.ReadFile(needFixture(t, "expected.json"))
	if err != nil {
		t.Fatal(err)
	}
	var e fixtureExpected
	if err := json.Unmarshal(data, &e.raw); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(data, &e); err != nil {
		t.Fatal(err)
	}
	e.Ckpts = map[string]fixtureCheckpoint{}
	for k, v := range e.raw {
		if strings.HasPrefix(k, "bnb-4bit") {
			var c fixtureCheckpoint
			if err := json.Unmarshal(v, &c); err != nil {
				t.Fatal(err)
			}
			e.Ckpts[k] = c
		}
	}
	return e
}

// TestFixtureGenerated: the larger cases (257 blocks, so two nested blocks;
// 1000003 weights; a float32 input), compared by SHA-256 of every output.
func TestFixtureGenerated(t *testing.T) {
	e := readExpected(t)
	if len(e.Generated) < 3 {
		t.Fatalf("expected.json has %d generated cases", len(e.Generated))
	}
	for name, c := range e.Generated {
		t.Run(name, func(t *testing.T) {
			w := genWeights(uint64(c["seed"].(float64)), int(c["n"].(float64)), c["bf16"].(bool))
			if got := digest(f32LE(w)); got != c["input"] {
				t.Fatalf("the generated input differs from the script's (sha256 %s, want %s): genWeights no longer matches gen_weights", got, c["input"])
			}
			got := caseOutputs(t, name, w)
			for k, v := range got {
				if want, _ := c[k].(string); digest(v) != want {
					t.Errorf("%s: sha256 %s, the reference %s", k, digest(v), want)
				}
			}
		})
	}
}
