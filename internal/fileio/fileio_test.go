package fileio

import (
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestReadFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "f.json")
	if err := os.WriteFile(path, []byte("0123456789"), 0o644); err != nil {
		t.Fatal(err)
	}
	if b, err := ReadFile(path, 10); err != nil || string(b) != "0123456789" {
		t.Fatalf("at the limit: %q, %v", b, err)
	}
	if _, err := ReadFile(path, 9); err == nil || err.Error() != path+": larger than the 9-byte limit for this file" {
		t.Fatalf("over the limit: %v", err)
	}
	if _, err := ReadFile(filepath.Join(t.TempDir(), "missing"), 10); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("missing file: %v", err)
	}
}

func TestOpenSized(t *testing.T) {
	path := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(path, make([]byte, 37), 0o644); err != nil {
		t.Fatal(err)
	}
	f, size, err := OpenSized(path)
	if err != nil || size != 37 {
		t.Fatalf("size %d, %v", size, err)
	}
	f.Close()
}

// TestWriteAtomic: the file appears whole, readable by everyone, with no
// temporary file left beside it; a failed write leaves the old file alone.
func TestWriteAtomic(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "config.json")
	write := func(s string) func(io.Writer) error {
		return func(w io.Writer) error {
			_, err := io.WriteString(w, s)
			return err
		}
	}
	if err := WriteAtomic(path, write("one")); err != nil {
		t.Fatal(err)
	}
	if err := WriteAtomic(path, func(w io.Writer) error { return errors.New("disk on fire") }); err == nil ||
		!strings.Contains(err.Error(), "writing "+path+": disk on fire") {
		t.Fatalf("failed write: %v", err)
	}
	b, err := os.ReadFile(path)
	if err != nil || string(b) != "one" {
		t.Fatalf("after a failed write: %q, %v", b, err)
	}
	st, err := os.Stat(path)
	if err != nil || st.Mode().Perm() != 0o644 {
		t.Fatalf("mode %v, %v", st.Mode(), err)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Fatalf("%d files in the directory, want only %s", len(entries), path)
	}
}

type failWriter struct{ after int }

func (f *failWriter) Write(p []byte) (int, error) {
	if len(p) > f.after {
		return f.after, errors.New("short write")
	}
	f.after -= len(p)
	return len(p), nil
}

// TestCountWriter: bytes are counted up to the first error, which every later
// Write returns without writing.
func TestCountWriter(t *testing.T) {
	cw := &CountWriter{W: &failWriter{after: 5}}
	cw.Write([]byte("abc"))
	cw.Write([]byte("defg"))
	n, err := cw.Write([]byte("h"))
	if n != 0 || err == nil || cw.Err == nil || cw.N != 5 {
		t.Fatalf("n %d, err %v, N %d, Err %v", n, err, cw.N, cw.Err)
	}
}
