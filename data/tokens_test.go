package data

import (
	"strings"
	"testing"
)

func TestReadTokens(t *testing.T) {
	src := `{"input_ids": [1, 2, 3]}

{"input_ids": [4, 5], "labels": [-100, 5]}
`
	got, err := ReadTokens(strings.NewReader(src), "t.jsonl", 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || len(got[0].Labels) != 3 || got[0].Labels[2] != 3 || got[1].Labels[0] != -100 {
		t.Fatalf("got %+v", got)
	}
}

func TestReadTokensErrors(t *testing.T) {
	cases := []struct{ src, want string }{
		{"", "no examples"},
		{"\n\n", "no examples"},
		{"{\"input_ids\": [1]}\nnot json\n", "t.jsonl:2: not a"},
		{"{\"labels\": [1]}", "t.jsonl:1: missing \"input_ids\""},
		{"{\"input_ids\": []}", "is empty"},
		{"{\"input_ids\": [1, 10]}", "input_ids[1] = 10 is outside the vocabulary [0, 10)"},
		{"{\"input_ids\": [-1]}", "input_ids[0] = -1"},
		{"{\"input_ids\": [1, 2], \"labels\": [1]}", "must align"},
		{"{\"input_ids\": [1, 2], \"labels\": [1, -5]}", "labels[1] = -5"},
		{"{\"input_ids\": [1], \"extra\": 2}", "unknown field"},
		{"{\"input_ids\": [1.5]}", "not a"},
		{"{\"input_ids\": [1]} {\"input_ids\": [2]}", "not a JSON object"},
	}
	for _, tc := range cases {
		_, err := ReadTokens(strings.NewReader(tc.src), "t.jsonl", 10)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: error %v, want one containing %q", tc.src, err, tc.want)
		}
	}
}
