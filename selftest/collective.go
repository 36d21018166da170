package selftest

import (
	"context"
	"fmt"
	"io"
	"time"

	"train/collective"
	"train/host"
)

// CollectiveOptions says how much Collective checks.
type CollectiveOptions struct {
	Short bool // skip the 1048573-element lengths
}

// Collective is `train selftest collective`: it joins the job world describes,
// runs collective.SelfTest (every collective for awkward lengths, compared
// with a serial computation) and prints this rank's summary line to stdout.
// Any wrong element or failure on any rank fails every rank.
func Collective(world collective.Config, opts CollectiveOptions, stdout io.Writer) error {
	start := time.Now()
	where := rankPlace(world)
	c, err := collective.Connect(context.Background(), world)
	if err != nil {
		fmt.Fprintf(stdout, "selftest collective: %s: FAIL: %v\n", where, err)
		return err
	}
	checks, err := collective.SelfTest(c, opts.Short)
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

// rankPlace says which rank of the job this process is and where it runs,
// for the first words of its report line.
func rankPlace(world collective.Config) string {
	return fmt.Sprintf("rank %d/%d (host %s, local rank %d, %s)", world.Rank, world.Size, host.Name(), world.LocalRank, world.Launcher())
}
