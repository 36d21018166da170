package ckpt

import (
	"errors"
	"math/rand/v2"
	"os"
	"os/exec"
	"testing"
	"time"
)

const crashChildEnv = "CKPT_CRASH_CHILD_RUN"

// crashChild writes checkpoints in a loop (from the newest complete one on),
// as a trainer would, until it is killed. It is the child of TestCrashSafety.
func crashChild(run string) {
	step := int64(1)
	if in, err := Latest(run); err == nil {
		step = in.Step + 1
	}
	deadline := time.Now().Add(30 * time.Second) // never outlive a dead parent for long
	for ; time.Now().Before(deadline); step++ {
		opts := Options{Compress: step%2 == 0, ChunkBytes: 4096, Workers: 2}
		if _, err := writeStep(run, step, 3, opts, Retention{KeepLast: 2, KeepEvery: 4}); err != nil {
			os.Stderr.WriteString("crash child: " + err.Error() + "\n")
			os.Exit(3)
		}
	}
	os.Exit(0)
}

// TestCrashSafety SIGKILLs a process writing checkpoints at chosen moments
// and checks after each kill that the newest complete checkpoint verifies and
// holds its step's data, and that List tells complete from incomplete.
//
// The kills follow the child's progress, never the clock, so that a loaded
// machine or a -race build changes how long the test takes, not what it
// checks: even kills wait until the child has begun writing a step after the
// newest complete one and kill it at once (mid-write); odd kills wait until
// that step is committed (so the checkpoints advance). Kills go on past the
// planned count, up to four times it, until at least one landed mid-write.
func TestCrashSafety(t *testing.T) {
	if run := os.Getenv(crashChildEnv); run != "" {
		crashChild(run)
		return
	}
	kills := 50
	if testing.Short() {
		kills = 20
	}
	run := t.TempDir()
	rng := rand.New(rand.NewPCG(1, 2))
	var last int64
	advanced, torn, commitWaits, k := 0, 0, 0, 0
	for ; (k < kills || torn == 0) && k < 4*kills; k++ {
		cmd := exec.Command(os.Args[0], "-test.run=^TestCrashSafety$")
		cmd.Env = append(os.Environ(), crashChildEnv+"="+run)
		cmd.Stderr = os.Stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		if k%2 == 0 {
			waitForWrite(run, last, 20*time.Second)
			time.Sleep(time.Duration(rng.IntN(3000)) * time.Microsecond)
		} else {
			commitWaits++
			if !waitForCommit(run, last, 20*time.Second) {
				cmd.Process.Kill()
				cmd.Wait()
				t.Fatalf("kill %d: the child committed no checkpoint after step %d within 20s", k, last)
			}
			time.Sleep(time.Duration(rng.IntN(20)) * time.Millisecond)
		}
		cmd.Process.Kill()
		err := cmd.Wait()
		var ee *exec.ExitError
		if errors.As(err, &ee) && ee.ExitCode() == 3 {
			t.Fatalf("kill %d: child failed on its own", k)
		}

		in, err := Latest(run)
		if errors.Is(err, ErrNoCheckpoint) {
			continue // killed before the first commit
		}
		if err != nil {
			t.Fatalf("kill %d: Latest: %v", k, err)
		}
		if in.Step < last {
			t.Fatalf("kill %d: Latest went back from step %d to %d", k, last, in.Step)
		}
		if in.Step > last {
			advanced++
		}
		last = in.Step
		if rep, err := Verify(in.Dir); err != nil {
			t.Fatalf("kill %d: latest step %d does not verify: %v (%v)", k, in.Step, err, rep.Problems)
		}
		if err := checkStep(in.Dir, in.Step, 3); err != nil {
			t.Fatalf("kill %d: step %d: %v", k, in.Step, err)
		}
		infos, err := List(run)
		if err != nil {
			t.Fatal(err)
		}
		for _, i := range infos {
			switch i.Status {
			case Complete:
				if _, err := Verify(i.Dir); err != nil {
					t.Fatalf("kill %d: %s listed complete but: %v", k, i.Dir, err)
				}
			case Corrupt:
				t.Fatalf("kill %d: %s corrupt after a crash: %s", k, i.Dir, i.Reason)
			default:
				torn++
				if r, err := Open(i.Dir); err == nil {
					r.Close()
					t.Fatalf("kill %d: %s is %s but opens", k, i.Dir, i.Status)
				}
			}
		}
	}
	t.Logf("%d kills, latest step %d, advanced after %d kills, %d unfinished checkpoints seen", k, last, advanced, torn)
	if torn == 0 {
		t.Errorf("none of %d kills left an unfinished checkpoint behind: the kills do not land mid-write", k)
	}
	if advanced < commitWaits {
		t.Errorf("checkpoints advanced after %d kills, fewer than the %d that waited for a commit", advanced, commitWaits)
	}
}

// waitForCommit waits until a checkpoint of a step after last is complete in
// run, and says whether one is.
func waitForCommit(run string, last int64, timeout time.Duration) bool {
	for end := time.Now().Add(timeout); time.Now().Before(end); time.Sleep(time.Millisecond) {
		if in, err := Latest(run); err == nil && in.Step > last {
			return true
		}
	}
	return false
}

// waitForWrite waits until a checkpoint of a step after last is being written in
// run (its step-N.tmp or step-N directory exists), or timeout passes.
func waitForWrite(run string, last int64, timeout time.Duration) {
	for end := time.Now().Add(timeout); time.Now().Before(end); time.Sleep(time.Millisecond) {
		des, _ := os.ReadDir(Dir(run))
		for _, de := range des {
			step, ok := parseStepName(de.Name(), ".tmp")
			if !ok {
				step, ok = parseStepName(de.Name(), "")
			}
			if ok && step > last {
				return
			}
		}
	}
}
