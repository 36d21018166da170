package data

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/parquet-go/parquet-go"
)

// writeParquet writes rows as a Parquet file with parquet-go, as a Hugging
// Face dataset would be stored.
func writeParquet[T any](t *testing.T, path string, rows []T) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	w := parquet.NewGenericWriter[T](f)
	if _, err := w.Write(rows); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}

type pqText struct {
	Text string `parquet:"text"`
}

type pqAlpaca struct {
	Instruction string  `parquet:"instruction"`
	Input       *string `parquet:"input,optional"`
	Output      string  `parquet:"output"`
}

type pqMessage struct {
	Role    string `parquet:"role"`
	Content string `parquet:"content"`
}

type pqChat struct {
	Messages []pqMessage `parquet:"messages,list"`
}

// pqChatNullable is the chat shape as pyarrow writes it: everything optional,
// and an id column no format reads.
type pqChatNullable struct {
	ID       int64           `parquet:"id"`
	Messages []pqMessageNull `parquet:"messages,list,optional"`
}

type pqMessageNull struct {
	Role    *string `parquet:"role,optional"`
	Content *string `parquet:"content,optional"`
}

type pqQA struct {
	Question string `parquet:"question"`
	Answer   string `parquet:"answer"`
}

// readAll formats every record of path with f.
func readAll(t *testing.T, path string, f *Formatter) []TokenExample {
	t.Helper()
	ex, _, err := ReadExamples(context.Background(), path, f, false)
	if err != nil {
		t.Fatal(err)
	}
	return ex
}

// TestParquetEqualsJSONL: a Parquet file (plain, optional and list-of-struct
// columns) gives exactly the examples of the same records as JSON Lines; a
// null optional column reads as an absent key, a column no format reads is
// dropped; data.columns renames columns.
func TestParquetEqualsJSONL(t *testing.T) {
	dir := t.TempDir()
	f := &Formatter{Tok: byteTok{}, Vocab: 400}
	in := "2 2"
	cases := []struct {
		name  string
		write func(path string)
		jsonl string
		f     *Formatter
	}{
		{"text", func(p string) { writeParquet(t, p, []pqText{{"hello"}, {"world"}}) },
			`{"text": "hello"}` + "\n" + `{"text": "world"}`, f},
		{"alpaca", func(p string) {
			writeParquet(t, p, []pqAlpaca{{"add", &in, "4"}, {"say hi", nil, "hi"}})
		}, `{"instruction": "add", "input": "2 2", "output": "4"}` + "\n" + `{"instruction": "say hi", "output": "hi"}`, f},
		{"chat", func(p string) {
			writeParquet(t, p, []pqChat{{[]pqMessage{{"user", "hi"}, {"assistant", "yo"}}}})
		}, `{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}`, f},
		{"nullable", func(p string) {
			u, a, hi, yo := "user", "assistant", "hi", "yo"
			writeParquet(t, p, []pqChatNullable{{7, []pqMessageNull{{&u, &hi}, {&a, &yo}}}})
		}, `{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}`, f},
		{"columns", func(p string) { writeParquet(t, p, []pqQA{{"2+2=", "4"}}) },
			`{"prompt": "2+2=", "completion": "4"}`,
			&Formatter{Tok: byteTok{}, Vocab: 400, Columns: map[string]string{"prompt": "question", "completion": "answer"}}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			pq := filepath.Join(dir, c.name+".parquet")
			jl := filepath.Join(dir, c.name+".jsonl")
			c.write(pq)
			if err := os.WriteFile(jl, []byte(c.jsonl+"\n"), 0o644); err != nil {
				t.Fatal(err)
			}
			got := readAll(t, pq, c.f)
			want := readAll(t, jl, f)
			if len(got) != len(want) {
				t.Fatalf("%d examples from Parquet, %d from JSONL", len(got), len(want))
			}
			for i := range want {
				if !slices.Equal(got[i].InputIDs, want[i].InputIDs) || !slices.Equal(got[i].Labels, want[i].Labels) {
					t.Errorf("example %d differs between Parquet and JSONL", i)
				}
			}
			if err := CheckFirstLine(pq, c.f); err != nil {
				t.Errorf("check: %v", err)
			}
		})
	}
}

// TestDatasetFiles: a directory or a glob is one dataset, its files in name
// order, JSONL and Parquet mixed; errors name the file and the row.
func TestDatasetFiles(t *testing.T) {
	dir := t.TempDir()
	f := &Formatter{Tok: byteTok{}, Vocab: 400}
	writeParquet(t, filepath.Join(dir, "b.parquet"), []pqText{{"two"}, {"three"}})
	if err := os.WriteFile(filepath.Join(dir, "a.jsonl"), []byte(`{"text": "one"}`+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "notes.txt"), []byte("not data"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, path := range []string{dir, filepath.Join(dir, "*.*l"), filepath.Join(dir, "[ab].*")} {
		ex := readAll(t, path, f)
		var texts []string
		for _, e := range ex {
			texts = append(texts, scoredText(e))
		}
		want := []string{"#one#", "#two#", "#three#"}
		if path == filepath.Join(dir, "*.*l") {
			want = want[:1] // *.*l matches a.jsonl only
		}
		if !slices.Equal(texts, want) {
			t.Errorf("%s: %q, want %q", path, texts, want)
		}
	}
	for _, c := range []struct {
		path, want string
	}{
		{filepath.Join(dir, "*.csv"), "no file matches"},
		{t.TempDir(), "without .jsonl or .parquet files"},
		{filepath.Join(dir, "missing.jsonl"), "no such file"},
	} {
		if _, _, err := ReadExamples(context.Background(), c.path, f, false); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want %q", c.path, err, c.want)
		}
	}
	bad := filepath.Join(dir, "bad.parquet")
	writeParquet(t, bad, []pqQA{{"q", "a"}})
	if _, _, err := ReadExamples(context.Background(), bad, f, false); err == nil || !strings.Contains(err.Error(), "bad.parquet:row 1: no known format") {
		t.Errorf("a row of no known format: %v", err)
	}
	fake := filepath.Join(dir, "fake.parquet")
	if err := os.WriteFile(fake, []byte(`{"text": "x"}`), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := CheckFirstLine(fake, f); err == nil || !strings.Contains(err.Error(), "not a readable Parquet file") {
		t.Errorf("JSON named .parquet: %v", err)
	}
}

// TestParseColumns: data.columns names keys the formats read, each once.
func TestParseColumns(t *testing.T) {
	m, err := ParseColumns(" instruction = question , output=answer")
	if err != nil || m["instruction"] != "question" || m["output"] != "answer" || len(m) != 2 {
		t.Errorf("parse: %v %v", m, err)
	}
	for _, c := range []struct{ in, want string }{
		{"instruction", "want ours=theirs"},
		{"instruction=", "want ours=theirs"},
		{"question=instruction", "not a key the formats read"},
		{"text=a,text=b", "renamed twice"},
	} {
		if _, err := ParseColumns(c.in); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%q: %v, want %q", c.in, err, c.want)
		}
	}
}
