package collective

import (
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
			if cfg.Size > 1 && len(cfg.Token) == 0 {
				t.Error("no token")
			}
		})
	}
}

func TestTokens(t *testing.T) {
	a, _ := FromEnv(envOf("OMPI_COMM_WORLD_RANK", "0", "OMPI_COMM_WORLD_SIZE", "2", "PMIX_NAMESPACE", "1"))
	b, _ := FromEnv(envOf("OMPI_COMM_WORLD_RANK", "1", "OMPI_COMM_WORLD_SIZE", "2", "PMIX_NAMESPACE", "1"))
	c, _ := FromEnv(envOf("OMPI_COMM_WORLD_RANK", "1", "OMPI_COMM_WORLD_SIZE", "2", "PMIX_NAMESPACE", "2"))
	d, _ := FromEnv(envOf("OMPI_COMM_WORLD_RANK", "1", "OMPI_COMM_WORLD_SIZE", "2", "PMIX_NAMESPACE", "2", "TRAIN_JOB_TOKEN", "s3cret"))
	if string(a.Token) != string(b.Token) || a.JobID != b.JobID {
		t.Error("ranks of one job derive different tokens")
	}
	if string(a.Token) == string(c.Token) {
		t.Error("two jobs derive the same token")
	}
	if string(d.Token) != "s3cret" {
		t.Errorf("TRAIN_JOB_TOKEN ignored: %q", d.Token)
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
