package gguf

import (
	"bytes"
	"encoding/hex"
	"fmt"
	"math"
	"math/rand/v2"
	"testing"

	"train/format/internal/float16"
	"train/internal/testcheck"
)

// TestQuantGoldenBlocks: one block of each type computed by hand from the
// reference quantizers' formulas. Q8_0: amax 127 makes d = 1 (fp16 0x3c00) and
// q = round(x) half away from zero (0.5 -> 1, -0.5 -> -1, 2.5 -> 3, -2.5 -> -3).
// Q4_0: the first value of largest magnitude is -8, so d = -8/-8 = 1 and q =
// min(15, trunc(x + 8.5)): -8 -> 0, 7 -> 15, 0.5 -> 9, -0.5 -> 8, 0.49 -> 8,
// -7.6 -> 0, and 8 (same magnitude, later, opposite sign) clamps to 15;
// element j in the low nibble of byte j, j+16 in its high nibble. An all-zero
// block has d = 0/-8 = -0 in C's float arithmetic: fp16 0x8000.
func TestQuantGoldenBlocks(t *testing.T) {
	q8 := make([]float32, 32)
	copy(q8, []float32{127, -127, 0.5, -0.5, 1.5, 2.5, -2.5, 3.49})
	for j := 8; j < 32; j++ {
		q8[j] = float32(j - 16)
	}
	want8 := "003c" + "7f" + "81" + "01" + "ff" + "02" + "03" + "fd" + "03"
	for j := 8; j < 32; j++ {
		want8 += fmt.Sprintf("%02x", byte(int8(j-16)))
	}
	q4 := make([]float32, 32)
	copy(q4, []float32{-8, 7, 0.5, -0.5, 0.49, -7.6})
	for j := 6; j < 16; j++ {
		q4[j] = float32(j - 8)
	}
	q4[16] = 8
	for j := 17; j < 32; j++ {
		q4[j] = float32(j - 24)
	}
	want4 := "003c" + "f0" + "1f" + "29" + "38" + "48" + "50" + "66778899aabbccddeeff"
	zeros := make([]float32, 32)
	for _, c := range []struct {
		name string
		got  []byte
		want string
	}{
		{"Q8_0", appendQ8_0(nil, q8), want8},
		{"Q4_0", appendQ4_0(nil, q4), want4},
		{"Q8_0 zeros", appendQ8_0(nil, zeros), "0000" + hex.EncodeToString(make([]byte, 32))},
		{"Q4_0 zeros", appendQ4_0(nil, zeros), "0080" + hex.EncodeToString(bytes.Repeat([]byte{0x88}, 16))},
	} {
		if got := hex.EncodeToString(c.got); got != c.want {
			t.Errorf("%s block:\n got %s\nwant %s", c.name, got, c.want)
		}
	}
	// Dequantized: q·d, (q-8)·d.
	back := make([]float32, 32)
	dequantQ4_0(back, appendQ4_0(nil, q4))
	if back[0] != -8 || back[1] != 7 || back[2] != 1 || back[3] != 0 || back[16] != 7 || back[5] != -8 {
		t.Errorf("Q4_0 dequantized %v", back)
	}
}

// quantBoundViolation returns the first element of x whose value read back, y,
// is farther from it than the bound the format allows (see quant.go), or -1.
// d is recomputed from the block as the quantizer did; d16 is the stored half.
func quantBoundViolation(typ GGMLType, x, y []float32) (int, float64, float64) {
	for b := 0; b < len(x); b += QuantBlock {
		blk := x[b : b+QuantBlock]
		var amax, m float32
		for _, v := range blk {
			if amax < abs32(v) {
				amax, m = abs32(v), v
			}
		}
		d := float64(amax / 127)
		if typ == Q4_0 {
			d = float64(m / -8)
		}
		d16 := float64(float16.ToFloat32(float16.FromFloat32(float32(d))))
		slack := 4e-6 * float64(amax) // float32 rounding of x/d and of q·d16
		for j, v := range blk {
			var bound float64
			switch typ {
			case Q8_0:
				bound = math.Abs(d)/2 + 127*math.Abs(d-d16)
			default:
				bound = math.Abs(d)/2 + 8*math.Abs(d-d16)
				if r := float64(v) / d; r > 7.5 { // clamps to code 15, dequantized 7·d
					bound = (r-7)*math.Abs(d) + 8*math.Abs(d-d16)
				}
			}
			if e := math.Abs(float64(v) - float64(y[b+j])); e > bound+slack {
				return b + j, e, bound
			}
		}
	}
	return -1, 0, 0
}

// TestQuantRoundTripBound writes random matrices as Q8_0 and Q4_0 through the
// Writer, reads them back through the reader, and checks every element within
// the format's bound; scales down to 1e-6 give subnormal fp16 scales. Then the
// same check must fail on a naive bound of d/2 for Q4_0 (the clamped values)
// and on a file with one code changed by one.
func TestQuantRoundTripBound(t *testing.T) {
	const rows, cols = 48, 96
	rng := rand.New(rand.NewPCG(3, 4))
	x := make([]float32, rows*cols)
	for i := range x {
		scale := math.Pow(10, -float64(i/cols%7)) // each row its own scale: 1 to 1e-6
		x[i] = float32(rng.NormFloat64() * scale)
	}
	// A first block whose largest magnitude comes with both signs (the Q4_0 clamp).
	for j := range 32 {
		x[j] = max(-3, min(3, x[j]))
	}
	x[0], x[5] = 4, -4
	for _, typ := range []GGMLType{Q8_0, Q4_0} {
		var w Writer
		if err := w.AddTensor("m", typ, []int{rows, cols}, x); err != nil {
			t.Fatal(err)
		}
		var buf bytes.Buffer
		if _, err := w.WriteTo(&buf); err != nil {
			t.Fatal(err)
		}
		data := buf.Bytes()
		g, err := Parse("q", bytes.NewReader(data), int64(len(data)))
		if err != nil {
			t.Fatal(err)
		}
		ti, _ := g.Tensor("m")
		if ti.Type != typ || ti.Size != int64(rows*cols/32)*typeInfo[typ].bytes {
			t.Fatalf("%s: tensor %+v", typ, ti)
		}
		y, err := g.ReadFloat32("m")
		if err != nil {
			t.Fatal(err)
		}
		if i, e, b := quantBoundViolation(typ, x, y); i >= 0 {
			t.Fatalf("%s: element %d: %v read back as %v: error %g over the bound %g", typ, i, x[i], y[i], e, b)
		}
		// The check can fail: a code changed by one in the first block.
		bad := append([]byte(nil), data...)
		bad[g.dataStart+ti.Offset+2] ^= 1
		gb, _ := Parse("bad", bytes.NewReader(bad), int64(len(bad)))
		yb, err := gb.ReadFloat32("m")
		if err != nil {
			t.Fatal(err)
		}
		if i, _, _ := quantBoundViolation(typ, x, yb); i < 0 {
			t.Errorf("%s: a changed code passes the bound check", typ)
		}
	}
	// Q4_0's bound is not d/2 everywhere: x[5] = -4 against m = 4 clamps to -3.5.
	q := make([]float32, 32)
	dequantQ4_0(q, appendQ4_0(nil, x[:32]))
	if d := 4.0 / 8; math.Abs(float64(x[5]-q[5])) <= d/2 {
		t.Errorf("Q4_0: the clamped value -4 read back as %v, within d/2: the clamp case is not exercised", q[5])
	}
}

// TestQuantShortData: a quantized tensor whose data the file does not hold is
// refused when the header is read, naming the tensor; a row length that does not
// fit the blocks is refused by the writer.
func TestQuantShortData(t *testing.T) {
	var w Writer
	w.AddTensor("blk.0.attn_q.weight", Q8_0, []int{4, 64}, make([]float32, 256))
	var buf bytes.Buffer
	w.WriteTo(&buf)
	data := buf.Bytes()
	short := data[:len(data)-30] // 16 bytes of padding and 14 of the tensor
	_, err := Parse("short.gguf", bytes.NewReader(short), int64(len(short)))
	testcheck.ErrorContains(t, err, "short.gguf: tensor blk.0.attn_q.weight (Q8_0 [64 4]) at offset 0 runs past the end of the file")
	err = w.AddTensor("odd", Q4_0, []int{2, 40}, make([]float32, 80))
	testcheck.ErrorContains(t, err, "rows of 40 values cannot be stored as Q4_0")
}
