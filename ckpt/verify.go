package ckpt

import (
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
)

// Report is what Verify found.
type Report struct {
	Dir       string
	Step      int64
	Files     int
	Entries   int
	Bytes     int64    // stored bytes in shard files
	RawBytes  int64    // bytes of the entries decompressed
	Problems  []string // empty when the checkpoint is complete and correct
	WorldSize int
}

// Verify fully checks the checkpoint in stepDir without training: DONE and
// the manifest (as Open), each shard file's magic, size and CRC-32C, and every
// entry decompressed against its checksum. It reports every problem it finds
// and returns an error (wrapping ErrIncomplete, ErrCorrupt or ErrVersion)
// naming the first when there is any.
func Verify(stepDir string) (Report, error) {
	rep := Report{Dir: stepDir}
	r, err := Open(stepDir)
	if err != nil {
		rep.Problems = append(rep.Problems, err.Error())
		return rep, err
	}
	defer r.Close()
	m := r.Manifest()
	rep.Step, rep.Files, rep.Entries, rep.WorldSize = m.Step, len(m.Files), len(m.Entries), m.WorldSize
	var first error
	fail := func(err error) {
		rep.Problems = append(rep.Problems, err.Error())
		if first == nil {
			first = err
		}
	}
	for _, f := range m.Files {
		if err := verifyFile(filepath.Join(stepDir, f.Name), f); err != nil {
			fail(err)
		}
		rep.Bytes += f.Size
	}
	for i := range m.Entries {
		e := &m.Entries[i]
		if _, err := r.readRaw(e); err != nil {
			fail(err)
		}
		rep.RawBytes += e.RawLength
	}
	return rep, first
}

// verifyFile checks a shard file's magic, size and whole-file checksum.
func verifyFile(path string, f File) error {
	fh, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("ckpt: %w", err)
	}
	defer fh.Close()
	var magic [len(shardMagic)]byte
	if _, err := io.ReadFull(fh, magic[:]); err != nil || magic != shardMagic {
		return fmt.Errorf("ckpt: %s: %w: not a shard file of this format (bad magic)", path, ErrCorrupt)
	}
	h := crc32.New(castagnoli)
	h.Write(magic[:])
	n, err := io.Copy(h, fh)
	if err != nil && !errors.Is(err, io.EOF) {
		return fmt.Errorf("ckpt: %s: %w", path, err)
	}
	if size := n + int64(len(magic)); size != f.Size {
		return fmt.Errorf("ckpt: %s: %w: %d bytes, manifest expects %d", path, ErrCorrupt, size, f.Size)
	}
	if c := h.Sum32(); c != f.CRC32C {
		return fmt.Errorf("ckpt: %s: %w: file checksum mismatch (crc32c %08x, manifest expects %08x)", path, ErrCorrupt, c, f.CRC32C)
	}
	return nil
}
