package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"train/collective"
	"train/host"
)

// runSelftest checks a subsystem across every rank of the job:
// `train selftest collective` under mpirun, srun or by hand.
func runSelftest(args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || strings.HasPrefix(args[0], "-") {
		return usagef("which selftest? (train selftest collective | gpu)")
	}
	switch args[0] {
	case "gpu":
		return selftestGPU(args[1:], stdout, stderr)
	case "collective":
	default:
		return usagef("unknown selftest %q (there are: collective, gpu)", args[0])
	}
	fs := newFlagSet("selftest collective", `train selftest collective [flags]

Join the job (rank and size from mpirun, srun, RANK/WORLD_SIZE or the flags),
run every collective across the world (all-reduce sum/avg/max/min on float32,
bf16, float64 and int64, all-gather, reduce-scatter, broadcast from each root,
send/recv, barrier, split and explicit sub-communicators) for lengths 0, 1,
n-1, n+1 and the primes 7919 and 1048573 (4 MiB of float32), and compare with
a serial computation. Every rank
prints one summary line; any wrong element or failure on any rank makes every
rank exit non-zero.`, stderr)
	cf := collective.AddFlags(fs)
	short := fs.Bool("short", false, "skip the 1048573-element lengths")
	if err := parseFlags(fs, args[1:]); err != nil {
		return err
	}
	cfg, err := cf.Config(os.Getenv)
	if err != nil {
		return usagef("%v", err)
	}
	start := time.Now()
	where := fmt.Sprintf("rank %d/%d (host %s, local rank %d, %s)", cfg.Rank, cfg.Size, host.Name(), cfg.LocalRank, cfg.Launcher())
	c, err := collective.Connect(context.Background(), cfg)
	if err != nil {
		fmt.Fprintf(stdout, "selftest collective: %s: FAIL: %v\n", where, err)
		return err
	}
	checks, err := collective.SelfTest(c, *short)
	if cerr := c.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		fmt.Fprintf(stdout, "selftest collective: %s: FAIL after %d checks: %v\n", where, checks, err)
		return err
	}
	fmt.Fprintf(stdout, "selftest collective: %s: ok, %d checks in %.2fs\n", where, checks, time.Since(start).Seconds())
	return nil
}
