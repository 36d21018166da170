package ckpt

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"sync"

	"github.com/klauspost/compress/zstd"
)

// Reader reads tensors of one complete checkpoint. Its methods are safe for
// concurrent use. Close it to release files and decoders.
type Reader struct {
	dir     string
	m       Manifest
	byName  map[string][]*Entry // sorted by Start
	workers int

	dec *zstd.Decoder

	mu    sync.Mutex
	files map[string]*os.File
}

// TensorInfo is what the checkpoint says about a logical tensor.
type TensorInfo struct {
	DType string
	Shape []int
}

// Open opens the complete checkpoint in stepDir: DONE must be present and pin
// the manifest's bytes, the manifest must be of this version and consistent,
// and every shard file must exist with its recorded size. Data checksums are
// checked as entries are read (Verify checks them all).
func Open(stepDir string) (*Reader, error) {
	m, err := loadChecked(stepDir)
	if err != nil {
		return nil, err
	}
	r := &Reader{dir: stepDir, m: *m, byName: map[string][]*Entry{}, files: map[string]*os.File{},
		workers: runtime.GOMAXPROCS(0)}
	maxRaw := int64(1)
	for i := range r.m.Entries {
		e := &r.m.Entries[i]
		r.byName[e.Name] = append(r.byName[e.Name], e)
		maxRaw = max(maxRaw, e.RawLength)
	}
	for _, es := range r.byName {
		sort.SliceStable(es, func(a, b int) bool { return es[a].Start < es[b].Start })
	}
	r.dec, err = zstd.NewReader(nil, zstd.WithDecoderConcurrency(r.workers),
		zstd.WithDecoderMaxMemory(uint64(max(2*maxRaw, 64<<20))))
	if err != nil {
		return nil, fmt.Errorf("ckpt: zstd: %w", err)
	}
	return r, nil
}

// readDone reads and checks the DONE marker of stepDir.
func readDone(stepDir string) (done, error) {
	var d done
	path := filepath.Join(stepDir, DoneName)
	b, err := readRegular(path)
	if errors.Is(err, os.ErrNotExist) {
		return d, fmt.Errorf("ckpt: %s: %w: no %s marker (the commit did not finish)", stepDir, ErrIncomplete, DoneName)
	}
	if err != nil {
		return d, fmt.Errorf("ckpt: %w", err)
	}
	if err := json.Unmarshal(b, &d); err != nil {
		return d, fmt.Errorf("ckpt: %s: %w: unreadable: %v", path, ErrCorrupt, err)
	}
	return d, nil
}

// readManifest reads stepDir's manifest; with want != nil its size and
// checksum must match the DONE marker's.
func readManifest(stepDir string, want *done) (*Manifest, error) {
	path := filepath.Join(stepDir, ManifestName)
	b, err := readRegular(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("ckpt: %s: %w: missing file", path, ErrCorrupt)
	}
	if err != nil {
		return nil, fmt.Errorf("ckpt: %w", err)
	}
	if want != nil {
		if int64(len(b)) != want.ManifestSize {
			return nil, fmt.Errorf("ckpt: %s: %w: %d bytes, %s expects %d", path, ErrCorrupt, len(b), DoneName, want.ManifestSize)
		}
		if c := checksum(b); c != want.ManifestCRC32C {
			return nil, fmt.Errorf("ckpt: %s: %w: crc32c %08x, %s expects %08x", path, ErrCorrupt, c, DoneName, want.ManifestCRC32C)
		}
	}
	var m Manifest
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("ckpt: %s: %w: %v", path, ErrCorrupt, err)
	}
	if m.Version != Version {
		return nil, fmt.Errorf("ckpt: %s: %w: version %d, this build reads version %d", path, ErrVersion, m.Version, Version)
	}
	if err := m.validate(); err != nil {
		return nil, fmt.Errorf("ckpt: %s: %w: %v", path, ErrCorrupt, err)
	}
	if want != nil && m.Step != want.Step {
		return nil, fmt.Errorf("ckpt: %s: %w: step %d, %s says %d", path, ErrCorrupt, m.Step, DoneName, want.Step)
	}
	return &m, nil
}

// readRegular reads a file of a checkpoint directory, refusing a symlink (or
// anything but a regular file) so that nothing outside the directory is read.
func readRegular(path string) ([]byte, error) {
	st, err := os.Lstat(path)
	if err != nil {
		return nil, err
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("%s: %w: not a regular file (%s)", path, ErrCorrupt, st.Mode().Type())
	}
	return os.ReadFile(path)
}

// loadChecked is the cheap check of a committed checkpoint: DONE, manifest
// checksum and consistency, every shard file present with its recorded size.
func loadChecked(stepDir string) (*Manifest, error) {
	d, err := readDone(stepDir)
	if err != nil {
		return nil, err
	}
	m, err := readManifest(stepDir, &d)
	if err != nil {
		return nil, err
	}
	for _, f := range m.Files {
		path := filepath.Join(stepDir, f.Name)
		st, err := os.Lstat(path)
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("ckpt: %s: %w: missing shard file (rank %d, %d bytes expected)", path, ErrCorrupt, f.Rank, f.Size)
		}
		if err != nil {
			return nil, fmt.Errorf("ckpt: %w", err)
		}
		if !st.Mode().IsRegular() {
			// A symlink is not followed out of the checkpoint directory.
			return nil, fmt.Errorf("ckpt: %s: %w: not a regular file (%s)", path, ErrCorrupt, st.Mode().Type())
		}
		if st.Size() != f.Size {
			what := "truncated"
			if st.Size() > f.Size {
				what = "too long"
			}
			return nil, fmt.Errorf("ckpt: %s: %w: %s: %d bytes, manifest expects %d", path, ErrCorrupt, what, st.Size(), f.Size)
		}
	}
	return m, nil
}

// Manifest returns the checkpoint's manifest (do not modify it).
func (r *Reader) Manifest() *Manifest { return &r.m }

// Dir is the checkpoint directory.
func (r *Reader) Dir() string { return r.dir }

// Names lists the logical names stored, sorted.
func (r *Reader) Names() []string {
	names := make([]string, 0, len(r.byName))
	for n := range r.byName {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// Lookup returns the dtype and logical shape of name.
func (r *Reader) Lookup(name string) (TensorInfo, bool) {
	es := r.byName[name]
	if len(es) == 0 {
		return TensorInfo{}, false
	}
	return TensorInfo{DType: es[0].DType, Shape: append([]int(nil), es[0].Shape...)}, true
}

// Close releases the reader's files and decoder.
func (r *Reader) Close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	var err error
	for _, f := range r.files {
		if cerr := f.Close(); err == nil {
			err = cerr
		}
	}
	r.files = map[string]*os.File{}
	if r.dec != nil {
		r.dec.Close()
		r.dec = nil
	}
	return err
}

func (r *Reader) file(name string) (*os.File, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if f, ok := r.files[name]; ok {
		return f, nil
	}
	f, err := os.Open(filepath.Join(r.dir, name))
	if err != nil {
		return nil, fmt.Errorf("ckpt: %w", err)
	}
	r.files[name] = f
	return f, nil
}

// readRaw returns the raw little-endian bytes of an entry, checksum verified.
func (r *Reader) readRaw(e *Entry) ([]byte, error) {
	path := filepath.Join(r.dir, e.File)
	where := func() string {
		return fmt.Sprintf("%s: entry %q [%d,%d) at offset %d", path, e.Name, e.Start, e.Start+e.Count, e.Offset)
	}
	f, err := r.file(e.File)
	if err != nil {
		return nil, err
	}
	stored := make([]byte, e.Length)
	if _, err := f.ReadAt(stored, e.Offset); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("ckpt: %s: %w: file truncated: %d bytes expected", where(), ErrCorrupt, e.Length)
		}
		return nil, fmt.Errorf("ckpt: %s: %w", where(), err)
	}
	raw := stored
	switch e.Compression {
	case CompZstd, CompZstdByteGroup:
		dec := r.dec
		if dec == nil {
			return nil, fmt.Errorf("ckpt: %s: reader closed", where())
		}
		// raw_length comes from the manifest: reserve no more than a generous
		// ratio of the stored bytes, and let real output grow the buffer, so
		// that a manifest claiming terabytes cannot allocate them.
		out, err := dec.DecodeAll(stored, make([]byte, 0, min(e.RawLength, 8*e.Length+1<<20)))
		if err != nil {
			return nil, fmt.Errorf("ckpt: %s: %w: zstd: %v", where(), ErrCorrupt, err)
		}
		if int64(len(out)) != e.RawLength {
			return nil, fmt.Errorf("ckpt: %s: %w: decompressed to %d bytes, manifest expects %d", where(), ErrCorrupt, len(out), e.RawLength)
		}
		raw = out
		if e.Compression == CompZstdByteGroup {
			raw = stored[:0]
			if int64(cap(stored)) < e.RawLength {
				raw = make([]byte, e.RawLength)
			}
			raw = raw[:e.RawLength]
			ungroup(raw, out, elemSize(e.DType))
		}
	}
	if c := checksum(raw); c != e.CRC32C {
		return nil, fmt.Errorf("ckpt: %s: %w: checksum mismatch (crc32c %08x, manifest expects %08x)", where(), ErrCorrupt, c, e.CRC32C)
	}
	return raw, nil
}

// piece is the part [lo, hi) (absolute element indexes) of entry e that a read uses.
type piece struct {
	e      *Entry
	lo, hi int64
}

// cover picks entries of name covering [start, start+count).
func (r *Reader) cover(name string, start, count int64) ([]piece, error) {
	es := r.byName[name]
	if len(es) == 0 {
		return nil, fmt.Errorf("ckpt: %s: %w: no tensor %q", r.dir, ErrNotCovered, name)
	}
	n, _ := numElems(es[0].Shape)
	if start < 0 || count < 0 || start+count > n {
		return nil, fmt.Errorf("ckpt: %s: tensor %q: range [%d,%d) outside shape %v (%d elements)", r.dir, name, start, start+count, es[0].Shape, n)
	}
	var ps []piece
	pos, end := start, start+count
	for pos < end {
		var best *Entry
		for _, e := range es { // sorted by Start
			if e.Start > pos {
				break
			}
			if e.Start+e.Count > pos && (best == nil || e.Start+e.Count > best.Start+best.Count) {
				best = e
			}
		}
		if best == nil {
			next := end
			for _, e := range es {
				if e.Start > pos {
					next = min(next, e.Start)
					break
				}
			}
			return nil, fmt.Errorf("ckpt: %s: %w: tensor %q elements [%d,%d) are in no shard", r.dir, ErrNotCovered, name, pos, next)
		}
		hi := min(end, best.Start+best.Count)
		ps = append(ps, piece{best, pos, hi})
		pos = hi
	}
	return ps, nil
}

// forPieces runs fn on every piece on up to r.workers goroutines and returns the first error.
func (r *Reader) forPieces(ps []piece, fn func(p piece) error) error {
	if len(ps) == 1 {
		return fn(ps[0])
	}
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		first error
		next  = make(chan piece)
	)
	for i := 0; i < min(r.workers, len(ps)); i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for p := range next {
				if err := fn(p); err != nil {
					mu.Lock()
					if first == nil {
						first = err
					}
					mu.Unlock()
				}
			}
		}()
	}
	for _, p := range ps {
		next <- p
	}
	close(next)
	wg.Wait()
	return first
}

// ReadF32 reads elements [start, start+count) of the flattened tensor name
// into dst[:count], from whichever entries of whichever shard files hold
// them. bf16 tensors are widened exactly.
func (r *Reader) ReadF32(name string, start, count int64, dst []float32) error {
	if int64(len(dst)) < count {
		return fmt.Errorf("ckpt: read %q: dst has %d elements, need %d", name, len(dst), count)
	}
	ps, err := r.cover(name, start, count)
	if err != nil {
		return err
	}
	if len(ps) == 0 {
		return nil
	}
	if dt := ps[0].e.DType; dt != F32 && dt != BF16 {
		return fmt.Errorf("ckpt: %s: tensor %q is %s, not a float tensor", r.dir, name, dt)
	}
	return r.forPieces(ps, func(p piece) error {
		raw, err := r.readRaw(p.e)
		if err != nil {
			return err
		}
		es := int64(elemSize(p.e.DType))
		decodeF32(dst[p.lo-start:p.hi-start], raw[(p.lo-p.e.Start)*es:], p.e.DType)
		return nil
	})
}

// ReadBF16 reads elements [start, start+count) of the bf16 tensor name into dst[:count].
func (r *Reader) ReadBF16(name string, start, count int64, dst []uint16) error {
	if int64(len(dst)) < count {
		return fmt.Errorf("ckpt: read %q: dst has %d elements, need %d", name, len(dst), count)
	}
	ps, err := r.cover(name, start, count)
	if err != nil {
		return err
	}
	if len(ps) == 0 {
		return nil
	}
	if dt := ps[0].e.DType; dt != BF16 {
		return fmt.Errorf("ckpt: %s: tensor %q is %s, not bf16", r.dir, name, dt)
	}
	return r.forPieces(ps, func(p piece) error {
		raw, err := r.readRaw(p.e)
		if err != nil {
			return err
		}
		decodeU16(dst[p.lo-start:p.hi-start], raw[(p.lo-p.e.Start)*2:])
		return nil
	})
}

// ReadBytes returns the whole blob stored under name by AddBytes.
func (r *Reader) ReadBytes(name string) ([]byte, error) {
	es := r.byName[name]
	if len(es) == 0 {
		return nil, fmt.Errorf("ckpt: %s: %w: no entry %q", r.dir, ErrNotCovered, name)
	}
	if es[0].DType != Bytes {
		return nil, fmt.Errorf("ckpt: %s: entry %q is %s, not bytes", r.dir, name, es[0].DType)
	}
	n := int64(es[0].Shape[0])
	ps, err := r.cover(name, 0, n)
	if err != nil {
		return nil, err
	}
	// Read (and check) the pieces before allocating the blob: its size is
	// the manifest's word, their bytes are real.
	raws := make([][]byte, len(ps))
	for i, p := range ps {
		if raws[i], err = r.readRaw(p.e); err != nil {
			return nil, err
		}
	}
	out := make([]byte, n)
	for i, p := range ps {
		copy(out[p.lo:p.hi], raws[i][p.lo-p.e.Start:])
	}
	return out, nil
}
