package main

import (
	"bytes"
	"strings"
	"testing"
)

func runPlanOut(t *testing.T, args ...string) (string, error) {
	t.Helper()
	var out, errOut bytes.Buffer
	err := runPlan(args, &out, &errOut)
	return out.String() + errOut.String(), err
}

func TestPlan70BOnEightGPUs(t *testing.T) {
	out, err := runPlanOut(t, "-model", "random:llama-3.1-70b", "-np", "8", "-pp", "4", "-activation-checkpointing")
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	for _, want := range []string{
		"8 ranks = 4 pipeline stages x 2 data-parallel replicas",
		"lora  fits",
		"qlora fits",
		"full  does not fit",
		"would fit with",
		"lora breakdown per rank",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	t.Log("\n" + out)
}

func TestPlanMethodDoesNotFit(t *testing.T) {
	out, err := runPlanOut(t, "-model", "random:llama-3.1-8b", "-np", "1", "-method", "full")
	if err == nil || !strings.Contains(err.Error(), "full does not fit") {
		t.Errorf("8B full on one 80 GiB GPU: err %v\n%s", err, out)
	}
	if !strings.Contains(out, "lora  fits") || !strings.Contains(out, "full  does not fit") {
		t.Errorf("output:\n%s", out)
	}
	t.Log("\n" + out)
}

func TestPlanErrors(t *testing.T) {
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"-np", "2"}, "-model is required"},
		{[]string{"-model", "random:tiny", "-np", "6", "-pp", "4"}, "not a multiple"},
		{[]string{"-model", "random:tiny", "-np", "8", "-pp", "8"}, "4 layers"},
		{[]string{"-model", "random:tiny", "-gpu-mem", "80G"}, "-gpu-mem"},
		{[]string{"-model", "random:tiny", "-method", "adapter"}, "valid: lora, qlora, full"},
		{[]string{"-model", "random:nope"}, "unknown random model"},
	} {
		out, err := runPlanOut(t, c.args...)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("plan %v: err %v, want %q\n%s", c.args, err, c.want, out)
		}
	}
}

func TestPlanParseByteSize(t *testing.T) {
	for in, want := range map[string]int64{
		"80GiB": 80 << 30, "80GB": 80e9, "141GiB": 141 << 30, "141gib": 141 << 30,
		"1.5TiB": 3 << 39, "512MiB": 512 << 20, "1024": 1024, "2 GiB": 2 << 30,
	} {
		if got, err := parseByteSize(in); err != nil || got != want {
			t.Errorf("parseByteSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "80G", "-1GiB", "GiB", "eightyGB", "1e400GB"} {
		if _, err := parseByteSize(in); err == nil {
			t.Errorf("parseByteSize(%q): no error", in)
		}
	}
}
