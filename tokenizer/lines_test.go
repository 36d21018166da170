package tokenizer

import (
	"bytes"
	"strings"
	"testing"
)

// TestEncodeJSONLines: JSON-string lines in, the ids of transformers
// (../data/testdata/tokenizer/stories260k.jsonl) out as JSON arrays, one line
// per line.
func TestEncodeJSONLines(t *testing.T) {
	tok := loadShared(t, stories260K)
	var out bytes.Buffer
	in := `"Hello world"` + "\n" + `"a"` + "\n" + `""` + "\n"
	if err := tok.EncodeJSONLines(&out, strings.NewReader(in), "stdin", false); err != nil {
		t.Fatal(err)
	}
	if want := "[346,306,414,263,304,341]\n[261]\n[]\n"; out.String() != want {
		t.Errorf("output %q, want %q", out.String(), want)
	}
	out.Reset()
	if err := tok.EncodeJSONLines(&out, strings.NewReader(`"a"`), "stdin", true); err != nil {
		t.Fatal(err)
	}
	if want := "[1,261]\n"; out.String() != want {
		t.Errorf("with BOS: output %q, want %q", out.String(), want)
	}
}

// TestEncodeJSONLinesBadLine: a line that is not a JSON string is an error
// naming the input and the line, after the lines before it are written whole.
func TestEncodeJSONLinesBadLine(t *testing.T) {
	tok := loadShared(t, stories260K)
	for _, bad := range []string{`{"text": "a"}`, `null`, `42`, ``, `"unterminated`} {
		var out bytes.Buffer
		in := `"ok"` + "\n" + bad + "\n"
		err := tok.EncodeJSONLines(&out, strings.NewReader(in), "stdin", false)
		if err == nil || !strings.Contains(err.Error(), "stdin:2: not a JSON string") {
			t.Errorf("line %q: error %v, want one naming stdin:2", bad, err)
		}
		if !strings.HasPrefix(out.String(), "[") || strings.Count(out.String(), "\n") != 1 {
			t.Errorf("line %q: output before the error %q", bad, out.String())
		}
	}
	var out bytes.Buffer
	err := tok.EncodeJSONLines(&out, strings.NewReader(`{"text": "a line long enough to be cut in the message"}`), "in.txt", false)
	if want := `in.txt:1: not a JSON string: "{\"text\": \"a line long enough to be cut i"...`; err == nil || err.Error() != want {
		t.Errorf("long bad line: error %v, want %s", err, want)
	}
}
