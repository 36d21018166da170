package safetensors

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"train/internal/fileio"
	"train/ops"
)

// Writer collects tensors and writes them as one safetensors file. The
// zero value is ready to use. It keeps references to the slices it is given, not
// copies: do not change them before the file is written.
type Writer struct {
	metadata map[string]string
	tensors  []writerTensor
	names    map[string]bool
}

type writerTensor struct {
	name  string
	dtype DType
	shape []int
	f32   []float32
	f64   []float64
	raw   []byte
}

// SetMetadata records one "__metadata__" entry (Hugging Face writes {"format": "pt"}).
func (w *Writer) SetMetadata(key, value string) {
	if w.metadata == nil {
		w.metadata = map[string]string{}
	}
	w.metadata[key] = value
}

// AddFloat32 adds a tensor stored as dtype F32, BF16 or F16 (rounded to
// nearest even). A finite value beyond half precision's range is refused for
// F16, naming the tensor, rather than stored as infinity.
func (w *Writer) AddFloat32(name string, dtype DType, shape []int, data []float32) error {
	if dtype != F32 && dtype != BF16 && dtype != F16 {
		return fmt.Errorf("safetensors writer: tensor %s: float32 data can be stored as F32, BF16 or F16, not %s", name, dtype)
	}
	if dtype == F16 {
		for i, v := range data {
			if math.Abs(float64(v)) > ops.MaxF16 && !math.IsInf(float64(v), 0) && !math.IsNaN(float64(v)) {
				return fmt.Errorf("safetensors writer: tensor %s: element %d is %g, beyond float16's largest value %d: export f32 or bf16", name, i, v, ops.MaxF16)
			}
		}
	}
	return w.add(writerTensor{name: name, dtype: dtype, shape: shape, f32: data}, len(data))
}

// AddFloat64 adds a tensor stored as F64.
func (w *Writer) AddFloat64(name string, shape []int, data []float64) error {
	return w.add(writerTensor{name: name, dtype: F64, shape: shape, f64: data}, len(data))
}

// AddRaw adds a tensor whose little-endian bytes are already encoded as dtype.
func (w *Writer) AddRaw(name string, dtype DType, shape []int, raw []byte) error {
	size := dtype.Size()
	if size == 0 {
		return fmt.Errorf("safetensors writer: tensor %s: unknown dtype %q", name, dtype)
	}
	if len(raw)%size != 0 {
		return fmt.Errorf("safetensors writer: tensor %s: %d bytes is not a whole number of %s elements", name, len(raw), dtype)
	}
	return w.add(writerTensor{name: name, dtype: dtype, shape: shape, raw: raw}, len(raw)/size)
}

func (w *Writer) add(t writerTensor, elems int) error {
	if t.name == "" || t.name == "__metadata__" {
		return fmt.Errorf("safetensors writer: invalid tensor name %q", t.name)
	}
	if w.names[t.name] {
		return fmt.Errorf("safetensors writer: tensor %s added twice", t.name)
	}
	n := int64(1)
	for _, d := range t.shape {
		if d < 0 || (d != 0 && n > math.MaxInt64/int64(d)) {
			return fmt.Errorf("safetensors writer: tensor %s: invalid shape %v", t.name, t.shape)
		}
		n *= int64(d)
	}
	if n != int64(elems) {
		return fmt.Errorf("safetensors writer: tensor %s: shape %v holds %d elements but the data has %d", t.name, t.shape, n, elems)
	}
	if w.names == nil {
		w.names = map[string]bool{}
	}
	w.names[t.name] = true
	t.shape = append([]int(nil), t.shape...)
	w.tensors = append(w.tensors, t)
	return nil
}

// order is the order tensors are laid out in: widest dtype first, then by name, as
// Hugging Face's writer does, so every tensor starts aligned to its element size.
func (w *Writer) order() []writerTensor {
	out := append([]writerTensor(nil), w.tensors...)
	sort.SliceStable(out, func(i, j int) bool {
		si, sj := out[i].dtype.Size(), out[j].dtype.Size()
		if si != sj {
			return si > sj
		}
		return out[i].name < out[j].name
	})
	return out
}

// header encodes the JSON header, padded with spaces to a multiple of 8 bytes so the
// data section starts 8-byte aligned.
func (w *Writer) header(order []writerTensor) ([]byte, error) {
	var b bytes.Buffer
	str := func(s string) {
		var sb bytes.Buffer
		enc := json.NewEncoder(&sb)
		enc.SetEscapeHTML(false)
		_ = enc.Encode(s) // encoding a string cannot fail
		b.Write(bytes.TrimRight(sb.Bytes(), "\n"))
	}
	b.WriteByte('{')
	if len(w.metadata) > 0 {
		keys := make([]string, 0, len(w.metadata))
		for k := range w.metadata {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		b.WriteString(`"__metadata__":{`)
		for i, k := range keys {
			if i > 0 {
				b.WriteByte(',')
			}
			str(k)
			b.WriteByte(':')
			str(w.metadata[k])
		}
		b.WriteByte('}')
	}
	var off int64
	for i, t := range order {
		if i > 0 || len(w.metadata) > 0 {
			b.WriteByte(',')
		}
		str(t.name)
		n := int64(t.dtype.Size())
		for _, d := range t.shape {
			n *= int64(d)
		}
		dims := make([]string, len(t.shape))
		for j, d := range t.shape {
			dims[j] = fmt.Sprint(d)
		}
		fmt.Fprintf(&b, `:{"dtype":"%s","shape":[%s],"data_offsets":[%d,%d]}`, t.dtype, strings.Join(dims, ","), off, off+n)
		off += n
	}
	b.WriteByte('}')
	for b.Len()%8 != 0 {
		b.WriteByte(' ')
	}
	if b.Len() > MaxHeader {
		return nil, fmt.Errorf("safetensors writer: header of %d bytes exceeds the %d-byte limit", b.Len(), MaxHeader)
	}
	return b.Bytes(), nil
}

// WriteTo writes the file to out.
func (w *Writer) WriteTo(out io.Writer) (int64, error) {
	order := w.order()
	header, err := w.header(order)
	if err != nil {
		return 0, err
	}
	bw := bufio.NewWriterSize(out, 1<<20)
	cw := &fileio.CountWriter{W: bw}
	var lenBuf [8]byte
	binary.LittleEndian.PutUint64(lenBuf[:], uint64(len(header)))
	cw.Write(lenBuf[:])
	cw.Write(header)
	buf := make([]byte, 0, 64<<10)
	for _, t := range order {
		if t.raw != nil {
			cw.Write(t.raw)
			continue
		}
		// Encode in 64 KiB pieces: one Write per piece, not per element.
		n := len(t.f32) + len(t.f64)
		for i := 0; i < n; {
			buf = buf[:0]
			for ; i < n && len(buf) <= cap(buf)-8; i++ {
				switch {
				case t.f64 != nil:
					buf = binary.LittleEndian.AppendUint64(buf, math.Float64bits(t.f64[i]))
				case t.dtype == BF16:
					buf = binary.LittleEndian.AppendUint16(buf, ops.ToBF16(t.f32[i]))
				case t.dtype == F16:
					buf = binary.LittleEndian.AppendUint16(buf, ops.ToF16(t.f32[i]))
				default:
					buf = binary.LittleEndian.AppendUint32(buf, math.Float32bits(t.f32[i]))
				}
			}
			cw.Write(buf)
		}
	}
	if cw.Err == nil {
		cw.Err = bw.Flush()
	}
	return cw.N, cw.Err
}

// WriteFile writes the file to path atomically: to a temporary file beside it,
// synced, then renamed, so a reader never sees half a file.
func (w *Writer) WriteFile(path string) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name()) // fails harmlessly after the rename
	if _, err := w.WriteTo(tmp); err != nil {
		tmp.Close()
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	return os.Rename(tmp.Name(), path)
}
