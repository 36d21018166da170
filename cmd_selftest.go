package main

import (
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"train/collective"
	"train/selftest"
)

// runSelftest checks a subsystem across every rank of the job:
// `train selftest collective | gpu` under mpirun, srun or by hand.
func runSelftest(args []string, stdout, stderr io.Writer) error {
	if len(args) > 0 {
		switch args[0] {
		case "-h", "-help", "--help", "help":
			_, err := fmt.Fprint(stdout, `train selftest checks a subsystem across every rank of the job, before a long run:
run it the way the job will run (./train selftest ..., mpirun -np N ..., srun ...).

Usage:
  train selftest collective   every collective across the world against a serial computation (the network)
  train selftest gpu          every rank's GPU, the CUDA libraries, kernels, NCCL and the run directory's disk

Run "train selftest <check> -h" for its flags.
`)
			return err
		case "gpu":
			return selftestGPU(args[1:], stdout, stderr)
		case "collective":
			return selftestCollective(args[1:], stdout, stderr)
		}
	}
	if len(args) == 0 || strings.HasPrefix(args[0], "-") {
		return usagef("which selftest? (train selftest collective | gpu)")
	}
	return usagef("unknown selftest %q (there are: collective, gpu)", args[0])
}

// selftestCollective is `train selftest collective`: every collective across
// the world against a serial computation (selftest.Collective).
func selftestCollective(args []string, stdout, stderr io.Writer) error {
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
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	cfg, err := cf.Config(os.Getenv)
	if err != nil {
		return usagef("%v", err)
	}
	return selftest.Collective(cfg, selftest.CollectiveOptions{Short: *short}, stdout)
}

// selftestGPUSynopsis heads `train selftest gpu -h`: what the check does and
// how to run it.
const selftestGPUSynopsis = `train selftest gpu [flags]

The pre-flight check of a GPU job. Run it the way the job will run, before a
long run: ./train selftest gpu, mpirun -np 8 ./train selftest gpu, or
srun ./train selftest gpu. Every rank:

  - opens its GPU (the local rank's, as training does) and reports its name,
    the driver, cuBLAS and NCCL versions, the libraries' paths and its free
    memory;
  - runs kernels (Add, Scale) and a float32 GEMM (MatmulNT, cuBLAS) on random
    values and compares them with the host;
  - joins the world over TCP (as "train selftest collective" does), makes an
    NCCL communicator over every rank's GPU and checks all-reduce, all-gather,
    reduce-scatter, broadcast and a send/recv ring, element by element;
  - checks that the file system of the run directory (-run) has -min-free
    bytes free and is writable.

Rank 0 prints one line per rank, then "selftest gpu: ok, N ranks" or
"selftest gpu: FAIL: ..."; any failure makes every rank exit non-zero.
Without a GPU it fails at once: run it on a GPU node, or use
"train selftest collective" to check the network alone.

The default -min-free, 10GiB, catches a full or nearly full disk (the run that
dies hours in, writing a checkpoint) without failing ordinary nodes: logs and
LoRA adapters take megabytes. A full fine-tune's checkpoints are larger (an 8B
model's bf16 weights are 16 GB, its AdamW state 64 GB more, shared by the
ranks): raise -min-free to what the run keeps.

NCCL: libnccl.so.2 from the library path, or TRAIN_NCCL=path. NVLink SHARP
(NCCL_NVLS_ENABLE) stays off unless set.`

// selftestGPU is `train selftest gpu`: the pre-flight check of every rank's
// GPU (selftest.GPU).
func selftestGPU(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("selftest gpu", selftestGPUSynopsis, stderr)
	cf := collective.AddFlags(fs)
	runDir := fs.String("run", "runs", "run `directory` whose file system must have room (it need not exist yet)")
	minFreeFlag := fs.String("min-free", "10GiB", "fail below this much free `space` for -run (e.g. 500GB, 2TiB)")
	timeout := fs.Duration("timeout", 2*time.Minute, "bound on NCCL set-up and on each NCCL check: a rank that does not take part fails the check after it")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	minFree, err := parseByteSize(*minFreeFlag)
	if err != nil {
		return usagef("-min-free: %v", err)
	}
	if *timeout <= 0 {
		return usagef("-timeout must be positive")
	}
	cfg, err := cf.Config(os.Getenv)
	if err != nil {
		return usagef("%v", err)
	}
	return selftest.GPU(cfg, selftest.GPUOptions{RunDir: *runDir, MinFree: minFree, Timeout: *timeout}, stdout)
}
