package collective

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestJobIDAloneIsRefused: a Slurm job without TRAIN_JOB_TOKEN (two ranks of
// this process over loopback, as srun would start them) keeps out a process
// that knows only the job id, which every user of a cluster sees in squeue:
// one that derives the token from the job id alone, and another user whose
// own secret file differs. Both are refused; the job's own ranks then join.
func TestJobIDAloneIsRefused(t *testing.T) {
	dir := t.TempDir()
	slurm := func(rank, home string) Config {
		cfg, err := FromEnv(envOf("SLURM_PROCID", rank, "SLURM_NTASKS", "2", "SLURM_JOB_ID", "4242", "SLURM_STEP_ID", "0",
			"SLURM_STEP_NUM_NODES", "1", "HOME", home))
		if err != nil {
			t.Fatal(err)
		}
		cfg.RendezvousDir = dir
		return cfg
	}
	home := filepath.Join(dir, "home")
	log := &logBuf{}
	rank0 := slurm("0", home)
	if want := "per-user secret " + filepath.Join(home, ".config/train/job-secret"); rank0.TokenSource != want || rank0.Token != nil {
		t.Fatalf("token source %q (token %q), want %q", rank0.TokenSource, rank0.Token, want)
	}
	rank0.Timeout, rank0.Logf = 20*time.Second, log.logf(0)
	var c0 Comm
	var err0 error
	done := make(chan struct{})
	go func() {
		defer close(done)
		c0, err0 = Connect(context.Background(), rank0)
	}()

	// What the token was before: a hash of the job id (and an empty Open MPI key).
	byID := slurm("1", home)
	byID.Token = deriveToken(byID.JobID + "\x00")
	other := slurm("1", filepath.Join(dir, "another-user"))
	for name, cfg := range map[string]Config{"token from the job id": byID, "another user's secret": other} {
		cfg.Timeout, cfg.Logf = 2*time.Second, func(string, ...any) {}
		c, err := Connect(context.Background(), cfg)
		if err == nil {
			c.Abort(nil)
			t.Fatalf("%s: joined the job", name)
		}
		if !strings.Contains(err.Error(), "handshake") {
			t.Errorf("%s: %v, want a refused handshake", name, err)
		}
	}
	if !strings.Contains(log.String(), "refused connection from 127.0.0.1:") || !strings.Contains(log.String(), "bad authentication") {
		t.Errorf("rank 0 did not log the refusals:\n%s", log)
	}

	rank1 := slurm("1", home)
	rank1.Timeout = 20 * time.Second
	c1, err := Connect(context.Background(), rank1)
	if err != nil {
		t.Fatalf("rank 1: %v\nrank 0's log:\n%s", err, log)
	}
	<-done
	if err0 != nil {
		t.Fatalf("rank 0: %v", err0)
	}
	w := &world{comms: []Comm{c0, c1}, log: log}
	t.Cleanup(func() { w.close(t) })
	w.run(t, func(c Comm) error { return c.AllReduce(make(F32, 3), Sum) })
	if !strings.Contains(log.String(), "job token: per-user secret "+filepath.Join(home, ".config/train/job-secret")) {
		t.Errorf("rank 0's start-up line does not name the token's source:\n%s", log)
	}
}

// TestSecretFile: the per-user secret is made once, private (0600 in a 0700
// folder), and read back alike by every rank, even when they all make it at
// once; a file others may read, or one too short, is refused saying what to do.
func TestSecretFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "home", ".config", "train", "job-secret")
	secrets := make([][]byte, 8)
	errs := make([]error, len(secrets))
	var wg sync.WaitGroup
	for i := range secrets {
		wg.Add(1)
		go func() {
			defer wg.Done()
			secrets[i], errs[i] = userSecret(path)
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
		if string(secrets[i]) != string(secrets[0]) {
			t.Fatalf("rank %d read another secret than rank 0", i)
		}
	}
	if len(secrets[0]) != 64 {
		t.Errorf("secret of %d bytes, want 32 random bytes in hex", len(secrets[0]))
	}
	st, err := os.Stat(path)
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("secret file: %v, mode %v", err, st.Mode())
	}
	if st, err := os.Stat(filepath.Dir(path)); err != nil || st.Mode().Perm() != 0o700 {
		t.Errorf("secret folder: %v, mode %v", err, st.Mode())
	}
	if left, _ := filepath.Glob(filepath.Join(filepath.Dir(path), ".job-secret-*")); len(left) > 0 {
		t.Errorf("temporary files left behind: %v", left)
	}
	again, err := userSecret(path)
	if err != nil || string(again) != string(secrets[0]) {
		t.Errorf("second use: %v, secret changed: %v", err, string(again) != string(secrets[0]))
	}

	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	_, err = Connect(context.Background(), Config{Rank: 1, Size: 2, JobID: "j", SecretFile: path, Timeout: time.Second})
	if err == nil || !strings.Contains(err.Error(), "open to other users (mode 0644): run chmod 600 "+path) {
		t.Errorf("a secret readable by others: %v", err)
	}
	if err := os.WriteFile(path, []byte("short\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := userSecret(path); err == nil || !strings.Contains(err.Error(), "fewer than 32: remove it") {
		t.Errorf("a short secret: %v", err)
	}
}
