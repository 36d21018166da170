package ckpt

import (
	"encoding/binary"
	"hash/crc32"
	"math"
)

// castagnoli is the CRC-32C table (hardware accelerated on amd64 and arm64).
// It is never written after package initialisation.
var castagnoli = crc32.MakeTable(crc32.Castagnoli)

func checksum(b []byte) uint32 { return crc32.Checksum(b, castagnoli) }

// Element sizes in bytes of the dtypes a checkpoint stores.
func elemSize(dtype string) int {
	switch dtype {
	case F32:
		return 4
	case BF16:
		return 2
	case Bytes:
		return 1
	}
	return 0
}

// putF32 writes src as little-endian bytes into dst (len 4*len(src)).
func putF32(dst []byte, src []float32) {
	for i, v := range src {
		binary.LittleEndian.PutUint32(dst[4*i:], math.Float32bits(v))
	}
}

// putU16 writes src as little-endian bytes into dst (len 2*len(src)).
func putU16(dst []byte, src []uint16) {
	for i, v := range src {
		binary.LittleEndian.PutUint16(dst[2*i:], v)
	}
}

// group splits the little-endian elements of raw (size es bytes each) into
// es byte planes: all byte 0s, then all byte 1s, ... The sign/exponent bytes
// of floats then sit together, apart from the noisy mantissa bytes, and zstd
// finds far more to squeeze in them. dst has len(raw).
func group(dst, raw []byte, es int) {
	n := len(raw) / es
	switch es {
	case 4:
		p0, p1, p2, p3 := dst[:n], dst[n:2*n], dst[2*n:3*n], dst[3*n:4*n]
		for i := 0; i < n; i++ {
			e := raw[4*i : 4*i+4 : 4*i+4]
			p0[i], p1[i], p2[i], p3[i] = e[0], e[1], e[2], e[3]
		}
	case 2:
		p0, p1 := dst[:n], dst[n:2*n]
		for i := 0; i < n; i++ {
			e := raw[2*i : 2*i+2 : 2*i+2]
			p0[i], p1[i] = e[0], e[1]
		}
	default:
		copy(dst, raw)
	}
}

// ungroup is the inverse of group.
func ungroup(dst, planes []byte, es int) {
	n := len(planes) / es
	switch es {
	case 4:
		p0, p1, p2, p3 := planes[:n], planes[n:2*n], planes[2*n:3*n], planes[3*n:4*n]
		for i := 0; i < n; i++ {
			e := dst[4*i : 4*i+4 : 4*i+4]
			e[0], e[1], e[2], e[3] = p0[i], p1[i], p2[i], p3[i]
		}
	case 2:
		p0, p1 := planes[:n], planes[n:2*n]
		for i := 0; i < n; i++ {
			e := dst[2*i : 2*i+2 : 2*i+2]
			e[0], e[1] = p0[i], p1[i]
		}
	default:
		copy(dst, planes)
	}
}

// decodeInto converts little-endian raw elements of dtype into float32 values
// (bf16 widens exactly).
func decodeF32(dst []float32, raw []byte, dtype string) {
	switch dtype {
	case F32:
		for i := range dst {
			dst[i] = math.Float32frombits(binary.LittleEndian.Uint32(raw[4*i:]))
		}
	case BF16:
		for i := range dst {
			dst[i] = math.Float32frombits(uint32(binary.LittleEndian.Uint16(raw[2*i:])) << 16)
		}
	}
}

func decodeU16(dst []uint16, raw []byte) {
	for i := range dst {
		dst[i] = binary.LittleEndian.Uint16(raw[2*i:])
	}
}
