package model

import (
	"fmt"
	"slices"
)

// Base identifies the base weights one process loaded, so that a run resumed
// from a checkpoint can tell whether it continues on the weights it was
// trained from. A model directory's path says little (a model may move, or
// another model may take its place with the same config.json and safetensors
// headers), so each tensor read from a file is identified by its name, shape,
// dtype as stored and the CRC-32C of its stored bytes, computed while those
// bytes are read for loading: no second pass, even over 140 GB. Random
// weights are identified by their random:NAME and the seed they are drawn
// from. A pipeline stage's Base holds only the tensors that stage loaded.
type Base struct {
	Random  string       `json:"random,omitempty"` // random:NAME, drawn from Seed; "" for weights read from files
	Seed    int64        `json:"seed,omitempty"`
	Tensors []BaseTensor `json:"tensors,omitempty"` // in the order they were read
}

// BaseTensor is one base tensor as it was read from its file.
type BaseTensor struct {
	Name   string `json:"name"`
	Shape  []int  `json:"shape"`
	DType  string `json:"dtype"`  // as stored: F32, BF16 or F16
	CRC32C uint32 `json:"crc32c"` // of the stored bytes
}

// Mismatch returns "" when saved (the base a checkpoint recorded, from every
// stage) holds b alike: the same random source and seed, or every tensor of
// b with the same shape, dtype and bytes. Otherwise it says what differs,
// naming the first of b's tensors that does.
func (b *Base) Mismatch(saved *Base) string {
	if b.Random != "" || saved.Random != "" {
		if b.Random == saved.Random && b.Seed == saved.Seed {
			return ""
		}
		return fmt.Sprintf("the checkpoint's base is %s, this run's is %s", saved.describe(), b.describe())
	}
	have := make(map[string]BaseTensor, len(saved.Tensors))
	for _, s := range saved.Tensors {
		have[s.Name] = s
	}
	for _, t := range b.Tensors {
		s, ok := have[t.Name]
		switch {
		case !ok:
			return fmt.Sprintf("tensor %s is not in the checkpoint's base", t.Name)
		case s.DType != t.DType || !slices.Equal(s.Shape, t.Shape):
			return fmt.Sprintf("tensor %s is %s %v in the checkpoint's base and %s %v in this run's", t.Name, s.DType, s.Shape, t.DType, t.Shape)
		case s.CRC32C != t.CRC32C:
			return fmt.Sprintf("tensor %s differs (crc32c %08x in the checkpoint's base, %08x in this run's)", t.Name, s.CRC32C, t.CRC32C)
		}
	}
	return ""
}

func (b *Base) describe() string {
	if b.Random != "" {
		return fmt.Sprintf("%s with seed %d", b.Random, b.Seed)
	}
	return "read from safetensors files"
}
