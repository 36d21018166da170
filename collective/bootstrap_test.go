package collective

import (
	"context"
	"flag"
	"strings"
	"testing"
	"time"
)

func envOf(kv ...string) func(string) string {
	m := map[string]string{}
	for i := 0; i < len(kv); i += 2 {
		m[kv[i]] = kv[i+1]
	}
	return func(k string) string { return m[k] }
}

func TestFromEnv(t *testing.T) {
	cases := []struct {
		name                  string
		env                   func(string) string
		rank, size, local     int
		source, master, fails string
	}{
		{name: "nothing", env: envOf(), size: 1},
		{name: "openmpi one host", env: envOf("OMPI_COMM_WORLD_RANK", "2", "OMPI_COMM_WORLD_SIZE", "4", "OMPI_COMM_WORLD_LOCAL_RANK", "2",
			"OMPI_COMM_WORLD_LOCAL_SIZE", "4", "PMIX_NAMESPACE", "123"), rank: 2, size: 4, local: 2, source: "openmpi"},
		{name: "openmpi two hosts without master", env: envOf("OMPI_COMM_WORLD_RANK", "2", "OMPI_COMM_WORLD_SIZE", "4",
			"OMPI_COMM_WORLD_LOCAL_SIZE", "2", "PMIX_NAMESPACE", "123"), fails: "several hosts"},
		{name: "openmpi inside slurm", env: envOf("OMPI_COMM_WORLD_RANK", "1", "OMPI_COMM_WORLD_SIZE", "2", "PMIX_NAMESPACE", "9",
			"SLURM_PROCID", "0", "SLURM_NTASKS", "1"), rank: 1, size: 2, source: "openmpi"},
		{name: "mpich", env: envOf("PMI_RANK", "3", "PMI_SIZE", "8", "MPI_LOCALRANKID", "1", "MPI_LOCALNRANKS", "8", "PMI_KVSNAME", "kvs_1"),
			rank: 3, size: 8, local: 1, source: "mpich"},
		{name: "slurm multi-node", env: envOf("SLURM_PROCID", "5", "SLURM_NTASKS", "16", "SLURM_LOCALID", "1", "SLURM_JOB_ID", "77",
			"SLURM_STEP_NUM_NODES", "2", "SLURM_STEP_NODELIST", "gpu[007-008]"), rank: 5, size: 16, local: 1, source: "slurm", master: "gpu007:"},
		{name: "explicit", env: envOf("RANK", "1", "WORLD_SIZE", "2", "LOCAL_RANK", "0", "MASTER_ADDR", "10.1.2.3", "MASTER_PORT", "4000",
			"OMPI_COMM_WORLD_RANK", "0", "OMPI_COMM_WORLD_SIZE", "9"), rank: 1, size: 2, source: "env", master: "10.1.2.3:4000"},
		{name: "explicit default port", env: envOf("RANK", "0", "WORLD_SIZE", "2", "MASTER_ADDR", "h"), size: 2, source: "env", master: "h:29500"},
		{name: "rank out of range", env: envOf("RANK", "2", "WORLD_SIZE", "2", "MASTER_ADDR", "h"), fails: "RANK=2 is out of range"},
		{name: "not a number", env: envOf("PMI_RANK", "x", "PMI_SIZE", "2"), fails: `PMI_RANK="x"`},
		{name: "bad port", env: envOf("RANK", "0", "WORLD_SIZE", "2", "MASTER_ADDR", "h", "MASTER_PORT", "http"), fails: "MASTER_PORT"},
		{name: "no way to meet", env: envOf("RANK", "0", "WORLD_SIZE", "2"), fails: "no MASTER_ADDR"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cfg, err := FromEnv(c.env)
			if c.fails != "" {
				if err == nil || !strings.Contains(err.Error(), c.fails) {
					t.Fatalf("error %v, want one containing %q", err, c.fails)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if cfg.Rank != c.rank || cfg.Size != c.size || cfg.LocalRank != c.local || cfg.Source != c.source || !strings.HasPrefix(cfg.MasterAddr, c.master) {
				t.Errorf("got rank %d size %d local %d source %q master %q", cfg.Rank, cfg.Size, cfg.LocalRank, cfg.Source, cfg.MasterAddr)
			}
			if cfg.Size > 1 && len(cfg.Token) == 0 && cfg.JobID == "" {
				t.Error("no token, and no job id for Connect to derive one from")
			}
		})
	}
}

// TestTokens: where the job token comes from, first match wins: TRAIN_JOB_TOKEN,
// Open MPI's per-job key mixed with the job id, else the per-user secret file
// (Connect reads it), never the job id alone.
func TestTokens(t *testing.T) {
	ompi := func(rank, job, key string, more ...string) func(string) string {
		return envOf(append([]string{"OMPI_COMM_WORLD_RANK", rank, "OMPI_COMM_WORLD_SIZE", "2", "PMIX_NAMESPACE", job,
			"OMPI_MCA_orte_precondition_transports", key}, more...)...)
	}
	a, _ := FromEnv(ompi("0", "1", "k1"))
	b, _ := FromEnv(ompi("1", "1", "k1"))
	c, _ := FromEnv(ompi("1", "2", "k1"))
	d, _ := FromEnv(ompi("1", "2", "k2"))
	if string(a.Token) != string(b.Token) || a.JobID != b.JobID || a.TokenSource != "Open MPI job key" {
		t.Errorf("ranks of one job derive different tokens, or the source %q is wrong", a.TokenSource)
	}
	if string(a.Token) == string(c.Token) || string(c.Token) == string(d.Token) {
		t.Error("two jobs (or two job keys) derive the same token")
	}
	e, _ := FromEnv(ompi("1", "2", "k2", "TRAIN_JOB_TOKEN", "s3cret"))
	if string(e.Token) != "s3cret" || e.TokenSource != "TRAIN_JOB_TOKEN" {
		t.Errorf("TRAIN_JOB_TOKEN ignored: %q from %q", e.Token, e.TokenSource)
	}

	// Slurm hands the job no secret: the token waits for Connect and the
	// user's secret file (HOME's, or TRAIN_SECRET_FILE).
	slurm := []string{"SLURM_PROCID", "0", "SLURM_NTASKS", "2", "SLURM_JOB_ID", "77", "SLURM_STEP_ID", "0", "HOME", "/home/u"}
	f, _ := FromEnv(envOf(slurm...))
	if f.Token != nil || f.SecretFile != "/home/u/.config/train/job-secret" || f.TokenSource != "per-user secret /home/u/.config/train/job-secret" {
		t.Errorf("slurm: token %q, secret file %q, source %q", f.Token, f.SecretFile, f.TokenSource)
	}
	g, _ := FromEnv(envOf(append(slurm, "TRAIN_SECRET_FILE", "/shared/u/secret")...))
	if g.Token != nil || g.SecretFile != "/shared/u/secret" {
		t.Errorf("TRAIN_SECRET_FILE ignored: secret file %q", g.SecretFile)
	}
	// -master-addr names the job, and the token is still the secret's.
	fs := flag.NewFlagSet("x", flag.ContinueOnError)
	fl := AddFlags(fs)
	fs.Parse([]string{"-rank", "0", "-world-size", "2", "-master-addr", "10.0.0.1:4000"})
	h, err := fl.Config(envOf("HOME", "/home/u"))
	if err != nil || h.JobID != "flags:10.0.0.1:4000" || h.Token != nil || h.SecretFile != "/home/u/.config/train/job-secret" {
		t.Errorf("-master-addr: %v, job %q token %q secret file %q", err, h.JobID, h.Token, h.SecretFile)
	}
}

// TestTimeoutSources: the timeout applied, from each source in turn, and the
// source named (collective.DefaultTimeout documents the order). Not a clock
// in sight: the session's own setting is read.
func TestTimeoutSources(t *testing.T) {
	applied := func(cfg Config) time.Duration {
		c, err := Connect(context.Background(), cfg) // a world of one: no network
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		return c.(*tcpComm).s.timeout
	}
	parse := func(args ...string) *Flags {
		fs := flag.NewFlagSet("x", flag.ContinueOnError)
		f := AddFlags(fs)
		if err := fs.Parse(args); err != nil {
			t.Fatal(err)
		}
		return f
	}
	for _, c := range []struct {
		name     string
		flags    []string
		env      []string
		fallback time.Duration // the run's parallel.timeout_seconds; 0: a command without one
		want     time.Duration
		from     string
	}{
		{name: "default", want: 60 * time.Second, from: ""},
		{name: "configuration", fallback: 7 * time.Second, want: 7 * time.Second, from: "parallel.timeout_seconds"},
		{name: "environment", env: []string{"TRAIN_COMM_TIMEOUT", "9s"}, fallback: 7 * time.Second, want: 9 * time.Second, from: "TRAIN_COMM_TIMEOUT"},
		{name: "flag", flags: []string{"-comm-timeout", "11s"}, env: []string{"TRAIN_COMM_TIMEOUT", "9s"}, fallback: 7 * time.Second,
			want: 11 * time.Second, from: "-comm-timeout"},
	} {
		t.Run(c.name, func(t *testing.T) {
			cfg, err := parse(c.flags...).Config(envOf(c.env...))
			if err != nil {
				t.Fatal(err)
			}
			cfg.FallbackTimeout(c.fallback, "parallel.timeout_seconds")
			if cfg.TimeoutSource != c.from {
				t.Errorf("source %q, want %q", cfg.TimeoutSource, c.from)
			}
			if got := applied(cfg); got != c.want {
				t.Errorf("applied %v, want %v", got, c.want)
			}
		})
	}
	if DefaultTimeout != 60*time.Second {
		t.Errorf("DefaultTimeout %v: the README and config say 60 s", DefaultTimeout)
	}
	fs := flag.NewFlagSet("x", flag.ContinueOnError)
	AddFlags(fs)
	if u := fs.Lookup("comm-timeout").Usage; !strings.Contains(u, "(default 60s)") {
		t.Errorf("-comm-timeout -h says %q, not the default applied", u)
	}
	if _, err := parse().Config(envOf("TRAIN_COMM_TIMEOUT", "soon")); err == nil || !strings.Contains(err.Error(), "TRAIN_COMM_TIMEOUT") {
		t.Errorf("a bad TRAIN_COMM_TIMEOUT: %v", err)
	}
}

func TestFirstHost(t *testing.T) {
	for in, want := range map[string]string{
		"node1":                "node1",
		"node1,node2":          "node1",
		"gpu[007-012,020],cpu": "gpu007",
		"a[3,5]":               "a3",
		"a[":                   "",
	} {
		if got := firstHost(in); got != want {
			t.Errorf("firstHost(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestLauncher(t *testing.T) {
	if got := (Config{}).Launcher(); got != "single process" {
		t.Errorf("zero Config: Launcher() = %q", got)
	}
	if got := (Config{Source: "slurm"}).Launcher(); got != "slurm" {
		t.Errorf("Source slurm: Launcher() = %q", got)
	}
}

func TestFlags(t *testing.T) {
	fs := flag.NewFlagSet("x", flag.ContinueOnError)
	f := AddFlags(fs)
	if err := fs.Parse([]string{"-rank", "1", "-world-size", "3", "-master-addr", "127.0.0.1:5000", "-comm-timeout", "5s"}); err != nil {
		t.Fatal(err)
	}
	cfg, err := f.Config(envOf("OMPI_COMM_WORLD_RANK", "0", "OMPI_COMM_WORLD_SIZE", "2", "PMIX_NAMESPACE", "1"))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Rank != 1 || cfg.Size != 3 || cfg.Source != "flags" || cfg.MasterAddr != "127.0.0.1:5000" || cfg.Timeout != 5*time.Second {
		t.Errorf("%+v", cfg)
	}
	fs = flag.NewFlagSet("x", flag.ContinueOnError)
	f = AddFlags(fs)
	fs.Parse([]string{"-rank", "1"})
	if _, err := f.Config(envOf()); err == nil {
		t.Error("-rank without -world-size accepted")
	}
}

// TestMasterAddr connects through an explicit MASTER_ADDR instead of the
// rendezvous file.
func TestMasterAddr(t *testing.T) {
	port := freePort(t)
	startWorld(t, 3, func(c *Config) {
		c.MasterAddr = "127.0.0.1:" + port
		c.JobID = ""
		c.Token = []byte("explicit token")
	}).run(t, func(c Comm) error { return c.AllReduce(make(F32, 5), Sum) })
}
