package model

// GGUF is llama.cpp's model file: a header of typed key/value metadata and
// tensor descriptions, then the tensor data, each tensor at an aligned offset.
// All numbers are little-endian (version 3):
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
// The llama architecture's mapping (see llama.cpp's convert_hf_to_gguf.py):
// Hugging Face rotates q and k by halves (rotate_half: element i pairs with
// i + head_dim/2), llama.cpp by adjacent pairs (2i with 2i+1). The converter
// therefore permutes the rows of q_proj and k_proj within each head so the same
// model computes the same thing under llama.cpp's rope; ggufPermute does it and
// ggufUnpermute undoes it on import.

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"train/internal/fileio"
	"train/ops"
	"train/tokenizer"
)

// GGMLType is a ggml tensor element type.
type GGMLType uint32

// The ggml types this package writes and reads as float32; the others it knows by
// size only (to validate a file's layout).
const (
	GGMLTypeF32  GGMLType = 0
	GGMLTypeF16  GGMLType = 1
	GGMLTypeBF16 GGMLType = 30
)

// ggmlTypeInfo is a type's name, elements per block and bytes per block.
var ggmlTypeInfo = map[GGMLType]struct {
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
	if i, ok := ggmlTypeInfo[t]; ok {
		return i.name
	}
	return fmt.Sprintf("type %d", uint32(t))
}

// llama.cpp's llama_ftype for a file whose matrices are all of one type.
func ggufFileType(t GGMLType) uint32 {
	switch t {
	case GGMLTypeF16:
		return 1
	case GGMLTypeBF16:
		return 32
	}
	return 0
}

// GGUF metadata value types.
const (
	ggufUint8   = 0
	ggufInt8    = 1
	ggufUint16  = 2
	ggufInt16   = 3
	ggufUint32  = 4
	ggufInt32   = 5
	ggufFloat32 = 6
	ggufBool    = 7
	ggufString  = 8
	ggufArray   = 9
	ggufUint64  = 10
	ggufInt64   = 11
	ggufFloat64 = 12
)

// Bounds on a GGUF header, far above any real file (Llama 3's header has ~40 keys,
// arrays of 128256 tokens and 280147 merges, 292 tensors for 70B).
const (
	ggufMaxKVs       = 1 << 16
	ggufMaxTensors   = 1 << 20
	ggufMaxString    = 1 << 24
	ggufMaxArrayLen  = 1 << 26
	ggufMaxDepth     = 4
	ggufMaxDims      = 4 // GGML_MAX_DIMS
	ggufMaxAlignment = 1 << 20
	ggufDefaultAlign = 32
)

// GGUFTensor describes one tensor of a GGUF file.
type GGUFTensor struct {
	Name   string
	Dims   []int64 // ne: innermost (contiguous) dimension first
	Type   GGMLType
	Offset int64 // from the start of the data section
	Size   int64 // bytes; -1 for a type whose size this package does not know
}

// NumElements is the product of the dimensions.
func (t GGUFTensor) NumElements() int64 {
	n := int64(1)
	for _, d := range t.Dims {
		n *= d // bounded when parsed
	}
	return n
}

// Shape is the row-major (outermost first) shape, as safetensors and PyTorch list it.
func (t GGUFTensor) Shape() []int {
	s := make([]int, len(t.Dims))
	for i, d := range t.Dims {
		s[len(t.Dims)-1-i] = int(d)
	}
	return s
}

// GGUFFile is an open GGUF file whose header has been read and validated.
// Metadata values are Go values: uint8, int8, uint16, int16, uint32, int32,
// float32, bool, string, uint64, int64, float64, or for arrays a slice of one
// of those ([]string, []float32, []int32, ...; []any for an array of arrays).
type GGUFFile struct {
	Name      string // the path, used in errors
	Version   uint32
	Alignment int64
	Keys      []string // metadata keys in file order
	Metadata  map[string]any
	Tensors   []GGUFTensor

	byName    map[string]int
	r         io.ReaderAt
	closer    io.Closer
	dataStart int64
	dataSize  int64
}

// ReadGGUF opens path and reads its header. Close the file when done.
func ReadGGUF(path string) (*GGUFFile, error) {
	f, size, err := fileio.OpenSized(path)
	if err != nil {
		return nil, err
	}
	g, err := ParseGGUF(path, f, size)
	if err != nil {
		f.Close()
		return nil, err
	}
	g.closer = f
	return g, nil
}

// Close closes the file.
func (g *GGUFFile) Close() error {
	if g.closer == nil {
		return nil
	}
	return g.closer.Close()
}

// ggufDecoder reads a header sequentially, refusing to read past the file.
type ggufDecoder struct {
	name string
	br   *bufio.Reader
	off  int64
	size int64
	buf  [8]byte
}

func (d *ggufDecoder) errorf(format string, a ...any) error {
	return fmt.Errorf("%s: offset %d: %s", d.name, d.off, fmt.Sprintf(format, a...))
}

func (d *ggufDecoder) left() int64 { return d.size - d.off }

func (d *ggufDecoder) bytes(n int64, what string) ([]byte, error) {
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

func (d *ggufDecoder) u32(what string) (uint32, error) {
	b, err := d.bytes(4, what)
	if err != nil {
		return 0, err
	}
	return binary.LittleEndian.Uint32(b), nil
}

func (d *ggufDecoder) u64(what string) (uint64, error) {
	b, err := d.bytes(8, what)
	if err != nil {
		return 0, err
	}
	return binary.LittleEndian.Uint64(b), nil
}

func (d *ggufDecoder) str(what string) (string, error) {
	n, err := d.u64(what + " length")
	if err != nil {
		return "", err
	}
	if n > ggufMaxString {
		return "", d.errorf("%s length %d exceeds the %d-byte limit", what, n, ggufMaxString)
	}
	b, err := d.bytes(int64(n), what)
	if err != nil {
		return "", err
	}
	return string(b), nil
}

// ggufScalarSize is the encoded size of a scalar value type, 0 for string and
// array, -1 for an unknown type.
func ggufScalarSize(t uint32) int64 {
	switch t {
	case ggufUint8, ggufInt8, ggufBool:
		return 1
	case ggufUint16, ggufInt16:
		return 2
	case ggufUint32, ggufInt32, ggufFloat32:
		return 4
	case ggufUint64, ggufInt64, ggufFloat64:
		return 8
	case ggufString, ggufArray:
		return 0
	}
	return -1
}

func (d *ggufDecoder) value(t uint32, key string, depth int) (any, error) {
	switch t {
	case ggufString:
		return d.str(key)
	case ggufArray:
		return d.array(key, depth)
	}
	size := ggufScalarSize(t)
	if size < 0 {
		return nil, d.errorf("key %s: unknown value type %d", key, t)
	}
	b, err := d.bytes(size, key)
	if err != nil {
		return nil, err
	}
	return decodeGGUFScalar(t, b)
}

func decodeGGUFScalar(t uint32, b []byte) (any, error) {
	le := binary.LittleEndian
	switch t {
	case ggufUint8:
		return b[0], nil
	case ggufInt8:
		return int8(b[0]), nil
	case ggufBool:
		if b[0] > 1 {
			return nil, fmt.Errorf("bool value %d is neither 0 nor 1", b[0])
		}
		return b[0] == 1, nil
	case ggufUint16:
		return le.Uint16(b), nil
	case ggufInt16:
		return int16(le.Uint16(b)), nil
	case ggufUint32:
		return le.Uint32(b), nil
	case ggufInt32:
		return int32(le.Uint32(b)), nil
	case ggufFloat32:
		return math.Float32frombits(le.Uint32(b)), nil
	case ggufUint64:
		return le.Uint64(b), nil
	case ggufInt64:
		return int64(le.Uint64(b)), nil
	case ggufFloat64:
		return math.Float64frombits(le.Uint64(b)), nil
	}
	return nil, fmt.Errorf("unknown value type %d", t)
}

func (d *ggufDecoder) array(key string, depth int) (any, error) {
	if depth >= ggufMaxDepth {
		return nil, d.errorf("key %s: arrays nested deeper than %d", key, ggufMaxDepth)
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
	minSize := ggufScalarSize(et)
	if minSize < 0 {
		return nil, d.errorf("key %s: unknown array element type %d", key, et)
	}
	if minSize == 0 {
		minSize = 8
	}
	if n64 > ggufMaxArrayLen || int64(n64) > d.left()/minSize {
		return nil, d.errorf("key %s: array of %d elements does not fit in the %d bytes left", key, n64, d.left())
	}
	n := int(n64)
	switch et {
	case ggufString:
		out := make([]string, n)
		for i := range out {
			if out[i], err = d.str(key); err != nil {
				return nil, err
			}
		}
		return out, nil
	case ggufArray:
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
	case ggufUint8:
		return raw, nil
	case ggufInt8:
		out := make([]int8, n)
		for i := range out {
			out[i] = int8(raw[i])
		}
		return out, nil
	case ggufBool:
		out := make([]bool, n)
		for i := range out {
			if raw[i] > 1 {
				return nil, d.errorf("key %s: bool value %d is neither 0 nor 1", key, raw[i])
			}
			out[i] = raw[i] == 1
		}
		return out, nil
	case ggufUint16:
		out := make([]uint16, n)
		for i := range out {
			out[i] = le.Uint16(raw[2*i:])
		}
		return out, nil
	case ggufInt16:
		out := make([]int16, n)
		for i := range out {
			out[i] = int16(le.Uint16(raw[2*i:]))
		}
		return out, nil
	case ggufUint32:
		out := make([]uint32, n)
		for i := range out {
			out[i] = le.Uint32(raw[4*i:])
		}
		return out, nil
	case ggufInt32:
		out := make([]int32, n)
		for i := range out {
			out[i] = int32(le.Uint32(raw[4*i:]))
		}
		return out, nil
	case ggufFloat32:
		out := make([]float32, n)
		for i := range out {
			out[i] = math.Float32frombits(le.Uint32(raw[4*i:]))
		}
		return out, nil
	case ggufUint64:
		out := make([]uint64, n)
		for i := range out {
			out[i] = le.Uint64(raw[8*i:])
		}
		return out, nil
	case ggufInt64:
		out := make([]int64, n)
		for i := range out {
			out[i] = int64(le.Uint64(raw[8*i:]))
		}
		return out, nil
	default: // ggufFloat64
		out := make([]float64, n)
		for i := range out {
			out[i] = math.Float64frombits(le.Uint64(raw[8*i:]))
		}
		return out, nil
	}
}

// ParseGGUF reads and validates the header of a GGUF file of size bytes read
// through r; name is used in errors. Tensor data is read later, on demand.
func ParseGGUF(name string, r io.ReaderAt, size int64) (*GGUFFile, error) {
	d := &ggufDecoder{name: name, br: bufio.NewReaderSize(io.NewSectionReader(r, 0, size), 1<<16), size: size}
	magic, err := d.bytes(4, "magic")
	if err != nil {
		return nil, fmt.Errorf("%s: not a GGUF file (too short)", name)
	}
	if string(magic) != "GGUF" {
		return nil, fmt.Errorf("%s: not a GGUF file (magic %q)", name, magic)
	}
	g := &GGUFFile{Name: name, Metadata: map[string]any{}, byName: map[string]int{}, r: r, Alignment: ggufDefaultAlign}
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
	if nkv > ggufMaxKVs || int64(nkv) > d.left()/13 {
		return nil, fmt.Errorf("%s: metadata count %d is implausible for a %d-byte file (limit %d)", name, nkv, size, ggufMaxKVs)
	}
	if nt > ggufMaxTensors || int64(nt) > d.left()/24 {
		return nil, fmt.Errorf("%s: tensor count %d is implausible for a %d-byte file (limit %d)", name, nt, size, ggufMaxTensors)
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
		if !ok || a == 0 || a&(a-1) != 0 || a > ggufMaxAlignment {
			return nil, fmt.Errorf("%s: general.alignment %v must be a uint32 power of two up to %d", name, v, ggufMaxAlignment)
		}
		g.Alignment = int64(a)
	}
	for i := uint64(0); i < nt; i++ {
		var t GGUFTensor
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
		if nd < 1 || nd > ggufMaxDims {
			return nil, d.errorf("tensor %s has %d dimensions (1 to %d allowed)", t.Name, nd, ggufMaxDims)
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
		if info, ok := ggmlTypeInfo[t.Type]; ok {
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
func (g *GGUFFile) Tensor(name string) (GGUFTensor, bool) {
	i, ok := g.byName[name]
	if !ok {
		return GGUFTensor{}, false
	}
	return g.Tensors[i], true
}

// String returns a string metadata value; ok is false when the key is absent or
// not a string.
func (g *GGUFFile) String(key string) (string, bool) {
	s, ok := g.Metadata[key].(string)
	return s, ok
}

// Uint returns an unsigned or non-negative integer metadata value of any width.
func (g *GGUFFile) Uint(key string) (uint64, bool) {
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
func (g *GGUFFile) Float(key string) (float64, bool) {
	switch v := g.Metadata[key].(type) {
	case float32:
		return float64(v), true
	case float64:
		return v, true
	}
	return 0, false
}

// ReadFloat32 reads a tensor of type F32, F16 or BF16 as float32, row-major in
// its Shape.
func (g *GGUFFile) ReadFloat32(name string) ([]float32, error) {
	t, ok := g.Tensor(name)
	if !ok {
		return nil, fmt.Errorf("%s: no tensor named %s", g.Name, name)
	}
	var size int64
	switch t.Type {
	case GGMLTypeF32:
		size = 4
	case GGMLTypeF16, GGMLTypeBF16:
		size = 2
	default:
		return nil, fmt.Errorf("%s: tensor %s: unsupported type %s (only F32, F16 and BF16 can be read; quantized files must be dequantized first)", g.Name, name, t.Type)
	}
	n := t.NumElements()
	if n > math.MaxInt32*4 {
		return nil, fmt.Errorf("%s: tensor %s of %d elements is too large", g.Name, name, n)
	}
	out := make([]float32, n)
	const chunk = 1 << 20
	buf := make([]byte, min(n*size, chunk*size))
	for i := int64(0); i < n; {
		m := min(n-i, chunk)
		b := buf[:m*size]
		if _, err := g.r.ReadAt(b, g.dataStart+t.Offset+i*size); err != nil {
			return nil, fmt.Errorf("%s: reading tensor %s: %w", g.Name, name, err)
		}
		for j := int64(0); j < m; j++ {
			switch t.Type {
			case GGMLTypeF32:
				out[i+j] = math.Float32frombits(binary.LittleEndian.Uint32(b[4*j:]))
			case GGMLTypeF16:
				out[i+j] = f16ToFloat32(binary.LittleEndian.Uint16(b[2*j:]))
			default:
				out[i+j] = math.Float32frombits(uint32(binary.LittleEndian.Uint16(b[2*j:])) << 16)
			}
		}
		i += m
	}
	return out, nil
}

// float32ToF16 rounds to the nearest IEEE half, ties to even; overflow gives
// infinity, NaNs stay NaN.
func float32ToF16(f float32) uint16 {
	b := math.Float32bits(f)
	sign := uint16(b>>16) & 0x8000
	exp := int(b>>23) & 0xff
	mant := b & 0x7fffff
	if exp == 0xff {
		if mant != 0 {
			return sign | 0x7e00
		}
		return sign | 0x7c00
	}
	e := exp - 127 + 15
	if e >= 0x1f {
		return sign | 0x7c00
	}
	if e <= 0 { // half subnormal (or zero): value = m × 2^-24
		shift := uint(14 - e)
		if shift > 24 {
			return sign
		}
		full := mant | 0x800000
		m := full >> shift
		rem := full & (1<<shift - 1)
		half := uint32(1) << (shift - 1)
		if rem > half || (rem == half && m&1 == 1) {
			m++
		}
		return sign | uint16(m)
	}
	h := uint32(e)<<10 | mant>>13
	rem := mant & 0x1fff
	if rem > 0x1000 || (rem == 0x1000 && h&1 == 1) {
		h++ // a carry into the exponent is the right rounding, up to infinity
	}
	return sign | uint16(h)
}

// ggufPermute reorders the rows of a q or k projection [nHead*hd, cols] from
// Hugging Face's rotate_half layout to llama.cpp's interleaved one, as
// convert_hf_to_gguf.py's LlamaModel.permute does:
// w.reshape(nHead, 2, hd/2, cols).swapaxes(1, 2).
func ggufPermute(w []float32, nHead, cols int) []float32 {
	return permuteHeads(w, nHead, cols, false)
}

// ggufUnpermute is the inverse of ggufPermute.
func ggufUnpermute(w []float32, nHead, cols int) []float32 {
	return permuteHeads(w, nHead, cols, true)
}

func permuteHeads(w []float32, nHead, cols int, inverse bool) []float32 {
	out := make([]float32, len(w))
	hd := len(w) / cols / nHead
	half := hd / 2
	for h := 0; h < nHead; h++ {
		for j := 0; j < 2; j++ {
			for i := 0; i < half; i++ {
				hf := h*hd + j*half + i // row in HF layout
				gg := h*hd + 2*i + j    // row in llama.cpp layout
				src, dst := hf, gg
				if inverse {
					src, dst = gg, hf
				}
				copy(out[dst*cols:(dst+1)*cols], w[src*cols:(src+1)*cols])
			}
		}
	}
	return out
}

// ggufLayerNames maps our per-layer tensors to llama.cpp's names (blk.N.NAME.weight).
var ggufLayerNames = []struct{ hf, gguf string }{
	{"q_proj", "attn_q"}, {"k_proj", "attn_k"}, {"v_proj", "attn_v"}, {"o_proj", "attn_output"},
	{"gate_proj", "ffn_gate"}, {"up_proj", "ffn_up"}, {"down_proj", "ffn_down"},
	{"input_layernorm", "attn_norm"}, {"post_attention_layernorm", "ffn_norm"},
}

// GGUFWriter collects metadata and tensors and writes one GGUF v3 file. The zero
// value is ready to use; it keeps references to the slices it is given.
type GGUFWriter struct {
	keys    []string
	kvs     map[string]any
	tensors []ggufWTensor
	names   map[string]bool
}

type ggufWTensor struct {
	name string
	dims []int64
	typ  GGMLType
	data []float32
}

// Set records a metadata value. Supported Go types: uint8, int8, uint16, int16,
// uint32, int32, float32, bool, string, uint64, int64, float64, and slices of
// them ([]string, []float32, []int32, ...).
func (w *GGUFWriter) Set(key string, v any) error {
	if key == "" {
		return errors.New("gguf writer: empty metadata key")
	}
	if _, err := ggufValueType(v); err != nil {
		return fmt.Errorf("gguf writer: key %s: %w", key, err)
	}
	if w.kvs == nil {
		w.kvs = map[string]any{}
	}
	if _, ok := w.kvs[key]; !ok {
		w.keys = append(w.keys, key)
	}
	w.kvs[key] = v
	return nil
}

// AddTensor adds a tensor of row-major shape (outermost first, as Hugging Face
// lists it) stored as F32, F16 or BF16.
func (w *GGUFWriter) AddTensor(name string, typ GGMLType, shape []int, data []float32) error {
	if typ != GGMLTypeF32 && typ != GGMLTypeF16 && typ != GGMLTypeBF16 {
		return fmt.Errorf("gguf writer: tensor %s: type %s is not F32, F16 or BF16", name, typ)
	}
	if name == "" || w.names[name] {
		return fmt.Errorf("gguf writer: tensor name %q is empty or added twice", name)
	}
	if len(shape) < 1 || len(shape) > ggufMaxDims {
		return fmt.Errorf("gguf writer: tensor %s: %d dimensions", name, len(shape))
	}
	n := 1
	dims := make([]int64, len(shape))
	for i, d := range shape {
		if d <= 0 {
			return fmt.Errorf("gguf writer: tensor %s: shape %v", name, shape)
		}
		n *= d
		dims[len(shape)-1-i] = int64(d)
	}
	if n != len(data) {
		return fmt.Errorf("gguf writer: tensor %s: shape %v holds %d elements, data %d", name, shape, n, len(data))
	}
	if w.names == nil {
		w.names = map[string]bool{}
	}
	w.names[name] = true
	w.tensors = append(w.tensors, ggufWTensor{name, dims, typ, data})
	return nil
}

func ggufValueType(v any) (uint32, error) {
	switch v.(type) {
	case uint8:
		return ggufUint8, nil
	case int8:
		return ggufInt8, nil
	case uint16:
		return ggufUint16, nil
	case int16:
		return ggufInt16, nil
	case uint32:
		return ggufUint32, nil
	case int32:
		return ggufInt32, nil
	case float32:
		return ggufFloat32, nil
	case bool:
		return ggufBool, nil
	case string:
		return ggufString, nil
	case uint64:
		return ggufUint64, nil
	case int64:
		return ggufInt64, nil
	case float64:
		return ggufFloat64, nil
	case []uint8, []int8, []uint16, []int16, []uint32, []int32, []float32, []bool, []string, []uint64, []int64, []float64:
		return ggufArray, nil
	}
	return 0, fmt.Errorf("unsupported value type %T", v)
}

func appendGGUFString(b []byte, s string) []byte {
	b = binary.LittleEndian.AppendUint64(b, uint64(len(s)))
	return append(b, s...)
}

func appendGGUFScalar(b []byte, v any) []byte {
	le := binary.LittleEndian
	switch x := v.(type) {
	case uint8:
		return append(b, x)
	case int8:
		return append(b, byte(x))
	case bool:
		if x {
			return append(b, 1)
		}
		return append(b, 0)
	case uint16:
		return le.AppendUint16(b, x)
	case int16:
		return le.AppendUint16(b, uint16(x))
	case uint32:
		return le.AppendUint32(b, x)
	case int32:
		return le.AppendUint32(b, uint32(x))
	case float32:
		return le.AppendUint32(b, math.Float32bits(x))
	case uint64:
		return le.AppendUint64(b, x)
	case int64:
		return le.AppendUint64(b, uint64(x))
	case float64:
		return le.AppendUint64(b, math.Float64bits(x))
	case string:
		return appendGGUFString(b, x)
	}
	return b
}

func appendGGUFArray[T any](b []byte, et uint32, xs []T) []byte {
	b = binary.LittleEndian.AppendUint32(b, et)
	b = binary.LittleEndian.AppendUint64(b, uint64(len(xs)))
	for _, x := range xs {
		b = appendGGUFScalar(b, x)
	}
	return b
}

func appendGGUFValue(b []byte, v any) []byte {
	switch x := v.(type) {
	case []uint8:
		return appendGGUFArray(b, ggufUint8, x)
	case []int8:
		return appendGGUFArray(b, ggufInt8, x)
	case []uint16:
		return appendGGUFArray(b, ggufUint16, x)
	case []int16:
		return appendGGUFArray(b, ggufInt16, x)
	case []uint32:
		return appendGGUFArray(b, ggufUint32, x)
	case []int32:
		return appendGGUFArray(b, ggufInt32, x)
	case []float32:
		return appendGGUFArray(b, ggufFloat32, x)
	case []bool:
		return appendGGUFArray(b, ggufBool, x)
	case []string:
		return appendGGUFArray(b, ggufString, x)
	case []uint64:
		return appendGGUFArray(b, ggufUint64, x)
	case []int64:
		return appendGGUFArray(b, ggufInt64, x)
	case []float64:
		return appendGGUFArray(b, ggufFloat64, x)
	}
	return appendGGUFScalar(b, v)
}

func ggufTensorBytes(t ggufWTensor) int64 {
	if t.typ == GGMLTypeF32 {
		return int64(len(t.data)) * 4
	}
	return int64(len(t.data)) * 2
}

// WriteTo writes the file: header, padding to the alignment, then every tensor
// at an aligned offset, in the order added.
func (w *GGUFWriter) WriteTo(out io.Writer) (int64, error) {
	align := int64(ggufDefaultAlign)
	if a, ok := w.kvs["general.alignment"].(uint32); ok {
		if a == 0 || a&(a-1) != 0 || a > ggufMaxAlignment {
			return 0, fmt.Errorf("gguf writer: general.alignment %d is not a power of two up to %d", a, ggufMaxAlignment)
		}
		align = int64(a)
	}
	le := binary.LittleEndian
	h := []byte("GGUF")
	h = le.AppendUint32(h, 3)
	h = le.AppendUint64(h, uint64(len(w.tensors)))
	h = le.AppendUint64(h, uint64(len(w.keys)))
	for _, k := range w.keys {
		v := w.kvs[k]
		t, _ := ggufValueType(v) // checked in Set
		h = appendGGUFString(h, k)
		h = le.AppendUint32(h, t)
		h = appendGGUFValue(h, v)
	}
	var off int64
	for _, t := range w.tensors {
		h = appendGGUFString(h, t.name)
		h = le.AppendUint32(h, uint32(len(t.dims)))
		for _, d := range t.dims {
			h = le.AppendUint64(h, uint64(d))
		}
		h = le.AppendUint32(h, uint32(t.typ))
		h = le.AppendUint64(h, uint64(off))
		off = alignUp(off+ggufTensorBytes(t), align)
	}
	for int64(len(h))%align != 0 {
		h = append(h, 0)
	}
	bw := bufio.NewWriterSize(out, 1<<20)
	cw := &fileio.CountWriter{W: bw}
	cw.Write(h)
	buf := make([]byte, 0, 64<<10)
	pos := int64(0)
	for _, t := range w.tensors {
		for i := 0; i < len(t.data); {
			buf = buf[:0]
			for ; i < len(t.data) && len(buf) <= cap(buf)-4; i++ {
				switch t.typ {
				case GGMLTypeF32:
					buf = le.AppendUint32(buf, math.Float32bits(t.data[i]))
				case GGMLTypeF16:
					buf = le.AppendUint16(buf, float32ToF16(t.data[i]))
				default:
					buf = le.AppendUint16(buf, ops.ToBF16(t.data[i]))
				}
			}
			cw.Write(buf)
		}
		pos += ggufTensorBytes(t)
		if pad := alignUp(pos, align) - pos; pad > 0 {
			cw.Write(make([]byte, pad))
			pos += pad
		}
	}
	if cw.Err == nil {
		cw.Err = bw.Flush()
	}
	return cw.N, cw.Err
}

// WriteFile writes the file to path atomically.
func (w *GGUFWriter) WriteFile(path string) error {
	return fileio.WriteAtomic(path, func(out io.Writer) error {
		_, err := w.WriteTo(out)
		return err
	})
}

// GGUFOptions choose how WriteGGUF writes a model.
type GGUFOptions struct {
	// Type of the matrices (token embedding, projections, output): F32, F16 or
	// BF16. Norm weights and rope factors stay F32, as llama.cpp's converter keeps
	// one-dimensional tensors.
	Type GGMLType
	// Name is general.name.
	Name string
	// TokenizerDir holds tokenizer.json (and tokenizer_config.json) to embed as
	// tokenizer.ggml.* metadata; empty writes no tokenizer (llama.cpp then
	// cannot run the file, but our reader can).
	TokenizerDir string
}

// WriteGGUF writes the whole model w as one GGUF file for llama.cpp's llama
// architecture: the metadata keys convert_hf_to_gguf.py writes, llama.cpp's
// tensor names, q and k permuted to llama.cpp's rope layout, and with Llama 3
// rope scaling the rope_freqs.weight tensor of per-frequency factors llama.cpp
// applies. The rope parameters are also recorded under train.rope.* so that
// GGUFToWeights gives back the exact Config.
func WriteGGUF(path string, w *Weights, opt GGUFOptions) error {
	if opt.Type != GGMLTypeF32 && opt.Type != GGMLTypeF16 && opt.Type != GGMLTypeBF16 {
		return fmt.Errorf("gguf export %s: type %s: F32, F16 or BF16 only", path, opt.Type)
	}
	// Every tensor of the whole model must be present with its size.
	if _, err := fullModelTensors(w); err != nil {
		return fmt.Errorf("gguf export %s: %w", path, err)
	}
	var err error
	c := w.Config
	if c.HeadDim%2 != 0 {
		return fmt.Errorf("gguf export %s: head_dim %d is odd", path, c.HeadDim)
	}
	name := opt.Name
	if name == "" {
		name = "llama"
	}
	var g GGUFWriter
	set := func(k string, v any) {
		if err == nil {
			err = g.Set(k, v)
		}
	}
	u32 := func(n int) uint32 { return uint32(n) }
	set("general.architecture", "llama")
	set("general.name", name)
	set("general.file_type", ggufFileType(opt.Type))
	set("general.alignment", uint32(ggufDefaultAlign))
	set("llama.context_length", u32(c.MaxPositions))
	set("llama.embedding_length", u32(c.HiddenSize))
	set("llama.block_count", u32(c.NumLayers))
	set("llama.feed_forward_length", u32(c.IntermediateSize))
	set("llama.attention.head_count", u32(c.NumHeads))
	set("llama.attention.head_count_kv", u32(c.NumKVHeads))
	set("llama.attention.key_length", u32(c.HeadDim))
	set("llama.attention.value_length", u32(c.HeadDim))
	set("llama.rope.freq_base", float32(c.Rope.Theta))
	set("llama.attention.layer_norm_rms_epsilon", float32(c.RMSNormEps))
	set("llama.rope.dimension_count", u32(c.HeadDim))
	set("llama.vocab_size", u32(c.VocabSize))
	// Exact values for our own reader (llama.cpp ignores unknown keys).
	set("train.rope.theta", c.Rope.Theta)
	set("train.rms_norm_eps", c.RMSNormEps)
	set("train.rope.type", c.Rope.Type)
	if c.Rope.Type == "llama3" {
		set("train.rope.factor", c.Rope.Factor)
		set("train.rope.low_freq_factor", c.Rope.LowFreqFactor)
		set("train.rope.high_freq_factor", c.Rope.HighFreqFactor)
		set("train.rope.original_max_position_embeddings", u32(c.Rope.OriginalMaxPositionEmbeddings))
	} else if c.Rope.Type != "" && c.Rope.Type != "default" {
		return fmt.Errorf("gguf export %s: rope type %q is not supported", path, c.Rope.Type)
	}
	if err != nil {
		return err
	}
	if opt.TokenizerDir != "" {
		if err := setGGUFTokenizer(&g, opt.TokenizerDir, c); err != nil {
			return fmt.Errorf("gguf export %s: %w", path, err)
		}
	} else {
		if c.BOSTokenID >= 0 {
			set("tokenizer.ggml.bos_token_id", u32(c.BOSTokenID))
		}
		if len(c.EOSTokenIDs) > 0 {
			set("tokenizer.ggml.eos_token_id", u32(c.EOSTokenIDs[0]))
		}
		if err != nil {
			return err
		}
	}

	mat := func(name string, shape []int, data []float32) {
		if err == nil {
			err = g.AddTensor(name, opt.Type, shape, data)
		}
	}
	vec := func(name string, data []float32) {
		if err == nil {
			err = g.AddTensor(name, GGMLTypeF32, []int{len(data)}, data)
		}
	}
	h := c.HiddenSize
	mat("token_embd.weight", []int{c.VocabSize, h}, w.Embed)
	if c.Rope.Type == "llama3" {
		vec("rope_freqs.weight", llama3RopeFactors(&c))
	}
	for i, l := range w.Layers {
		vec(fmt.Sprintf("blk.%d.attn_norm.weight", i), l.AttnNorm)
		for _, p := range ggufLayerNames[:7] {
			out, in := c.LinearShape(p.hf)
			data := *l.Linear(p.hf)
			switch p.hf {
			case "q_proj":
				data = ggufPermute(data, c.NumHeads, in)
			case "k_proj":
				data = ggufPermute(data, c.NumKVHeads, in)
			}
			mat(fmt.Sprintf("blk.%d.%s.weight", i, p.gguf), []int{out, in}, data)
		}
		vec(fmt.Sprintf("blk.%d.ffn_norm.weight", i), l.MLPNorm)
	}
	vec("output_norm.weight", w.FinalNorm)
	if !c.TieEmbeddings {
		mat("output.weight", []int{c.VocabSize, h}, w.LMHead)
	}
	if err != nil {
		return fmt.Errorf("gguf export %s: %w", path, err)
	}
	return g.WriteFile(path)
}

// llama3RopeFactors are the per-frequency divisors of Llama 3 rope scaling, as
// convert_hf_to_gguf.py computes rope_freqs.weight: llama.cpp divides each
// inverse frequency by its factor.
func llama3RopeFactors(c *Config) []float32 {
	r := c.Rope
	dim := c.HeadDim
	out := make([]float32, dim/2)
	lowWavelen := float64(r.OriginalMaxPositionEmbeddings) / r.LowFreqFactor
	highWavelen := float64(r.OriginalMaxPositionEmbeddings) / r.HighFreqFactor
	for i := range out {
		freq := 1 / math.Pow(r.Theta, float64(2*i)/float64(dim))
		wavelen := 2 * math.Pi / freq
		switch {
		case wavelen < highWavelen:
			out[i] = 1
		case wavelen > lowWavelen:
			out[i] = float32(r.Factor)
		default:
			smooth := (float64(r.OriginalMaxPositionEmbeddings)/wavelen - r.LowFreqFactor) / (r.HighFreqFactor - r.LowFreqFactor)
			out[i] = float32(1 / ((1-smooth)/r.Factor + smooth))
		}
	}
	return out
}

// llama.cpp token types.
const (
	ggufTokNormal      = 1
	ggufTokUnknown     = 2
	ggufTokControl     = 3
	ggufTokUserDefined = 4
	ggufTokUnused      = 5
	ggufTokByte        = 6
)

// hfTokenizerFile is the part of tokenizer.json the GGUF tokenizer metadata needs
// beyond what the tokenizer package exposes.
type hfTokenizerFile struct {
	PreTokenizer json.RawMessage `json:"pre_tokenizer"`
	Decoder      json.RawMessage `json:"decoder"`
	AddedTokens  []struct {
		ID      int    `json:"id"`
		Content string `json:"content"`
	} `json:"added_tokens"`
	Model struct {
		Type         string          `json:"type"`
		UnkToken     *string         `json:"unk_token"`
		ByteFallback bool            `json:"byte_fallback"`
		Merges       json.RawMessage `json:"merges"`
	} `json:"model"`
}

// setGGUFTokenizer writes tokenizer.ggml.* from the tokenizer in dir, as
// convert_hf_to_gguf.py does: "llama" (SentencePiece-style BPE with byte
// fallback: scores, token types with byte tokens) or "gpt2" (byte-level BPE:
// merges). The token list is padded to the model's vocab size with [PADn].
func setGGUFTokenizer(g *GGUFWriter, dir string, c Config) error {
	path := filepath.Join(dir, "tokenizer.json")
	tok, err := tokenizer.Load(path)
	if err != nil {
		return err
	}
	raw, err := fileio.ReadFile(path, 256<<20)
	if err != nil {
		return err
	}
	var f hfTokenizerFile
	if err := json.Unmarshal(raw, &f); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	if f.Model.Type != "BPE" {
		return fmt.Errorf("%s: model type %q: only BPE tokenizers can be written to GGUF", path, f.Model.Type)
	}
	byteLevel := bytes.Contains(f.PreTokenizer, []byte(`"ByteLevel"`)) || bytes.Contains(f.Decoder, []byte(`"ByteLevel"`))
	n := tok.VocabSize()
	if n > c.VocabSize {
		return fmt.Errorf("%s: %d tokens, more than the model's vocab_size %d", path, n, c.VocabSize)
	}
	tokens := make([]string, c.VocabSize)
	types := make([]int32, c.VocabSize)
	scores := make([]float32, c.VocabSize)
	unk := ""
	if f.Model.UnkToken != nil {
		unk = *f.Model.UnkToken
	}
	added := map[int]bool{}
	for _, a := range f.AddedTokens {
		added[a.ID] = true
	}
	normal := 0
	for id := range tokens {
		s, ok := tok.Token(id)
		switch {
		case !ok:
			tokens[id], types[id] = fmt.Sprintf("[PAD%d]", id), ggufTokUnused
		case s == unk && !byteLevel:
			tokens[id], types[id] = s, ggufTokUnknown
		case tok.IsSpecial(id):
			tokens[id], types[id] = s, ggufTokControl
		case added[id]:
			tokens[id], types[id] = s, ggufTokUserDefined
		case !byteLevel && f.Model.ByteFallback && isByteToken(s):
			tokens[id], types[id] = s, ggufTokByte
		default:
			// SentencePiece scores: llama.cpp merges the pair whose result scores
			// highest; the vocabulary of a converted SentencePiece model is in
			// score order, so -k for the k-th normal token reproduces it.
			tokens[id], types[id], scores[id] = s, ggufTokNormal, -float32(normal)
			normal++
		}
	}
	set := func(k string, v any) {
		if err == nil {
			err = g.Set(k, v)
		}
	}
	if byteLevel {
		merges, err := parseGGUFMerges(f.Model.Merges)
		if err != nil {
			return fmt.Errorf("%s: model.merges: %w", path, err)
		}
		pre := "default"
		if _, ok := tok.TokenID("<|begin_of_text|>"); ok {
			pre = "llama-bpe"
		}
		set("tokenizer.ggml.model", "gpt2")
		set("tokenizer.ggml.pre", pre)
		set("tokenizer.ggml.tokens", tokens)
		set("tokenizer.ggml.token_type", types)
		set("tokenizer.ggml.merges", merges)
	} else {
		set("tokenizer.ggml.model", "llama")
		set("tokenizer.ggml.pre", "default")
		set("tokenizer.ggml.tokens", tokens)
		set("tokenizer.ggml.scores", scores)
		set("tokenizer.ggml.token_type", types)
		if id, ok := tok.TokenID(unk); ok && unk != "" {
			set("tokenizer.ggml.unknown_token_id", uint32(id))
		}
	}
	bos, eos := tok.BOS(), tok.EOS()
	if bos < 0 {
		bos = c.BOSTokenID
	}
	if eos < 0 && len(c.EOSTokenIDs) > 0 {
		eos = c.EOSTokenIDs[0]
	}
	if bos >= 0 {
		set("tokenizer.ggml.bos_token_id", uint32(bos))
		ids := tok.Encode("a", true)
		set("tokenizer.ggml.add_bos_token", len(ids) > 0 && ids[0] == bos)
	}
	if eos >= 0 {
		set("tokenizer.ggml.eos_token_id", uint32(eos))
	}
	if t := tok.ChatTemplate(); t != "" {
		set("tokenizer.chat_template", t)
	}
	return err
}

// isByteToken matches SentencePiece byte tokens <0xNN>.
func isByteToken(s string) bool {
	if len(s) != 6 || !strings.HasPrefix(s, "<0x") || s[5] != '>' {
		return false
	}
	for _, c := range s[3:5] {
		if !('0' <= c && c <= '9' || 'A' <= c && c <= 'F') {
			return false
		}
	}
	return true
}

// parseGGUFMerges reads tokenizer.json merges ("a b" strings or [a, b] pairs) as
// GGUF's "a b" strings.
func parseGGUFMerges(raw json.RawMessage) ([]string, error) {
	var strs []string
	if err := json.Unmarshal(raw, &strs); err == nil {
		return strs, nil
	}
	var pairs [][2]string
	if err := json.Unmarshal(raw, &pairs); err != nil {
		return nil, errors.New("neither a list of strings nor of pairs")
	}
	out := make([]string, len(pairs))
	for i, p := range pairs {
		out[i] = p[0] + " " + p[1]
	}
	return out, nil
}

// GGUFToWeights reads a llama-architecture GGUF file with F32, F16 or BF16
// tensors into Weights and the Config the metadata describes, undoing the q/k
// permutation. A file without output.weight has tied embeddings.
func GGUFToWeights(g *GGUFFile) (*Weights, Config, error) {
	fail := func(format string, a ...any) (*Weights, Config, error) {
		return nil, Config{}, fmt.Errorf("%s: %s", g.Name, fmt.Sprintf(format, a...))
	}
	if arch, _ := g.String("general.architecture"); arch != "llama" {
		return fail("general.architecture %q: only llama is supported", arch)
	}
	getInt := func(key string, def int, required bool, lo, hi int) (int, error) {
		v, ok := g.Uint("llama." + key)
		if !ok {
			if _, present := g.Metadata["llama."+key]; present {
				return 0, fmt.Errorf("%s: llama.%s is not a non-negative integer", g.Name, key)
			}
			if required {
				return 0, fmt.Errorf("%s: llama.%s is missing", g.Name, key)
			}
			return def, nil
		}
		if v < uint64(lo) || v > uint64(hi) {
			return 0, fmt.Errorf("%s: llama.%s %d is outside [%d, %d]", g.Name, key, v, lo, hi)
		}
		return int(v), nil
	}
	c := Config{Architecture: "LlamaForCausalLM", ModelType: "llama", HiddenAct: "silu", BOSTokenID: -1, TorchDType: "float32"}
	var err error
	for _, f := range []struct {
		key      string
		dst      *int
		required bool
		hi       int
	}{
		{"embedding_length", &c.HiddenSize, true, maxHFHidden},
		{"feed_forward_length", &c.IntermediateSize, true, maxHFIntermed},
		{"block_count", &c.NumLayers, true, maxHFLayers},
		{"attention.head_count", &c.NumHeads, true, maxHFHeads},
		{"context_length", &c.MaxPositions, false, maxHFPositions},
	} {
		if *f.dst, err = getInt(f.key, defaultMaxPos, f.required, 1, f.hi); err != nil {
			return nil, Config{}, err
		}
	}
	if c.NumKVHeads, err = getInt("attention.head_count_kv", c.NumHeads, false, 1, maxHFHeads); err != nil {
		return nil, Config{}, err
	}
	if c.HiddenSize%c.NumHeads != 0 {
		if _, ok := g.Metadata["llama.attention.key_length"]; !ok {
			return fail("embedding_length %d is not a multiple of head_count %d and key_length is missing", c.HiddenSize, c.NumHeads)
		}
	}
	if c.HeadDim, err = getInt("attention.key_length", c.HiddenSize/max(c.NumHeads, 1), false, 1, maxHFHeadDim); err != nil {
		return nil, Config{}, err
	}
	if vl, err := getInt("attention.value_length", c.HeadDim, false, 1, maxHFHeadDim); err != nil || vl != c.HeadDim {
		if err != nil {
			return nil, Config{}, err
		}
		return fail("llama.attention.value_length %d differs from key_length %d", vl, c.HeadDim)
	}
	if rd, err := getInt("rope.dimension_count", c.HeadDim, false, 1, maxHFHeadDim); err != nil || rd != c.HeadDim {
		if err != nil {
			return nil, Config{}, err
		}
		return fail("llama.rope.dimension_count %d: partial rotary embeddings are not supported (head dim %d)", rd, c.HeadDim)
	}
	c.RMSNormEps = defaultRMSEps
	if v, ok := g.Float("train.rms_norm_eps"); ok {
		c.RMSNormEps = v
	} else if v, ok := g.Float("llama.attention.layer_norm_rms_epsilon"); ok {
		c.RMSNormEps = v
	}
	c.Rope = Rope{Theta: defaultRopeTheta, Type: "default"}
	if v, ok := g.Float("train.rope.theta"); ok {
		c.Rope.Theta = v
	} else if v, ok := g.Float("llama.rope.freq_base"); ok {
		c.Rope.Theta = v
	}
	if _, ok := g.Metadata["llama.rope.scaling.type"]; ok {
		if t, _ := g.String("llama.rope.scaling.type"); t != "none" {
			return fail("llama.rope.scaling.type %q is not supported", t)
		}
	}
	if _, ok := g.Tensor("rope_freqs.weight"); ok {
		if t, _ := g.String("train.rope.type"); t != "llama3" {
			return fail("rope_freqs.weight (Llama 3 rope scaling) without train.rope.* parameters: the scaling cannot be recovered")
		}
		c.Rope.Type = "llama3"
		c.Rope.Factor, _ = g.Float("train.rope.factor")
		c.Rope.LowFreqFactor, _ = g.Float("train.rope.low_freq_factor")
		c.Rope.HighFreqFactor, _ = g.Float("train.rope.high_freq_factor")
		om, _ := g.Uint("train.rope.original_max_position_embeddings")
		if om > maxHFPositions {
			return fail("train.rope.original_max_position_embeddings %d is too large", om)
		}
		c.Rope.OriginalMaxPositionEmbeddings = int(om)
	}
	if v, ok := g.Uint("tokenizer.ggml.bos_token_id"); ok && v <= maxHFTokenID {
		c.BOSTokenID = int(v)
	}
	if v, ok := g.Uint("tokenizer.ggml.eos_token_id"); ok && v <= maxHFTokenID {
		c.EOSTokenIDs = []int{int(v)}
	}
	emb, ok := g.Tensor("token_embd.weight")
	if !ok {
		return fail("tensor token_embd.weight is missing")
	}
	if len(emb.Dims) != 2 || emb.Dims[0] != int64(c.HiddenSize) || emb.Dims[1] > maxHFVocab {
		return fail("token_embd.weight has dims %v, want [%d, vocab]", emb.Dims, c.HiddenSize)
	}
	c.VocabSize = int(emb.Dims[1])
	if v, ok := g.Uint("llama.vocab_size"); ok && v != uint64(c.VocabSize) {
		return fail("llama.vocab_size %d differs from token_embd.weight's %d rows", v, c.VocabSize)
	}
	_, hasOutput := g.Tensor("output.weight")
	c.TieEmbeddings = !hasOutput
	if err := c.Supported(); err != nil {
		return nil, Config{}, fmt.Errorf("%s: %w", g.Name, err)
	}
	if c.HeadDim%2 != 0 {
		return fail("head dim %d is odd", c.HeadDim)
	}
	read := func(name string, shape ...int) ([]float32, error) {
		t, ok := g.Tensor(name)
		if !ok {
			return nil, fmt.Errorf("%s: tensor %s is missing", g.Name, name)
		}
		if !slices.Equal(t.Shape(), shape) {
			return nil, fmt.Errorf("%s: tensor %s has shape %v (dims %v), the metadata implies %v", g.Name, name, t.Shape(), t.Dims, shape)
		}
		return g.ReadFloat32(name)
	}
	w := &Weights{Config: c, Layers: make([]*Layer, c.NumLayers)}
	h := c.HiddenSize
	if w.Embed, err = read("token_embd.weight", c.VocabSize, h); err != nil {
		return nil, Config{}, err
	}
	for i := range w.Layers {
		l := &Layer{}
		if l.AttnNorm, err = read(fmt.Sprintf("blk.%d.attn_norm.weight", i), h); err != nil {
			return nil, Config{}, err
		}
		if l.MLPNorm, err = read(fmt.Sprintf("blk.%d.ffn_norm.weight", i), h); err != nil {
			return nil, Config{}, err
		}
		for _, p := range ggufLayerNames[:7] {
			out, in := c.LinearShape(p.hf)
			data, err := read(fmt.Sprintf("blk.%d.%s.weight", i, p.gguf), out, in)
			if err != nil {
				return nil, Config{}, err
			}
			switch p.hf {
			case "q_proj":
				data = ggufUnpermute(data, c.NumHeads, in)
			case "k_proj":
				data = ggufUnpermute(data, c.NumKVHeads, in)
			}
			*l.Linear(p.hf) = data
		}
		w.Layers[i] = l
	}
	if w.FinalNorm, err = read("output_norm.weight", h); err != nil {
		return nil, Config{}, err
	}
	if hasOutput {
		if w.LMHead, err = read("output.weight", c.VocabSize, h); err != nil {
			return nil, Config{}, err
		}
	}
	return w, c, nil
}

// LoadAny loads a whole model from a Hugging Face model directory or a .gguf
// file (by its magic, whatever its name).
func LoadAny(path string) (*Weights, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	if st.IsDir() {
		return LoadModel(path)
	}
	g, err := ReadGGUF(path)
	if err != nil {
		return nil, err
	}
	defer g.Close()
	w, _, err := GGUFToWeights(g)
	return w, err
}
