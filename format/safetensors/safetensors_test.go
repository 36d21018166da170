package safetensors

import (
	"bytes"
	"encoding/binary"
	"hash/crc32"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"train/internal/testcheck"
	"train/ops"
)

// stRaw builds a safetensors file from a header string and data bytes, for
// malformed-input tests.
func stRaw(header string, data []byte) []byte {
	var b bytes.Buffer
	binary.Write(&b, binary.LittleEndian, uint64(len(header)))
	b.WriteString(header)
	b.Write(data)
	return b.Bytes()
}

func parseBytes(name string, b []byte) (*File, error) {
	return Parse(name, bytes.NewReader(b), int64(len(b)))
}

func TestSafetensorsRoundTrip(t *testing.T) {
	var w Writer
	w.SetMetadata("format", "pt")
	a := []float32{1, -2, 3.5, float32(math.Inf(1)), 0, 1e-30}
	b := []float64{math.Pi, -1e300, 0.1}
	c := []float32{1, 1.00390625, 1.01171875, -3.14159} // bf16: exact, tie to even (down), tie to even (up), rounded
	mustAdd(t, w.AddFloat32("w.a", F32, []int{2, 3}, a))
	mustAdd(t, w.AddFloat64("w.b", []int{3}, b))
	mustAdd(t, w.AddFloat32("w.c", BF16, []int{4}, c))
	// F16: 1, -2, 65504 (max), 2^-24 (smallest subnormal), -0, +Inf.
	f16 := []uint16{0x3c00, 0xc000, 0x7bff, 0x0001, 0x8000, 0x7c00}
	var raw []byte
	for _, h := range f16 {
		raw = binary.LittleEndian.AppendUint16(raw, h)
	}
	mustAdd(t, w.AddRaw("w.d", F16, []int{6}, raw))
	ints := binary.LittleEndian.AppendUint64(nil, uint64(1<<40))
	ints = binary.LittleEndian.AppendUint64(ints, uint64(math.MaxUint64)) // -1
	mustAdd(t, w.AddRaw("ids", I64, []int{2}, ints))
	mustAdd(t, w.AddRaw("ids32", I32, []int{1}, binary.LittleEndian.AppendUint32(nil, uint32(0xfffffff6)))) // -10
	mustAdd(t, w.AddFloat32("empty", F32, []int{0, 5}, nil))
	mustAdd(t, w.AddFloat32("scalar", F32, []int{}, []float32{7}))

	var buf bytes.Buffer
	if _, err := w.WriteTo(&buf); err != nil {
		t.Fatal(err)
	}
	var again bytes.Buffer
	w.WriteTo(&again)
	if !bytes.Equal(buf.Bytes(), again.Bytes()) {
		t.Fatal("writing twice gave different bytes")
	}
	n := binary.LittleEndian.Uint64(buf.Bytes())
	if n%8 != 0 {
		t.Errorf("header length %d is not a multiple of 8", n)
	}
	if !strings.HasPrefix(string(buf.Bytes()[8:]), `{"__metadata__":{"format":"pt"},"ids":`) {
		t.Errorf("header does not start with metadata then the widest dtype: %.80s", buf.Bytes()[8:])
	}

	f, err := parseBytes("rt.safetensors", buf.Bytes())
	if err != nil {
		t.Fatal(err)
	}
	if f.Metadata["format"] != "pt" {
		t.Errorf("metadata = %v", f.Metadata)
	}
	for _, ti := range f.Tensors() {
		if ti.Begin%int64(ti.DType.Size()) != 0 {
			t.Errorf("tensor %s at offset %d is not aligned to its %d-byte elements", ti.Name, ti.Begin, ti.DType.Size())
		}
	}
	got, shape, err := f.ReadFloat32("w.a")
	if err != nil || !slices.Equal(shape, []int{2, 3}) {
		t.Fatal(err, shape)
	}
	for i := range a {
		if got[i] != a[i] {
			t.Errorf("w.a[%d] = %v, want %v", i, got[i], a[i])
		}
	}
	got64, _, err := f.ReadFloat64("w.b")
	if err != nil {
		t.Fatal(err)
	}
	for i := range b {
		if got64[i] != b[i] {
			t.Errorf("w.b[%d] = %v, want %v", i, got64[i], b[i])
		}
	}
	gotC, _, _ := f.ReadFloat32("w.c")
	wantC := []float32{1, 1, 1.015625, -3.140625}
	for i := range wantC {
		if gotC[i] != wantC[i] {
			t.Errorf("bf16 w.c[%d] = %v, want %v", i, gotC[i], wantC[i])
		}
	}
	gotD, _, _ := f.ReadFloat32("w.d")
	wantD := []float32{1, -2, 65504, 1.0 / (1 << 24), 0, float32(math.Inf(1))}
	for i := range wantD {
		if gotD[i] != wantD[i] {
			t.Errorf("f16 w.d[%d] = %v, want %v", i, gotD[i], wantD[i])
		}
	}
	if !math.Signbit(float64(gotD[4])) {
		t.Error("f16 -0 lost its sign")
	}
	gotI, _, err := f.ReadInt64("ids")
	if err != nil || gotI[0] != 1<<40 || gotI[1] != -1 {
		t.Errorf("ids = %v, %v", gotI, err)
	}
	gotI, _, err = f.ReadInt64("ids32")
	if err != nil || gotI[0] != -10 {
		t.Errorf("ids32 = %v, %v", gotI, err)
	}
	if e, _, err := f.ReadFloat32("empty"); err != nil || len(e) != 0 {
		t.Errorf("empty = %v, %v", e, err)
	}
	if s, shape, err := f.ReadFloat32("scalar"); err != nil || len(s) != 1 || s[0] != 7 || len(shape) != 0 {
		t.Errorf("scalar = %v %v, %v", s, shape, err)
	}
	dst := make([]float32, 6)
	if err := f.ReadFloat32Into("w.a", dst); err != nil || dst[2] != 3.5 {
		t.Errorf("ReadFloat32Into = %v, %v", dst, err)
	}
	testcheck.ErrorContains(t, f.ReadFloat32Into("w.a", make([]float32, 5)), "rt.safetensors: tensor w.a: has 6 elements, destination holds 5")
	_, _, err = f.ReadFloat32("ids")
	testcheck.ErrorContains(t, err, "rt.safetensors: tensor ids: dtype I64 cannot be read as floats")
	_, _, err = f.ReadInt64("w.a")
	testcheck.ErrorContains(t, err, "rt.safetensors: tensor w.a: dtype F32 cannot be read as integers")
	_, _, err = f.ReadFloat32("nope")
	testcheck.ErrorContains(t, err, "rt.safetensors: no tensor named nope")
	if got, err := f.ReadRaw("w.d"); err != nil || !bytes.Equal(got, raw) {
		t.Errorf("ReadRaw(w.d) = %x, %v; want %x", got, err, raw)
	}
	if got, err := f.ReadRaw("empty"); err != nil || len(got) != 0 {
		t.Errorf("ReadRaw(empty) = %x, %v", got, err)
	}
	_, err = f.ReadRaw("nope")
	testcheck.ErrorContains(t, err, "rt.safetensors: no tensor named nope")
}

func TestSafetensorsLargeTensorChunks(t *testing.T) {
	// More than one read chunk, with a length that is not a multiple of it.
	n := readChunkSize/4*2 + 3
	data := make([]float32, n)
	for i := range data {
		data[i] = float32(i)
	}
	var w Writer
	mustAdd(t, w.AddFloat32("x", F32, []int{n}, data))
	var buf bytes.Buffer
	w.WriteTo(&buf)
	f, err := parseBytes("big.safetensors", buf.Bytes())
	if err != nil {
		t.Fatal(err)
	}
	got, _, err := f.ReadFloat32("x")
	if err != nil {
		t.Fatal(err)
	}
	for i := range got {
		if got[i] != float32(i) {
			t.Fatalf("x[%d] = %v", i, got[i])
		}
	}
	// ReadFloat32Sum reads the same values and checksums exactly the stored
	// bytes, across the chunks.
	x, _ := f.Tensor("x")
	stored := buf.Bytes()[f.dataStart+x.Begin : f.dataStart+x.End]
	sumGot, _, sum, err := f.ReadFloat32Sum("x")
	if err != nil || !slices.Equal(sumGot, got) || sum != crc32.Checksum(stored, castagnoli) {
		t.Fatalf("ReadFloat32Sum: %v, crc32c %08x, want the values and %08x", err, sum, crc32.Checksum(stored, castagnoli))
	}
	raw, err := f.ReadRaw("x")
	if err != nil || len(raw) != 4*n {
		t.Fatalf("ReadRaw(x): %d bytes, %v", len(raw), err)
	}
	for i := 0; i < n; i++ {
		if v := math.Float32frombits(binary.LittleEndian.Uint32(raw[4*i:])); v != float32(i) {
			t.Fatalf("ReadRaw(x)[%d] = %v", i, v)
		}
	}
}

func TestFloat32ToBF16(t *testing.T) {
	for _, c := range []struct {
		in   float32
		want uint16
	}{
		{1, 0x3f80},
		{-2, 0xc000},
		{float32(math.Inf(-1)), 0xff80},
		{math.Float32frombits(0x3f808000), 0x3f80}, // tie, even below
		{math.Float32frombits(0x3f818000), 0x3f82}, // tie, even above
		{math.Float32frombits(0x3f808001), 0x3f81}, // above the tie
		{math.Float32frombits(0x7f7fffff), 0x7f80}, // max float32 rounds to Inf, as torch does
	} {
		if got := ops.ToBF16(c.in); got != c.want {
			t.Errorf("ops.ToBF16(%#x) = %#x, want %#x", math.Float32bits(c.in), got, c.want)
		}
	}
	nan := ops.ToBF16(float32(math.NaN()))
	if v := math.Float32frombits(uint32(nan) << 16); !math.IsNaN(float64(v)) {
		t.Errorf("NaN became %v", v)
	}
	// A NaN whose payload sits only in the low bits must not round to Inf.
	if v := math.Float32frombits(uint32(ops.ToBF16(math.Float32frombits(0x7f800001))) << 16); !math.IsNaN(float64(v)) {
		t.Errorf("low-payload NaN became %v", v)
	}
}

// TestSafetensorsMalformed covers every way a header can lie; each error must say
// which file and which tensor.
func TestSafetensorsMalformed(t *testing.T) {
	data16 := make([]byte, 16)
	bigLen := binary.LittleEndian.AppendUint64(nil, 200<<20)
	cases := []struct {
		name string
		file []byte
		want string
	}{
		{"truncated before the header length", []byte{1, 2, 3}, "m.safetensors: file of 3 bytes is too short"},
		{"header length larger than the file", stRaw(`{}`, nil)[:9], "m.safetensors: header length 2 is larger than the 1 bytes after it"},
		{"absurd header length", append(bigLen, make([]byte, 64)...), "m.safetensors: header length 209715200 exceeds the 104857600-byte limit"},
		{"header not JSON", stRaw(`{"a": nope}`, nil), "m.safetensors: header is not JSON (at \"a\")"},
		{"header not an object", stRaw(`[1,2]`, nil), "m.safetensors: header is not a JSON object"},
		{"header cut short", stRaw(`{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}`, data16), "m.safetensors: header is not JSON"},
		{"trailing data", stRaw(`{} {}`, nil), "m.safetensors: header has 3 bytes of trailing data"},
		{"offsets past the data", stRaw(`{"model.norm.weight":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}`, data16[:8]),
			"m.safetensors: tensor model.norm.weight: data_offsets [0,16] exceed data section of 8 bytes"},
		{"offsets reversed", stRaw(`{"a":{"dtype":"F32","shape":[0],"data_offsets":[8,4]}}`, data16),
			"m.safetensors: tensor a: data_offsets [8,4] are not an increasing pair"},
		{"negative offset", stRaw(`{"a":{"dtype":"F32","shape":[1],"data_offsets":[-4,0]}}`, data16),
			"m.safetensors: tensor a: data_offsets [-4,0] are not an increasing pair"},
		{"three offsets", stRaw(`{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4,8]}}`, data16),
			"m.safetensors: tensor a: data_offsets must be [begin, end], got 3 numbers"},
		{"overlapping tensors", stRaw(`{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,12]},"b":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}}`, data16),
			"m.safetensors: tensor b: data_offsets [8,16] overlap tensor a at [0,12]"},
		{"identical ranges", stRaw(`{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},"b":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}`, data16),
			"overlap tensor"},
		{"shape disagrees with bytes", stRaw(`{"a":{"dtype":"F32","shape":[2,3],"data_offsets":[0,16]}}`, data16),
			"m.safetensors: tensor a: dtype F32 and shape [2 3] need 24 bytes but data_offsets [0,16] hold 16"},
		{"dtype disagrees with bytes", stRaw(`{"a":{"dtype":"BF16","shape":[4],"data_offsets":[0,16]}}`, data16),
			"m.safetensors: tensor a: dtype BF16 and shape [4] need 8 bytes but data_offsets [0,16] hold 16"},
		{"shape product overflows", stRaw(`{"a":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,0]}}`, data16),
			"m.safetensors: tensor a: shape [4294967296 4294967296] has too many elements"},
		{"shape product wraps to the byte count", stRaw(`{"a":{"dtype":"F32","shape":[4611686018427387905],"data_offsets":[0,4]}}`, data16),
			"has too many elements"},
		{"negative dimension", stRaw(`{"a":{"dtype":"F32","shape":[-4],"data_offsets":[0,16]}}`, data16),
			"m.safetensors: tensor a: shape [-4] has an invalid dimension -4"},
		{"fractional dimension", stRaw(`{"a":{"dtype":"F32","shape":[1.5],"data_offsets":[0,16]}}`, data16), "m.safetensors: tensor a: bad header entry"},
		{"unknown dtype", stRaw(`{"a":{"dtype":"Q4_K","shape":[4],"data_offsets":[0,16]}}`, data16), `m.safetensors: tensor a: unknown dtype "Q4_K"`},
		{"no dtype", stRaw(`{"a":{"shape":[4],"data_offsets":[0,16]}}`, data16), "m.safetensors: tensor a: header entry has no dtype"},
		{"no shape", stRaw(`{"a":{"dtype":"F32","data_offsets":[0,16]}}`, data16), "m.safetensors: tensor a: header entry has no shape"},
		{"no offsets", stRaw(`{"a":{"dtype":"F32","shape":[4]}}`, data16), "m.safetensors: tensor a: header entry has no data_offsets"},
		{"entry not an object", stRaw(`{"a":[1]}`, data16), "m.safetensors: tensor a: bad header entry"},
		{"duplicate tensor", stRaw(`{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}`, data16),
			`m.safetensors: header names "a" twice`},
		{"metadata not strings", stRaw(`{"__metadata__":{"n":1}}`, nil), "m.safetensors: __metadata__ must be an object of strings"},
		{"too many dimensions", stRaw(`{"a":{"dtype":"F32","shape":[1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1],"data_offsets":[0,4]}}`, data16),
			"m.safetensors: tensor a: shape has 17 dimensions"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := parseBytes("m.safetensors", c.file)
			testcheck.ErrorContains(t, err, c.want)
		})
	}
}

// TestSafetensorsTruncatedFile writes a real file, cuts it, and opens it from disk.
func TestSafetensorsTruncatedFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "model.safetensors")
	var w Writer
	mustAdd(t, w.AddFloat32("model.embed_tokens.weight", F32, []int{4, 4}, make([]float32, 16)))
	mustAdd(t, w.AddFloat32("model.norm.weight", F32, []int{4}, []float32{1, 1, 1, 1}))
	if err := w.WriteFile(path); err != nil {
		t.Fatal(err)
	}
	st, _ := os.Stat(path)
	if err := os.Truncate(path, st.Size()-3); err != nil {
		t.Fatal(err)
	}
	_, err := Open(path)
	testcheck.ErrorContains(t, err, path+": tensor model.norm.weight: data_offsets [64,80] exceed data section of 77 bytes (truncated file?)")

	if err := os.Truncate(path, 20); err != nil {
		t.Fatal(err)
	}
	_, err = Open(path)
	testcheck.ErrorContains(t, err, "is larger than the 12 bytes after it (truncated file?)")
}

// TestSafetensorsShortRead is a file that shrinks after its header was validated.
func TestSafetensorsShortRead(t *testing.T) {
	var w Writer
	mustAdd(t, w.AddFloat32("a", F32, []int{4}, []float32{1, 2, 3, 4}))
	var buf bytes.Buffer
	w.WriteTo(&buf)
	b := buf.Bytes()
	f, err := Parse("s.safetensors", bytes.NewReader(b[:len(b)-4]), int64(len(b)))
	if err != nil {
		t.Fatal(err)
	}
	_, _, err = f.ReadFloat32("a")
	testcheck.ErrorContains(t, err, "s.safetensors: tensor a: reading bytes [0,16) of the data section: unexpected EOF")
}

// TestSafetensorsF16Writer: float32 data stored as F16 reads back rounded to
// nearest even, as ops.ToF16 rounds (the Hugging Face export's -dtype f16).
func TestSafetensorsF16Writer(t *testing.T) {
	var w Writer
	v := []float32{1, -2.5, 65504, 1.0009765625 + 1.0/4096, 3e-8, 0.1, float32(math.Inf(-1))}
	mustAdd(t, w.AddFloat32("h", F16, []int{len(v)}, v))
	var buf bytes.Buffer
	if _, err := w.WriteTo(&buf); err != nil {
		t.Fatal(err)
	}
	f, err := parseBytes("f16.safetensors", buf.Bytes())
	if err != nil {
		t.Fatal(err)
	}
	got, _, err := f.ReadFloat32("h")
	if err != nil {
		t.Fatal(err)
	}
	for i := range v {
		if want := ops.RoundF16(v[i]); math.Float32bits(got[i]) != math.Float32bits(want) {
			t.Errorf("element %d: %v stored as F16 reads back %v, want %v", i, v[i], got[i], want)
		}
	}
	if got[5] == 0.1 {
		t.Error("0.1 read back unrounded: the data was not stored as F16")
	}
}

func TestSafetensorsWriterErrors(t *testing.T) {
	var w Writer
	mustAdd(t, w.AddFloat32("a", F32, []int{2}, []float32{1, 2}))
	testcheck.ErrorContains(t, w.AddFloat32("a", F32, []int{2}, []float32{1, 2}), "tensor a added twice")
	testcheck.ErrorContains(t, w.AddFloat32("b", F32, []int{3}, []float32{1, 2}), "shape [3] holds 3 elements but the data has 2")
	testcheck.ErrorContains(t, w.AddFloat32("c", I32, []int{2}, []float32{1, 2}), "float32 data can be stored as F32, BF16 or F16, not I32")
	testcheck.ErrorContains(t, w.AddFloat32("c", F16, []int{2}, []float32{1, 70000}), "tensor c: element 1 is 70000, beyond float16's largest value 65504")
	testcheck.ErrorContains(t, w.AddFloat32("__metadata__", F32, []int{2}, []float32{1, 2}), "invalid tensor name")
	testcheck.ErrorContains(t, w.AddRaw("d", DType("X"), []int{2}, []byte{1, 2}), `unknown dtype "X"`)
	testcheck.ErrorContains(t, w.AddRaw("e", F32, []int{2}, []byte{1, 2, 3}), "not a whole number of F32 elements")
	testcheck.ErrorContains(t, w.AddFloat64("f", []int{-1}, nil), "invalid shape [-1]")
}

// FuzzSafetensorsHeader feeds arbitrary bytes to the parser: it must return an
// error or a file whose every float tensor reads without error, and never panic or
// allocate from an unchecked size.
func FuzzSafetensorsHeader(f *testing.F) {
	var w Writer
	w.SetMetadata("format", "pt")
	w.AddFloat32("a", F32, []int{2, 2}, []float32{1, 2, 3, 4})
	w.AddFloat32("b", BF16, []int{3}, []float32{1, 2, 3})
	w.AddFloat64("c", []int{1}, []float64{1})
	w.AddRaw("d", F16, []int{1}, []byte{0, 0x3c})
	var buf bytes.Buffer
	w.WriteTo(&buf)
	f.Add(buf.Bytes())
	data16 := make([]byte, 16)
	for _, h := range []string{
		`{}`,
		`{"__metadata__":{"k":"v"}}`,
		`{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}`,
		`{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,12]},"b":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}}`,
		`{"a":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,0]}}`,
		`{"a":{"dtype":"I64","shape":[2],"data_offsets":[0,16]}}`,
		`{"a":{"dtype":"F16","shape":[0],"data_offsets":[16,16]}}`,
		`{"a":{"dtype":"BF16","shape":[],"data_offsets":[0,2]}}       `,
	} {
		f.Add(stRaw(h, data16))
	}
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, '{', '}'})
	f.Fuzz(func(t *testing.T, b []byte) {
		sf, err := parseBytes("fuzz.safetensors", b)
		if err != nil {
			if !strings.HasPrefix(err.Error(), "fuzz.safetensors: ") {
				t.Fatalf("error does not name the file: %v", err)
			}
			return
		}
		dataSize := sf.dataSize
		for _, ti := range sf.Tensors() {
			if ti.Begin < 0 || ti.End > dataSize || ti.End-ti.Begin != ti.NumElements()*int64(ti.DType.Size()) {
				t.Fatalf("accepted inconsistent tensor %+v (data section %d)", ti, dataSize)
			}
			if ti.DType.IsFloat() {
				if _, _, err := sf.ReadFloat32(ti.Name); err != nil {
					t.Fatalf("validated tensor %s does not read: %v", ti.Name, err)
				}
			}
		}
	})
}

func mustAdd(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
