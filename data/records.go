package data

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/parquet-go/parquet-go"
)

// A dataset is one file, a directory or a glob of files, each JSON Lines or
// Apache Parquet (the storage format of Hugging Face datasets), read in name
// order as one sequence of records. A record is one JSON object: a JSONL line,
// or a Parquet row with its columns as keys (lists of structs, such as a
// messages column, become lists of objects; null columns are left out, as if
// absent; columns no format reads, such as ids and sources, which datasets
// carry, are dropped). Every record is then formatted by its keys alike.

// DataFiles resolves a data path to its files, sorted: the path itself, every
// .jsonl, .json and .parquet file directly in a directory, or the matches of a
// glob. A directory or glob without data files is an error naming it.
func DataFiles(path string) ([]string, error) {
	if strings.ContainsAny(path, "*?[") {
		m, err := filepath.Glob(path)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		if len(m) == 0 {
			return nil, fmt.Errorf("%s: no file matches", path)
		}
		slices.Sort(m)
		return m, nil
	}
	st, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	if !st.IsDir() {
		return []string{path}, nil
	}
	entries, err := os.ReadDir(path)
	if err != nil {
		return nil, err
	}
	var files []string
	for _, e := range entries {
		switch strings.ToLower(filepath.Ext(e.Name())) {
		case ".jsonl", ".json", ".parquet":
			if !e.IsDir() {
				files = append(files, filepath.Join(path, e.Name()))
			}
		}
	}
	if len(files) == 0 {
		return nil, fmt.Errorf("%s: a directory without .jsonl or .parquet files", path)
	}
	return files, nil // ReadDir sorts by name
}

// records yields a file's records one at a time.
type records interface {
	// next returns the next record and where it is (file:line, file:row N),
	// or io.EOF after the last.
	next() (rec []byte, where string, err error)
	Close() error
}

// openRecords opens a data file as JSON Lines or, by its .parquet name or its
// PAR1 magic, as Parquet, whose rows keep only the columns keep names.
func openRecords(path string, keep map[string]bool) (records, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	var magic [4]byte
	n, _ := f.ReadAt(magic[:], 0)
	if strings.EqualFold(filepath.Ext(path), ".parquet") || (n == 4 && string(magic[:]) == "PAR1") {
		r, err := openParquet(f, path, keep)
		if err != nil {
			f.Close()
			return nil, err
		}
		return r, nil
	}
	return &jsonlRecords{f: f, br: bufio.NewReaderSize(f, 1<<16), path: path}, nil
}

type jsonlRecords struct {
	f    io.Closer // nil over a reader
	br   *bufio.Reader
	path string
	line int
	done bool
}

func (r *jsonlRecords) next() ([]byte, string, error) {
	for !r.done {
		r.line++
		line, err := readLine(r.br)
		where := fmt.Sprintf("%s:%d", r.path, r.line)
		if err != nil && err != io.EOF {
			return nil, where, err
		}
		r.done = err == io.EOF
		if t := bytes.TrimSpace(line); len(t) > 0 {
			return t, where, nil
		}
	}
	return nil, "", io.EOF
}

func (r *jsonlRecords) Close() error {
	if r.f == nil {
		return nil
	}
	return r.f.Close()
}

// parquetRecords reads a Parquet file's rows through parquet-go, a row group
// at a time, so memory holds a batch of rows, not the file.
type parquetRecords struct {
	f     *os.File
	r     *parquet.GenericReader[any]
	path  string
	keep  map[string]bool // the columns kept
	batch []any
	n, i  int
	row   int
	eof   bool
}

func openParquet(f *os.File, path string, keep map[string]bool) (r *parquetRecords, err error) {
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	pf, err := parquet.OpenFile(f, st.Size())
	if err != nil {
		return nil, fmt.Errorf("%s: not a readable Parquet file: %w", path, err)
	}
	// parquet-go panics on schemas it cannot map; a user's file must not
	// crash the run.
	defer func() {
		if p := recover(); p != nil {
			r, err = nil, fmt.Errorf("%s: Parquet schema not supported: %v", path, p)
		}
	}()
	return &parquetRecords{f: f, r: parquet.NewGenericReader[any](pf), path: path, keep: keep, batch: make([]any, 64)}, nil
}

func (r *parquetRecords) next() (rec []byte, where string, err error) {
	if r.i == r.n {
		if r.eof {
			return nil, "", io.EOF
		}
		if r.n, err = r.readBatch(); err != nil && !errors.Is(err, io.EOF) {
			return nil, fmt.Sprintf("%s:row %d", r.path, r.row+1), err
		}
		r.eof, r.i = err != nil, 0
		if r.n == 0 {
			return nil, "", io.EOF
		}
	}
	v := r.batch[r.i]
	r.batch[r.i] = nil
	r.i++
	r.row++
	where = fmt.Sprintf("%s:row %d", r.path, r.row)
	if m, ok := v.(map[string]any); ok {
		for k := range m {
			if !r.keep[k] {
				delete(m, k)
			}
		}
	}
	rec, err = json.Marshal(dropNulls(v))
	if err != nil {
		return nil, where, fmt.Errorf("row not representable as JSON: %w", err)
	}
	return rec, where, nil
}

func (r *parquetRecords) readBatch() (n int, err error) {
	defer func() {
		if p := recover(); p != nil {
			n, err = 0, fmt.Errorf("reading the rows: %v", p)
		}
	}()
	return r.r.Read(r.batch)
}

func (r *parquetRecords) Close() error {
	return errors.Join(r.r.Close(), r.f.Close())
}

// dropNulls removes null values from a row's objects, so that a null column
// reads as an absent key (optional fields are left out, not set to null).
func dropNulls(v any) any {
	switch x := v.(type) {
	case map[string]any:
		for k, e := range x {
			if e == nil {
				delete(x, k)
				continue
			}
			x[k] = dropNulls(e)
		}
	case []any:
		for i, e := range x {
			x[i] = dropNulls(e)
		}
	}
	return v
}

// eachRecord calls fn with every record of the dataset at path (DataFiles),
// in order, stopping at the first error fn or a file returns. A file that
// cannot be opened is named.
func eachRecord(path string, keep map[string]bool, fn func(rec []byte, where string) error) error {
	files, err := DataFiles(path)
	if err != nil {
		return err
	}
	for _, file := range files {
		if err := fileRecords(file, keep, fn); err != nil {
			return err
		}
	}
	return nil
}

func fileRecords(file string, keep map[string]bool, fn func(rec []byte, where string) error) error {
	r, err := openRecords(file, keep)
	if err != nil {
		return err
	}
	defer r.Close()
	return drain(r, fn)
}

// drain calls fn with each of r's records.
func drain(r records, fn func(rec []byte, where string) error) error {
	for {
		rec, where, err := r.next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("%s: %w", where, err)
		}
		if err := fn(rec, where); err != nil {
			return err
		}
	}
}
