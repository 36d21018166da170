// Package safetensors reads and writes safetensors files, the format Hugging
// Face stores weights in:
//
//	u64 little-endian N | N bytes of JSON header | data section
//
// The header maps each tensor name to {"dtype", "shape", "data_offsets": [begin, end]}
// with offsets relative to the start of the data section, plus an optional
// "__metadata__" object of string values.
//
// The reader (Open, Parse, File) trusts nothing in a file: it bounds the header
// length, checks every offset against the data section, rejects overlapping
// tensors, and checks that each byte range holds exactly product(shape)
// elements of the dtype (with overflow checks) before anything is allocated from
// those numbers. Tensors are read one at a time with ReadAt, so a pipeline
// stage reads only the layers it holds, and converted to float32, float64 or
// int64 as the caller asks.
//
// The writer (Writer) lays tensors out as Hugging Face's writer does, widest
// dtype first and then by name, so every tensor is aligned to its element size
// and the same tensors always give the same bytes.
//
// The tests cover a round trip of every dtype, every way a header can lie, a
// file truncated on disk or after it was opened, and a fuzz target
// (FuzzSafetensorsHeader) that feeds arbitrary bytes to the parser.
package safetensors

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"hash/crc32"
	"io"
	"math"
	"sort"

	"train/format/internal/float16"
	"train/internal/fileio"
)

// MaxHeader bounds the JSON header of a safetensors file. Hugging Face's
// own reader uses the same 100 MiB limit; a real header for an 80-layer model is
// well under 100 KiB.
const MaxHeader = 100 << 20

// maxTensorRank bounds the number of dimensions of one tensor.
const maxTensorRank = 16

// DType is a safetensors element type, spelled as in the header ("F32", "BF16", ...).
type DType string

// The dtypes the safetensors format defines. F64, F32, F16 and BF16 can be
// read as float32 or float64; I64 and I32 can be read as int64.
const (
	F64    DType = "F64"
	F32    DType = "F32"
	F16    DType = "F16"
	BF16   DType = "BF16"
	I64    DType = "I64"
	I32    DType = "I32"
	I16    DType = "I16"
	I8     DType = "I8"
	U64    DType = "U64"
	U32    DType = "U32"
	U16    DType = "U16"
	U8     DType = "U8"
	Bool   DType = "BOOL"
	F8E4M3 DType = "F8_E4M3"
	F8E5M2 DType = "F8_E5M2"
)

// Size is the number of bytes of one element, or 0 for a dtype the format does not define.
func (d DType) Size() int {
	switch d {
	case F64, I64, U64:
		return 8
	case F32, I32, U32:
		return 4
	case F16, BF16, I16, U16:
		return 2
	case I8, U8, Bool, F8E4M3, F8E5M2:
		return 1
	}
	return 0
}

// IsFloat reports whether tensors of this dtype can be read as float32 or float64.
func (d DType) IsFloat() bool {
	return d == F64 || d == F32 || d == F16 || d == BF16
}

// TensorInfo describes one tensor of a safetensors file. Begin and End are byte
// offsets into the data section (the file offset is 8 + header length + Begin).
type TensorInfo struct {
	Name       string
	DType      DType
	Shape      []int
	Begin, End int64
}

// NumElements is the product of the shape (1 for a scalar).
func (t TensorInfo) NumElements() int64 {
	n := int64(1)
	for _, d := range t.Shape {
		n *= int64(d) // validated against overflow when the header was parsed
	}
	return n
}

// File is an open safetensors file whose header has been validated.
// Reading tensors is safe from several goroutines (it only uses ReadAt).
type File struct {
	Name     string            // the path, used in every error message
	Metadata map[string]string // the "__metadata__" object; empty when absent

	r         io.ReaderAt
	closer    io.Closer
	dataStart int64 // file offset of the data section
	dataSize  int64
	tensors   map[string]TensorInfo
}

// Open opens and validates the safetensors file at path.
func Open(path string) (*File, error) {
	f, size, err := fileio.OpenSized(path)
	if err != nil {
		return nil, err
	}
	sf, err := Parse(path, f, size)
	if err != nil {
		f.Close()
		return nil, err
	}
	sf.closer = f
	return sf, nil
}

// Parse reads and validates the header of a safetensors file of size
// bytes held by r. The name is used in error messages.
func Parse(name string, r io.ReaderAt, size int64) (*File, error) {
	if size < 8 {
		return nil, fmt.Errorf("%s: file of %d bytes is too short for a safetensors header length (truncated?)", name, size)
	}
	var lenBuf [8]byte
	if _, err := r.ReadAt(lenBuf[:], 0); err != nil {
		return nil, fmt.Errorf("%s: reading header length: %w", name, err)
	}
	n := binary.LittleEndian.Uint64(lenBuf[:])
	if n > MaxHeader {
		return nil, fmt.Errorf("%s: header length %d exceeds the %d-byte limit (not a safetensors file?)", name, n, MaxHeader)
	}
	if n > uint64(size-8) {
		return nil, fmt.Errorf("%s: header length %d is larger than the %d bytes after it (truncated file?)", name, n, size-8)
	}
	header := make([]byte, n)
	if got, err := r.ReadAt(header, 8); got < len(header) {
		return nil, fmt.Errorf("%s: reading %d-byte header: %w", name, n, err)
	}
	dataSize := size - 8 - int64(n)
	meta, tensors, err := parseHeader(header, dataSize)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	sf := &File{
		Name:      name,
		Metadata:  meta,
		r:         r,
		dataStart: 8 + int64(n),
		dataSize:  dataSize,
		tensors:   make(map[string]TensorInfo, len(tensors)),
	}
	for _, t := range tensors {
		sf.tensors[t.Name] = t
	}
	return sf, nil
}

// headerEntry is one tensor's header entry; pointers tell a missing key from a zero.
type headerEntry struct {
	DType       *string  `json:"dtype"`
	Shape       *[]int64 `json:"shape"`
	DataOffsets *[]int64 `json:"data_offsets"`
}

// parseHeader validates a header against a data section of dataSize bytes.
// Errors name the tensor but not the file; the caller adds that.
func parseHeader(header []byte, dataSize int64) (map[string]string, []TensorInfo, error) {
	trimmed := bytes.TrimLeft(header, " \t\r\n")
	if len(trimmed) == 0 || trimmed[0] != '{' {
		return nil, nil, errors.New("header is not a JSON object (not a safetensors file?)")
	}
	dec := json.NewDecoder(bytes.NewReader(header))
	if _, err := dec.Token(); err != nil { // the opening brace
		return nil, nil, fmt.Errorf("header is not JSON: %w", err)
	}
	meta := map[string]string{}
	var tensors []TensorInfo
	seen := map[string]bool{}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, nil, fmt.Errorf("header is not JSON: %w", err)
		}
		name, ok := tok.(string)
		if !ok {
			return nil, nil, fmt.Errorf("header is not JSON: unexpected %v", tok)
		}
		if seen[name] {
			return nil, nil, fmt.Errorf("header names %q twice", name)
		}
		seen[name] = true
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			return nil, nil, fmt.Errorf("header is not JSON (at %q): %w", name, err)
		}
		if name == "__metadata__" {
			if string(raw) == "null" {
				continue
			}
			if err := json.Unmarshal(raw, &meta); err != nil {
				return nil, nil, fmt.Errorf("__metadata__ must be an object of strings: %s", clipJSON(raw))
			}
			continue
		}
		t, err := parseTensorEntry(name, raw, dataSize)
		if err != nil {
			return nil, nil, err
		}
		tensors = append(tensors, t)
	}
	if _, err := dec.Token(); err != nil { // the closing brace
		return nil, nil, fmt.Errorf("header is not JSON: %w", err)
	}
	if rest := header[dec.InputOffset():]; len(bytes.Trim(rest, " \t\r\n\x00")) != 0 {
		return nil, nil, fmt.Errorf("header has %d bytes of trailing data after the JSON object", len(rest))
	}

	// No two tensors may share bytes. Sort by start; each must begin at or after the
	// end of the one before (empty tensors take no bytes and overlap nothing).
	order := make([]TensorInfo, len(tensors))
	copy(order, tensors)
	sort.Slice(order, func(i, j int) bool {
		if order[i].Begin != order[j].Begin {
			return order[i].Begin < order[j].Begin
		}
		return order[i].End < order[j].End
	})
	var prev *TensorInfo
	for i := range order {
		t := &order[i]
		if t.Begin == t.End {
			continue
		}
		if prev != nil && t.Begin < prev.End {
			return nil, nil, fmt.Errorf("tensor %s: data_offsets [%d,%d] overlap tensor %s at [%d,%d]",
				t.Name, t.Begin, t.End, prev.Name, prev.Begin, prev.End)
		}
		prev = t
	}
	return meta, tensors, nil
}

// parseTensorEntry validates one tensor's header entry.
func parseTensorEntry(name string, raw json.RawMessage, dataSize int64) (TensorInfo, error) {
	fail := func(format string, a ...any) (TensorInfo, error) {
		return TensorInfo{}, fmt.Errorf("tensor %s: %s", name, fmt.Sprintf(format, a...))
	}
	var e headerEntry
	if err := json.Unmarshal(raw, &e); err != nil {
		return fail("bad header entry %s: %v", clipJSON(raw), err)
	}
	switch {
	case e.DType == nil:
		return fail("header entry has no dtype")
	case e.Shape == nil:
		return fail("header entry has no shape")
	case e.DataOffsets == nil:
		return fail("header entry has no data_offsets")
	}
	dt := DType(*e.DType)
	size := dt.Size()
	if size == 0 {
		return fail("unknown dtype %q", *e.DType)
	}
	if len(*e.DataOffsets) != 2 {
		return fail("data_offsets must be [begin, end], got %d numbers", len(*e.DataOffsets))
	}
	begin, end := (*e.DataOffsets)[0], (*e.DataOffsets)[1]
	if begin < 0 || end < begin {
		return fail("data_offsets [%d,%d] are not an increasing pair of byte offsets", begin, end)
	}
	if end > dataSize {
		return fail("data_offsets [%d,%d] exceed data section of %d bytes (truncated file?)", begin, end, dataSize)
	}
	if len(*e.Shape) > maxTensorRank {
		return fail("shape has %d dimensions, more than %d", len(*e.Shape), maxTensorRank)
	}
	shape := make([]int, len(*e.Shape))
	elems := int64(1)
	for i, d := range *e.Shape {
		if d < 0 || d > math.MaxInt {
			return fail("shape %v has an invalid dimension %d", *e.Shape, d)
		}
		shape[i] = int(d)
		if d != 0 && elems > (math.MaxInt64/int64(size))/d {
			return fail("shape %v has too many elements", *e.Shape)
		}
		elems *= d
	}
	if want := elems * int64(size); want != end-begin {
		return fail("dtype %s and shape %v need %d bytes but data_offsets [%d,%d] hold %d",
			dt, shape, want, begin, end, end-begin)
	}
	return TensorInfo{Name: name, DType: dt, Shape: shape, Begin: begin, End: end}, nil
}

// clipJSON shortens raw JSON for an error message.
func clipJSON(raw []byte) string {
	const max = 80
	if len(raw) > max {
		return string(raw[:max]) + "..."
	}
	return string(raw)
}

// Close closes the underlying file (a no-op for a file made by Parse).
func (f *File) Close() error {
	if f.closer == nil {
		return nil
	}
	return f.closer.Close()
}

// Tensors lists every tensor, sorted by name.
func (f *File) Tensors() []TensorInfo {
	out := make([]TensorInfo, 0, len(f.tensors))
	for _, t := range f.tensors {
		out = append(out, t)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// Tensor returns the header entry of the named tensor.
func (f *File) Tensor(name string) (TensorInfo, bool) {
	t, ok := f.tensors[name]
	return t, ok
}

func (f *File) lookup(name string) (TensorInfo, error) {
	t, ok := f.tensors[name]
	if !ok {
		return TensorInfo{}, fmt.Errorf("%s: no tensor named %s", f.Name, name)
	}
	return t, nil
}

// ReadFloat32 reads the named tensor, converting F32, BF16, F16 or F64 to float32.
// It returns the data and the shape.
func (f *File) ReadFloat32(name string) ([]float32, []int, error) {
	t, err := f.lookup(name)
	if err != nil {
		return nil, nil, err
	}
	dst := make([]float32, t.NumElements())
	if err := readFloats(f, t, dst, nil); err != nil {
		return nil, nil, err
	}
	return dst, t.Shape, nil
}

// castagnoli is the CRC-32C table, the checksum ckpt uses too (hardware
// accelerated on amd64 and arm64).
var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// ReadFloat32Sum is ReadFloat32 that also returns the CRC-32C of the tensor's
// bytes as stored in the file, computed as they stream by for the
// conversion: an identity of the tensor that costs no second pass over the
// file (a checkpoint records it to recognise its base model).
func (f *File) ReadFloat32Sum(name string) ([]float32, []int, uint32, error) {
	t, err := f.lookup(name)
	if err != nil {
		return nil, nil, 0, err
	}
	dst := make([]float32, t.NumElements())
	h := crc32.New(castagnoli)
	if err := readFloats(f, t, dst, h); err != nil {
		return nil, nil, 0, err
	}
	return dst, t.Shape, h.Sum32(), nil
}

// ReadFloat32Into reads the named tensor into dst, which must have exactly as many
// elements as the tensor; it lets a caller place weights in memory it planned.
func (f *File) ReadFloat32Into(name string, dst []float32) error {
	t, err := f.lookup(name)
	if err != nil {
		return err
	}
	if int64(len(dst)) != t.NumElements() {
		return fmt.Errorf("%s: tensor %s: has %d elements, destination holds %d", f.Name, name, t.NumElements(), len(dst))
	}
	return readFloats(f, t, dst, nil)
}

// ReadFloat64 reads the named tensor as float64 (for float64 reference fixtures).
func (f *File) ReadFloat64(name string) ([]float64, []int, error) {
	t, err := f.lookup(name)
	if err != nil {
		return nil, nil, err
	}
	dst := make([]float64, t.NumElements())
	if err := readFloats(f, t, dst, nil); err != nil {
		return nil, nil, err
	}
	return dst, t.Shape, nil
}

// ReadInt64 reads an I64 or I32 tensor (token ids, labels) as int64.
func (f *File) ReadInt64(name string) ([]int64, []int, error) {
	t, err := f.lookup(name)
	if err != nil {
		return nil, nil, err
	}
	if t.DType != I64 && t.DType != I32 {
		return nil, nil, fmt.Errorf("%s: tensor %s: dtype %s cannot be read as integers (want I64 or I32)", f.Name, name, t.DType)
	}
	dst := make([]int64, t.NumElements())
	err = f.readChunks(t, func(b []byte, at int) {
		if t.DType == I64 {
			for i := 0; i+8 <= len(b); i += 8 {
				dst[at+i/8] = int64(binary.LittleEndian.Uint64(b[i:]))
			}
			return
		}
		for i := 0; i+4 <= len(b); i += 4 {
			dst[at+i/4] = int64(int32(binary.LittleEndian.Uint32(b[i:])))
		}
	})
	if err != nil {
		return nil, nil, err
	}
	return dst, t.Shape, nil
}

// ReadRaw reads the named tensor's bytes as stored, whatever its dtype: the
// packed 4-bit codes and 8-bit scales of a quantized checkpoint are U8 tensors
// that only their reader knows how to interpret.
func (f *File) ReadRaw(name string) ([]byte, error) {
	t, err := f.lookup(name)
	if err != nil {
		return nil, err
	}
	dst := make([]byte, t.End-t.Begin)
	err = f.readChunks(t, func(b []byte, at int) { copy(dst[int64(at)*int64(t.DType.Size()):], b) })
	if err != nil {
		return nil, err
	}
	return dst, nil
}

// readFloats converts tensor t into dst (len(dst) == t.NumElements()), and
// feeds its stored bytes to sum when sum is not nil.
func readFloats[T float32 | float64](f *File, t TensorInfo, dst []T, sum hash.Hash32) error {
	if !t.DType.IsFloat() {
		return fmt.Errorf("%s: tensor %s: dtype %s cannot be read as floats (supported: F32, BF16, F16, F64)", f.Name, t.Name, t.DType)
	}
	size := t.DType.Size()
	return f.readChunks(t, func(b []byte, at int) {
		if sum != nil {
			sum.Write(b)
		}
		d := dst[at : at+len(b)/size]
		switch t.DType {
		case F32:
			for i := range d {
				d[i] = T(math.Float32frombits(binary.LittleEndian.Uint32(b[4*i:])))
			}
		case BF16:
			for i := range d {
				d[i] = T(math.Float32frombits(uint32(binary.LittleEndian.Uint16(b[2*i:])) << 16))
			}
		case F16:
			for i := range d {
				d[i] = T(float16.ToFloat32(binary.LittleEndian.Uint16(b[2*i:])))
			}
		case F64:
			for i := range d {
				d[i] = T(math.Float64frombits(binary.LittleEndian.Uint64(b[8*i:])))
			}
		}
	})
}

// readChunkSize is how many bytes are read at once: large enough to stream at disk speed,
// small enough that a 1 GiB embedding never needs a second 1 GiB of bytes.
const readChunkSize = 4 << 20

// readChunks reads tensor t in whole-element chunks, calling fn with each chunk and
// the index of its first element.
func (f *File) readChunks(t TensorInfo, fn func(b []byte, at int)) error {
	size := int64(t.DType.Size())
	total := t.End - t.Begin
	chunk := int64(readChunkSize) - int64(readChunkSize)%size
	buf := make([]byte, min(chunk, total))
	for off := int64(0); off < total; off += chunk {
		b := buf[:min(chunk, total-off)]
		n, err := f.r.ReadAt(b, f.dataStart+t.Begin+off)
		if n < len(b) {
			if err == nil || errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			return fmt.Errorf("%s: tensor %s: reading bytes [%d,%d) of the data section: %w (file truncated since it was opened?)",
				f.Name, t.Name, t.Begin+off, t.Begin+off+int64(len(b)), err)
		}
		fn(b, int(off/size))
	}
	return nil
}
