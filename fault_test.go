package main

// The fault campaign: real training runs (random:tiny, 4 ranks or one) attacked
// the way a cluster attacks them — a rank SIGKILLed at a random moment, a
// process killed while it writes checkpoints, a rank stopped, a link cut, a
// disk filled — checking that nothing hangs, no rank succeeds by mistake, no
// torn checkpoint ever loads and no trained step is lost. Each test logs a
// RELIABILITY line that scripts/reliability.sh turns into the README's table.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"train/ckpt"
)

const (
	faultSteps   = 24
	faultTimeout = 5 * time.Second // -timeout: how long a rank waits on another
	// exitSlack is what a rank may take beyond the timeout to report and exit
	// (process teardown on a loaded 2-core CI machine).
	exitSlack = 3 * time.Second
)

// faultArgs is the 4-rank training run every rank-fault trial attacks: small
// steps (a step is a few tens of milliseconds), a checkpoint every 2 steps.
func faultArgs(run string, extra ...string) []string {
	return append([]string{"-steps", fmt.Sprint(faultSteps), "-batch", "1", "-seq", "32", "-ckpt-every", "2",
		"-timeout", fmt.Sprint(int(faultTimeout / time.Second)), "-log-every", "1", "-run", run}, extra...)
}

// runRanksOK runs np ranks by hand to the end and fails the test unless all exit 0.
func runRanksOK(t *testing.T, np int, args []string, env ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	procs := startRanks(t, ctx, np, args, env...)
	if !waitAll(procs, time.Now().Add(2*time.Minute)) {
		t.Fatalf("train %s did not finish in 2 minutes", strings.Join(args, " "))
	}
	for r, p := range procs {
		if p.exitCode() != 0 {
			t.Fatalf("rank %d of train %s: %v\n%s", r, strings.Join(args, " "), p.err, p.output())
		}
	}
}

// TestFaultRankDeath SIGKILLs a random rank at a random step of a 4-rank run,
// with the explicit RANK/WORLD_SIZE/MASTER_ADDR bootstrap (nobody cleans up:
// the survivors must notice by themselves) and under mpirun. Every trial
// checks: every surviving rank exits non-zero within the timeout with an error
// naming the killed rank; the newest complete checkpoint passes ckpt.Verify;
// resuming from it on the same layout gives bitwise the losses of a run that
// never failed for every step after the checkpoint.
func TestFaultRankDeath(t *testing.T) {
	dir := t.TempDir()
	ref := filepath.Join(dir, "ref")
	runRanksOK(t, 4, faultArgs(ref))
	want := lastLosses(ref)
	if len(want) != faultSteps {
		t.Fatalf("the reference run logged %d steps, want %d", len(want), faultSteps)
	}
	explicit, mpi := 12, 8
	if testing.Short() {
		explicit, mpi = 4, 2
	}
	mpirun, _ := exec.LookPath("mpirun")
	if mpirun == "" {
		explicit += mpi // keep the trial count: all by hand
		mpi = 0
		t.Log("no mpirun on PATH: every rank-death trial uses the explicit bootstrap")
	}
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 9))
	score := faultScore{class: "rank death (SIGKILL, 4 ranks)"}
	var worst time.Duration
	for i := 0; i < explicit+mpi; i++ {
		mode := "explicit"
		if i >= explicit {
			mode = "mpirun"
		}
		victim, atStep := rng.IntN(4), 3+rng.IntN(faultSteps-6)
		jitter := time.Duration(rng.IntN(60)) * time.Millisecond
		name := fmt.Sprintf("%s-%02d-rank%d-step%d", mode, i, victim, atStep)
		score.trials++
		ok := t.Run(name, func(t *testing.T) {
			took, lost := rankDeathTrial(t, filepath.Join(dir, name), mode, mpirun, victim, atStep, jitter, want, nil)
			worst = max(worst, took)
			score.lost += lost
		})
		if ok {
			score.survived++
		}
	}
	score.note = fmt.Sprintf("%d explicit + %d mpirun; slowest survivor exit %.2fs after the kill (timeout %v)",
		explicit, mpi, worst.Seconds(), faultTimeout)
	score.log(t)
}

// TestFaultRankDeathPipeline is TestFaultRankDeath on two pipeline stages of
// two replicas: the stages' sends do not wait for their neighbour, so a rank
// that dies with activations in flight must still make every survivor exit
// naming it, and the checkpoint must resume bitwise.
func TestFaultRankDeathPipeline(t *testing.T) {
	dir := t.TempDir()
	pp := []string{"-pp", "2", "-grad-accum", "2"}
	ref := filepath.Join(dir, "ref")
	runRanksOK(t, 4, faultArgs(ref, pp...))
	want := lastLosses(ref)
	if len(want) != faultSteps {
		t.Fatalf("the reference run logged %d steps, want %d", len(want), faultSteps)
	}
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 10))
	score := faultScore{class: "rank death (SIGKILL) in a pipeline, P=2 x D=2"}
	var worst time.Duration
	for i := 0; i < 3; i++ {
		victim, atStep := rng.IntN(4), 3+rng.IntN(faultSteps-6)
		name := fmt.Sprintf("explicit-%02d-rank%d-step%d", i, victim, atStep)
		score.trials++
		ok := t.Run(name, func(t *testing.T) {
			took, lost := rankDeathTrial(t, filepath.Join(dir, name), "explicit", "", victim, atStep, 0, want, pp)
			worst = max(worst, took)
			score.lost += lost
		})
		if ok {
			score.survived++
		}
	}
	score.note = fmt.Sprintf("stage sends in flight; slowest survivor exit %.2fs after the kill (timeout %v); resumed losses bitwise",
		worst.Seconds(), faultTimeout)
	score.log(t)
}

// rankDeathTrial is one trial of TestFaultRankDeath. It returns how long the
// last survivor took to exit after the kill, and the steps lost (steps after
// the checkpoint whose resumed loss differs from the reference).
func rankDeathTrial(t *testing.T, run, mode, mpirun string, victim, atStep int, jitter time.Duration, want map[int]float64, extra []string) (time.Duration, int) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	args := faultArgs(run, extra...)
	var procs []*faultProc // the processes whose exit is awaited
	var victimPID int
	var launcher *faultProc
	if mode == "explicit" {
		procs = startRanks(t, ctx, 4, args)
	} else {
		launcher = startMPI(t, ctx, mpirun, 4, args)
		procs = []*faultProc{launcher}
	}
	stop := make(chan struct{})
	go func() { waitAll(procs, time.Now().Add(time.Minute)); close(stop) }()
	if !pollUntil(30*time.Second, stop, func() bool { return maxStep(run) >= atStep }) {
		t.Fatalf("the run never reached step %d; output:\n%s", atStep, procs[0].output())
	}
	time.Sleep(jitter)
	if mode == "explicit" {
		victimPID = procs[victim].cmd.Process.Pid
	} else {
		var ok bool
		if victimPID, ok = rankPID(run, victim); !ok {
			t.Fatalf("no pid in rank %d's log", victim)
		}
	}
	if err := syscall.Kill(victimPID, syscall.SIGKILL); err != nil {
		t.Fatalf("kill rank %d (pid %d): %v", victim, victimPID, err)
	}
	killed := time.Now()
	deadline := killed.Add(faultTimeout + exitSlack)
	if !waitAll(procs, deadline) {
		for _, p := range procs {
			p.killGroup()
		}
		t.Fatalf("a survivor was still running %v after rank %d was killed (a hang)", faultTimeout+exitSlack, victim)
	}
	var took time.Duration
	naming := fmt.Sprintf("rank %d (", victim)
	if mode == "explicit" {
		for r, p := range procs {
			if r == victim {
				continue
			}
			took = max(took, p.ended.Sub(killed))
			if p.exitCode() == 0 {
				t.Errorf("rank %d exited 0 after rank %d was killed", r, victim)
			}
			if !strings.Contains(p.output(), naming) {
				t.Errorf("rank %d's error does not name rank %d:\n%s", r, victim, tail(p.output(), 800))
			}
		}
	} else {
		took = launcher.ended.Sub(killed)
		if launcher.exitCode() == 0 {
			t.Errorf("mpirun exited 0 after rank %d was killed", victim)
		}
		if !strings.Contains(launcher.output(), naming) {
			t.Errorf("no rank's error names rank %d:\n%s", victim, tail(launcher.output(), 1500))
		}
		// mpirun kills the survivors once it sees the death, so a survivor may
		// not get to log its own error; none may have finished normally, and
		// each that logged an error must name the victim.
		for r := 0; r < 4; r++ {
			if r == victim {
				continue
			}
			rec := lastRecord(run, r)
			switch {
			case rec == nil:
			case rec["msg"] == "finished":
				t.Errorf("rank %d logged a normal finish after rank %d was killed", r, victim)
			case rec["msg"] == "failed" && !strings.Contains(fmt.Sprint(rec["error"]), naming):
				t.Errorf("rank %d failed with an error that does not name rank %d: %v", r, victim, rec["error"])
			}
		}
	}
	// The newest complete checkpoint loads, and training resumes from it to
	// the reference's losses.
	info, err := ckpt.Latest(run)
	if err != nil {
		t.Fatalf("no complete checkpoint after reaching step %d: %v", atStep, err)
	}
	if _, err := ckpt.Verify(info.Dir); err != nil {
		t.Fatalf("the newest complete checkpoint does not verify: %v", err)
	}
	resumed := run + "-resumed"
	runRanksOK(t, 4, faultArgs(resumed, append([]string{"-resume", info.Dir}, extra...)...))
	bad := sameLosses(lastLosses(resumed), want, int(info.Step), faultSteps)
	if len(bad) > 0 {
		t.Errorf("resumed from step %d: steps %v differ from the run that never failed", info.Step, bad)
	}
	return took, len(bad)
}

func tail(s string, n int) string {
	if len(s) > n {
		return "..." + s[len(s)-n:]
	}
	return s
}

// TestFaultKillDuringCheckpoint SIGKILLs a real training process that writes a
// checkpoint after every step, again and again, each time restarting it with
// -resume: half the kills land the moment a step's temporary directory appears
// (shards being written, manifest, rename, DONE), half at a random moment.
// After every kill: each checkpoint directory is complete (ckpt.Verify and
// `train ckpt verify` pass) or refused by ckpt.Open and by `train ckpt verify`
// (non-zero exit) — no torn checkpoint ever loads. At the end each chain runs
// to completion and its losses are bitwise those of a run never killed.
func TestFaultKillDuringCheckpoint(t *testing.T) {
	dir := t.TempDir()
	const steps = 40
	args := func(run string, extra ...string) []string {
		return append([]string{"-steps", fmt.Sprint(steps), "-batch", "1", "-seq", "32", "-ckpt-every", "1",
			"-ckpt-keep", "3", "-log-every", "1", "-run", run}, extra...)
	}
	ref := filepath.Join(dir, "ref")
	runMain(t, args(ref)...)
	want := lastLosses(ref)
	chains, kills := 5, 10
	if testing.Short() {
		chains, kills = 2, 5
	}
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 11))
	score := faultScore{class: "kill during checkpoint (SIGKILL, -ckpt-every 1)"}
	var midCommit, complete, refused int
	for c := 0; c < chains; c++ {
		run := filepath.Join(dir, fmt.Sprintf("chain-%d", c))
		for k := 0; k < kills; k++ {
			landed := false
			ok := t.Run(fmt.Sprintf("chain%d-kill%02d", c, k), func(t *testing.T) {
				ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
				defer cancel()
				p := startTrain(t, ctx, nil, args(run, "-resume"))
				onTmp := k%2 == 0
				hit := pollUntil(30*time.Second, p.done, func() bool {
					if onTmp {
						m, _ := filepath.Glob(filepath.Join(ckpt.Dir(run), "step-*.tmp"))
						return len(m) > 0
					}
					return maxStep(run) > 0
				})
				if !hit {
					t.Fatalf("the run ended before the kill (exit %v):\n%s", p.err, tail(p.output(), 1500))
				}
				if onTmp {
					time.Sleep(time.Duration(rng.IntN(3000)) * time.Microsecond)
				} else {
					time.Sleep(time.Duration(rng.IntN(400)) * time.Millisecond)
				}
				p.killGroup()
				if !p.wait(10 * time.Second) {
					t.Fatal("the killed process did not go away")
				}
				if p.exitCode() == 0 {
					t.Skip("the run finished before the kill landed: not a trial")
				}
				landed = true
				mid, comp, ref := checkCheckpoints(t, run)
				midCommit += mid
				complete += comp
				refused += ref
			})
			if landed {
				score.trials++
				if ok {
					score.survived++
				}
			}
		}
		// The chain runs to its end: no step may differ from the run never killed.
		runMain(t, args(run, "-resume")...)
		if bad := sameLosses(lastLosses(run), want, 0, steps); len(bad) > 0 {
			t.Errorf("chain %d: steps %v differ from the run never killed", c, bad)
			score.lost += len(bad)
		}
	}
	score.note = fmt.Sprintf("%d kills left a half-written checkpoint behind; %d complete checkpoints verified, %d incomplete refused",
		midCommit, complete, refused)
	score.log(t)
}

// checkCheckpoints checks every checkpoint directory of run: complete ones
// verify (in Go and through `train ckpt verify`), the others are refused by
// both. It returns 1 when some directory was not complete (the kill landed
// inside a checkpoint), and the numbers checked.
func checkCheckpoints(t *testing.T, run string) (mid, complete, refused int) {
	t.Helper()
	infos, err := ckpt.List(run)
	if err != nil {
		t.Fatal(err)
	}
	for _, in := range infos {
		var out, errOut bytes.Buffer
		code := mainExit([]string{"ckpt", "verify", in.Dir}, &out, &errOut)
		if in.Status == ckpt.Complete {
			complete++
			if _, err := ckpt.Verify(in.Dir); err != nil {
				t.Errorf("%s is listed complete but does not verify: %v", in.Dir, err)
			}
			if code != 0 {
				t.Errorf("train ckpt verify %s: exit %d for a complete checkpoint\n%s%s", in.Dir, code, out.String(), errOut.String())
			}
			continue
		}
		mid = 1
		refused++
		if r, err := ckpt.Open(in.Dir); err == nil {
			r.Close()
			t.Errorf("%s (%s: %s) opened: a torn checkpoint loads", in.Dir, in.Status, in.Reason)
		}
		if code == 0 {
			t.Errorf("train ckpt verify %s: exit 0 for a %s checkpoint\n%s", in.Dir, in.Status, out.String())
		}
	}
	if latest, err := ckpt.Latest(run); err == nil {
		if _, err := ckpt.Verify(latest.Dir); err != nil {
			t.Errorf("Latest gives %s, which does not verify: %v", latest.Dir, err)
		}
	} else if !errors.Is(err, ckpt.ErrNoCheckpoint) {
		t.Error(err)
	}
	return mid, complete, refused
}

// TestFaultStalledRank stops a rank with SIGSTOP. Longer than the timeout (then
// SIGCONT): every rank exits non-zero, the others within the timeout, naming
// the stalled rank, and `train logs` names it. Shorter than the timeout, on a
// rank that is also slow at every step (TRAIN_DEBUG_STEP_SLEEP): the job
// completes, and `train logs` reports that rank as a straggler.
func TestFaultStalledRank(t *testing.T) {
	dir := t.TempDir()
	score := faultScore{class: "stalled rank (SIGSTOP)"}
	for _, tc := range []struct {
		name  string
		rank  int
		stop  time.Duration
		fails bool
	}{
		{"beyond-timeout", 2, faultTimeout + 2*time.Second, true},
		{"below-timeout", 1, faultTimeout / 5, false},
	} {
		score.trials++
		ok := t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			run := filepath.Join(dir, tc.name)
			args := faultArgs(run)
			var env []string
			if !tc.fails {
				args = faultArgs(run, "-steps", "40")
				env = []string{fmt.Sprintf("TRAIN_DEBUG_STEP_SLEEP=%d:60ms", tc.rank)}
			} else {
				args = faultArgs(run, "-steps", "100000")
			}
			procs := startRanks(t, ctx, 4, args, env...)
			stop := make(chan struct{})
			go func() { waitAll(procs, time.Now().Add(time.Minute)); close(stop) }()
			if !pollUntil(30*time.Second, stop, func() bool { return maxStep(run) >= 4 }) {
				t.Fatalf("the run never reached step 4:\n%s", procs[0].output())
			}
			pid := procs[tc.rank].cmd.Process.Pid
			syscall.Kill(pid, syscall.SIGSTOP)
			stopped := time.Now()
			time.Sleep(tc.stop)
			syscall.Kill(pid, syscall.SIGCONT)
			if !waitAll(procs, time.Now().Add(faultTimeout+30*time.Second)) {
				t.Fatal("a rank still runs long after the stalled rank was continued (a hang)")
			}
			var logs bytes.Buffer
			mainExit([]string{"logs", run}, &logs, &logs)
			if !tc.fails {
				for r, p := range procs {
					if p.exitCode() != 0 {
						t.Errorf("rank %d failed after a stall below the timeout: %v\n%s", r, p.err, tail(p.output(), 800))
					}
				}
				_, stragglers, _ := strings.Cut(logs.String(), "stragglers")
				stragglers, _, _ = strings.Cut(stragglers, "\n\n")
				if want := fmt.Sprintf("rank %d on ", tc.rank); !strings.Contains(stragglers, want) {
					t.Errorf("train logs names no straggler %q:\n%s", want, logs.String())
				}
				return
			}
			naming := fmt.Sprintf("rank %d (", tc.rank)
			for r, p := range procs {
				if p.exitCode() == 0 {
					t.Errorf("rank %d exited 0 after rank %d stalled beyond the timeout", r, tc.rank)
				}
				if r == tc.rank {
					continue
				}
				if took := p.ended.Sub(stopped); took > faultTimeout+exitSlack+2*time.Second {
					t.Errorf("rank %d took %v after the stall to fail (timeout %v)", r, took, faultTimeout)
				}
				if !strings.Contains(p.output(), naming) {
					t.Errorf("rank %d's error does not name rank %d:\n%s", r, tc.rank, tail(p.output(), 800))
				}
			}
			if !strings.Contains(logs.String(), fmt.Sprintf("rank %d", tc.rank)) {
				t.Errorf("train logs does not name rank %d:\n%s", tc.rank, logs.String())
			}
			t.Logf("train logs:\n%s", logs.String())
		})
		if ok {
			score.survived++
		}
	}
	score.note = "beyond the timeout: all ranks fail naming the stalled one; below: the job completes, the rank named a straggler"
	score.log(t)
}

// TestFaultDiskFull fills a small tmpfs holding the run directory while a run
// checkpoints every 2 steps: the run stops with an error saying the disk is
// full and the previous checkpoint is intact, and that checkpoint verifies;
// with ckpt.continue_on_error it trains on with a warning instead. It needs
// root (mount -t tmpfs) and skips otherwise.
func TestFaultDiskFull(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount a small tmpfs (mount -t tmpfs -o size=...): skipped")
	}
	score := faultScore{class: "disk full while checkpointing (tmpfs)"}
	for _, cont := range []bool{false, true} {
		score.trials++
		name := "stop"
		if cont {
			name = "continue_on_error"
		}
		ok := t.Run(name, func(t *testing.T) {
			mnt := t.TempDir()
			if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", mnt).CombinedOutput(); err != nil {
				t.Skipf("cannot mount a tmpfs here (%v: %s): skipped", err, out)
			}
			t.Cleanup(func() { exec.Command("umount", "-l", mnt).Run() })
			run := filepath.Join(mnt, "run")
			args := []string{"-steps", "100000", "-batch", "1", "-seq", "32", "-ckpt-every", "2", "-ckpt-keep", "1", "-log-every", "1", "-run", run}
			if cont {
				conf := filepath.Join(t.TempDir(), "run.toml")
				os.WriteFile(conf, []byte("[ckpt]\ncontinue_on_error = true\n"), 0o644)
				args = append(args[:1], append([]string{"300"}, args[2:]...)...)
				args = append(args, "-config", conf)
			}
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			p := startTrain(t, ctx, nil, args)
			var before ckpt.Info
			if !pollUntil(30*time.Second, p.done, func() bool {
				in, err := ckpt.Latest(run)
				before = in
				return err == nil && in.Step >= 4
			}) {
				t.Fatalf("no checkpoint before the fill:\n%s", tail(p.output(), 1500))
			}
			fill(t, filepath.Join(mnt, "filler"))
			if !p.wait(45 * time.Second) {
				t.Fatal("the run did not stop (or finish) with the disk full")
			}
			out := p.output()
			latest, err := ckpt.Latest(run)
			if err != nil || latest.Step < before.Step {
				t.Fatalf("after the disk filled the newest complete checkpoint is %v (%v), before it was step %d", latest.Step, err, before.Step)
			}
			if _, err := ckpt.Verify(latest.Dir); err != nil {
				t.Errorf("the previous checkpoint does not verify: %v", err)
			}
			if !strings.Contains(out, "no space left on device") {
				t.Errorf("no disk-full error in the output:\n%s", tail(out, 1500))
			}
			if !cont {
				if p.exitCode() == 0 || !strings.Contains(out, "previous complete checkpoint is intact") {
					t.Errorf("exit %d; want a failure saying the previous checkpoint is intact:\n%s", p.exitCode(), tail(out, 1500))
				}
				return
			}
			if !strings.Contains(out, "training goes on without this checkpoint") {
				t.Errorf("continue_on_error: no warning that training goes on:\n%s", tail(out, 1500))
			}
			t.Logf("continue_on_error: exit %d, last step logged %d\n%s", p.exitCode(), maxStep(run), tail(out, 600))
		})
		if ok {
			score.survived++
		}
	}
	score.note = "the previous checkpoint verifies after ENOSPC; stop or continue_on_error as configured"
	score.log(t)
}

// fill writes zeros to path until the file system is full.
func fill(t *testing.T, path string) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 64<<10)
	for {
		if _, err := f.Write(buf); err != nil {
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatalf("filling %s: %v", path, err)
			}
			return
		}
	}
}
