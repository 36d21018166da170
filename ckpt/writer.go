package ckpt

import (
	"bufio"
	"errors"
	"fmt"
	"hash/crc32"
	"os"
	"path/filepath"
	"runtime"
	"sync"

	"github.com/klauspost/compress/zstd"
)

// DefaultLevel is the zstd level used when Options.Level is 0.
const DefaultLevel = 1

// DefaultChunkBytes is the raw size of the pieces large tensors are cut into.
const DefaultChunkBytes = 4 << 20

// Options configure a ShardWriter. The zero value writes raw (uncompressed)
// shards with GOMAXPROCS workers.
type Options struct {
	Compress    bool // zstd-compress entries (with byte grouping of float data)
	Level       int  // zstd level 1..22 (mapped onto klauspost's fastest/default/better/best); 0 = DefaultLevel
	Workers     int  // parallel compressors; 0 = GOMAXPROCS
	ChunkBytes  int  // raw bytes per entry of a large tensor; 0 = DefaultChunkBytes
	NoByteGroup bool // compress floats without byte grouping (for comparison)
}

// ShardWriter writes one rank's shard file and, on Close, its index. Add
// methods are called from one goroutine; they copy the data they are given,
// so the caller may reuse its slices as soon as they return. Compression runs
// on Options.Workers goroutines with at most about 2 x Workers chunks in
// flight, and the file is written in the order entries were added. Always
// call Close: it ends the goroutines, also after an error.
type ShardWriter struct {
	dir, name string
	rank      int
	opts      Options
	chunk     int

	f     *os.File
	jobs  chan *job // to the compressors
	order chan *job // to the file writer, in Add order
	wg    sync.WaitGroup
	wdone chan struct{}

	mu  sync.Mutex
	err error // first error; sticky

	kinds  map[string]kindOf // caller goroutine only
	closed bool

	// Owned by the file-writer goroutine until wdone is closed.
	bw      *bufio.Writer
	off     int64
	fileCRC uint32
	entries []Entry
}

type kindOf struct {
	dtype string
	shape []int
}

type job struct {
	e    Entry // Name, DType, Shape, Start, Count, RawLength set by Add
	raw  []byte
	out  []byte
	done chan struct{}
}

// NewShardWriter creates dir/rank-%05d.ckpt (truncating an old one) and starts
// the compressors. dir is normally PrepareDir's step-N.tmp directory.
func NewShardWriter(dir string, rank int, opts Options) (*ShardWriter, error) {
	if rank < 0 {
		return nil, fmt.Errorf("ckpt: negative rank %d", rank)
	}
	if opts.Workers <= 0 {
		opts.Workers = runtime.GOMAXPROCS(0)
	}
	if opts.Level == 0 {
		opts.Level = DefaultLevel
	}
	if opts.Level < 1 || opts.Level > 22 {
		return nil, fmt.Errorf("ckpt: zstd level %d outside 1..22", opts.Level)
	}
	chunk := opts.ChunkBytes
	if chunk <= 0 {
		chunk = DefaultChunkBytes
	}
	chunk -= chunk % 4 // whole elements of every dtype
	if chunk < 4 {
		chunk = 4
	}
	w := &ShardWriter{dir: dir, name: ShardName(rank), rank: rank, opts: opts, chunk: chunk,
		jobs: make(chan *job, opts.Workers), order: make(chan *job, 2*opts.Workers),
		wdone: make(chan struct{}), kinds: map[string]kindOf{}}
	// A stale index from an earlier attempt must never pair with this shard.
	if err := os.Remove(filepath.Join(dir, IndexName(rank))); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("ckpt: %w", err)
	}
	path := filepath.Join(dir, w.name)
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return nil, fmt.Errorf("ckpt: %w", err)
	}
	w.f = f
	w.bw = bufio.NewWriterSize(f, 1<<20)
	if _, err := w.bw.Write(shardMagic[:]); err != nil {
		f.Close()
		return nil, fmt.Errorf("ckpt: write %s: %w", path, err)
	}
	w.off = int64(len(shardMagic))
	w.fileCRC = crc32.Update(0, castagnoli, shardMagic[:])

	var encs []*zstd.Encoder
	if opts.Compress {
		for i := 0; i < opts.Workers; i++ {
			enc, err := zstd.NewWriter(nil, zstd.WithEncoderConcurrency(1),
				zstd.WithEncoderLevel(zstd.EncoderLevelFromZstd(opts.Level)))
			if err != nil {
				f.Close()
				return nil, fmt.Errorf("ckpt: zstd: %w", err)
			}
			encs = append(encs, enc)
		}
	}
	for i := 0; i < opts.Workers; i++ {
		var enc *zstd.Encoder
		if encs != nil {
			enc = encs[i]
		}
		w.wg.Add(1)
		go w.compressor(enc)
	}
	go w.fileWriter()
	return w, nil
}

func (w *ShardWriter) setErr(err error) {
	w.mu.Lock()
	if w.err == nil {
		w.err = err
	}
	w.mu.Unlock()
}

func (w *ShardWriter) firstErr() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.err
}

// compressor checksums and compresses chunks until jobs is closed.
func (w *ShardWriter) compressor(enc *zstd.Encoder) {
	defer w.wg.Done()
	var planes []byte
	for j := range w.jobs {
		j.e.CRC32C = checksum(j.raw)
		j.e.Compression = CompNone
		j.out = j.raw
		if enc != nil && len(j.raw) > 0 {
			out, kind := make([]byte, 0, len(j.raw)/2+64), CompZstd
			if es := elemSize(j.e.DType); es > 1 && !w.opts.NoByteGroup {
				if cap(planes) < len(j.raw) {
					planes = make([]byte, len(j.raw))
				}
				planes = planes[:len(j.raw)]
				group(planes, j.raw, es)
				// One frame per plane: each gets its own entropy tables, even
				// when the whole chunk fits in one zstd block.
				n := len(j.raw) / es
				for k := 0; k < es; k++ {
					out = enc.EncodeAll(planes[k*n:(k+1)*n], out)
				}
				kind = CompZstdByteGroup
			} else {
				out = enc.EncodeAll(j.raw, out)
			}
			if len(out) < len(j.raw) { // else incompressible: keep raw
				j.out, j.e.Compression = out, kind
				j.raw = nil
			}
		}
		j.e.Length = int64(len(j.out))
		close(j.done)
	}
	if enc != nil {
		enc.Close()
	}
}

// fileWriter appends finished chunks to the file in Add order.
func (w *ShardWriter) fileWriter() {
	defer close(w.wdone)
	for j := range w.order {
		<-j.done
		if w.firstErr() != nil {
			continue // drain so that Add never blocks
		}
		if _, err := w.bw.Write(j.out); err != nil {
			w.setErr(fmt.Errorf("ckpt: write %s: %w", filepath.Join(w.dir, w.name), err))
			continue
		}
		w.fileCRC = crc32.Update(w.fileCRC, castagnoli, j.out)
		j.e.File = w.name
		j.e.Offset = w.off
		w.off += j.e.Length
		w.entries = append(w.entries, j.e)
	}
}

// check validates an addition and remembers the tensor's dtype and shape.
func (w *ShardWriter) check(name, dtype string, shape []int, start, count int64) error {
	if w.closed {
		return fmt.Errorf("ckpt: %s: add %q after Close", w.name, name)
	}
	if err := w.firstErr(); err != nil {
		return err
	}
	if name == "" {
		return fmt.Errorf("ckpt: %s: empty entry name", w.name)
	}
	n, err := numElems(shape)
	if err != nil {
		return fmt.Errorf("ckpt: %s: entry %q: %v", w.name, name, err)
	}
	if start < 0 || start+count > n {
		return fmt.Errorf("ckpt: %s: entry %q: range [%d,%d) outside shape %v (%d elements)", w.name, name, start, start+count, shape, n)
	}
	if k, ok := w.kinds[name]; ok && (k.dtype != dtype || !equalInts(k.shape, shape)) {
		return fmt.Errorf("ckpt: %s: entry %q added as %s %v and as %s %v", w.name, name, k.dtype, k.shape, dtype, shape)
	}
	w.kinds[name] = kindOf{dtype, append([]int(nil), shape...)}
	return nil
}

// submit queues one chunk whose raw bytes are already encoded.
func (w *ShardWriter) submit(name, dtype string, shape []int, start, count int64, raw []byte) {
	j := &job{e: Entry{Name: name, DType: dtype, Shape: shape, Start: start, Count: count,
		RawLength: int64(len(raw))}, raw: raw, done: make(chan struct{})}
	w.order <- j
	w.jobs <- j
}

// AddF32 stores data as elements [start, start+len(data)) of the float32
// tensor name of the given logical shape.
func (w *ShardWriter) AddF32(name string, logicalShape []int, start int64, data []float32) error {
	if err := w.check(name, F32, logicalShape, start, int64(len(data))); err != nil {
		return err
	}
	shape := append([]int(nil), logicalShape...)
	per := w.chunk / 4
	for i := 0; i < len(data) || i == 0; i += per {
		end := min(i+per, len(data))
		raw := make([]byte, 4*(end-i))
		putF32(raw, data[i:end])
		w.submit(name, F32, shape, start+int64(i), int64(end-i), raw)
		if end == len(data) {
			break
		}
	}
	return nil
}

// AddBF16 stores bfloat16 bit patterns as elements [start, start+len(data)) of
// the tensor name of the given logical shape.
func (w *ShardWriter) AddBF16(name string, logicalShape []int, start int64, data []uint16) error {
	if err := w.check(name, BF16, logicalShape, start, int64(len(data))); err != nil {
		return err
	}
	shape := append([]int(nil), logicalShape...)
	per := w.chunk / 2
	for i := 0; i < len(data) || i == 0; i += per {
		end := min(i+per, len(data))
		raw := make([]byte, 2*(end-i))
		putU16(raw, data[i:end])
		w.submit(name, BF16, shape, start+int64(i), int64(end-i), raw)
		if end == len(data) {
			break
		}
	}
	return nil
}

// AddBytes stores an opaque blob (JSON state, RNG state, ...) under name.
func (w *ShardWriter) AddBytes(name string, data []byte) error {
	shape := []int{len(data)}
	if err := w.check(name, Bytes, shape, 0, int64(len(data))); err != nil {
		return err
	}
	for i := 0; i < len(data) || i == 0; i += w.chunk {
		end := min(i+w.chunk, len(data))
		raw := append([]byte(nil), data[i:end]...)
		w.submit(name, Bytes, shape, int64(i), int64(end-i), raw)
		if end == len(data) {
			break
		}
	}
	return nil
}

// Close waits for the queued chunks, flushes and fsyncs the shard file, writes
// the rank's index (atomically) and returns the entries written. It ends all
// goroutines of the writer even when it returns an error.
func (w *ShardWriter) Close() ([]Entry, error) {
	if w.closed {
		return nil, fmt.Errorf("ckpt: %s: Close called twice", w.name)
	}
	w.closed = true
	close(w.jobs)
	close(w.order)
	w.wg.Wait()
	<-w.wdone
	path := filepath.Join(w.dir, w.name)
	err := w.firstErr()
	if err == nil {
		if ferr := w.bw.Flush(); ferr != nil {
			err = fmt.Errorf("ckpt: write %s: %w", path, ferr)
		} else if serr := w.f.Sync(); serr != nil {
			err = fmt.Errorf("ckpt: fsync %s: %w", path, serr)
		}
	}
	if cerr := w.f.Close(); err == nil && cerr != nil {
		err = fmt.Errorf("ckpt: close %s: %w", path, cerr)
	}
	if err != nil {
		return nil, err
	}
	idx := rankIndex{Version: Version, Rank: w.rank,
		File:    File{Name: w.name, Rank: w.rank, Size: w.off, CRC32C: w.fileCRC},
		Entries: w.entries}
	if idx.Entries == nil {
		idx.Entries = []Entry{}
	}
	b, err := marshal(idx)
	if err != nil {
		return nil, fmt.Errorf("ckpt: index of %s: %w", path, err)
	}
	ipath := filepath.Join(w.dir, IndexName(w.rank))
	if err := writeFileAtomic(ipath, b); err != nil {
		return nil, fmt.Errorf("ckpt: write %s: %w", ipath, err)
	}
	return w.entries, nil
}
