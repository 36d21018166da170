package main

import (
	"bytes"
	"strings"
	"testing"

	"train/kernels"
)

// TestSelftestGPUNoGPU: one process without a GPU fails at once, saying why
// and what to do instead, and exits 1.
func TestSelftestGPUNoGPU(t *testing.T) {
	if be, err := kernels.New(); err == nil { // there the check would run for real
		be.Close()
		t.Skip("a GPU is here: the no-GPU behaviour cannot be seen")
	}
	var out, errb bytes.Buffer
	code := mainExit([]string{"selftest", "gpu", "-rank", "0", "-world-size", "1", "-run", t.TempDir()}, &out, &errb)
	if code != 1 {
		t.Fatalf("exit %d, want 1\nstdout: %s\nstderr: %s", code, &out, &errb)
	}
	if !strings.Contains(out.String(), "rank 0/1") || !strings.Contains(out.String(), "FAIL: device cuda: no usable NVIDIA GPU: ") {
		t.Errorf("stdout does not report the rank's failure:\n%s", &out)
	}
	for _, want := range []string{"no usable NVIDIA GPU", "run it on a GPU node", "train selftest collective"} {
		if !strings.Contains(errb.String(), want) {
			t.Errorf("stderr lacks %q:\n%s", want, &errb)
		}
	}
}

func TestSelftestGPUFlags(t *testing.T) {
	for _, c := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"-h"}, 0, "pre-flight check"},
		{[]string{"-h"}, 0, "-min-free"},
		{[]string{"-min-free", "10G"}, 2, "-min-free: size \"10G\""},
		{[]string{"-min-free", "-5GiB"}, 2, "-min-free"},
		{[]string{"-timeout", "0s"}, 2, "-timeout must be positive"},
		{[]string{"extra"}, 2, "unexpected argument"},
		{[]string{"-rank", "1"}, 2, "-rank and -world-size go together"},
	} {
		var out, errb bytes.Buffer
		code := mainExit(append([]string{"selftest", "gpu"}, c.args...), &out, &errb)
		if code != c.code || !strings.Contains(errb.String(), c.want) {
			t.Errorf("%v: exit %d, want %d; stderr lacks %q:\n%s", c.args, code, c.code, c.want, &errb)
		}
	}
}

// TestSelftestUsage: a missing or unknown selftest and bad flags of selftest
// collective are usage errors (exit status 2); alone, selftest collective
// passes.
func TestSelftestUsage(t *testing.T) {
	for _, c := range []struct {
		args   []string
		code   int
		want   string
		stdout bool // want is on stdout, not stderr
	}{
		{[]string{}, 2, "train selftest: which selftest? (train selftest collective | gpu)", false},
		{[]string{"-h"}, 0, "  train selftest collective   every collective", true},
		{[]string{"help"}, 0, "  train selftest gpu          every rank's GPU", true},
		{[]string{"nope"}, 2, `train selftest: unknown selftest "nope" (there are: collective, gpu)`, false},
		{[]string{"collective", "-h"}, 0, "compare with\na serial computation", false},
		{[]string{"collective", "-rank", "1"}, 2, "-rank and -world-size go together", false},
		{[]string{"collective", "-rank", "3", "-world-size", "2"}, 2, "-rank 3 is not below -world-size 2", false},
		{[]string{"collective", "extra"}, 2, `unexpected argument "extra"`, false},
		{[]string{"collective", "-short", "-rank", "0", "-world-size", "1"}, 0, "selftest collective: rank 0/1 (host ", true},
	} {
		var out, errb bytes.Buffer
		code := mainExit(append([]string{"selftest"}, c.args...), &out, &errb)
		got := errb.String()
		if c.stdout {
			got = out.String()
		}
		if code != c.code || !strings.Contains(got, c.want) {
			t.Errorf("selftest %v: exit %d, want %d; output lacks %q:\nstdout: %s\nstderr: %s", c.args, code, c.code, c.want, &out, &errb)
		}
	}
}
