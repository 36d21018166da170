package gguf

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"

	"train/format/internal/float16"
	"train/internal/fileio"
	"train/ops"
)

// Writer collects metadata and tensors and writes one GGUF v3 file. The zero
// value is ready to use; it keeps references to the slices it is given.
type Writer struct {
	keys    []string
	kvs     map[string]any
	tensors []writerTensor
	names   map[string]bool
}

type writerTensor struct {
	name string
	dims []int64
	typ  GGMLType
	data []float32
}

// Set records a metadata value. Supported Go types: uint8, int8, uint16, int16,
// uint32, int32, float32, bool, string, uint64, int64, float64, and slices of
// them ([]string, []float32, []int32, ...).
func (w *Writer) Set(key string, v any) error {
	if key == "" {
		return errors.New("gguf writer: empty metadata key")
	}
	if _, err := valueType(v); err != nil {
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
// lists it) stored as F32, F16, BF16, Q8_0 or Q4_0 (converted or quantized as
// it is written; a quantized tensor's rows must be a multiple of QuantBlock
// long).
func (w *Writer) AddTensor(name string, typ GGMLType, shape []int, data []float32) error {
	switch typ {
	case F32, F16, BF16:
	case Q8_0, Q4_0:
		if len(shape) > 0 && shape[len(shape)-1]%QuantBlock != 0 {
			return fmt.Errorf("gguf writer: tensor %s: rows of %d values cannot be stored as %s (blocks of %d)", name, shape[len(shape)-1], typ, QuantBlock)
		}
	default:
		return fmt.Errorf("gguf writer: tensor %s: type %s is not F32, F16, BF16, Q8_0 or Q4_0", name, typ)
	}
	if name == "" || w.names[name] {
		return fmt.Errorf("gguf writer: tensor name %q is empty or added twice", name)
	}
	if len(shape) < 1 || len(shape) > maxDims {
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
	w.tensors = append(w.tensors, writerTensor{name, dims, typ, data})
	return nil
}

func valueType(v any) (uint32, error) {
	switch v.(type) {
	case uint8:
		return valueUint8, nil
	case int8:
		return valueInt8, nil
	case uint16:
		return valueUint16, nil
	case int16:
		return valueInt16, nil
	case uint32:
		return valueUint32, nil
	case int32:
		return valueInt32, nil
	case float32:
		return valueFloat32, nil
	case bool:
		return valueBool, nil
	case string:
		return valueString, nil
	case uint64:
		return valueUint64, nil
	case int64:
		return valueInt64, nil
	case float64:
		return valueFloat64, nil
	case []uint8, []int8, []uint16, []int16, []uint32, []int32, []float32, []bool, []string, []uint64, []int64, []float64:
		return valueArray, nil
	}
	return 0, fmt.Errorf("unsupported value type %T", v)
}

func appendString(b []byte, s string) []byte {
	b = binary.LittleEndian.AppendUint64(b, uint64(len(s)))
	return append(b, s...)
}

func appendScalar(b []byte, v any) []byte {
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
		return appendString(b, x)
	}
	return b
}

func appendArray[T any](b []byte, et uint32, xs []T) []byte {
	b = binary.LittleEndian.AppendUint32(b, et)
	b = binary.LittleEndian.AppendUint64(b, uint64(len(xs)))
	for _, x := range xs {
		b = appendScalar(b, x)
	}
	return b
}

func appendValue(b []byte, v any) []byte {
	switch x := v.(type) {
	case []uint8:
		return appendArray(b, valueUint8, x)
	case []int8:
		return appendArray(b, valueInt8, x)
	case []uint16:
		return appendArray(b, valueUint16, x)
	case []int16:
		return appendArray(b, valueInt16, x)
	case []uint32:
		return appendArray(b, valueUint32, x)
	case []int32:
		return appendArray(b, valueInt32, x)
	case []float32:
		return appendArray(b, valueFloat32, x)
	case []bool:
		return appendArray(b, valueBool, x)
	case []string:
		return appendArray(b, valueString, x)
	case []uint64:
		return appendArray(b, valueUint64, x)
	case []int64:
		return appendArray(b, valueInt64, x)
	case []float64:
		return appendArray(b, valueFloat64, x)
	}
	return appendScalar(b, v)
}

func tensorBytes(t writerTensor) int64 {
	info := typeInfo[t.typ]
	return int64(len(t.data)) / info.block * info.bytes
}

// appendEncoded appends x in type t; for Q8_0 and Q4_0 len(x) is a multiple of
// QuantBlock.
func appendEncoded(b []byte, t GGMLType, x []float32) []byte {
	le := binary.LittleEndian
	switch t {
	case Q8_0:
		return appendQ8_0(b, x)
	case Q4_0:
		return appendQ4_0(b, x)
	}
	for _, v := range x {
		switch t {
		case F32:
			b = le.AppendUint32(b, math.Float32bits(v))
		case F16:
			b = le.AppendUint16(b, float16.FromFloat32(v))
		default:
			b = le.AppendUint16(b, ops.ToBF16(v))
		}
	}
	return b
}

// WriteTo writes the file: header, padding to the alignment, then every tensor
// at an aligned offset, in the order added.
func (w *Writer) WriteTo(out io.Writer) (int64, error) {
	align := int64(defaultAlignment)
	if a, ok := w.kvs["general.alignment"].(uint32); ok {
		if a == 0 || a&(a-1) != 0 || a > maxAlignment {
			return 0, fmt.Errorf("gguf writer: general.alignment %d is not a power of two up to %d", a, maxAlignment)
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
		t, _ := valueType(v) // checked in Set
		h = appendString(h, k)
		h = le.AppendUint32(h, t)
		h = appendValue(h, v)
	}
	var off int64
	for _, t := range w.tensors {
		h = appendString(h, t.name)
		h = le.AppendUint32(h, uint32(len(t.dims)))
		for _, d := range t.dims {
			h = le.AppendUint64(h, uint64(d))
		}
		h = le.AppendUint32(h, uint32(t.typ))
		h = le.AppendUint64(h, uint64(off))
		off = alignUp(off+tensorBytes(t), align)
	}
	for int64(len(h))%align != 0 {
		h = append(h, 0)
	}
	bw := bufio.NewWriterSize(out, 1<<20)
	cw := &fileio.CountWriter{W: bw}
	cw.Write(h)
	const chunk = 16 << 10 // values per write, a multiple of QuantBlock
	buf := make([]byte, 0, 4*chunk)
	pos := int64(0)
	for _, t := range w.tensors {
		for i := 0; i < len(t.data); i += chunk {
			cw.Write(appendEncoded(buf[:0], t.typ, t.data[i:min(i+chunk, len(t.data))]))
		}
		pos += tensorBytes(t)
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
func (w *Writer) WriteFile(path string) error {
	return fileio.WriteAtomic(path, func(out io.Writer) error {
		_, err := w.WriteTo(out)
		return err
	})
}
