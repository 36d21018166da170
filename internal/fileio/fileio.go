// Package fileio holds the file handling that model and the format packages
// share: a whole file read with a size limit (its contents come from outside
// and are not trusted), a file opened together with its size for a parser that
// reads it by offset, a file written atomically so that a reader never sees
// half of it, and a writer that lets an encoder write without checking every
// call.
package fileio

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
)

// ReadFile reads a whole file, refusing one larger than limit bytes.
func ReadFile(path string, limit int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", path, err)
	}
	if int64(len(data)) > limit {
		return nil, fmt.Errorf("%s: larger than the %d-byte limit for this file", path, limit)
	}
	return data, nil
}

// OpenSized opens path for a parser that reads it by offset and must know its
// size. The caller closes the file, also when parsing fails.
func OpenSized(path string) (*os.File, int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, 0, err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, 0, err
	}
	return f, st.Size(), nil
}

// WriteAtomic writes path through fn into a temporary file beside it, synced,
// made readable by everyone (0644) and renamed, so a reader never sees half a
// file.
func WriteAtomic(path string, fn func(io.Writer) error) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	defer os.Remove(tmp.Name()) // fails harmlessly after the rename
	if err := fn(tmp); err != nil {
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
	if err := os.Chmod(tmp.Name(), 0o644); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	return nil
}

// CountWriter counts the bytes written to W and remembers the first error, so
// that an encoder can write piece by piece and check once at the end: after an
// error every Write returns it and writes nothing.
type CountWriter struct {
	W   io.Writer
	N   int64 // bytes written
	Err error // the first error
}

func (c *CountWriter) Write(p []byte) (int, error) {
	if c.Err != nil {
		return 0, c.Err
	}
	n, err := c.W.Write(p)
	c.N += int64(n)
	c.Err = err
	return n, err
}
