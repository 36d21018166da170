package trainer

import (
	"flag"
	"testing"
	"time"

	"train/collective"
	"train/config"
)

// TestLaunchTimeoutSources: the communication timeout a training rank
// applies, from each source in turn: the configuration's default, the file
// (or -timeout), TRAIN_COMM_TIMEOUT over both, and -comm-timeout over all
// (the order collective.DefaultTimeout documents).
func TestLaunchTimeoutSources(t *testing.T) {
	for _, c := range []struct {
		name    string
		seconds int // parallel.timeout_seconds; 0: the default
		env     map[string]string
		flags   []string
		want    time.Duration
		from    string
	}{
		{name: "default", want: collective.DefaultTimeout, from: "parallel.timeout_seconds"},
		{name: "config", seconds: 7, want: 7 * time.Second, from: "parallel.timeout_seconds"},
		{name: "environment", seconds: 7, env: map[string]string{"TRAIN_COMM_TIMEOUT": "9s"}, want: 9 * time.Second, from: "TRAIN_COMM_TIMEOUT"},
		{name: "flag", seconds: 7, env: map[string]string{"TRAIN_COMM_TIMEOUT": "9s"}, flags: []string{"-comm-timeout", "11s"},
			want: 11 * time.Second, from: "-comm-timeout"},
	} {
		t.Run(c.name, func(t *testing.T) {
			cfg := config.Default()
			if c.seconds > 0 {
				cfg.Parallel.TimeoutSeconds = c.seconds
			}
			fs := flag.NewFlagSet("train", flag.ContinueOnError)
			launch := collective.AddFlags(fs)
			if err := fs.Parse(c.flags); err != nil {
				t.Fatal(err)
			}
			cc, err := launchConfig(cfg, launch, func(k string) string { return c.env[k] })
			if err != nil {
				t.Fatal(err)
			}
			if cc.Timeout != c.want || cc.TimeoutSource != c.from {
				t.Errorf("timeout %v from %q, want %v from %q", cc.Timeout, cc.TimeoutSource, c.want, c.from)
			}
		})
	}
	if got := time.Duration(config.Default().Parallel.TimeoutSeconds) * time.Second; got != collective.DefaultTimeout {
		t.Errorf("parallel.timeout_seconds defaults to %v, collective.DefaultTimeout is %v", got, collective.DefaultTimeout)
	}
}
