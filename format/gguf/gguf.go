// Package gguf reads and writes GGUF, llama.cpp's model file: a header of
// typed key/value metadata and tensor descriptions, then the tensor data, each
// tensor at an aligned offset. All numbers are little-endian (version 3):
//
//	"GGUF" uint32 version, uint64 tensor_count, uint64 kv_count
//	kv_count × { string key, uint32 value_type, value }
//	tensor_count × { string name, uint32 n_dims, n_dims × uint64 ne, uint32 ggml_type, uint64 offset }
//	padding to general.alignment (default 32)
//	tensor data; offsets are relative to its start and aligned
//
// with string = uint64 length + bytes, and an array value = uint32 element type,
// uint64 count, elements. Dimensions are listed innermost first: a Hugging Face
// nn.Linear weight [out, in] is ne = [in, out] over the same row-major bytes.
//
// Every size read from a file is bounded by what is left of the file before
// anything is allocated, so a corrupt or hostile header is an error, not an
// out-of-memory crash.
//
// The reader (Open, Parse, File) checks the whole header before it returns:
// every tensor's dimensions, type, offset and size against the file. Tensor
// data is read later, on demand, and File.ReadFloat32 converts F32, F16, BF16,
// Q8_0 and Q4_0 tensors (quant.go); other quantized types are known by size
// only. The writer (Writer) writes version 3 with tensors of those five types
// in the order they were added.
//
// llama.go maps the llama architecture onto the container: WriteModel writes a
// model.Weights with llama.cpp's keys and tensor names (and the tokenizer
// embedded, so llama.cpp can run the file), ReadModel reads a file back into
// model.Weights and model.Config.
//
// The tests compare the reader with a file llama.cpp converted (stories260K,
// when ../shared is beside the checkout), round-trip models through every
// tensor type, check hostile headers, and fuzz the parser (FuzzParseGGUF).
package gguf

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
	"math"

	"train/format/internal/float16"
	"train/internal/fileio"
)

// GGMLType is a ggml tensor element type.
type GGMLType uint32

// The ggml types this package writes and reads as float32; the others it knows by
// size only (to validate a file's layout).
const (
	F32  GGMLType = 0
	F16  GGMLType = 1
	BF16 GGMLType = 30
)

// typeInfo is a type's name, elements per block and bytes per block.
var typeInfo = map[GGMLType]struct {
	name         string
	block, bytes int64
}{
	0: {"F32", 1, 4}, 1: {"F16", 1, 2}, 2: {"Q4_0", 32, 18}, 3: {"Q4_1", 32, 20},
	6: {"Q5_0", 32, 22}, 7: {"Q5_1", 32, 24}, 8: {"Q8_0", 32, 34}, 9: {"Q8_1", 32, 36},
	10: {"Q2_K", 256, 84}, 11: {"Q3_K", 256, 110}, 12: {"Q4_K", 256, 144}, 13: {"Q5_K", 256, 176},
	14: {"Q6_K", 256, 210}, 15: {"Q8_K", 256, 292}, 24: {"I8", 1, 1}, 25: {"I16", 1, 2},
	26: {"I32", 1, 4}, 27: {"I64", 1, 8}, 28: {"F64", 1, 8}, 30: {"BF16", 1, 2},
}

func (t GGMLType) String() string {
	if i, ok := typeInfo[t]; ok {
		return i.name
	}
	return fmt.Sprintf("type %d", uint32(t))
}

// GGUF metadata value types.
const (
	valueUint8   = 0
	valueInt8    = 1
	valueUint16  = 2
	valueInt16   = 3
	valueUint32  = 4
	valueInt32   = 5
	valueFloat32 = 6
	valueBool    = 7
	valueString  = 8
	valueArray   = 9
	valueUint64  = 10
	valueInt64   = 11
	valueFloat64 = 12
)

// Bounds on a GGUF header, far above any real file (Llama 3's header has ~40 keys,
// arrays of 128256 tokens and 280147 merges, 292 tensors for 70B).
const (
	maxKVs           = 1 << 16
	maxTensors       = 1 << 20
	maxString        = 1 << 24
	maxArrayLen      = 1 << 26
	maxDepth         = 4
	maxDims          = 4 // GGML_MAX_DIMS
	maxAlignment     = 1 << 20
	defaultAlignment = 32
)

// TensorInfo describes one tensor of a GGUF file.
type TensorInfo struct {
	Name   string
	Dims   []int64 // ne: innermost (contiguous) dimension first
	Type   GGMLType
	Offset int64 // from the start of the data section
	Size   int64 // bytes; -1 for a type whose size this package does not know
}

// NumElements is the product of the dimensions.
func (t TensorInfo) NumElements() int64 {
	n := int64(1)
	for _, d := range t.Dims {
		n *= d // bounded when parsed
	}
	return n
}

// Shape is the row-major (outermost first) shape, as safetensors and PyTorch list it.
func (t TensorInfo) Shape() []int {
	s := make([]int, len(t.Dims))
	for i, d := range t.Dims {
		s[len(t.Dims)-1-i] = int(d)
	}
	return s
}

// File is an open GGUF file whose header has been read and validated.
// Metadata values are Go values: uint8, int8, uint16, int16, uint32, int32,
// float32, bool, string, uint64, int64, float64, or for arrays a slice of one
// of those ([]string, []float32, []int32, ...; []any for an array of arrays).
type File struct {
	Name      string // the path, used in errors
	Version   uint32
	Alignment int64
	Keys      []string // metadata keys in file order
	Metadata  map[string]any
	Tensors   []TensorInfo

	byName    map[string]int
	r         io.ReaderAt
	closer    io.Closer
	dataStart int64
	dataSize  int64
}

// Open opens path and reads its header. Close the file when done.
func Open(path string) (*File, error) {
	f, size, err := fileio.OpenSized(path)
	if err != nil {
		return nil, err
	}
	g, err := Parse(path, f, size)
	if err != nil {
		f.Close()
		return nil, err
	}
	g.closer = f
	return g, nil
}

// Close closes the file.
func (g *File) Close() error {
	if g.closer == nil {
		return nil
	}
	return g.closer.Close()
}

// decoder reads a header sequentially, refusing to read past the file.
type decoder struct {
	name string
	br   *bufio.Reader
	off  int64
	size int64
	buf  [8]byte
}

func (d *decoder) errorf(format string, a ...any) error {
	return fmt.Errorf("%s: offset %d: %s", d.name, d.off, fmt.Sprintf(format, a...))
}

func (d *decoder) left() int64 { return d.size - d.off }

func (d *decoder) bytes(n int64, what string) ([]byte, error) {
	if n < 0 || n > d.left() {
		return nil, d.errorf("%s of %d bytes runs past the end of the file (%d bytes left)", what, n, d.left())
	}
	var b []byte
	if n <= 8 {
		b = d.buf[:n]
	} else {
		b = make([]byte, n)
	}
	if _, err := io.ReadFull(d.br, b); err != nil {
		return nil, d.errorf("reading %s: %v", what, err)
	}
	d.off += n
	return b, nil
}

func (d *decoder) u32(what string) (uint32, error) {
	b, err := d.bytes(4, what)
	if err != nil {
		return 0, err
	}
	return binary.LittleEndian.Uint32(b), nil
}

func (d *decoder) u64(what string) (uint64, error) {
	b, err := d.bytes(8, what)
	if err != nil {
		return 0, err
	}
	return binary.LittleEndian.Uint64(b), nil
}

func (d *decoder) str(what string) (string, error) {
	n, err := d.u64(what + " length")
	if err != nil {
		return "", err
	}
	if n > maxString {
		return "", d.errorf("%s length %d exceeds the %d-byte limit", what, n, maxString)
	}
	b, err := d.bytes(int64(n), what)
	if err != nil {
		return "", err
	}
	return string(b), nil
}

// scalarSize is the encoded size of a scalar value type, 0 for string and
// array, -1 for an unknown type.
func scalarSize(t uint32) int64 {
	switch t {
	case valueUint8, valueInt8, valueBool:
		return 1
	case valueUint16, valueInt16:
		return 2
	case valueUint32, valueInt32, valueFloat32:
		return 4
	case valueUint64, valueInt64, valueFloat64:
		return 8
	case valueString, valueArray:
		return 0
	}
	return -1
}

func (d *decoder) value(t uint32, key string, depth int) (any, error) {
	switch t {
	case valueString:
		return d.str(key)
	case valueArray:
		return d.array(key, depth)
	}
	size := scalarSize(t)
	if size < 0 {
		return nil, d.errorf("key %s: unknown value type %d", key, t)
	}
	b, err := d.bytes(size, key)
	if err != nil {
		return nil, err
	}
	return decodeScalar(t, b)
}

func decodeScalar(t uint32, b []byte) (any, error) {
	le := binary.LittleEndian
	switch t {
	case valueUint8:
		return b[0], nil
	case valueInt8:
		return int8(b[0]), nil
	case valueBool:
		if b[0] > 1 {
			return nil, fmt.Errorf("bool value %d is neither 0 nor 1", b[0])
		}
		return b[0] == 1, nil
	case valueUint16:
		return le.Uint16(b), nil
	case valueInt16:
		return int16(le.Uint16(b)), nil
	case valueUint32:
		return le.Uint32(b), nil
	case valueInt32:
		return int32(le.Uint32(b)), nil
	case valueFloat32:
		return math.Float32frombits(le.Uint32(b)), nil
	case valueUint64:
		return le.Uint64(b), nil
	case valueInt64:
		return int64(le.Uint64(b)), nil
	case valueFloat64:
		return math.Float64frombits(le.Uint64(b)), nil
	}
	return nil, fmt.Errorf("unknown value type %d", t)
}

func (d *decoder) array(key string, depth int) (any, error) {
	if depth >= maxDepth {
		return nil, d.errorf("key %s: arrays nested deeper than %d", key, maxDepth)
	}
	et, err := d.u32(key + " array type")
	if err != nil {
		return nil, err
	}
	n64, err := d.u64(key + " array length")
	if err != nil {
		return nil, err
	}
	// Every element takes at least one byte (a string or array at least eight).
	minSize := scalarSize(et)
	if minSize < 0 {
		return nil, d.errorf("key %s: unknown array element type %d", key, et)
	}
	if minSize == 0 {
		minSize = 8
	}
	if n64 > maxArrayLen || int64(n64) > d.left()/minSize {
		return nil, d.errorf("key %s: array of %d elements does not fit in the %d bytes left", key, n64, d.left())
	}
	n := int(n64)
	switch et {
	case valueString:
		out := make([]string, n)
		for i := range out {
			if out[i], err = d.str(key); err != nil {
				return nil, err
			}
		}
		return out, nil
	case valueArray:
		out := make([]any, n)
		for i := range out {
			if out[i], err = d.array(key, depth+1); err != nil {
				return nil, err
			}
		}
		return out, nil
	}
	raw, err := d.bytes(int64(n)*minSize, key)
	if err != nil {
		return nil, err
	}
	le := binary.LittleEndian
	switch et {
	case valueUint8:
		return raw, nil
	case valueInt8:
		out := make([]int8, n)
		for i := range out {
			out[i] = int8(raw[i])
		}
		return out, nil
	case valueBool:
		out := make([]bool, n)
		for i := range out {
			if raw[i] > 1 {
				return nil, d.errorf("key %s: bool value %d is neither 0 nor 1", key, raw[i])
			}
			out[i] = raw[i] == 1
		}
		return out, nil
	case valueUint16:
		out := make([]uint16, n)
		for i := range out {
			out[i] = le.Uint16(raw[2*i:])
		}
		return out, nil
	case valueInt16:
		out := make([]int16, n)
		for i := range out {
			out[i] = int16(le.Uint16(raw[2*i:]))
		}
		return out, nil
	case valueUint32:
		out := make([]uint32, n)
		for i := range out {
			out[i] = le.Uint32(raw[4*i:])
		}
		return out, nil
	case valueInt32:
		out := make([]int32, n)
		for i := range out {
			out[i] = int32(le.Uint32(raw[4*i:]))
		}
		return out, nil
	case valueFloat32:
		out := make([]float32, n)
		for i := range out {
			out[i] = math.Float32frombits(le.Uint32(raw[4*i:]))
		}
		return out, nil
	case valueUint64:
		out := make([]uint64, n)
		for i := range out {
			out[i] = le.Uint64(raw[8*i:])
		}
		return out, nil
	case valueInt64:
		out := make([]int64, n)
		for i := range out {
			out[i] = int64(le.Uint64(raw[8*i:]))
		}
		return out, nil
	default: // valueFloat64
		out := make([]float64, n)
		for i := range out {
			out[i] = math.Float64frombits(le.Uint64(raw[8*i:]))
		}
		return out, nil
	}
}

// Parse reads and validates the header of a GGUF file of size bytes read
// through r; name is used in errors. Tensor data is read later, on demand.
func Parse(name string, r io.ReaderAt, size int64) (*File, error) {
	d := &decoder{name: name, br: bufio.NewReaderSize(io.NewSectionReader(r, 0, size), 1<<16), size: size}
	magic, err := d.bytes(4, "magic")
	if err != nil {
		return nil, fmt.Errorf("%s: not a GGUF file (too short)", name)
	}
	if string(magic) != "GGUF" {
		return nil, fmt.Errorf("%s: not a GGUF file (magic %q)", name, magic)
	}
	g := &File{Name: name, Metadata: map[string]any{}, byName: map[string]int{}, r: r, Alignment: defaultAlignment}
	if g.Version, err = d.u32("version"); err != nil {
		return nil, err
	}
	if g.Version != 2 && g.Version != 3 {
		if g.Version>>16 != 0 {
			return nil, fmt.Errorf("%s: GGUF version %d: a big-endian file? only little-endian versions 2 and 3 are supported", name, g.Version)
		}
		return nil, fmt.Errorf("%s: GGUF version %d is not supported (2 and 3 are)", name, g.Version)
	}
	nt, err := d.u64("tensor count")
	if err != nil {
		return nil, err
	}
	nkv, err := d.u64("metadata count")
	if err != nil {
		return nil, err
	}
	// A key/value takes at least 8+4+1 bytes, a tensor description 8+4+4+8.
	if nkv > maxKVs || int64(nkv) > d.left()/13 {
		return nil, fmt.Errorf("%s: metadata count %d is implausible for a %d-byte file (limit %d)", name, nkv, size, maxKVs)
	}
	if nt > maxTensors || int64(nt) > d.left()/24 {
		return nil, fmt.Errorf("%s: tensor count %d is implausible for a %d-byte file (limit %d)", name, nt, size, maxTensors)
	}
	for i := uint64(0); i < nkv; i++ {
		key, err := d.str("metadata key")
		if err != nil {
			return nil, err
		}
		if _, dup := g.Metadata[key]; dup {
			return nil, d.errorf("metadata key %s appears twice", key)
		}
		t, err := d.u32(key + " type")
		if err != nil {
			return nil, err
		}
		v, err := d.value(t, key, 0)
		if err != nil {
			return nil, err
		}
		g.Keys = append(g.Keys, key)
		g.Metadata[key] = v
	}
	if v, ok := g.Metadata["general.alignment"]; ok {
		a, ok := v.(uint32)
		if !ok || a == 0 || a&(a-1) != 0 || a > maxAlignment {
			return nil, fmt.Errorf("%s: general.alignment %v must be a uint32 power of two up to %d", name, v, maxAlignment)
		}
		g.Alignment = int64(a)
	}
	for i := uint64(0); i < nt; i++ {
		var t TensorInfo
		if t.Name, err = d.str("tensor name"); err != nil {
			return nil, err
		}
		if _, dup := g.byName[t.Name]; dup {
			return nil, d.errorf("tensor %s appears twice", t.Name)
		}
		nd, err := d.u32(t.Name + " dimension count")
		if err != nil {
			return nil, err
		}
		if nd < 1 || nd > maxDims {
			return nil, d.errorf("tensor %s has %d dimensions (1 to %d allowed)", t.Name, nd, maxDims)
		}
		elems := int64(1)
		for j := uint32(0); j < nd; j++ {
			n, err := d.u64(t.Name + " dimension")
			if err != nil {
				return nil, err
			}
			if n == 0 || n > math.MaxInt64/8 || elems > math.MaxInt64/8/int64(n) {
				return nil, d.errorf("tensor %s: dimension %d of size %d is invalid or makes the tensor too large", t.Name, j, n)
			}
			elems *= int64(n)
			t.Dims = append(t.Dims, int64(n))
		}
		typ, err := d.u32(t.Name + " type")
		if err != nil {
			return nil, err
		}
		t.Type = GGMLType(typ)
		off, err := d.u64(t.Name + " offset")
		if err != nil {
			return nil, err
		}
		if off > uint64(size) || int64(off)%g.Alignment != 0 {
			return nil, d.errorf("tensor %s: offset %d is past the file or not a multiple of the alignment %d", t.Name, off, g.Alignment)
		}
		t.Offset = int64(off)
		t.Size = -1
		if info, ok := typeInfo[t.Type]; ok {
			if t.Dims[0]%info.block != 0 {
				return nil, d.errorf("tensor %s: first dimension %d is not a multiple of %s's block of %d", t.Name, t.Dims[0], t.Type, info.block)
			}
			t.Size = elems / info.block * info.bytes
		}
		g.byName[t.Name] = len(g.Tensors)
		g.Tensors = append(g.Tensors, t)
	}
	g.dataStart = alignUp(d.off, g.Alignment)
	if g.dataStart > size {
		if len(g.Tensors) > 0 {
			return nil, fmt.Errorf("%s: the file ends in the header's padding, before any tensor data", name)
		}
		g.dataStart = size
	}
	g.dataSize = size - g.dataStart
	for _, t := range g.Tensors {
		end := t.Offset
		if t.Size > 0 {
			end += t.Size
		}
		if end > g.dataSize {
			return nil, fmt.Errorf("%s: tensor %s (%s %v) at offset %d runs past the end of the file (data section of %d bytes): truncated?",
				name, t.Name, t.Type, t.Dims, t.Offset, g.dataSize)
		}
	}
	return g, nil
}

func alignUp(n, a int64) int64 { return (n + a - 1) / a * a }

// Tensor returns the named tensor's description.
func (g *File) Tensor(name string) (TensorInfo, bool) {
	i, ok := g.byName[name]
	if !ok {
		return TensorInfo{}, false
	}
	return g.Tensors[i], true
}

// String returns a string metadata value; ok is false when the key is absent or
// not a string.
func (g *File) String(key string) (string, bool) {
	s, ok := g.Metadata[key].(string)
	return s, ok
}

// Uint returns an unsigned or non-negative integer metadata value of any width.
func (g *File) Uint(key string) (uint64, bool) {
	switch v := g.Metadata[key].(type) {
	case uint8:
		return uint64(v), true
	case uint16:
		return uint64(v), true
	case uint32:
		return uint64(v), true
	case uint64:
		return v, true
	case int8:
		return uint64(v), v >= 0
	case int16:
		return uint64(v), v >= 0
	case int32:
		return uint64(v), v >= 0
	case int64:
		return uint64(v), v >= 0
	}
	return 0, false
}

// Float returns a float32 or float64 metadata value.
func (g *File) Float(key string) (float64, bool) {
	switch v := g.Metadata[key].(type) {
	case float32:
		return float64(v), true
	case float64:
		return v, true
	}
	return 0, false
}

// ReadFloat32 reads a tensor of type F32, F16, BF16, Q8_0 or Q4_0 as float32
// (quantized ones dequantized as llama.cpp does), row-major in its Shape.
func (g *File) ReadFloat32(name string) ([]float32, error) {
	t, ok := g.Tensor(name)
	if !ok {
		return nil, fmt.Errorf("%s: no tensor named %s", g.Name, name)
	}
	switch t.Type {
	case F32, F16, BF16, Q8_0, Q4_0:
	default:
		return nil, fmt.Errorf("%s: tensor %s: unsupported type %s (F32, F16, BF16, Q8_0 and Q4_0 can be read)", g.Name, name, t.Type)
	}
	info := typeInfo[t.Type]
	n := t.NumElements()
	if n > math.MaxInt32*4 {
		return nil, fmt.Errorf("%s: tensor %s of %d elements is too large", g.Name, name, n)
	}
	out := make([]float32, n)
	const chunk = 1 << 20 // values per read, a multiple of every block
	buf := make([]byte, min(n, chunk)/info.block*info.bytes)
	for i := int64(0); i < n; {
		m := min(n-i, chunk)
		b := buf[:m/info.block*info.bytes]
		if _, err := g.r.ReadAt(b, g.dataStart+t.Offset+i/info.block*info.bytes); err != nil {
			return nil, fmt.Errorf("%s: reading tensor %s (%s): %w", g.Name, name, t.Type, err)
		}
		decode(out[i:i+m], t.Type, b)
		i += m
	}
	return out, nil
}

// decode converts len(out) values of type t from b.
func decode(out []float32, t GGMLType, b []byte) {
	le := binary.LittleEndian
	switch t {
	case Q8_0:
		dequantQ8_0(out, b)
	case Q4_0:
		dequantQ4_0(out, b)
	case F32:
		for j := range out {
			out[j] = math.Float32frombits(le.Uint32(b[4*j:]))
		}
	case F16:
		for j := range out {
			out[j] = float16.ToFloat32(le.Uint16(b[2*j:]))
		}
	default: // BF16
		for j := range out {
			out[j] = math.Float32frombits(uint32(le.Uint16(b[2*j:])) << 16)
		}
	}
}
