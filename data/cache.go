package data

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// A token cache is a dataset tokenized once, so that no rank holds the
// dataset in memory: a folder of flat little-endian files, memory-mapped
// when read,
//
//	ids.u32      every example's token ids, one after another
//	labels.i32   their labels (-100: not scored), aligned with the ids
//	index.u64    N+1 offsets into ids: example i is [index[i], index[i+1])
//	scored.u32   per example, its labels other than -100 after the first
//	             token (Examples.Stats: a rank lays out other ranks'
//	             micro-batches from the index alone)
//	meta.json    what it was built from, and counts
//
// named by a key that hashes what the tokens depend on: each data file's
// path, size and modification time, the formatter's options (columns,
// prompt loss, chat template, vocabulary, skipping bad lines) and the
// tokenizer's hash. Changing any of them makes another cache. It is built
// under a lock file by whichever rank comes first while the others wait
// (the lock is refreshed while the build runs, so a waiter can tell a dead
// builder from a slow one), streaming the input a record at a time, into a
// temporary folder renamed into place when complete: a crash leaves no
// half cache.

const cacheVersion = 1

// CacheSpec says which cache a dataset has and how to build it.
type CacheSpec struct {
	Data      string     // the dataset: a file, directory or glob (DataFiles)
	Format    *Formatter // how records become examples
	SkipBad   bool       // count and skip malformed records instead of failing
	Tokenizer string     // the tokenizer's hash ("" with none)
	Dir       string     // where caches live: each is a folder named by its key
	// LockTimeout is how long a lock may go unrefreshed before a waiting
	// rank gives up on its builder.
	LockTimeout time.Duration
	// Log, when not nil, is told when this rank builds or waits.
	Log io.Writer
	// Progress, when not nil, is called while building, about twice a
	// second and once at the end: input bytes done of total, examples so far.
	Progress func(done, total int64, examples int)
}

// cacheMeta is meta.json.
type cacheMeta struct {
	Version  int             `json:"version"`
	Key      json.RawMessage `json:"key"` // what the name hashes, for people
	Examples int             `json:"examples"`
	Tokens   int64           `json:"tokens"`
	Skipped  int             `json:"skipped"`
}

// fileStamp is what a data file contributes to the key.
type fileStamp struct {
	Path  string `json:"path"`
	Size  int64  `json:"size"`
	MTime int64  `json:"mtime_ns"`
}

// name is the cache folder's name for s (the dataset's base name, then the
// key's hash) and what the hash covers; files are the dataset's files.
func (s CacheSpec) name() (name string, key []byte, files []string, err error) {
	if files, err = DataFiles(s.Data); err != nil {
		return "", nil, nil, err
	}
	var stamps []fileStamp
	for _, f := range files {
		st, err := os.Stat(f)
		if err != nil {
			return "", nil, nil, err
		}
		abs, err := filepath.Abs(f)
		if err != nil {
			return "", nil, nil, err
		}
		stamps = append(stamps, fileStamp{abs, st.Size(), st.ModTime().UnixNano()})
	}
	chat := ""
	if s.Format.Chat != nil {
		chat = s.Format.Chat.src
	}
	key, err = json.Marshal(map[string]any{"version": cacheVersion, "files": stamps, "columns": s.Format.Columns,
		"prompt_loss": s.Format.PromptLoss, "chat_template": chat, "vocab": s.Format.Vocab,
		"skip_bad_lines": s.SkipBad, "tokenizer": s.Tokenizer})
	if err != nil {
		return "", nil, nil, err
	}
	sum := sha256.Sum256(key)
	base := strings.Map(func(r rune) rune {
		if strings.ContainsRune("*?[]/\\", r) {
			return '_'
		}
		return r
	}, filepath.Base(s.Data))
	return base + "-" + hex.EncodeToString(sum[:8]), key, files, nil
}

// CachePath is the folder of s's cache, whether or not it exists yet.
func (s CacheSpec) CachePath() (string, error) {
	name, _, _, err := s.name()
	if err != nil {
		return "", err
	}
	return filepath.Join(s.Dir, name), nil
}

// LoadCache opens s's cache, building it first when there is none. When
// another process holds the build lock it waits for that build, and fails
// with an error naming the lock when its holder stops refreshing it for
// s.LockTimeout, or when ctx is cancelled. built says whether this call
// built the cache.
func LoadCache(ctx context.Context, s CacheSpec) (c *Cache, built bool, err error) {
	name, key, files, err := s.name()
	if err != nil {
		return nil, false, err
	}
	if err := os.MkdirAll(s.Dir, 0o755); err != nil {
		return nil, false, fmt.Errorf("data cache: %w", err)
	}
	final := filepath.Join(s.Dir, name)
	lock := final + ".lock"
	for {
		c, err := OpenCache(final)
		if !errors.Is(err, fs.ErrNotExist) {
			return c, false, err
		}
		release, err := takeLock(lock, s.LockTimeout)
		if err == nil {
			c, err := s.build(ctx, final, key, files)
			release()
			return c, err == nil, err
		}
		if !errors.Is(err, fs.ErrExist) {
			return nil, false, fmt.Errorf("data cache: %w", err)
		}
		if s.Log != nil {
			fmt.Fprintf(s.Log, "data cache: waiting for %s, which another rank is building (%s)\n", final, lockOwner(lock))
		}
		if err := waitLock(ctx, lock, s.LockTimeout, s.Log); err != nil {
			return nil, false, err
		}
	}
}

// takeLock creates the lock file (fs.ErrExist when another holds it) and
// keeps refreshing its time until release, which removes it. A lock left by
// a process of this host that no longer exists is removed first.
func takeLock(path string, timeout time.Duration) (release func(), err error) {
	removeDeadLock(path)
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
	if err != nil {
		return nil, err
	}
	host, _ := os.Hostname()
	_, werr := fmt.Fprintf(f, "%s %d\n", host, os.Getpid())
	if err := errors.Join(werr, f.Close()); err != nil {
		os.Remove(path)
		return nil, err
	}
	stop, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		tick := time.NewTicker(max(min(timeout/4, 5*time.Second), 10*time.Millisecond))
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case now := <-tick.C:
				os.Chtimes(path, now, now)
			}
		}
	}()
	return func() {
		close(stop)
		<-done
		os.Remove(path)
	}, nil
}

// lockOwner is what a lock file says of its holder: "host pid".
func lockOwner(path string) string {
	b, _ := os.ReadFile(path)
	if s := strings.TrimSpace(string(b)); s != "" {
		return "held by " + s
	}
	return "lock " + path
}

// removeDeadLock removes a lock whose holder was a process of this host
// that has gone (killed while building): nobody is building then.
func removeDeadLock(path string) {
	b, err := os.ReadFile(path)
	if err != nil {
		return
	}
	host, pidText, _ := strings.Cut(strings.TrimSpace(string(b)), " ")
	pid, err := strconv.Atoi(pidText)
	me, _ := os.Hostname()
	if err != nil || host != me || pid <= 0 {
		return
	}
	if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
		os.Remove(path)
	}
}

// waitLock returns once the lock is gone, or an error when it goes
// unrefreshed for timeout or ctx is cancelled. Every waitNote it tells log
// (when not nil) that it is still waiting, and for how long.
func waitLock(ctx context.Context, path string, timeout time.Duration, log io.Writer) error {
	tick := time.NewTicker(max(min(timeout/20, 250*time.Millisecond), time.Millisecond))
	defer tick.Stop()
	start, noted := time.Now(), time.Now()
	for {
		if log != nil && time.Since(noted) >= waitNote {
			noted = time.Now()
			fmt.Fprintf(log, "data cache: still waiting for the rank building it (%s), %s so far\n", lockOwner(path),
				time.Since(start).Round(time.Second))
		}
		removeDeadLock(path)
		st, err := os.Stat(path)
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("data cache: %w", err)
		}
		if idle := time.Since(st.ModTime()); idle > timeout {
			return fmt.Errorf("data cache: %s (%s) has not been refreshed for %s: the rank building the cache is gone or stuck (on another host?); if nothing is building it, remove the lock file and start again",
				path, lockOwner(path), idle.Round(time.Second))
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("data cache: waiting for %s: %w", path, ctx.Err())
		case <-tick.C:
		}
	}
}

// waitNote is how often a rank waiting for another's cache build says so.
const waitNote = 30 * time.Second

// cacheFiles are the cache's data files, in the order cacheWriter writes them.
var cacheFiles = [4]string{"ids.u32", "labels.i32", "index.u64", "scored.u32"}

// cacheWriter appends examples to a cache being built.
type cacheWriter struct {
	f      [4]*os.File
	w      [4]*bufio.Writer
	tokens int64
	n      int
	buf    [8]byte
}

func newCacheWriter(dir string) (*cacheWriter, error) {
	cw := &cacheWriter{}
	for i, name := range cacheFiles {
		f, err := os.Create(filepath.Join(dir, name))
		if err != nil {
			cw.close()
			return nil, err
		}
		cw.f[i], cw.w[i] = f, bufio.NewWriterSize(f, 1<<20)
	}
	return cw, cw.put64(2, 0)
}

func (cw *cacheWriter) put32(file int, v uint32) error {
	binary.LittleEndian.PutUint32(cw.buf[:4], v)
	_, err := cw.w[file].Write(cw.buf[:4])
	return err
}

func (cw *cacheWriter) put64(file int, v uint64) error {
	binary.LittleEndian.PutUint64(cw.buf[:], v)
	_, err := cw.w[file].Write(cw.buf[:])
	return err
}

func (cw *cacheWriter) add(ex TokenExample) error {
	for i, id := range ex.InputIDs {
		if err := errors.Join(cw.put32(0, uint32(id)), cw.put32(1, uint32(int32(ex.Labels[i])))); err != nil {
			return err
		}
	}
	cw.tokens += int64(len(ex.InputIDs))
	cw.n++
	return errors.Join(cw.put64(2, uint64(cw.tokens)), cw.put32(3, uint32(scoredAfterFirst(ex.Labels))))
}

// finish flushes and syncs every file.
func (cw *cacheWriter) finish() error {
	var errs []error
	for i := range cw.f {
		errs = append(errs, cw.w[i].Flush(), cw.f[i].Sync())
	}
	return errors.Join(append(errs, cw.close())...)
}

func (cw *cacheWriter) close() error {
	var errs []error
	for _, f := range cw.f {
		if f != nil {
			errs = append(errs, f.Close())
		}
	}
	clear(cw.f[:])
	return errors.Join(errs...)
}

// build tokenizes the dataset into a temporary folder beside final, one
// record at a time, and renames it to final when complete.
func (s CacheSpec) build(ctx context.Context, final string, key []byte, files []string) (*Cache, error) {
	if s.Log != nil {
		fmt.Fprintf(s.Log, "data cache: tokenizing %s into %s\n", s.Data, final)
	}
	tmp, err := os.MkdirTemp(s.Dir, filepath.Base(final)+".tmp-")
	if err != nil {
		return nil, fmt.Errorf("data cache: %w", err)
	}
	defer os.RemoveAll(tmp) // a no-op once renamed
	cw, err := newCacheWriter(tmp)
	if err != nil {
		return nil, fmt.Errorf("data cache: %w", err)
	}
	defer cw.close()
	var total, doneFiles, inFile int64
	for _, f := range files {
		if st, err := os.Stat(f); err == nil {
			total += st.Size()
		}
	}
	skipped, last := 0, time.Now()
	report := func(force bool) {
		if s.Progress != nil && (force || time.Since(last) > 500*time.Millisecond) {
			s.Progress(min(doneFiles+inFile, total), total, cw.n)
			last = time.Now()
		}
	}
	keep := s.Format.columnsRead()
	for _, file := range files {
		st, err := os.Stat(file)
		if err != nil {
			return nil, err
		}
		inFile = 0
		err = fileRecords(file, keep, func(rec []byte, where string) error {
			if err := ctx.Err(); err != nil {
				return err
			}
			inFile = min(inFile+int64(len(rec))+1, st.Size())
			report(false)
			ex, err := s.Format.Example(rec)
			switch {
			case err != nil && s.SkipBad:
				skipped++
				return nil
			case err != nil:
				return fmt.Errorf("%s: %w", where, err)
			}
			if err := cw.add(ex); err != nil {
				return fmt.Errorf("data cache %s: %w", tmp, err)
			}
			return nil
		})
		if err != nil {
			return nil, err
		}
		doneFiles += st.Size()
		inFile = 0
	}
	report(true)
	switch {
	case cw.n == 0 && skipped > 0:
		return nil, fmt.Errorf("%s: all %d lines were malformed", s.Data, skipped)
	case cw.n == 0:
		return nil, fmt.Errorf("%s: no examples (the file is empty)", s.Data)
	}
	if err := cw.finish(); err != nil {
		return nil, fmt.Errorf("data cache %s: %w", tmp, err)
	}
	meta, err := json.MarshalIndent(cacheMeta{Version: cacheVersion, Key: key, Examples: cw.n, Tokens: cw.tokens, Skipped: skipped}, "", "  ")
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(tmp, "meta.json"), meta, 0o644); err != nil {
		return nil, fmt.Errorf("data cache: %w", err)
	}
	if err := os.Rename(tmp, final); err != nil {
		return nil, fmt.Errorf("data cache: %w", err)
	}
	return OpenCache(final)
}

// Cache is an open token cache: its files memory-mapped, read an example at
// a time, so a rank's memory holds what it reads, not the dataset.
type Cache struct {
	Dir                        string
	Skipped                    int // malformed records skipped when it was built
	n                          int
	tokens                     int64
	ids, labels, index, scored []byte
	maps                       [][]byte
}

// OpenCache opens the cache in dir (fs.ErrNotExist when there is none),
// checking that its files agree with each other.
func OpenCache(dir string) (*Cache, error) {
	raw, err := os.ReadFile(filepath.Join(dir, "meta.json"))
	if err != nil {
		return nil, err
	}
	var meta cacheMeta
	if err := json.Unmarshal(raw, &meta); err != nil || meta.Version != cacheVersion {
		return nil, fmt.Errorf("data cache %s: meta.json is not a version %d cache's: remove the folder to rebuild it", dir, cacheVersion)
	}
	c := &Cache{Dir: dir, Skipped: meta.Skipped, n: meta.Examples, tokens: meta.Tokens}
	want := [4]int64{4 * meta.Tokens, 4 * meta.Tokens, 8 * int64(meta.Examples+1), 4 * int64(meta.Examples)}
	dst := [4]*[]byte{&c.ids, &c.labels, &c.index, &c.scored}
	for i, name := range cacheFiles {
		if *dst[i], err = c.mmap(filepath.Join(dir, name), want[i]); err != nil {
			c.Close()
			return nil, err
		}
	}
	prev := uint64(0)
	for i := 0; i <= c.n; i++ {
		off := binary.LittleEndian.Uint64(c.index[8*i:])
		if off < prev || off > uint64(c.tokens) || (i == c.n && off != uint64(c.tokens)) {
			c.Close()
			return nil, fmt.Errorf("data cache %s: index.u64 entry %d (%d) is out of order: remove the folder to rebuild it", dir, i, off)
		}
		prev = off
	}
	return c, nil
}

// mmap maps a file of the cache read-only, checking its size.
func (c *Cache) mmap(path string, size int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("data cache: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if st.Size() != size {
		return nil, fmt.Errorf("data cache: %s has %d bytes, its meta.json says %d: remove the folder to rebuild it", path, st.Size(), size)
	}
	if size == 0 {
		return nil, nil
	}
	b, err := syscall.Mmap(int(f.Fd()), 0, int(size), syscall.PROT_READ, syscall.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("data cache: mmap %s: %w", path, err)
	}
	c.maps = append(c.maps, b)
	return b, nil
}

// Close unmaps the cache's files.
func (c *Cache) Close() error {
	var errs []error
	for _, b := range c.maps {
		errs = append(errs, syscall.Munmap(b))
	}
	c.maps = nil
	return errors.Join(errs...)
}

func (c *Cache) Len() int { return c.n }

// Tokens is the number of tokens of every example together.
func (c *Cache) Tokens() int64 { return c.tokens }

func (c *Cache) span(i int) (lo, hi uint64) {
	return binary.LittleEndian.Uint64(c.index[8*i:]), binary.LittleEndian.Uint64(c.index[8*i+8:])
}

func (c *Cache) Stats(i int) (n, scored int) {
	lo, hi := c.span(i)
	return int(hi - lo), int(binary.LittleEndian.Uint32(c.scored[4*i:]))
}

// Example copies example i out of the mapped files.
func (c *Cache) Example(i int) (TokenExample, error) {
	if i < 0 || i >= c.n {
		return TokenExample{}, fmt.Errorf("data cache %s: example %d of %d", c.Dir, i, c.n)
	}
	lo, hi := c.span(i)
	ex := TokenExample{InputIDs: make([]int, hi-lo), Labels: make([]int, hi-lo)}
	for j := range ex.InputIDs {
		k := 4 * (lo + uint64(j))
		ex.InputIDs[j] = int(binary.LittleEndian.Uint32(c.ids[k:]))
		ex.Labels[j] = int(int32(binary.LittleEndian.Uint32(c.labels[k:])))
	}
	return ex, nil
}
