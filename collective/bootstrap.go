package collective

import (
	"crypto/sha256"
	"errors"
	"flag"
	"fmt"
	"hash/fnv"
	"net"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// DefaultTimeout is how long a rank waits on another before the job fails:
// to connect and authenticate, and for a heartbeat before a silent rank is
// declared lost. This is the one place it is defined: config.Default's
// parallel.timeout_seconds is this value, and the flags' help quotes it.
// Where several sources set the timeout, the first of these wins (and
// Config.TimeoutSource names it):
//
//	-comm-timeout              the flag (Flags), on every command that joins a job
//	TRAIN_COMM_TIMEOUT         the environment (FromEnv)
//	parallel.timeout_seconds   training only: the -config file or -timeout (Config.FallbackTimeout)
//	DefaultTimeout             none of them
const DefaultTimeout = 60 * time.Second

// DefaultChunkBytes is the unit in which ring collectives pipeline data.
const DefaultChunkBytes = 1 << 20

// Config says who this process is in the job and how to reach the others.
// FromEnv fills it from the launcher's environment; the zero value is a world
// of one rank.
type Config struct {
	Rank, Size, LocalRank int
	// Source names where Rank and Size came from: "openmpi", "mpich", "slurm",
	// "env" (RANK/WORLD_SIZE), "flags", or "" (a single rank).
	Source string

	// MasterAddr is rank 0's host:port, where every rank registers. Empty means
	// the single-host rendezvous: rank 0 listens on 127.0.0.1 on a free port and
	// publishes the address in a file named after JobID in RendezvousDir.
	MasterAddr string
	// Interface is the IP address or network interface name to listen on.
	// Empty: the address MasterAddr names (rank 0) or the local address that
	// routes to it (other ranks); loopback for the single-host rendezvous.
	Interface string
	// JobID identifies this run of the job among others on the same hosts.
	JobID string
	// Token is the job's shared secret; every connection proves it knows it.
	// Empty: Connect derives it from JobID and the per-user secret in
	// SecretFile, so that nobody who knows only the job id (which every user
	// of a cluster sees in squeue) can join.
	Token []byte
	// TokenSource names where Token came from, for the start-up log:
	// "TRAIN_JOB_TOKEN", "Open MPI job key" or "per-user secret PATH".
	TokenSource string
	// SecretFile holds the per-user secret mixed into a token derived from
	// JobID: TRAIN_SECRET_FILE, else ~/.config/train/job-secret (empty:
	// that file under os.UserHomeDir). Connect makes it (mode 0600) on first
	// use and refuses one that other users may read.
	SecretFile string
	// RendezvousDir holds the single-host rendezvous file (default os.TempDir()).
	RendezvousDir string

	// Timeout bounds connecting and authenticating, and is how long a rank may
	// be silent (no heartbeat) before the job declares it lost. Zero:
	// DefaultTimeout, which also says which source wins.
	Timeout time.Duration
	// TimeoutSource names where Timeout came from ("-comm-timeout",
	// "TRAIN_COMM_TIMEOUT", the source given to FallbackTimeout; "" for none).
	TimeoutSource string
	// OpTimeout, if positive, bounds each collective and each point-to-point
	// transfer on a connection; 0 lets an operation wait as long as every
	// rank is alive (slow ranks are not failures).
	OpTimeout time.Duration
	// ChunkBytes is the pipelining unit of the ring (default 1 MiB).
	ChunkBytes int

	// Logf reports events that are not errors of an operation: on rank 0 a
	// start-up line (the ranks joined, the job token's source, the timeout
	// and its source), refused connections (a few one by one, then a count
	// per minute), the job's failure verdict. Nil: StderrLogf. A caller that
	// keeps a log of its own (the trainer's rank log) records them there by
	// passing a Logf that writes to it too.
	Logf func(format string, args ...any)
}

// Launcher names where this process's place in the job came from, for the
// lines that report a rank: Source, or "single process" when there is none.
func (c Config) Launcher() string {
	if c.Source == "" {
		return "single process"
	}
	return c.Source
}

// FallbackTimeout sets Timeout to d, from source (a run's configuration:
// "parallel.timeout_seconds"), unless -comm-timeout or TRAIN_COMM_TIMEOUT
// has set it: a configuration ranks below both (see DefaultTimeout).
func (c *Config) FallbackTimeout(d time.Duration, source string) {
	if c.Timeout > 0 || d <= 0 {
		return
	}
	c.Timeout, c.TimeoutSource = d, source
}

// timeoutAndSource is the timeout Connect applies and where it came from.
func (c Config) timeoutAndSource() (time.Duration, string) {
	if c.Timeout <= 0 {
		return DefaultTimeout, "default"
	}
	return c.Timeout, c.TimeoutSource
}

// FromEnv reads the launcher's environment through getenv (os.Getenv):
//
//	RANK, WORLD_SIZE, LOCAL_RANK           explicit (torchrun style); checked first
//	OMPI_COMM_WORLD_RANK, _SIZE, _LOCAL_RANK, _LOCAL_SIZE   Open MPI's mpirun
//	PMI_RANK, PMI_SIZE, MPI_LOCALRANKID, MPI_LOCALNRANKS    MPICH / Hydra
//	SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID, SLURM_STEP_NUM_NODES  srun
//	MASTER_ADDR, MASTER_PORT (default 29500)   rank 0's address
//	TRAIN_IFACE                            interface or address to listen on
//	TRAIN_JOB_TOKEN                        shared secret (else see chooseToken)
//	TRAIN_SECRET_FILE                      the per-user secret (default ~/.config/train/job-secret)
//	TRAIN_JOB_ID                           job id (else the launcher's)
//	TRAIN_COMM_TIMEOUT                     Timeout as a Go duration
//
// Without MASTER_ADDR the ranks must share one host (the launcher says so),
// except under Slurm, where rank 0's host is the first of the step's nodes and
// the port is derived from the job id.
func FromEnv(getenv func(string) string) (Config, error) {
	var c Config
	type source struct{ name, rank, size, local, localSize string }
	sources := []source{
		{"env", "RANK", "WORLD_SIZE", "LOCAL_RANK", ""},
		{"openmpi", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_SIZE"},
		{"mpich", "PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID", "MPI_LOCALNRANKS"},
		{"slurm", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID", ""},
	}
	multiHost := false
	for _, s := range sources {
		if getenv(s.rank) == "" || getenv(s.size) == "" {
			continue
		}
		var err error
		if c.Size, err = envInt(getenv, s.size, 1, maxWorld); err != nil {
			return c, err
		}
		if c.Rank, err = envInt(getenv, s.rank, 0, c.Size-1); err != nil {
			return c, err
		}
		if getenv(s.local) != "" {
			if c.LocalRank, err = envInt(getenv, s.local, 0, c.Size-1); err != nil {
				return c, err
			}
		}
		if s.localSize != "" && getenv(s.localSize) != "" {
			ls, err := envInt(getenv, s.localSize, 1, c.Size)
			if err != nil {
				return c, err
			}
			multiHost = ls < c.Size
		}
		if s.name == "slurm" {
			for _, v := range []string{"SLURM_STEP_NUM_NODES", "SLURM_JOB_NUM_NODES", "SLURM_NNODES"} {
				if n, err := strconv.Atoi(getenv(v)); err == nil {
					multiHost = n > 1
					break
				}
			}
		}
		c.Source = s.name
		break
	}
	if c.Source == "" {
		c.Size = 1
	}

	c.JobID = jobID(getenv, c.Source)
	if a := getenv("MASTER_ADDR"); a != "" {
		port := getenv("MASTER_PORT")
		if port == "" {
			port = "29500"
		}
		if _, err := strconv.ParseUint(port, 10, 16); err != nil {
			return c, fmt.Errorf("MASTER_PORT=%q is not a port number", port)
		}
		c.MasterAddr = net.JoinHostPort(a, port)
	} else if multiHost && c.Source == "slurm" {
		nodes := firstNonEmpty(getenv, "SLURM_STEP_NODELIST", "SLURM_JOB_NODELIST", "SLURM_NODELIST")
		host := firstHost(nodes)
		if host == "" {
			return c, fmt.Errorf("srun spans several nodes but the node list %q names none: set MASTER_ADDR", nodes)
		}
		port := getenv("MASTER_PORT")
		if port == "" {
			port = strconv.Itoa(derivedPort(c.JobID))
		}
		c.MasterAddr = net.JoinHostPort(host, port)
	} else if multiHost {
		return c, fmt.Errorf("the %s ranks span several hosts: set MASTER_ADDR (and MASTER_PORT) to rank 0's host", c.Source)
	}
	if c.MasterAddr == "" && c.Size > 1 && c.JobID == "" {
		return c, errors.New("no MASTER_ADDR and no launcher job id to rendezvous by: set MASTER_ADDR and MASTER_PORT (or TRAIN_JOB_ID)")
	}
	c.Interface = getenv("TRAIN_IFACE")
	if t := getenv("TRAIN_COMM_TIMEOUT"); t != "" {
		d, err := time.ParseDuration(t)
		if err != nil || d <= 0 {
			return c, fmt.Errorf("TRAIN_COMM_TIMEOUT=%q is not a positive duration", t)
		}
		c.Timeout, c.TimeoutSource = d, "TRAIN_COMM_TIMEOUT"
	}
	c.chooseToken(getenv)
	return c, nil
}

// chooseToken picks the job token, from the first source that has one:
// TRAIN_JOB_TOKEN (the sbatch scripts make a random one per job); Open MPI's
// random per-job key, mixed with the job id; else the per-user secret file,
// which Connect reads (or makes) and mixes with the job id. The job id alone
// is no secret: under Slurm every user of the cluster sees it in squeue.
func (c *Config) chooseToken(getenv func(string) string) {
	c.Token, c.SecretFile = nil, ""
	if t := getenv("TRAIN_JOB_TOKEN"); t != "" {
		c.Token, c.TokenSource = []byte(t), "TRAIN_JOB_TOKEN"
		return
	}
	if key := getenv("OMPI_MCA_orte_precondition_transports"); key != "" && c.JobID != "" {
		c.Token, c.TokenSource = deriveToken(c.JobID+"\x00"+key), "Open MPI job key"
		return
	}
	c.SecretFile = getenv("TRAIN_SECRET_FILE")
	if c.SecretFile == "" && getenv("HOME") != "" {
		c.SecretFile = filepath.Join(getenv("HOME"), secretFileInHome)
	}
	c.TokenSource = ""
	if c.SecretFile != "" {
		c.TokenSource = "per-user secret " + c.SecretFile
	}
}

func envInt(getenv func(string) string, name string, lo, hi int) (int, error) {
	v := getenv(name)
	n, err := strconv.Atoi(strings.TrimSpace(v))
	if err != nil {
		return 0, fmt.Errorf("%s=%q is not an integer", name, v)
	}
	if n < lo || n > hi {
		return 0, fmt.Errorf("%s=%d is out of range [%d, %d]", name, n, lo, hi)
	}
	return n, nil
}

func firstNonEmpty(getenv func(string) string, names ...string) string {
	for _, n := range names {
		if v := getenv(n); v != "" {
			return v
		}
	}
	return ""
}

// jobID names this run of the job; every rank of it computes the same string.
func jobID(getenv func(string) string, src string) string {
	if v := getenv("TRAIN_JOB_ID"); v != "" {
		return "train:" + v
	}
	switch src {
	case "openmpi":
		if v := firstNonEmpty(getenv, "PMIX_NAMESPACE", "OMPI_MCA_ess_base_jobid", "OMPI_MCA_orte_hnp_uri"); v != "" {
			return "ompi:" + v
		}
	case "mpich":
		if v := firstNonEmpty(getenv, "PMIX_NAMESPACE", "PMI_KVSNAME", "PMI_PORT"); v != "" {
			return "mpich:" + v
		}
	case "slurm":
		if v := getenv("SLURM_JOB_ID"); v != "" {
			return "slurm:" + v + "." + getenv("SLURM_STEP_ID")
		}
	case "env":
		if a := getenv("MASTER_ADDR"); a != "" {
			return "env:" + a + ":" + getenv("MASTER_PORT") + ":" + getenv("WORLD_SIZE")
		}
	}
	return ""
}

func deriveToken(seed string) []byte {
	h := sha256.Sum256([]byte("train/collective/v1 job token\x00" + seed))
	return h[:]
}

// derivedPort maps a job id to a port in [20000, 40000).
func derivedPort(job string) int {
	h := fnv.New32a()
	h.Write([]byte(job))
	return 20000 + int(h.Sum32()%20000)
}

// firstHost returns the first host of a Slurm host list such as
// "gpu[007-012,020],cpu1" (gpu007).
func firstHost(list string) string {
	list = strings.TrimSpace(list)
	if i := strings.IndexAny(list, ",["); i < 0 || list[i] == ',' {
		if i >= 0 {
			list = list[:i]
		}
		return list
	}
	open := strings.IndexByte(list, '[')
	end := strings.IndexByte(list[open:], ']')
	if end < 0 {
		return ""
	}
	inner := list[open+1 : open+end]
	if i := strings.IndexAny(inner, ",-"); i >= 0 {
		inner = inner[:i]
	}
	if inner == "" {
		return ""
	}
	return list[:open] + inner
}

// Flags are the command-line overrides of FromEnv, for any subcommand that
// joins the job.
type Flags struct {
	fs                    *flag.FlagSet
	rank, size, localRank int
	master, iface         string
	timeout, opTimeout    time.Duration
	chunk                 int
}

// AddFlags registers -rank, -world-size, -local-rank, -master-addr, -iface,
// -comm-timeout, -op-timeout and -chunk-bytes on fs.
func AddFlags(fs *flag.FlagSet) *Flags {
	f := &Flags{fs: fs}
	fs.IntVar(&f.rank, "rank", -1, "this process's rank (default: from the launcher's environment)")
	fs.IntVar(&f.size, "world-size", 0, "number of ranks (default: from the launcher's environment)")
	fs.IntVar(&f.localRank, "local-rank", -1, "rank among the processes of this host")
	fs.StringVar(&f.master, "master-addr", "", "rank 0's `host:port` (default: MASTER_ADDR:MASTER_PORT, or single-host rendezvous)")
	fs.StringVar(&f.iface, "iface", "", "network interface name or IP `address` to listen on (default: TRAIN_IFACE, or the route to the master)")
	fs.DurationVar(&f.timeout, "comm-timeout", 0, fmt.Sprintf("how long a rank waits on another: to connect, and for a heartbeat before the job declares it lost; "+
		"overrides TRAIN_COMM_TIMEOUT and, when training, parallel.timeout_seconds (-timeout) (default %ds)", int(DefaultTimeout/time.Second)))
	fs.DurationVar(&f.opTimeout, "op-timeout", 0, "if set, the longest one collective may wait on a connection")
	fs.IntVar(&f.chunk, "chunk-bytes", 0, "ring pipelining chunk in bytes (default 1 MiB)")
	return f
}

// Config returns FromEnv(getenv) with the flags that were given applied.
func (f *Flags) Config(getenv func(string) string) (Config, error) {
	c, err := FromEnv(getenv)
	if (f.rank >= 0) != (f.size > 0) {
		return c, errors.New("-rank and -world-size go together")
	}
	if f.rank >= 0 {
		if f.rank >= f.size {
			return c, fmt.Errorf("-rank %d is not below -world-size %d", f.rank, f.size)
		}
		c.Rank, c.Size, c.LocalRank, c.Source = f.rank, f.size, 0, "flags"
		err = nil // the flags replace whatever the environment said
	}
	if err != nil {
		return c, err
	}
	if f.localRank >= 0 {
		c.LocalRank = f.localRank
	}
	if f.master != "" {
		if _, _, err := net.SplitHostPort(f.master); err != nil {
			return c, fmt.Errorf("-master-addr %q: %w", f.master, err)
		}
		c.MasterAddr = f.master
		if c.JobID == "" {
			c.JobID = "flags:" + f.master
		}
	}
	if f.iface != "" {
		c.Interface = f.iface
	}
	if f.timeout > 0 {
		c.Timeout, c.TimeoutSource = f.timeout, "-comm-timeout"
	}
	if f.opTimeout > 0 {
		c.OpTimeout = f.opTimeout
	}
	if f.chunk > 0 {
		c.ChunkBytes = f.chunk
	}
	if c.Size > 1 && c.MasterAddr == "" && c.JobID == "" {
		return c, errors.New("no rendezvous: give -master-addr (or MASTER_ADDR/MASTER_PORT)")
	}
	c.chooseToken(getenv) // again: the job id may be the flags' now
	return c, nil
}
