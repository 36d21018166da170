package ckpt

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// Version is the format version this package writes and reads.
const Version = 1

// Dtypes of entries.
const (
	F32   = "f32"   // IEEE float32, little-endian
	BF16  = "bf16"  // bfloat16 (top half of a float32), little-endian
	Bytes = "bytes" // opaque bytes: JSON state, RNG state, ...
)

// Compression kinds of entries.
const (
	CompNone          = "none"           // raw little-endian bytes
	CompZstd          = "zstd"           // one zstd frame of the raw bytes
	CompZstdByteGroup = "zstd+bytegroup" // the byte planes of the raw bytes, one zstd frame per plane
)

// File names inside a checkpoint directory.
const (
	ManifestName = "manifest.json"
	DoneName     = "DONE"
	LatestName   = "latest" // in RUN/checkpoints: the name of the newest committed step directory
)

// shardMagic opens every shard file (16 bytes).
var shardMagic = [16]byte{'t', 'r', 'a', 'i', 'n', '-', 'c', 'k', 'p', 't', ' ', 'v', '1', '\n', 0, 0}

// ShardName is the shard file of a rank; IndexName its index.
func ShardName(rank int) string { return fmt.Sprintf("rank-%05d.ckpt", rank) }

// IndexName is the per-rank index written beside the shard when its writer closes.
func IndexName(rank int) string { return fmt.Sprintf("rank-%05d.index.json", rank) }

// Dir is the folder holding a run's checkpoints.
func Dir(runDir string) string { return filepath.Join(runDir, "checkpoints") }

// StepDirName is the name of a step's committed checkpoint directory.
func StepDirName(step int64) string { return fmt.Sprintf("step-%08d", step) }

// StepDir is the committed directory of step in runDir.
func StepDir(runDir string, step int64) string {
	return filepath.Join(Dir(runDir), StepDirName(step))
}

// TmpDir is the directory ranks write step's shards into before the commit.
func TmpDir(runDir string, step int64) string { return StepDir(runDir, step) + ".tmp" }

// parseStepName returns the step of "step-%08d" (suffix "" ) or "step-%08d.tmp" (suffix ".tmp").
func parseStepName(name, suffix string) (int64, bool) {
	if !strings.HasPrefix(name, "step-") || !strings.HasSuffix(name, suffix) {
		return 0, false
	}
	digits := strings.TrimSuffix(strings.TrimPrefix(name, "step-"), suffix)
	if len(digits) < 8 {
		return 0, false
	}
	var n int64
	for _, c := range digits {
		if c < '0' || c > '9' || n > (1<<62)/10 {
			return 0, false
		}
		n = n*10 + int64(c-'0')
	}
	return n, true
}

// Manifest describes one committed checkpoint. The trainer fills the
// descriptive fields (Config, Plan, sources, WorldSize); Commit fills the rest
// from the ranks' indexes.
type Manifest struct {
	Version         int     `json:"version"`
	Step            int64   `json:"step"`
	Created         string  `json:"created,omitempty"` // RFC 3339
	WorldSize       int     `json:"world_size"`
	Config          string  `json:"config"`       // the trainer's config, TOML
	Plan            string  `json:"plan"`         // the parallel plan, JSON
	ModelSource     string  `json:"model_source"` // e.g. a model directory or "random:small"
	TokenizerSource string  `json:"tokenizer_source"`
	Files           []File  `json:"files"`
	Entries         []Entry `json:"entries"`
}

// File is one shard file of a checkpoint.
type File struct {
	Name   string `json:"name"`
	Rank   int    `json:"rank"`
	Size   int64  `json:"size"`
	CRC32C uint32 `json:"crc32c"` // of the whole file
}

// Entry is one contiguous piece of a logical tensor (or byte blob) stored in a
// shard file: elements [Start, Start+Count) of the row-major flattening of a
// tensor of shape Shape. A tensor may be spread over many entries in many
// files; readers assemble any range from whichever entries cover it.
type Entry struct {
	Name        string `json:"name"`
	DType       string `json:"dtype"`
	Shape       []int  `json:"shape"`
	Start       int64  `json:"start"`
	Count       int64  `json:"count"`
	File        string `json:"file"`
	Offset      int64  `json:"offset"`
	Length      int64  `json:"length"`     // stored (compressed) bytes
	RawLength   int64  `json:"raw_length"` // Count * element size
	CRC32C      uint32 `json:"crc32c"`     // of the raw little-endian bytes
	Compression string `json:"compression"`
}

// rankIndex is what a ShardWriter leaves beside its shard for Commit.
type rankIndex struct {
	Version int     `json:"version"`
	Rank    int     `json:"rank"`
	File    File    `json:"file"`
	Entries []Entry `json:"entries"`
}

// done is the content of the DONE marker: it pins the manifest's bytes.
type done struct {
	Step           int64  `json:"step"`
	ManifestSize   int64  `json:"manifest_size"`
	ManifestCRC32C uint32 `json:"manifest_crc32c"`
}

// Errors that callers may test with errors.Is.
var (
	ErrNoCheckpoint = errors.New("no complete checkpoint")
	ErrIncomplete   = errors.New("incomplete checkpoint")
	ErrCorrupt      = errors.New("corrupt checkpoint")
	ErrVersion      = errors.New("unknown checkpoint format version")
	ErrNotCovered   = errors.New("range not covered by the checkpoint")
)

func numElems(shape []int) (int64, error) {
	n := int64(1)
	for _, d := range shape {
		if d < 0 {
			return 0, fmt.Errorf("negative dimension in shape %v", shape)
		}
		if d != 0 && n > (1<<62)/int64(d) {
			return 0, fmt.Errorf("shape %v too large", shape)
		}
		n *= int64(d)
	}
	return n, nil
}

// validate checks an entry's own consistency (not against files).
func (e *Entry) validate() error {
	es := elemSize(e.DType)
	if es == 0 {
		return fmt.Errorf("entry %q: unknown dtype %q", e.Name, e.DType)
	}
	n, err := numElems(e.Shape)
	if err != nil {
		return fmt.Errorf("entry %q: %v", e.Name, err)
	}
	if e.DType == Bytes && len(e.Shape) != 1 {
		return fmt.Errorf("entry %q: bytes entry with shape %v, want one dimension", e.Name, e.Shape)
	}
	if e.Start < 0 || e.Count < 0 || e.Start+e.Count > n {
		return fmt.Errorf("entry %q: range [%d,%d) outside shape %v (%d elements)", e.Name, e.Start, e.Start+e.Count, e.Shape, n)
	}
	if e.RawLength != e.Count*int64(es) {
		return fmt.Errorf("entry %q: raw_length %d, want %d elements x %d bytes", e.Name, e.RawLength, e.Count, es)
	}
	if e.Offset < 0 || e.Length < 0 {
		return fmt.Errorf("entry %q: negative offset or length", e.Name)
	}
	switch e.Compression {
	case CompNone:
		if e.Length != e.RawLength {
			return fmt.Errorf("entry %q: uncompressed length %d, want raw_length %d", e.Name, e.Length, e.RawLength)
		}
	case CompZstd, CompZstdByteGroup:
	default:
		return fmt.Errorf("entry %q: unknown compression %q", e.Name, e.Compression)
	}
	return nil
}

// validate checks a manifest's internal consistency: version, entries inside
// their files, one dtype and shape per name.
func (m *Manifest) validate() error {
	if m.Version != Version {
		return fmt.Errorf("%w: version %d, this build reads version %d", ErrVersion, m.Version, Version)
	}
	files := make(map[string]File, len(m.Files))
	for _, f := range m.Files {
		if f.Name == "" || f.Name != filepath.Base(f.Name) || f.Name == "." || f.Name == ".." ||
			f.Name == ManifestName || f.Name == DoneName {
			return fmt.Errorf("bad file name %q", f.Name)
		}
		if _, dup := files[f.Name]; dup {
			return fmt.Errorf("file %s listed twice", f.Name)
		}
		files[f.Name] = f
	}
	type kind struct {
		dtype string
		shape []int
	}
	kinds := map[string]kind{}
	for i := range m.Entries {
		e := &m.Entries[i]
		if err := e.validate(); err != nil {
			return err
		}
		f, ok := files[e.File]
		if !ok {
			return fmt.Errorf("entry %q: file %s not listed in the manifest", e.Name, e.File)
		}
		if e.Offset+e.Length > f.Size {
			return fmt.Errorf("entry %q: bytes [%d,%d) beyond the end of %s (%d bytes)", e.Name, e.Offset, e.Offset+e.Length, e.File, f.Size)
		}
		if k, ok := kinds[e.Name]; ok {
			if k.dtype != e.DType || !equalInts(k.shape, e.Shape) {
				return fmt.Errorf("tensor %q stored as %s %v and as %s %v", e.Name, k.dtype, k.shape, e.DType, e.Shape)
			}
		} else {
			kinds[e.Name] = kind{e.DType, e.Shape}
		}
	}
	return nil
}

func equalInts(a, b []int) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// writeFileSync writes data to path and fsyncs it.
func writeFileSync(path string, data []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// writeFileAtomic writes path through a temporary file and a rename, then
// fsyncs the directory: readers see the old content or the new, never a part.
func writeFileAtomic(path string, data []byte) error {
	tmp := path + ".tmp"
	if err := writeFileSync(tmp, data); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	return syncDir(filepath.Dir(path))
}

// syncDir fsyncs a directory so that entries created, renamed or removed in it are durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("fsync %s: %w", dir, err)
	}
	return nil
}

func marshal(v any) ([]byte, error) {
	b, err := json.MarshalIndent(v, "", " ")
	if err != nil {
		return nil, err
	}
	return append(b, '\n'), nil
}
