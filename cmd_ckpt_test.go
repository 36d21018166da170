package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"train/ckpt"
)

func writeTestCkpt(t *testing.T, run string, step int64) string {
	t.Helper()
	dir, err := ckpt.PrepareDir(run, step)
	if err != nil {
		t.Fatal(err)
	}
	for rank := 0; rank < 2; rank++ {
		w, err := ckpt.NewShardWriter(dir, rank, ckpt.Options{Compress: true, ChunkBytes: 1024})
		if err != nil {
			t.Fatal(err)
		}
		data := make([]float32, 1000)
		for i := range data {
			data[i] = float32(step) + float32(i)/1000
		}
		if err := w.AddF32("w", []int{2, 1000}, int64(rank*1000), data); err != nil {
			t.Fatal(err)
		}
		if _, err := w.Close(); err != nil {
			t.Fatal(err)
		}
	}
	final, err := ckpt.Commit(run, step, ckpt.Manifest{WorldSize: 2}, ckpt.Retention{})
	if err != nil {
		t.Fatal(err)
	}
	return final
}

func runCkptOut(args ...string) (string, error) {
	var out, errOut bytes.Buffer
	err := runCkpt(args, &out, &errOut)
	return out.String() + errOut.String(), err
}

func TestCkptVerifyAndLs(t *testing.T) {
	run := t.TempDir()
	s1 := writeTestCkpt(t, run, 1)
	s2 := writeTestCkpt(t, run, 2)
	s3 := writeTestCkpt(t, run, 3)
	os.MkdirAll(ckpt.TmpDir(run, 4), 0o755)

	out, err := runCkptOut("verify", s1)
	if err != nil || !strings.Contains(out, "OK: step 1") {
		t.Fatalf("verify good: %v\n%s", err, out)
	}
	if out, err := runCkptOut("verify", run); err != nil || !strings.Contains(out, "OK: step 3") {
		t.Fatalf("verify RUN (newest): %v\n%s", err, out)
	}

	// Corrupt step 2's data (sizes unchanged: only full verification sees it)
	// and take DONE from step 3.
	p := filepath.Join(s2, ckpt.ShardName(1))
	b, _ := os.ReadFile(p)
	b[len(b)-10] ^= 0xff
	os.WriteFile(p, b, 0o644)
	os.Remove(filepath.Join(s3, ckpt.DoneName))

	out, err = runCkptOut("verify", s2)
	if err == nil || !strings.Contains(out, "NOT OK") || !strings.Contains(out, ckpt.ShardName(1)) {
		t.Errorf("verify corrupt: %v\n%s", err, out)
	}
	out, err = runCkptOut("verify", s3)
	if err == nil || !strings.Contains(out, "no DONE") {
		t.Errorf("verify incomplete: %v\n%s", err, out)
	}

	out, err = runCkptOut("ls", run)
	if err != nil {
		t.Fatal(err)
	}
	t.Log("\n" + out)
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 5 {
		t.Fatalf("ls: want a header and 4 rows:\n%s", out)
	}
	for i, want := range []string{"complete", "complete", "incomplete", "tmp"} {
		if !strings.Contains(lines[i+1], want) {
			t.Errorf("ls row %d lacks %q: %s", i+1, want, lines[i+1])
		}
	}
	// Step 2 passes the cheap check, so it is the newest complete one.
	if !strings.Contains(lines[2], "*") || strings.Contains(lines[1], "*") {
		t.Errorf("ls marks the wrong latest:\n%s", out)
	}

	if _, err := runCkptOut("verify"); err == nil {
		t.Error("verify without DIR accepted")
	}
	if _, err := runCkptOut("frob"); err == nil {
		t.Error("unknown ckpt command accepted")
	}
}

// TestSubcommandHelp: `train ckpt -h`, `train selftest -h` and `train bench
// -h` list their commands on stdout and exit 0, as `train -h` does; a
// missing or unknown command is still a one-line usage error (exit 2).
func TestSubcommandHelp(t *testing.T) {
	for _, c := range []struct {
		cmd  string
		subs []string
	}{
		{"ckpt", []string{"ls", "verify"}},
		{"selftest", []string{"collective", "gpu"}},
		{"bench", []string{"collective", "pipeline", "ckpt", "model"}},
	} {
		for _, h := range []string{"-h", "-help", "--help", "help"} {
			var out, errb bytes.Buffer
			if code := mainExit([]string{c.cmd, h}, &out, &errb); code != 0 || errb.Len() > 0 {
				t.Errorf("train %s %s: exit %d, stderr %q; want 0 and nothing", c.cmd, h, code, &errb)
			}
			for _, sub := range c.subs {
				if want := "\n  train " + c.cmd + " " + sub + " "; !strings.Contains(out.String(), want) {
					t.Errorf("train %s %s does not list %q:\n%s", c.cmd, h, sub, &out)
				}
			}
			if want := "Run \"train " + c.cmd + " <"; !strings.Contains(out.String(), want) {
				t.Errorf("train %s %s does not say how to get a command's flags:\n%s", c.cmd, h, &out)
			}
		}
		var out, errb bytes.Buffer
		if code := mainExit([]string{c.cmd}, &out, &errb); code != 2 || strings.Count(errb.String(), "\n") != 1 {
			t.Errorf("train %s: exit %d, stderr %q; want 2 and one line", c.cmd, code, &errb)
		}
	}
}
